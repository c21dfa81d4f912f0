"""The demo driver (shared/demo.sh) end to end, at a scale CI can afford.

Same script, same stages as `make demo`: synthesis, prepare.sh, train.py, decode.py with three
methods, the results table and the CIF plots; only the sizes are turned down.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from icefall_cif.onnx_export import model_file_option

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
@pytest.mark.parametrize(
    "corpus, test_sets, decoder_type",
    [("librispeech", ("test-clean", "dev-clean"), "cif_ce_nar"), ("aishell", ("test", "dev"), "cif_ce_ar")],
)
def test_demo_runs_end_to_end_and_prints_the_table(tmp_path, corpus, test_sets, decoder_type):
    recipe = tmp_path / "ASR"
    recipe.mkdir()
    src = REPO / "egs" / corpus / "ASR"
    shutil.copy(src / "prepare.sh", recipe)
    shutil.copy(src / "run_demo.sh", recipe)
    shutil.copytree(src / "local", recipe / "local", symlinks=False)
    (recipe / "shared").symlink_to(REPO / "shared")
    (recipe / "zipformer_cif").symlink_to(src / "zipformer_cif")
    exp_dir = tmp_path / "exp"

    env = dict(
        os.environ,
        # The copy is outside the repository, so the demo finds the interpreter on PATH.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        SYNTH_HOURS="0.02",
        SYNTH_DEV_HOURS="0.005",
        SYNTH_TEST_HOURS="0.005",
        SYNTH_VOCAB="500",
        BPE_VOCAB="40",
        NUM_EPOCHS="2",
        AVG="1",
        MAX_DURATION="15",
        AVERAGE_PERIOD="1",
        NUM_PLOTS="2",
        # Two spinning OpenMP threads are only a gain when nothing else wants the cores.
        NUM_THREADS="1",
        EXP_DIR=str(exp_dir),
    )
    proc = subprocess.run(
        ["bash", str(recipe / "run_demo.sh")], cwd=recipe, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout

    # The default decoder is a CE decoder with the CTC prior (NAR for LibriSpeech, AR for AISHELL):
    # its beam search is beam_search, its joint CIF + CTC method cif_rescoring (the CTC n-best, each
    # hypothesis on its own cut).
    methods = ("greedy_search", "beam_search", "cif_rescoring", "ctc_greedy_search")
    rows = re.findall(rf"^({'|'.join(methods)})\s+(\S+)\s+([0-9.]+)$", out, flags=re.M)
    assert {(m, s) for m, s, _ in rows} == {(m, s) for m in methods for s in test_sets}
    for method, test_set, rate in rows:
        summary = list((exp_dir / method).glob(f"wer-summary-{test_set}-epoch-2-avg-1*.txt"))
        assert len(summary) == 1, (method, test_set)
        # The table shows the result file's number, to two decimals.
        written = float(summary[0].read_text().splitlines()[1].split("\t")[1])
        assert f"{written:.2f}" == rate
    for stage in ("data: synthesize + prepare.sh", "train", "decode: greedy_search", "export-onnx",
                  "onnx decode of one file"):
        assert re.search(rf"^\s+{re.escape(stage)}\s+\d+ s$", out, flags=re.M), stage
    plots = list((exp_dir / "greedy_search" / f"cif-plots-{test_sets[0]}").glob("*.png"))
    assert len(plots) == 2
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert "Epoch 2, validation" in (proc.stdout + proc.stderr)
    # The exported model leaves the repository: ONNX files (int8 too) and the command for them.
    assert (exp_dir / "pretrained.pt").is_file()
    # sherpa-onnx runs the NAR decoder in one graph; the AR decoder's encoder and decoder step
    # run under onnxruntime with our search.
    roles, runtime = (("model",), "sherpa-onnx") if decoder_type == "cif_ce_nar" else (("encoder", "decoder"), "onnxruntime")
    for role in roles:
        assert (exp_dir / f"{role}-epoch-2-avg-1.onnx").is_file() and (exp_dir / f"{role}-epoch-2-avg-1.int8.onnx").is_file()
    options = " ".join(rf"{model_file_option(role)} \S+{role}-epoch-2-avg-1\.onnx" for role in roles)
    assert re.search(rf"onnx_pretrained\.py --tokens \S+ --runtime {runtime} {options} FILE\.\.\.$", out, flags=re.M)
    import torch

    saved = torch.load(exp_dir / "pretrained.pt", map_location="cpu", weights_only=False)
    assert saved["model_config"]["decoder_type"] == decoder_type
    assert saved["model_config"]["ce_ctc_prior_scale"] == 1.0 and saved["model_config"]["cif_segmentation"] == "ctc"


def test_demo_refuses_data_it_did_not_make(tmp_path):
    recipe = tmp_path / "ASR"
    (recipe / "data").mkdir(parents=True)
    (recipe / "data" / ".corpus.done").touch()
    (recipe / "shared").symlink_to(REPO / "shared")
    shutil.copy(REPO / "egs" / "librispeech" / "ASR" / "run_demo.sh", recipe)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(recipe / "run_demo.sh")], cwd=recipe, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "was prepared from a corpus the demo did not make" in proc.stderr
    assert (recipe / "data" / ".corpus.done").exists()
