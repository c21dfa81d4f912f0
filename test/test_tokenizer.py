"""icefall_cif.tokenizer: BPE and character lang dirs, unknown units, scoring units, bad files."""
import logging
import random

import pytest
import sentencepiece as spm

from icefall_cif.data_prep import train_bpe_model
from icefall_cif.tokenizer import Tokenizer, read_tokens_txt

WORDS = ["THE", "CAT", "SAT", "ON", "A", "MAT", "WITH", "HAT", "AND", "DOG", "RAN", "FAR", "AWAY", "FROM", "HOME"]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    lang = tmp_path_factory.mktemp("lang_bpe")
    rng = random.Random(0)
    text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n" for _ in range(300))
    (lang / "transcript_words.txt").write_text(text)
    train_bpe_model(lang, lang / "transcript_words.txt", vocab_size=30)
    return lang


@pytest.fixture()
def char_dir(tmp_path):
    chars = ["你", "好", "世", "界", "A"]
    lines = [f"{s} {i}" for i, s in enumerate(["<blk>", "<sos/eos>", "<unk>"] + chars)]
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_bpe_symbols_and_round_trip(bpe_dir):
    tok = Tokenizer.from_lang_dir(bpe_dir)
    assert tok.kind == "bpe" and tok.error_rate_name == "WER"
    assert (tok.blank_id, tok.sos_id, tok.eos_id, tok.unk_id) == (0, 1, 1, 2)
    assert tok.vocab_size == 30 == len(tok.id2token)
    assert [tok.id2token[i] for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
    texts = ["THE CAT SAT ON A MAT", "DOG RAN AWAY FROM HOME", "A"]
    ids = tok.encode(texts)
    assert all(0 < len(seq) and min(seq) > 2 for seq in ids)
    assert [tok.decode(seq) for seq in ids] == texts
    assert tok.num_unk_units == 0


def test_bpe_decode_agrees_with_sentencepiece(bpe_dir):
    """Random id sequences (no specials) decode exactly as sentencepiece itself decodes them."""
    tok = Tokenizer.from_lang_dir(bpe_dir)
    sp = spm.SentencePieceProcessor()
    sp.load(str(bpe_dir / "bpe.model"))
    rng = random.Random(1)
    for _ in range(50):
        seq = [rng.randrange(3, tok.vocab_size) for _ in range(rng.randint(1, 15))]
        assert tok.decode(seq) == " ".join(sp.decode(seq).split())
    # Blank and <sos/eos> are dropped; <unk> becomes a word "<unk>" where sentencepiece writes " \u2047 ".
    cat, dog = tok.encode(["CAT", "DOG"])
    assert tok.decode([0] + cat + [1, 0]) == "CAT"
    for seq in ([*cat, tok.unk_id], [tok.unk_id, *cat], [*cat, tok.unk_id, *dog]):
        assert tok.decode(seq) == " ".join(sp.decode(seq).replace("\u2047", "<unk>").split())
    assert tok.decode([*cat, tok.unk_id, *dog]) == "CAT <unk> DOG"


def test_bpe_unknown_characters_are_counted_and_named(bpe_dir, caplog):
    tok = Tokenizer.from_lang_dir(bpe_dir)
    with caplog.at_level(logging.WARNING):
        ids = tok.encode(["THE ЖCAT", "THE CAT"])
    assert tok.unk_id in ids[0] and tok.unk_id not in ids[1]
    assert tok.num_unk_units == ids[0].count(tok.unk_id) and tok.unk_counts == {"Ж": 1}
    assert caplog.text == ""  # no ids given: counted only
    with caplog.at_level(logging.WARNING):
        tok.encode(["THE ЖCAT", "DOG"], utt_ids=["utt-1", "utt-2"])
    assert "utt-1" in caplog.text and "'Ж'" in caplog.text and "utt-2" not in caplog.text
    assert tok.unk_counts == {"Ж": 2}
    with pytest.raises(ValueError, match="2 texts but 1 utt_ids"):
        tok.encode(["A", "B"], utt_ids=["x"])


def test_bpe_text_units_are_words(bpe_dir):
    tok = Tokenizer.from_lang_dir(bpe_dir)
    assert tok.text_units("  THE CAT\tSAT ") == ["THE", "CAT", "SAT"]


def test_char_tokenizer(char_dir, caplog):
    tok = Tokenizer.from_lang_dir(char_dir)
    assert tok.kind == "char" and tok.error_rate_name == "CER" and tok.vocab_size == 8
    assert tok.encode(["你好 世界", "A你"]) == [[3, 4, 5, 6], [7, 3]]
    assert tok.decode([0, 3, 4, 1, 5, 6]) == "你好世界"
    with caplog.at_level(logging.WARNING):
        ids = tok.encode(["你们好", "好"], utt_ids=["BAC009S0002W0122", "SECOND_UTT"])
    assert ids == [[3, 2, 4], [4]]
    assert tok.num_unk_units == 1 and tok.unk_counts == {"们": 1}
    assert "BAC009S0002W0122" in caplog.text and "们" in caplog.text and "SECOND_UTT" not in caplog.text
    # <unk> decodes to one scoring unit, so CER counts it as one error.
    assert tok.text_units(tok.decode(ids[0])) == ["你", "<unk>", "好"]
    assert tok.text_units("你好 世界") == ["你", "好", "世", "界"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("<blk> 0\n<unk> 1\n<sos/eos> 2\n", "id 1 must be <sos/eos>"),
        ("<blk> 0\n<sos/eos> 1\n<unk> 2\n好 4\n", "must be exactly 0..3"),
        ("<blk> 0\n<sos/eos> 1\n<unk> 2\n好 3\n好 4\n", "appears twice"),
        ("<blk> 0\n<sos/eos> 1\n<unk> 2\n好\n", "tokens.txt:4: expected '<symbol> <id>'"),
    ],
)
def test_bad_tokens_txt(tmp_path, content, message):
    (tmp_path / "tokens.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_tokens_txt(tmp_path / "tokens.txt")


def test_missing_lang_dir_says_which_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither bpe.model nor tokens.txt.*--stage 3 --stop-stage 3"):
        Tokenizer.from_lang_dir(tmp_path)


def test_bpe_model_and_tokens_txt_must_agree(bpe_dir, tmp_path):
    (tmp_path / "bpe.model").write_bytes((bpe_dir / "bpe.model").read_bytes())
    lines = (bpe_dir / "tokens.txt").read_text().splitlines()
    lines[5], lines[6] = lines[6].split()[0] + " 5", lines[5].split()[0] + " 6"
    (tmp_path / "tokens.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="does not match"):
        Tokenizer.from_lang_dir(tmp_path)
