"""train.py end to end (icefall_cif/training/ behind both recipes' zipformer_cif/train.py).

The runs are tiny (see recipe_fixtures.py): a 12-utterance synthetic corpus, a ~0.4 M-parameter
model, one thread. What is checked:

- a single-process run writes epoch-N.pt, checkpoint-<batch>.pt (only the newest --keep-last-k),
  log-train-* and its JSON-lines records (per-component losses, lr, speed and ETA), tensorboard
  scalars, and validation loss + greedy WER each epoch; checkpoints carry the model config and
  the token table;
- `kill -9` in the middle of an epoch, then `--start-batch -1`: the final checkpoint equals the
  uninterrupted run's bit for bit (weights, averaged weights, optimizer state);
- `--world-size 2` (gloo): both ranks finish, see disjoint cuts, agree on the validation numbers,
  and rank 0's checkpoint loads into a model in one process;
- inf/NaN losses: such batches are skipped, counted and their cut ids logged; K in a row stop
  training with BadBatchError and a dump of the batch;
- clear errors for impossible options, a missing manifest, a checkpoint of another vocabulary,
  token table or model config; `--init-encoder` copies exactly the encoder.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from icefall_cif.checkpoint import find_checkpoints
from icefall_cif.config import config_from_options, config_to_dict
from icefall_cif.tokenizer import Tokenizer, check_token_table, token_table, token_table_digest
from icefall_cif.training import loop as training_loop
from icefall_cif.training.options import get_parser
from icefall_cif.training.records import read_records
from icefall_cif.training.resume import load_init_encoder

# Registered before the import so that pytest also rewrites its asserts when it loads it as a plugin.
pytest.register_assert_rewrite("recipe_fixtures")
from recipe_fixtures import (  # noqa: E402
    LIBRI,
    TINY_ENCODER,
    TrainedModel,
    copy_exp_dir,
    free_port,
    run_script,
    tiny_train_options,
    train_in_process,
)

# The shared session fixtures (tiny_corpus, tiny_model, ddp_model, ngram_lm).
pytest_plugins = ["recipe_fixtures"]

REPO = Path(__file__).resolve().parents[1]


def load(path: Path) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def model_config(options: List[str], lang_dir: Path):
    """The ModelConfig train.py builds its model from, for `options`."""
    from recipe import RECIPE

    params = vars(get_parser(RECIPE).parse_args(options))
    tokenizer = Tokenizer.from_lang_dir(lang_dir)
    params.update(vocab_size=tokenizer.vocab_size, blank_id=tokenizer.blank_id)
    return config_from_options(RECIPE.model_config, params)


def records(exp_dir: Path, event: str, name: str = "records-train.jsonl") -> List[Dict[str, Any]]:
    return read_records(exp_dir / "log" / name, event)


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers are exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, where


# ---------------------------------------------------------------------------------- single process


def test_single_process_run_writes_icefall_outputs(tiny_model: TrainedModel):
    exp = tiny_model.exp_dir
    log = tiny_model.train_log
    assert (exp / "epoch-1.pt").is_file() and (exp / "epoch-2.pt").is_file()
    assert "Done!" in log

    # Every --save-every-n batches a checkpoint was written; only the newest --keep-last-k remain.
    saved = [r["global"] for r in records(exp, "checkpoint") if "/checkpoint-" in r["path"]]
    last = load(exp / "epoch-2.pt")["batch_idx_train"]
    assert saved == list(range(2, last + 1, 2)) and len(saved) > 2
    assert sorted(int(p.stem.split("-")[1]) for p in exp.glob("checkpoint-*.pt")) == saved[-2:]

    # Progress records: each loss component, lr, speed, ETA; the text log has the same lines.
    progress = records(exp, "batch")
    assert [r["global"] for r in progress] == list(range(1, last + 1))
    for r in progress:
        assert {"ctc_loss", "quantity_loss", "ce_loss", "loss"} <= r["loss"].keys()
        assert all(isinstance(v, float) for v in r["loss"].values())
        assert r["lr"] > 0 and r["frames_per_s"] > 0 and r["real_time"] > 0 and r["eta_min"] >= 0
        assert f"Epoch {r['epoch']}, batch {r['batch']}, global {r['global']}: loss[" in log

    # Validation loss and greedy WER, once per epoch.
    valid = records(exp, "valid")
    assert [r["epoch"] for r in valid] == [1, 2]
    assert all(r["metric"] == "WER" and 0 <= r["error_rate"] and r["loss"]["loss"] > 0 for r in valid)
    # How far the inference-time fire count is from the reference token count, per utterance.
    for r in valid:
        assert 0 <= r["loss"]["fires_exact"] <= 1 and r["loss"]["fire_abs_error"] >= abs(r["loss"]["fire_error"])

    ckpt = load(exp / "epoch-2.pt")
    assert ckpt["cur_epoch"] == 2 and ckpt["vocab_size"] == 64 and ckpt["batches_in_epoch"] == 0
    assert {"model", "model_avg", "optimizer", "scheduler", "sampler", "rng_state"} <= ckpt.keys()
    assert ckpt["model_avg"]["ctc_output.1.weight"].dtype == torch.float64
    # The architecture and the token set travel in the checkpoint.
    assert ckpt["model_config"] == config_to_dict(model_config(tiny_model.train_options, tiny_model.corpus.lang_dir))
    assert ckpt["token_table"] == token_table(Tokenizer.from_lang_dir(tiny_model.corpus.lang_dir))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/learning_rate", "train/current_ce_loss", "valid/loss", "valid/WER"} <= tags
    assert [e.step for e in events.Scalars("train/learning_rate")] == list(range(1, last + 1))


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted_run(tiny_model: TrainedModel, tmp_path):
    """SIGKILL once a checkpoint-<batch>.pt inside epoch 2 exists; --start-batch -1 must end where
    the uninterrupted tiny_model run ended, exactly (fixed seed, --num-workers 0)."""
    from recipe import RECIPE

    # By epoch 2 some Whiten modules have switched to their low checking probability, state that
    # lives outside state_dict(): resuming there also tests that it is restored.
    epoch_1_batches = len([r for r in records(tiny_model.exp_dir, "batch") if r["epoch"] == 1])
    saved = [r["global"] for r in records(tiny_model.exp_dir, "checkpoint") if "/checkpoint-" in r["path"]]
    target = next(n for n in saved if n > epoch_1_batches + 1)

    exp = tmp_path / "exp"
    options = tiny_train_options(tiny_model.corpus, exp)
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(LIBRI / "zipformer_cif" / "train.py"), *options],
            cwd=tiny_model.corpus.root, stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 240
            while not (exp / f"checkpoint-{target}.pt").exists():
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.time() < deadline, f"no checkpoint-{target}.pt after 240 s"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (exp / "epoch-2.pt").exists(), "the run finished before it was killed; nothing was tested"
    newest = load(Path(find_checkpoints(exp)[0]))
    epoch_length = len([r for r in records(tiny_model.exp_dir, "batch") if r["epoch"] == newest["cur_epoch"]])
    assert 0 < newest["batches_in_epoch"] < epoch_length  # taken inside an epoch
    fresh = RECIPE.get_model(model_config(options, tiny_model.corpus.lang_dir)).adaptive_state()
    assert newest["adaptive_module_state"] != fresh, "no adaptive module state to restore at this point"

    train_in_process(options + ["--start-batch", "-1"], tiny_model.corpus)

    reference = load(tiny_model.exp_dir / "epoch-2.pt")
    resumed = load(exp / "epoch-2.pt")
    for key in ("model", "model_avg", "optimizer", "scheduler", "adaptive_module_state"):
        assert_same_tensors(reference[key], resumed[key], key)
    assert resumed["batch_idx_train"] == reference["batch_idx_train"]
    log = "".join(p.read_text() for p in (exp / "log").glob("log-train-*"))
    assert f"Continuing epoch {newest['cur_epoch']} after its first {newest['batches_in_epoch']} batches" in log


def test_start_epoch_resume_equals_uninterrupted_run(tiny_model: TrainedModel, tmp_path):
    """icefall's usual resume: --start-epoch 2 from epoch-1.pt; epoch 2 is seeded per epoch, so the
    result must again equal the uninterrupted run exactly."""
    exp = copy_exp_dir(tiny_model, tmp_path / "exp", ["epoch-1.pt"])
    train_in_process(tiny_train_options(tiny_model.corpus, exp) + ["--start-epoch", "2"], tiny_model.corpus)
    reference = load(tiny_model.exp_dir / "epoch-2.pt")
    resumed = load(exp / "epoch-2.pt")
    for key in ("model", "model_avg", "optimizer", "scheduler", "adaptive_module_state"):
        assert_same_tensors(reference[key], resumed[key], key)


# ---------------------------------------------------------------------------------- preemption
def start_then_signal(options: List[str], model: TrainedModel, records_file: Path, epoch: int, log: Path) -> int:
    """Start train.py in its own session, send SIGTERM to the whole session (as a scheduler does)
    once `records_file` shows a batch of `epoch`; return the exit status."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(LIBRI / "zipformer_cif" / "train.py"), *options],
            cwd=model.corpus.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.time() + 300
            while not (records_file.exists() and any(r["epoch"] == epoch for r in read_records(records_file, "batch"))):
                assert proc.poll() is None, log.read_text()
                assert time.time() < deadline, f"no batch of epoch {epoch} after 300 s"
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def assert_same_training_state(reference: Dict[str, Any], resumed: Dict[str, Any]) -> None:
    for key in ("model", "model_avg", "optimizer", "scheduler", "adaptive_module_state"):
        assert_same_tensors(reference[key], resumed[key], key)
    assert resumed["batch_idx_train"] == reference["batch_idx_train"]


