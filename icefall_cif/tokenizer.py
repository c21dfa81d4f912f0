"""Text <-> token ids for a lang dir: sentencepiece BPE (LibriSpeech) or characters (AISHELL).

A lang dir is what `prepare.sh` stage 3 writes:

- `data/lang_bpe_<N>/bpe.model` (+ `tokens.txt`): a sentencepiece unigram model trained with
  icefall's special symbols `<blk>`=0, `<sos/eos>`=1, `<unk>`=2;
- `data/lang_char/tokens.txt` only: lines `<symbol> <id>` with `<blk> 0`, `<sos/eos> 1`,
  `<unk> 2`, then one line per character.

Scoring units follow the corpus convention: words (WER) for BPE, characters (CER) for the
character vocabulary.
"""
import hashlib
import logging
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

if TYPE_CHECKING:
    import sentencepiece

BLANK = "<blk>"
SOS_EOS = "<sos/eos>"
UNK = "<unk>"
SPECIAL_SYMBOLS = (BLANK, SOS_EOS, UNK)

_CHAR_UNIT = re.compile(r"<unk>|\S")


def read_tokens_txt(path: Union[str, Path]) -> Dict[int, str]:
    """Read an icefall `tokens.txt` (`<symbol> <id>` per line) into {id: symbol}.

    Raises ValueError naming the file and line when the table is malformed: a bad line, a
    repeated symbol or id, ids that are not 0..V-1, or the special symbols not at 0, 1, 2.
    """
    path = Path(path)
    id2token: Dict[int, str] = {}
    seen = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{lineno}: expected '<symbol> <id>', got {line.rstrip()!r}")
            sym, idx = fields[0], int(fields[1])
            if sym in seen or idx in id2token:
                raise ValueError(f"{path}:{lineno}: symbol {sym!r} or id {idx} appears twice")
            seen.add(sym)
            id2token[idx] = sym
    if sorted(id2token) != list(range(len(id2token))):
        raise ValueError(f"{path}: token ids must be exactly 0..{len(id2token) - 1}")
    for idx, sym in enumerate(SPECIAL_SYMBOLS):
        if id2token.get(idx) != sym:
            raise ValueError(
                f"{path}: id {idx} must be {sym} (icefall's convention <blk>=0, <sos/eos>=1, <unk>=2), "
                f"got {id2token.get(idx)!r}. Re-create it with prepare.sh stage 3."
            )
    return id2token


