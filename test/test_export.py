"""export.py and pretrained.py end to end, on the tiny model of recipe_fixtures.py.

- export.py writes a pretrained.pt of plain data (weights, model config, token table) whose
  weights are the averaged ones decode.py uses;
- pretrained.py gives the transcripts decode.py gives for the same audio and method (decode.py
  with on-the-fly features, the same fbank pretrained.py computes), with token times from the CIF
  fires, any sample rate and channel count, and names the files it cannot read while decoding
  the others.
"""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch

from icefall_cif.decode import loop
from icefall_cif.utils import AttributeDict

pytest.register_assert_rewrite("recipe_fixtures")
from recipe_fixtures import LIBRI, TrainedModel, copy_exp_dir, decode_in_process, run_script  # noqa: E402

pytest_plugins = ["recipe_fixtures"]

SELECTION = ["--epoch", "2", "--avg", "1", "--use-averaged-model", "1"]


@pytest.fixture(scope="module")
def exported(tiny_model: TrainedModel, tmp_path_factory) -> Path:
    exp = copy_exp_dir(tiny_model, tmp_path_factory.mktemp("export") / "exp", ["epoch-1.pt", "epoch-2.pt"])
    run_script("export.py", ["--exp-dir", str(exp), *SELECTION, "--tokens", str(tiny_model.corpus.lang_dir / "tokens.txt")],
               cwd=tiny_model.corpus.root)
    return exp


def test_export_writes_the_averaged_weights_as_plain_data(tiny_model: TrainedModel, exported: Path):
    saved = torch.load(exported / "pretrained.pt", weights_only=True)
    assert set(saved) == {"model", "model_config", "token_table"}
    assert saved["model_config"] == torch.load(exported / "epoch-2.pt", weights_only=True)["model_config"]
    assert len(saved["token_table"]) == 64 and saved["token_table"][:3] == ["<blk>", "<sos/eos>", "<unk>"]
    params = AttributeDict(exp_dir=exported, epoch=2, iter=0, avg=1, use_averaged_model=True)
    averaged, _, _ = loop.select_model_weights(params)
    assert saved["model"].keys() == averaged.keys()
    assert all(torch.equal(saved["model"][k], averaged[k].to(saved["model"][k].dtype)) for k in averaged)


def tiny_test_audio(model: TrainedModel) -> Dict[str, Path]:
    root = model.corpus.root / "download" / "LibriSpeech" / "test-clean"
    return {p.stem: p for p in sorted(root.rglob("*.flac"))}


def run_pretrained(model: TrainedModel, exported: Path, args: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "pretrained.py"), "--checkpoint", str(exported / "pretrained.pt"),
         *args], cwd=model.corpus.root, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("method", ["greedy_search", "beam_search"])
def test_pretrained_transcribes_like_decode(tiny_model: TrainedModel, exported: Path, tmp_path, method):
    audio = tiny_test_audio(tiny_model)
    out = tmp_path / "hyps.tsv"
    proc = run_pretrained(tiny_model, exported, ["--method", method, "--output-file", str(out),
                                                 *map(str, audio.values())])
    assert proc.returncode == 0, proc.stderr
    got = {Path(line.split("\t")[0]).stem: line.split("\t")[1] for line in out.read_text().splitlines()}

    corpus = tiny_model.corpus
    decode_in_process(["--exp-dir", str(exported), *SELECTION, "--lang-dir", str(corpus.lang_dir),
                       "--manifest-dir", str(corpus.manifest_dir), "--max-duration", "10", "--num-workers", "0",
                       "--on-the-fly-feats", "1", "--decoding-method", method], corpus)
    key = method if method == "greedy_search" else "beam_size_4"
    recogs = (exported / method / f"recogs-test-clean-{key}-epoch-2-avg-1-use-averaged-model.txt").read_text()
    expected = {}
    for line in recogs.splitlines():
        cut_id, field = line.split(":\t")
        if field.startswith("hyp="):
            expected[cut_id.rsplit("-", 1)[0]] = " ".join(ast.literal_eval(field[4:]))
    assert got == expected


def test_pretrained_timestamps_resampling_and_bad_files(tiny_model: TrainedModel, exported: Path, tmp_path):
    first = next(iter(tiny_test_audio(tiny_model).values()))
    samples, rate = sf.read(first, dtype="float32")
    stereo_8k = tmp_path / "stereo-8k.wav"
    sf.write(stereo_8k, np.stack([samples[::2], samples[::2]], axis=1), rate // 2)
    broken, empty = tmp_path / "broken.flac", tmp_path / "empty.wav"
    broken.write_bytes(b"not audio at all" * 10)
    sf.write(empty, np.zeros(0, dtype="float32"), 16000)

    proc = run_pretrained(tiny_model, exported, ["--timestamps", "1", str(first), str(broken), str(stereo_8k),
                                                 str(empty)])
    assert proc.returncode == 1
    assert f"error: {broken}: cannot read it as audio" in proc.stderr
    assert f"error: {empty}: the file holds no audio (0 samples)" in proc.stderr
    blocks = [b.splitlines() for b in proc.stdout.strip().split("\n\n")]
    assert [b[0] for b in blocks] == [f"{first}:", f"{stereo_8k}:"]
    duration = len(samples) / rate
    for block in blocks:
        times = [float(pair.rsplit("@", 1)[1]) for pair in block[2].split()] if len(block) > 2 else []
        assert times == sorted(times) and all(0 <= t < duration for t in times)

    # Too long for the limit: named with how to split it, the others still decoded.
    short = tmp_path / "short.wav"
    sf.write(short, samples[: len(samples) // 4], rate)
    proc = run_pretrained(tiny_model, exported, ["--max-utterance-duration", f"{duration / 2:.3f}", str(first),
                                                 str(short)])
    assert proc.returncode == 1
    assert f"error: {first}: {duration:.1f} s of audio, more than --max-utterance-duration" in proc.stderr
    assert "sox IN OUT trim" in proc.stderr
    assert [b.splitlines()[0] for b in proc.stdout.strip().split("\n\n")] == [f"{short}:"]

    proc = run_pretrained(tiny_model, exported, ["--timestamps", "1", "--method", "beam_search", str(first)])
    assert proc.returncode == 1 and "--timestamps 1 needs --method greedy_search" in proc.stderr
    proc = run_pretrained(tiny_model, exported, ["--method", "modified_beam_search", str(first)])
    assert proc.returncode == 1 and "does not apply to this model (cif_ce_ar)" in proc.stderr


class _WritesAMarker:
    """Unpickling this calls `open(marker, "w")`: a stand-in for a downloaded file that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pretrained_refuses_untrusted_checkpoints_and_other_token_tables(
    tiny_model: TrainedModel, exported: Path, tmp_path
):
    audio = str(next(iter(tiny_test_audio(tiny_model).values())))
    marker = tmp_path / "pwned"
    evil = tmp_path / "pretrained.pt"
    saved = torch.load(exported / "pretrained.pt", weights_only=True)
    torch.save({**saved, "payload": _WritesAMarker(marker)}, evil)
    proc = subprocess.run([sys.executable, str(LIBRI / "zipformer_cif" / "pretrained.py"), "--checkpoint", str(evil),
                           audio], cwd=tiny_model.corpus.root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and f"{evil}: refused to load" in proc.stderr
    assert not marker.exists()

    other_tokens = tiny_model.corpus.other_lang_dir / "tokens.txt"
    proc = run_pretrained(tiny_model, exported, ["--tokens", str(other_tokens), audio])
    assert proc.returncode == 1 and f"--tokens {other_tokens} is not the token table" in proc.stderr