def test_sigterm_stops_after_a_batch_with_a_checkpoint_and_resumes_exactly(tiny_model: TrainedModel, tmp_path):
    exp = tmp_path / "exp"
    options = tiny_train_options(tiny_model.corpus, exp)
    status = start_then_signal(options, tiny_model, exp / "log" / "records-train.jsonl", 2, tmp_path / "run.log")
    assert status == 0, (tmp_path / "run.log").read_text()
    (stop,) = records(exp, "preempted")
    assert stop["epoch"] == 2 and not (exp / "epoch-2.pt").exists()
    saved = load(Path(stop["checkpoint"]))
    assert saved["batch_idx_train"] == stop["global"] and saved["batches_in_epoch"] == stop["batch"]
    assert "Stopping on SIGTERM after batch" in (tmp_path / "run.log").read_text()

    train_in_process(options + ["--start-batch", "-1"], tiny_model.corpus)
    assert_same_training_state(load(tiny_model.exp_dir / "epoch-2.pt"), load(exp / "epoch-2.pt"))


def test_sigterm_under_ddp_stops_every_rank_and_resumes_exactly(ddp_model: TrainedModel, tmp_path):
    exp = tmp_path / "exp"
    options = list(ddp_model.train_options)
    options[options.index("--exp-dir") + 1] = str(exp)
    options[options.index("--master-port") + 1] = str(free_port())
    status = start_then_signal(options, ddp_model, exp / "log" / "records-train-rank0.jsonl", 1, tmp_path / "run.log")
    assert status == 0, (tmp_path / "run.log").read_text()
    stops = [records(exp, "preempted", f"records-train-rank{r}.jsonl") for r in (0, 1)]
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0][0]["global"] == stops[1][0]["global"]
    assert not (exp / "epoch-1.pt").exists()
    saved = load(Path(stops[0][0]["checkpoint"]))
    assert len(saved["rank_states"]) == 2

    options[options.index("--master-port") + 1] = str(free_port())
    run_script("train.py", options + ["--start-batch", "-1"], cwd=ddp_model.corpus.root)
    assert_same_training_state(load(ddp_model.exp_dir / "epoch-1.pt"), load(exp / "epoch-1.pt"))