class Tokenizer:
    """Encodes transcripts to token ids and back, for BPE or character vocabularies.

    Attributes:
      kind: "bpe" or "char".
      vocab_size: number of token ids, including `<blk>`, `<sos/eos>` and `<unk>`.
      blank_id, sos_id, eos_id, unk_id: 0, 1, 1, 2 (icefall's convention).
      id2token / token2id: the symbol table.
      error_rate_name: "WER" (BPE: scored on words) or "CER" (characters).
      num_unk_units: how many units (characters, or sentencepiece `<unk>` pieces) `encode`
        has mapped to `<unk>` so far; `unk_counts` counts them per character.
    """

    def __init__(
        self,
        id2token: Dict[int, str],
        sp: Optional["sentencepiece.SentencePieceProcessor"] = None,
        lang_dir: Optional[Path] = None,
    ):
        # A BPE table without its sentencepiece model (a pretrained.pt's) still decodes.
        self.kind = "bpe" if sp is not None or any("\u2581" in t for t in id2token.values()) else "char"
        self.id2token = id2token
        self.token2id = {sym: idx for idx, sym in id2token.items()}
        self.vocab_size = len(id2token)
        self.blank_id = self.token2id[BLANK]
        self.sos_id = self.eos_id = self.token2id[SOS_EOS]
        self.unk_id = self.token2id[UNK]
        self.error_rate_name = "WER" if self.kind == "bpe" else "CER"
        self.lang_dir = lang_dir
        self.num_unk_units = 0
        self.unk_counts: Counter = Counter()
        self._sp = sp
        if sp is not None:
            # Characters the model can spell; anything else becomes <unk>.
            self._known_chars = {
                ch for sym in id2token.values() if sym not in SPECIAL_SYMBOLS for ch in sym.replace("\u2581", "")
            }
        else:
            self._known_chars = {sym for sym in id2token.values() if sym not in SPECIAL_SYMBOLS}

    @classmethod
    def from_token_table(cls, symbols: Sequence[str]) -> "Tokenizer":
        """A decoding-only tokenizer of a checkpoint's `token_table` (symbols in id order)."""
        return cls(dict(enumerate(symbols)))

    @classmethod
    def from_lang_dir(cls, lang_dir: Union[str, Path]) -> "Tokenizer":
        """Load `lang_dir/bpe.model` if present (BPE), else `lang_dir/tokens.txt` (characters)."""
        lang_dir = Path(lang_dir)
        bpe_model = lang_dir / "bpe.model"
        tokens_txt = lang_dir / "tokens.txt"
        if bpe_model.is_file():
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            try:
                sp.load(str(bpe_model))
            except (OSError, RuntimeError) as e:
                raise ValueError(
                    f"{bpe_model} is not a sentencepiece model ({str(e).splitlines()[0][:200]}); delete {lang_dir} "
                    "and re-create it with `./prepare.sh --stage 3 --stop-stage 3`"
                ) from None
            id2token = {i: sp.id_to_piece(i) for i in range(sp.get_piece_size())}
            for idx, sym in enumerate(SPECIAL_SYMBOLS):
                if id2token.get(idx) != sym:
                    raise ValueError(
                        f"{bpe_model}: id {idx} is {id2token.get(idx)!r}, expected {sym}; the model must be "
                        "trained with user_defined_symbols=['<blk>', '<sos/eos>'] and unk_id=2 "
                        "(prepare.sh stage 3 does that)"
                    )
            if tokens_txt.is_file() and read_tokens_txt(tokens_txt) != id2token:
                raise ValueError(
                    f"{tokens_txt} does not match {bpe_model}; delete {lang_dir} and re-run prepare.sh stage 3"
                )
            return cls(id2token, sp=sp, lang_dir=lang_dir)
        if tokens_txt.is_file():
            return cls(read_tokens_txt(tokens_txt), lang_dir=lang_dir)
        raise FileNotFoundError(
            f"{lang_dir} has neither bpe.model nor tokens.txt; create it with "
            "`./prepare.sh --stage 3 --stop-stage 3` in the recipe directory (or pass the right --lang-dir)"
        )

    def unknown_units(self, text: str) -> List[str]:
        """The characters of `text` (spaces excluded) that the vocabulary cannot represent."""
        return [ch for ch in text if not ch.isspace() and ch not in self._known_chars]

    def encode(self, texts: Sequence[str], utt_ids: Optional[Sequence[str]] = None) -> List[List[int]]:
        """Token ids of each text.

        Units outside the vocabulary become `<unk>` and are counted in `num_unk_units` /
        `unk_counts`. When `utt_ids` (one per text) are given, each utterance that needed
        `<unk>` is also named in a warning.
        """
        if utt_ids is not None and len(utt_ids) != len(texts):
            raise ValueError(f"encode: got {len(texts)} texts but {len(utt_ids)} utt_ids")
        if self._sp is not None:
            ids = self._sp.encode(list(texts))
        elif self.kind == "bpe":
            raise ValueError(
                "this BPE tokenizer was made from a token table and can only decode; encoding needs the "
                "lang dir's bpe.model (Tokenizer.from_lang_dir)"
            )
        else:
            ids = [[self.token2id.get(u, self.unk_id) for u in text if not u.isspace()] for text in texts]
        for k, (text, seq) in enumerate(zip(texts, ids)):
            num_unk = sum(1 for i in seq if i == self.unk_id)
            if num_unk == 0:
                continue
            unknown = self.unknown_units(text)
            self.num_unk_units += num_unk
            self.unk_counts.update(unknown)
            if utt_ids is not None:
                logging.warning(
                    f"Utterance {utt_ids[k]}: {num_unk} unit(s) not in the token set of {self.lang_dir} "
                    f"({''.join(sorted(set(unknown)))!r}) mapped to {UNK}. To cover them, add text containing "
                    "them to the training transcripts and re-run prepare.sh stage 3."
                )
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token id sequence; `<blk>` and `<sos/eos>` are dropped, `<unk>` is written `<unk>`."""
        ids = [int(i) for i in ids if i != self.blank_id and i != self.sos_id]
        if self.kind == "bpe":
            # As sentencepiece's decode, but <unk> is spelled "<unk>" (not " \u2047 ") and stays a
            # word of its own, so WER counts it as one error; runs of spaces become one.
            pieces = [f"\u2581{UNK}\u2581" if i == self.unk_id else self.id2token[i] for i in ids]
            return " ".join("".join(pieces).replace("\u2581", " ").split())
        return "".join(self.id2token[i] for i in ids)

    def text_units(self, text: str) -> List[str]:
        """Scoring units of `text`: words for BPE (WER), characters for AISHELL (CER)."""
        if self.kind == "bpe":
            return text.split()
        return _CHAR_UNIT.findall(text)


def token_table(tokenizer: Tokenizer) -> List[str]:
    """The symbols in id order: what checkpoints store to name the token set they were trained on."""
    return [tokenizer.id2token[i] for i in range(tokenizer.vocab_size)]


def token_table_digest(tokenizer: Tokenizer) -> str:
    """A short hash of the token table, as checkpoints written before they held the table itself
    stored it (`check_token_table` compares it for them)."""
    text = "\n".join(f"{i} {sym}" for i, sym in enumerate(token_table(tokenizer)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_token_table(saved: Dict, tokenizer: Tokenizer, what: str, option_hint: str) -> None:
    """Raise a ValueError when the checkpoint contents `saved` were trained with another token
    set than `tokenizer`: `what` names the checkpoint, `option_hint` says what to do."""
    saved_vocab = saved.get("vocab_size")
    if saved_vocab is not None and saved_vocab != tokenizer.vocab_size:
        raise ValueError(
            f"{what} was trained with {saved_vocab} tokens but {tokenizer.lang_dir} has {tokenizer.vocab_size}: "
            f"{option_hint}"
        )
    saved_table = saved.get("token_table")
    differs = (
        saved_table != token_table(tokenizer)
        if saved_table is not None
        else saved.get("token_table_digest") not in (None, token_table_digest(tokenizer))
    )
    if differs:
        raise ValueError(
            f"{what} was trained with a different token table than {tokenizer.lang_dir} (same size, other "
            f"tokens, e.g. a re-trained bpe.model): {option_hint}"
        )
