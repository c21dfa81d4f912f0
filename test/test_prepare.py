"""prepare.sh (both recipes), shared/parse_options.sh and icefall_cif.data_prep.

One tiny synthetic corpus per recipe goes through `prepare.sh --synthetic 1 --stage 0 --stop-stage 4`
once per session (:func:`prepared_recipe`, shared with test_datamodule.py); the checks read its
outputs and compare them with what the synthetic corpus itself says (its transcript files).
Bad-input behaviour is checked in-process on damaged copies of that corpus.
"""
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile as sf

from icefall_cif import data_prep
from icefall_cif.data_prep import DataPrepError

REPO = Path(__file__).resolve().parents[1]
NUM_UTTS = {"train": 12, "dev": 4, "test": 4}
VOCAB_SIZE = 60
SPLITS = {
    "librispeech": {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"},
    "aishell": {"train": "train", "dev": "dev", "test": "test"},
}

_PREPARED: Dict[str, Tuple[Path, str]] = {}


def run_prepare(recipe_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ./prepare.sh in `recipe_dir` with this interpreter's bin/ first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["./prepare.sh", *args], cwd=recipe_dir, env=env, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"prepare.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_recipe_dir(corpus: str, where: Path) -> Path:
    """An empty working directory that runs the repository's recipe scripts (icefall style)."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("prepare.sh", "local", "shared"):
        (where / name).symlink_to(REPO / "egs" / corpus / "ASR" / name)
    return where


def prepared_recipe(corpus: str, tmp_path_factory) -> Tuple[Path, str]:
    """(recipe dir, prepare.sh output) after stages 0-4 on a tiny synthetic corpus; built once per session."""
    if corpus not in _PREPARED:
        recipe = make_recipe_dir(corpus, tmp_path_factory.mktemp(f"{corpus}_recipe"))
        args = [
            "--synthetic", "1",
            "--synth-num-train-utts", str(NUM_UTTS["train"]),
            "--synth-num-dev-utts", str(NUM_UTTS["dev"]),
            "--synth-num-test-utts", str(NUM_UTTS["test"]),
            "--num-jobs", "1",
            "--stage", "0", "--stop-stage", "4",
        ]
        if corpus == "librispeech":
            args += ["--vocab-sizes", str(VOCAB_SIZE)]
        proc = run_prepare(recipe, *args)
        _PREPARED[corpus] = (recipe, proc.stdout + proc.stderr)
    return _PREPARED[corpus]


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    return prepared_recipe("librispeech", tmp_path_factory)


@pytest.fixture(scope="module")
def aishell(tmp_path_factory):
    return prepared_recipe("aishell", tmp_path_factory)


def read_jsonl_gz(path: Path) -> List[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def corpus_transcripts(corpus: str, recipe: Path, role: str) -> Dict[str, str]:
    """utt id -> text straight from the corpus files, as an independent reference."""
    if corpus == "librispeech":
        part_dir = recipe / "download" / "LibriSpeech" / SPLITS[corpus][role]
        out = {}
        for trans in part_dir.rglob("*.trans.txt"):
            for line in trans.read_text(encoding="utf-8").splitlines():
                utt, text = line.split(maxsplit=1)
                out[utt] = text
        return out
    root = recipe / "download" / "aishell" / "data_aishell"
    wavs = {p.stem for p in (root / "wav" / SPLITS[corpus][role]).rglob("*.wav")}
    out = {}
    for line in (root / "transcript" / "aishell_transcript_v0.8.txt").read_text(encoding="utf-8").splitlines():
        utt, text = line.split(maxsplit=1)
        if utt in wavs:
            out[utt] = text.replace(" ", "")
    return out


# ------------------------------------------------------------------------------------------------
# parse_options.sh


def _options_script(tmp_path: Path) -> Path:
    script = tmp_path / "opts.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\nstage=0\nnum_jobs=2\nuse_x=false\n"
        'help_message="Usage: opts.sh [--stage N]"\n'
        f". {REPO}/shared/parse_options.sh\n"
        'echo "stage=$stage num_jobs=$num_jobs use_x=$use_x rest=$*"\n'
    )
    script.chmod(0o755)
    return script


def test_parse_options_sets_declared_variables(tmp_path):
    script = _options_script(tmp_path)
    out = subprocess.run([script, "--stage", "3", "--num-jobs=5", "--use-x", "true", "a", "b"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "stage=3 num_jobs=5 use_x=true rest=a b"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-such-option", "1"], "unknown option --no-such-option"),
        (["--use-x", "1"], "expects true or false"),
        (["--stage"], "option --stage needs a value"),
    ],
)
def test_parse_options_rejects_bad_options(tmp_path, args, message):
    proc = subprocess.run([_options_script(tmp_path), *args], capture_output=True, text=True)
    assert proc.returncode == 1
    assert message in proc.stderr


def test_parse_options_help(tmp_path):
    proc = subprocess.run([_options_script(tmp_path), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: opts.sh" in proc.stdout


# ------------------------------------------------------------------------------------------------
# Stages 0-4 on the synthetic corpora


@pytest.mark.parametrize("corpus", ["librispeech", "aishell"])
def test_manifests_match_corpus(corpus, tmp_path_factory):
    recipe, _ = prepared_recipe(corpus, tmp_path_factory)
    for role, part in SPLITS[corpus].items():
        expected = corpus_transcripts(corpus, recipe, role)
        assert len(expected) == NUM_UTTS[role]
        sups = read_jsonl_gz(recipe / "data" / "manifests" / f"{corpus}_supervisions_{part}.jsonl.gz")
        recs = read_jsonl_gz(recipe / "data" / "manifests" / f"{corpus}_recordings_{part}.jsonl.gz")
        assert {s["id"]: s["text"] for s in sups} == expected
        for r in recs:
            audio = Path(r["sources"][0]["source"])
            assert audio.is_file() and audio.stem == r["id"]  # points at the corpus, not a temporary view
            info = sf.info(str(audio))
            assert r["num_samples"] == info.frames and r["sampling_rate"] == 16000
    assert (recipe / "data" / "manifests" / f"{corpus}_skipped.tsv").read_text().splitlines()[1:] == []


@pytest.mark.parametrize("corpus", ["librispeech", "aishell"])
def test_fbank_cuts(corpus, tmp_path_factory, monkeypatch):
    from lhotse import load_manifest

    recipe, _ = prepared_recipe(corpus, tmp_path_factory)
    monkeypatch.chdir(recipe)  # feature paths are relative to the recipe directory, as in icefall
    for role, part in SPLITS[corpus].items():
        cuts = load_manifest(recipe / "data" / "fbank" / f"{corpus}_cuts_{part}.jsonl.gz")
        base_ids = set(corpus_transcripts(corpus, recipe, role))
        if role == "train":
            # Speed perturbation: every utterance at 1.0, 0.9 and 1.1.
            expected = {f"{u}{sfx}" for u in base_ids for sfx in ("", "_sp0.9", "_sp1.1")}
        else:
            expected = base_ids
        assert {c.supervisions[0].id for c in cuts} == expected
        durations = {c.supervisions[0].id: c.duration for c in cuts}
        for c in cuts:
            assert c.num_features == 80 and c.frame_shift == 0.01
            assert abs(c.num_frames - c.duration * 100) <= 1  # 100 Hz
            assert Path(c.features.storage_path).suffix == ".lca"  # lilcom archive
            if c.supervisions[0].id.endswith("_sp0.9"):
                orig = durations[c.supervisions[0].id[: -len("_sp0.9")]]
                assert c.duration == pytest.approx(orig / 0.9, abs=0.01)
        feats = cuts[0].load_features()
        assert feats.shape == (cuts[0].num_frames, 80) and np.isfinite(feats).all()


def test_stored_features_equal_fbank_of_the_audio(libri, monkeypatch):
    """Round trip: lilcom-stored features match a fresh fbank of the cut's own audio."""
    from lhotse import Fbank, FbankConfig, load_manifest

    recipe, _ = libri
    monkeypatch.chdir(recipe)
    cut = next(iter(load_manifest(Path("data/fbank/librispeech_cuts_dev-clean.jsonl.gz"))))
    stored = cut.load_features()
    fresh = Fbank(FbankConfig(num_mel_bins=80)).extract(cut.load_audio(), 16000)
    assert stored.shape == fresh.shape
    # lilcom keeps about 3 significant digits of the log-mel energies.
    np.testing.assert_allclose(stored, fresh, atol=0.1)


def test_bpe_lang_dir(libri):
    import sentencepiece as spm

    from icefall_cif.tokenizer import Tokenizer

    recipe, _ = libri
    lang = recipe / "data" / f"lang_bpe_{VOCAB_SIZE}"
    lines = (lang / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert len(lines) == VOCAB_SIZE
    sp = spm.SentencePieceProcessor()
    sp.load(str(lang / "bpe.model"))
    assert [f"{sp.id_to_piece(i)} {i}" for i in range(sp.get_piece_size())] == lines
    tok = Tokenizer.from_lang_dir(lang)
    train = corpus_transcripts("librispeech", recipe, "train")
    for text in train.values():
        ids = tok.encode([text])[0]
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text
    assert (lang / "transcript_words.txt").read_text(encoding="utf-8").split("\n")[:-1] == [
        s["text"] for s in read_jsonl_gz(recipe / "data/manifests/librispeech_supervisions_train-clean-100.jsonl.gz")
    ]


def test_char_lang_dir_and_uncovered_characters(aishell):
    recipe, log = aishell
    train = corpus_transcripts("aishell", recipe, "train")
    chars = sorted({ch for t in train.values() for ch in t})
    lines = (recipe / "data" / "lang_char" / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [f"{s} {i}" for i, s in enumerate(["<blk>", "<sos/eos>", "<unk>"] + chars)]

    # dev/test utterances with characters never seen in train are listed, with those characters.
    expected = {}
    for role in ("dev", "test"):
        for utt, text in corpus_transcripts("aishell", recipe, role).items():
            missing = sorted(set(text) - set(chars))
            if missing:
                expected[utt] = "".join(missing)
    assert expected, "the tiny corpus should have dev/test characters unseen in train"
    rows = (recipe / "data" / "lang_char" / "oov_utterances.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert {r.split("\t")[1]: r.split("\t")[2] for r in rows} == expected
    assert f"{len(expected)} utterance(s) contain" in log
    some_utt = next(iter(expected))
    assert some_utt in (recipe / "data" / "log" / "prepare-stage-3.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("corpus, lang", [("librispeech", f"lang_bpe_{VOCAB_SIZE}"), ("aishell", "lang_char")])
def test_lm_text(corpus, lang, tmp_path_factory):
    from icefall_cif.tokenizer import Tokenizer

    recipe, _ = prepared_recipe(corpus, tmp_path_factory)
    tok = Tokenizer.from_lang_dir(recipe / "data" / lang)
    for role in ("train", "dev"):
        lines = (recipe / "data" / "lm" / f"{role}_text.txt").read_text(encoding="utf-8").splitlines()
        assert sorted(lines) == sorted(corpus_transcripts(corpus, recipe, role).values())
        token_lines = (recipe / "data" / "lm" / lang / f"{role}_tokens.txt").read_text().splitlines()
        assert [list(map(int, t.split())) for t in token_lines] == tok.encode(lines)


def test_rerun_skips_done_stages_and_redoes_a_cleared_one(libri):
    recipe, _ = libri
    lm_text = recipe / "data" / "lm" / "train_text.txt"
    cuts = recipe / "data" / "fbank" / "librispeech_cuts_train-clean-100.jsonl.gz"
    before = {p: p.stat().st_mtime_ns for p in (lm_text, cuts)}
    proc = run_prepare(recipe, "--stage", "0", "--stop-stage", "4", "--vocab-sizes", str(VOCAB_SIZE))
    for marker in ("data/.corpus.done", "data/manifests/.librispeech.done", "data/fbank/.librispeech.done",
                   f"data/lang_bpe_{VOCAB_SIZE}/.done", "data/lm/.librispeech.done"):
        assert f"Already done ({marker} exists)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before

    (recipe / "data" / "lm" / ".librispeech.done").unlink()
    lm_text.write_text("stale\n")
    run_prepare(recipe, "--stage", "4", "--stop-stage", "4", "--vocab-sizes", str(VOCAB_SIZE))
    assert lm_text.read_text() != "stale\n" and (recipe / "data" / "lm" / ".librispeech.done").is_file()
    assert cuts.stat().st_mtime_ns == before[cuts]


# ------------------------------------------------------------------------------------------------
# Bad input


def test_wrong_corpus_dir_is_a_clear_error(tmp_path):
    recipe = make_recipe_dir("librispeech", tmp_path / "recipe")
    proc = run_prepare(recipe, "--stage", "0", "--stop-stage", "0", "--corpus-dir", str(tmp_path / "nowhere"),
                       check=False)
    assert proc.returncode != 0
    assert f"{tmp_path / 'nowhere'} does not exist" in proc.stdout + proc.stderr
    assert not (recipe / "data" / ".corpus.done").exists()

    proc = run_prepare(recipe, "--stage", "0", "--stop-stage", "0", "--corpus-dir", "x", "--synthetic", "1",
                       check=False)
    assert proc.returncode != 0 and "either --corpus-dir DIR or --synthetic 1" in proc.stderr

    proc = run_prepare(recipe, "--stage", "0", "--stop-stage", "0", check=False)
    assert proc.returncode != 0
    assert "No librispeech corpus in" in proc.stderr and "--synthetic 1" in proc.stderr

    proc = run_prepare(recipe, "--stage", "0", "--no-such-option", "1", check=False)
    assert proc.returncode != 0 and "unknown option --no-such-option" in proc.stderr


def test_find_corpus_names_what_is_missing(libri, tmp_path):
    recipe, _ = libri
    src = recipe / "download" / "LibriSpeech"
    # Both the LibriSpeech directory and its parent are accepted.
    assert data_prep.find_corpus("librispeech", src) == src
    assert data_prep.find_corpus("librispeech", src.parent) == src

    broken = tmp_path / "LibriSpeech"
    shutil.copytree(src / "train-clean-100", broken / "train-clean-100")
    shutil.copytree(src / "dev-clean", broken / "dev-clean")
    with pytest.raises(DataPrepError, match=f"missing directory {broken / 'test-clean'}"):
        data_prep.find_corpus("librispeech", tmp_path)

    with pytest.raises(DataPrepError, match="aishell_transcript_v0.8.txt"):
        data_prep.find_corpus("aishell", tmp_path)


def test_link_corpus(libri, tmp_path):
    recipe, _ = libri
    src = recipe / "download" / "LibriSpeech"
    link = data_prep.link_corpus("librispeech", src.parent, tmp_path / "download")
    assert link.is_symlink() and link.resolve() == src.resolve()
    (tmp_path / "download2" / "LibriSpeech").mkdir(parents=True)
    with pytest.raises(DataPrepError, match="already exists and is not a symlink"):
        data_prep.link_corpus("librispeech", src, tmp_path / "download2")


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def test_bad_librispeech_items_are_skipped_and_listed(libri, tmp_path, caplog):
    recipe, _ = libri
    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(recipe / "download" / "LibriSpeech", corpus)
    train = corpus / "train-clean-100"
    flacs = sorted(train.rglob("*.flac"))
    trans = sorted(train.rglob("*.trans.txt"))[0]
    lines = trans.read_text().splitlines()
    ids_in_trans = [line.split()[0] for line in lines]
    flacs = [f for f in flacs if f.stem in ids_in_trans]
    garbage, truncated, empty, untranscribed = (f.stem for f in flacs[:4])

    (trans.parent / f"{garbage}.flac").write_bytes(b"RIFF not really audio" * 20)
    _truncate(trans.parent / f"{truncated}.flac")
    new_lines = []
    for line in lines:
        utt = line.split()[0]
        if utt == empty:
            new_lines.append(utt)
        elif utt != untranscribed:
            new_lines.append(line)
    missing_audio = ids_in_trans[0].rsplit("-", 1)[0] + "-9999"
    new_lines.append(f"{missing_audio} NO SUCH AUDIO")
    trans.write_text("\n".join(new_lines) + "\n")

    out = tmp_path / "manifests"
    with caplog.at_level(logging.WARNING):
        data_prep.prepare_manifests("librispeech", corpus, out, num_jobs=2)
    rows = [r.split("\t") for r in (out / "librispeech_skipped.tsv").read_text().splitlines()[1:]]
    reasons = {r[1]: r[2] for r in rows}
    assert set(reasons) == {garbage, truncated, empty, untranscribed, missing_audio}
    assert reasons[garbage].startswith("unreadable audio")
    assert "truncated" in reasons[truncated]
    assert reasons[empty].startswith("empty transcript")
    assert reasons[untranscribed].startswith("missing transcript")
    assert reasons[missing_audio].startswith("missing audio")
    for utt in reasons:
        assert utt in caplog.text
    assert "skipped 5 utterance(s)" in caplog.text

    sups = read_jsonl_gz(out / "librispeech_supervisions_train-clean-100.jsonl.gz")
    expected = corpus_transcripts("librispeech", recipe, "train")
    for utt in (garbage, truncated, empty, untranscribed):
        del expected[utt]
    assert {s["id"]: s["text"] for s in sups} == expected


def test_transcripts_are_rewritten_in_the_corpus_conventions(libri, tmp_path, caplog):
    recipe, _ = libri
    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(recipe / "download" / "LibriSpeech", corpus)
    trans = sorted((corpus / "train-clean-100").rglob("*.trans.txt"))[0]
    lines = trans.read_text().splitlines()
    utt, text = lines[0].split(" ", 1)
    words = text.split()
    # Lower case, punctuation, a zero-width space, full-width letters and a combining accent.
    messy = f"{words[0].lower()}, \u200b{' '.join(words[1:])}. ＯＫ CAFE\u0301"
    trans.write_text("\n".join([f"{utt} {messy}"] + lines[1:]) + "\n")

    out = tmp_path / "manifests"
    with caplog.at_level(logging.INFO):
        data_prep.prepare_manifests("librispeech", corpus, out)
    sups = {s["id"]: s["text"] for s in read_jsonl_gz(out / "librispeech_supervisions_train-clean-100.jsonl.gz")}
    assert sups[utt] == f"{text} OK CAFE"
    assert "1 transcripts rewritten in librispeech's conventions" in caplog.text
    # Text already in the conventions is unchanged: every other utterance keeps its transcript.
    expected = corpus_transcripts("librispeech", recipe, "train")
    assert {k: v for k, v in sups.items() if k != utt} == {k: v for k, v in expected.items() if k != utt}

    aishell = data_prep.get_corpus("aishell")
    assert aishell.normalize_text("你好，世界。 ＡＢＣ\u200d") == "你好世界 ABC"
    assert aishell.normalize_text("而且 这 是") == "而且 这 是"


def test_bad_aishell_items_are_skipped_and_listed(aishell, tmp_path):
    recipe, _ = aishell
    root = tmp_path / "aishell"
    shutil.copytree(recipe / "download" / "aishell" / "data_aishell", root / "data_aishell")
    wavs = sorted((root / "data_aishell" / "wav" / "dev").rglob("*.wav"))
    _truncate(wavs[0])
    transcript = root / data_prep.AISHELL_TRANSCRIPT
    lines = transcript.read_text(encoding="utf-8").splitlines()
    transcript.write_text(
        "\n".join(line.split()[0] if line.startswith(wavs[1].stem) else line for line in lines) + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "manifests"
    data_prep.prepare_manifests("aishell", root, out)
    rows = {r.split("\t")[1]: r.split("\t")[2] for r in (out / "aishell_skipped.tsv").read_text().splitlines()[1:]}
    assert set(rows) == {wavs[0].stem, wavs[1].stem}
    assert rows[wavs[0].stem].startswith("truncated audio: the header declares")
    assert rows[wavs[1].stem].startswith("empty transcript")
    sups = read_jsonl_gz(out / "aishell_supervisions_dev.jsonl.gz")
    assert len(sups) == NUM_UTTS["dev"] - 2


def test_part_without_usable_audio_is_a_clear_error(libri, tmp_path):
    recipe, _ = libri
    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(recipe / "download" / "LibriSpeech", corpus)
    for flac in (corpus / "test-clean").rglob("*.flac"):
        flac.write_bytes(b"junk")
    with pytest.raises(DataPrepError, match="No usable utterances in librispeech part.s. test-clean"):
        data_prep.prepare_manifests("librispeech", corpus, tmp_path / "manifests")


def test_fbank_needs_stage_1_and_lists_audio_lost_later(libri, tmp_path, caplog):
    recipe, _ = libri
    with pytest.raises(DataPrepError, match=r"librispeech_recordings_dev-clean.jsonl.gz does not exist; .*stage 1"):
        data_prep.compute_fbank("librispeech", tmp_path / "empty", tmp_path / "fbank", parts=["dev-clean"])

    # Audio removed after stage 1: Lhotse would drop the cut silently; we name it.
    corpus = tmp_path / "LibriSpeech"
    shutil.copytree(recipe / "download" / "LibriSpeech", corpus)
    manifests = tmp_path / "manifests"
    data_prep.prepare_manifests("librispeech", corpus, manifests)
    gone = sorted((corpus / "dev-clean").rglob("*.flac"))[0]
    gone.unlink()
    with caplog.at_level(logging.WARNING):
        counts = data_prep.compute_fbank("librispeech", manifests, tmp_path / "fbank", parts=["dev-clean"])
    assert counts == {"dev-clean": NUM_UTTS["dev"] - 1}
    assert gone.stem in caplog.text
    assert gone.stem in (tmp_path / "fbank" / "librispeech_fbank_skipped_dev-clean.tsv").read_text()


def test_vocab_too_large_is_a_clear_error(libri, tmp_path):
    recipe, _ = libri
    with pytest.raises(DataPrepError, match="pass a smaller --vocab-sizes"):
        data_prep.prepare_bpe_lang("librispeech", recipe / "data" / "manifests", tmp_path / "lang", 5000)


def test_check_audio_reasons(tmp_path):
    sr = 16000
    audio = (np.sin(np.arange(sr) / 10) * 0.3).astype("float32")
    good = tmp_path / "good.wav"
    sf.write(good, audio, sr, subtype="PCM_16")
    assert data_prep.check_audio(good) is None
    flac = tmp_path / "good.flac"
    sf.write(flac, audio, sr, subtype="PCM_16")
    assert data_prep.check_audio(flac) is None
    _truncate(flac)
    assert "truncated" in data_prep.check_audio(flac)
    empty = tmp_path / "empty.wav"
    sf.write(empty, audio[:0], sr, subtype="PCM_16")
    assert data_prep.check_audio(empty).startswith("empty audio")