# ---------------------------------------------------------------------------------- DDP
FAULTY_TRAIN_PY = """
import os, sys
sys.path.insert(0, {recipe_dir!r})
from icefall_cif.training import loop

real = loop.compute_loss


def compute_loss(params, model, *args):
    # Module level, so the spawned ranks (which import this file as __mp_main__) are patched too.
    if model.training and os.environ.get("RANK") == "1" and params.batches_in_epoch == 2:
        raise RuntimeError("simulated fault on rank 1")
    return real(params, model, *args)


loop.compute_loss = compute_loss
if __name__ == "__main__":
    from recipe import RECIPE

    loop.main(RECIPE)
"""


def test_a_failing_rank_stops_both_ranks_without_a_hang(ddp_model: TrainedModel, tmp_path):
    script = tmp_path / "faulty_train.py"
    script.write_text(FAULTY_TRAIN_PY.format(recipe_dir=str(LIBRI / "zipformer_cif")))
    exp = tmp_path / "exp"
    options = list(ddp_model.train_options)
    options[options.index("--exp-dir") + 1] = str(exp)
    options[options.index("--master-port") + 1] = str(free_port())
    start = time.time()
    proc = subprocess.run([sys.executable, str(script), *options], cwd=ddp_model.corpus.root,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert time.time() - start < 200
    assert "simulated fault on rank 1" in proc.stderr
    logs = {p.name[-1]: p.read_text() for p in (exp / "log").glob("log-train-*")}
    assert "Rank 1 of 2 stops: RuntimeError: simulated fault on rank 1" in logs["1"]
    assert "simulated fault" not in logs["0"]  # the error is logged once, by the rank that had it
    assert not (exp / "epoch-1.pt").exists()




def test_world_size_2_ranks_see_different_cuts_and_checkpoint_loads(ddp_model: TrainedModel):
    logs = sorted((ddp_model.exp_dir / "log").glob("log-train-*"))
    assert [p.name[-2:] for p in logs] == ["-0", "-1"]
    assert all("Done!" in path.read_text() for path in logs)
    cuts, validation = [], []
    for rank in (0, 1):
        name = f"records-train-rank{rank}.jsonl"
        batches = [r["cuts"] for r in records(ddp_model.exp_dir, "cuts", name) if r["epoch"] == 1]
        assert batches and all(batches)
        cuts.append([c for batch in batches for c in batch])
        validation.append(records(ddp_model.exp_dir, "valid", name)[0]["totals"])
    assert len(cuts[0]) == len(set(cuts[0])) and not set(cuts[0]) & set(cuts[1])
    # Validation sums are all-reduced: both ranks report the whole dev set.
    assert validation[0] == validation[1]
    assert validation[0]["utterances"] >= 3

    from recipe import RECIPE

    ckpt = load(ddp_model.exp_dir / "epoch-1.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    model = RECIPE.get_model(model_config(ddp_model.train_options, ddp_model.corpus.lang_dir))
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    with torch.no_grad():
        encoder_out, lens = model.forward_encoder(torch.randn(2, 300, 80), torch.tensor([300, 250]))
    assert torch.isfinite(encoder_out).all()
    assert lens.tolist() == [((t - 7) // 2 + 1) // 2 for t in (300, 250)]


# ---------------------------------------------------------------------------------- bad batches


def poison_batches(monkeypatch, which) -> List[List[str]]:
    """Make compute_loss return NaN for training batches `which(params)`; returns their cut ids."""
    real = training_loop.compute_loss
    poisoned = []

    def compute_loss(params, model, tokenizer, batch, device, loss_config, kd_teacher=None):
        loss, info = real(params, model, tokenizer, batch, device, loss_config, kd_teacher)
        if model.training and which(params):
            poisoned.append(training_loop.batch_cut_ids(batch))
            loss = loss + float("nan")
        return loss, info

    monkeypatch.setattr(training_loop, "compute_loss", compute_loss)
    return poisoned


def test_nan_loss_batches_are_skipped_counted_and_logged(tiny_model: TrainedModel, tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    options = tiny_train_options(tiny_model.corpus, exp) + [
        "--num-epochs", "1", "--valid-decode", "0", "--init-encoder", str(tiny_model.exp_dir / "epoch-1.pt"),
    ]
    poisoned = poison_batches(monkeypatch, lambda p: p.batches_in_epoch in (2, 3))
    train_in_process(options, tiny_model.corpus)

    log = "".join(p.read_text() for p in (exp / "log").glob("log-train-*"))
    assert "Initialised the encoder from" in log
    logged = [(r["batch"], r["skipped"], r["cuts"]) for r in records(exp, "skipped")]
    assert logged == [(2, 1, poisoned[0]), (3, 2, poisoned[1])] and all(r["loss"] == "nan" for r in records(exp, "skipped"))
    assert "batch 2: loss is nan" in log and "batch 3: loss is nan" in log
    assert "Epoch 1: skipped 2 batches with an inf/NaN loss" in log
    ckpt = load(exp / "epoch-1.pt")
    num_batches = len([r for r in records(tiny_model.exp_dir, "batch") if r["epoch"] == 1])
    assert ckpt["batch_idx_train"] == num_batches - 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_consecutive_bad_batches_stop_with_a_dumped_batch(tiny_model: TrainedModel, tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    options = tiny_train_options(tiny_model.corpus, exp) + ["--max-bad-batches", "2"]
    poisoned = poison_batches(monkeypatch, lambda p: True)
    with pytest.raises(training_loop.BadBatchError, match="2 consecutive batches had an inf/NaN loss") as err:
        train_in_process(options, tiny_model.corpus)
    assert str(exp / "bad-batch-0.pt") in str(err.value) and str(poisoned[-1]) in str(err.value)
    dumped = load(exp / "bad-batch-0.pt")
    assert [c["id"] for c in dumped["supervisions"]["cut"]] == poisoned[-1] == poisoned[1]
    assert dumped["inputs"].shape[0] == len(poisoned[-1])
    assert "model" in load(exp / "bad-model-0.pt")


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--use-fp16", "1", "--use-bf16", "1"], "--use-fp16 and --use-bf16 are exclusive"),
        (["--keep-last-k", "0"], "--keep-last-k must be >= 1"),
        (["--start-epoch", "4", "--num-epochs", "3"], r"--num-epochs \(3\) is smaller than --start-epoch \(4\)"),
        (["--start-batch", "-2"], "--start-batch must be -1"),
    ],
)
def test_impossible_options_are_rejected(tiny_corpus, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_in_process(tiny_train_options(tiny_corpus, tmp_path / "exp") + extra, tiny_corpus)
    assert not (tmp_path / "exp").exists()  # rejected before anything was started


def test_exp_dir_that_cannot_be_written_is_a_clear_error(tiny_corpus, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    exp = tmp_path / "a-file" / "exp"
    with pytest.raises(ValueError, match=r"--exp-dir .*a-file/exp cannot be written \(NotADirectoryError.*"
                                         r"choose another --exp-dir"):
        train_in_process(tiny_train_options(tiny_corpus, exp), tiny_corpus)


def test_missing_manifest_is_a_clear_error(tiny_corpus, tmp_path):
    empty = tmp_path / "fbank"
    empty.mkdir()
    options = tiny_train_options(tiny_corpus, tmp_path / "exp") + ["--manifest-dir", str(empty), "--corpus",
                                                                  "librispeech"]
    with pytest.raises(FileNotFoundError, match=r"librispeech_cuts_train-clean-100\.jsonl\.gz not found.*prepare\.sh"):
        train_in_process(options, tiny_corpus)


def test_resume_with_other_vocabulary_or_model_config_is_a_clear_error(tiny_model: TrainedModel, tmp_path):
    exp = copy_exp_dir(tiny_model, tmp_path / "exp", ["epoch-1.pt"])
    options = tiny_train_options(tiny_model.corpus, exp) + ["--start-epoch", "2"]
    other = str(tiny_model.corpus.other_lang_dir)
    with pytest.raises(ValueError, match=r"trained with 64 tokens but .*lang_bpe_40 has 40: point --lang-dir"):
        train_in_process(options + ["--lang-dir", other], tiny_model.corpus)
    with pytest.raises(ValueError, match=r"does not fit the model built from these options: pass the model options"):
        train_in_process(options + ["--encoder-dim", "64,64"], tiny_model.corpus)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-99\.pt does not exist \(available: \['epoch-1\.pt'\]\)"):
        train_in_process(options + ["--start-batch", "99"], tiny_model.corpus)
    with pytest.raises(FileNotFoundError, match=r"--start-batch -1: no checkpoint-\*\.pt in .*--start-batch 0"):
        train_in_process(options + ["--start-batch", "-1"], tiny_model.corpus)


def test_token_table_of_the_same_size_but_other_tokens_is_detected(tmp_path):
    tables = {"a": "abcd", "b": "abdc"}
    tokenizers = {}
    for name, chars in tables.items():
        lang = tmp_path / name
        lang.mkdir()
        symbols = ["<blk>", "<sos/eos>", "<unk>", *chars]
        (lang / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)))
        tokenizers[name] = Tokenizer.from_lang_dir(lang)
    # Old checkpoints carry a digest of the table, new ones the table itself.
    for saved in ({"vocab_size": 7, "token_table_digest": token_table_digest(tokenizers["a"])},
                  {"vocab_size": 7, "token_table": token_table(tokenizers["a"])}):
        check_token_table(saved, tokenizers["a"], "ckpt", "fix it")
        with pytest.raises(ValueError, match="ckpt was trained with a different token table .* fix it"):
            check_token_table(saved, tokenizers["b"], "ckpt", "fix it")


def test_init_encoder_copies_exactly_the_encoder(tiny_model: TrainedModel):
    from recipe import RECIPE

    torch.manual_seed(123)
    model = RECIPE.get_model(model_config(tiny_model.train_options, tiny_model.corpus.lang_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = load(tiny_model.exp_dir / "epoch-1.pt")["model"]
    copied = load_init_encoder(model, tiny_model.exp_dir / "epoch-1.pt")
    after = model.state_dict()
    encoder_keys = [k for k in after if k.startswith(("encoder_embed.", "encoder."))]
    assert copied == len(encoder_keys) > 0
    for k, v in after.items():
        expected = source[k] if k in encoder_keys else before[k]
        assert torch.equal(v, expected), k
    assert any(not torch.equal(before[k], source[k]) for k in encoder_keys)  # something did change

    wider = TINY_ENCODER + ["--encoder-dim", "64,64", "--decoder-type", "cif_ce_ar"]
    other = RECIPE.get_model(model_config(wider + ["--lang-dir", str(tiny_model.corpus.lang_dir)],
                                          tiny_model.corpus.lang_dir))
    with pytest.raises(ValueError, match=r"shape mismatches.*Pass the --encoder-config and encoder options"):
        load_init_encoder(other, tiny_model.exp_dir / "epoch-1.pt")


def test_aishell_train_script_uses_the_shared_loop():
    script = REPO / "egs" / "aishell" / "ASR" / "zipformer_cif" / "train.py"
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--world-size", "--start-batch", "--use-fp16", "--init-encoder", "--decoder-type", "--max-duration"):
        assert option in proc.stdout
    assert "AISHELL-1" in proc.stdout
