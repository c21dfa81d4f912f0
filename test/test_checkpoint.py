"""Tests for icefall_cif/checkpoint.py: round trips, resume, atomic writes, averaging."""
import copy
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from icefall_cif.checkpoint import (
    UnsafeCheckpointError,
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    convert_to_plain,
    find_checkpoints,
    load_checkpoint,
    load_safely,
    remove_checkpoints,
    save_checkpoint,
    set_rng_state,
    update_averaged_model,
)
from icefall_cif.utils import AttributeDict


class TinyModel(nn.Module):
    """Linear layers with tied input/output embeddings, BatchNorm (an int buffer) and dropout."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N,) token ids -> (N, 7) logits."""
        return self.out(self.dropout(self.norm(torch.tanh(self.proj(self.embed(tokens))))))


class FakeSampler:
    """Stands in for a lhotse CutSampler: only state_dict/load_state_dict matter."""

    def __init__(self):
        self.state = {"epoch": 0, "diagnostics": {"kept": 0}}

    def state_dict(self):
        return copy.deepcopy(self.state)

    def load_state_dict(self, state):
        self.state = copy.deepcopy(state)


def _train_step(model, optimizer, scheduler):
    """One step whose result depends on torch, numpy and python RNGs (data + dropout)."""
    tokens = torch.randint(0, 7, (8,))
    noise = float(np.random.rand()) + random.random()
    loss = nn.functional.cross_entropy(model(tokens), tokens) * (1.0 + noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _make_training():
    model = TinyModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _assert_state_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_state_equal(x, y)
    else:
        assert a == b


def test_round_trip_all_states(tmp_path):
    model, optimizer, scheduler = _make_training()
    for _ in range(3):
        _train_step(model, optimizer, scheduler)
    model_avg = copy.deepcopy(model).to(torch.float64)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    sampler = FakeSampler()
    sampler.state = {"epoch": 3, "diagnostics": {"kept": 17}}
    params = AttributeDict(batch_idx_train=3, cur_epoch=2, best_train_loss=0.5)
    save_checkpoint(
        tmp_path / "epoch-2.pt",
        model,
        model_avg=model_avg,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        sampler=sampler,
    )

    model2, optimizer2, scheduler2 = _make_training()
    model_avg2 = TinyModel().to(torch.float64)
    scaler2 = torch.amp.GradScaler("cpu")
    sampler2 = FakeSampler()
    saved = load_checkpoint(
        tmp_path / "epoch-2.pt",
        model2,
        model_avg=model_avg2,
        optimizer=optimizer2,
        scheduler=scheduler2,
        scaler=scaler2,
        sampler=sampler2,
    )
    _assert_state_equal(model.state_dict(), model2.state_dict())
    _assert_state_equal(model_avg.state_dict(), model_avg2.state_dict())
    assert model_avg2.proj.weight.dtype == torch.float64
    _assert_state_equal(optimizer.state_dict(), optimizer2.state_dict())
    _assert_state_equal(scheduler.state_dict(), scheduler2.state_dict())
    assert scaler2.get_scale() == 256.0
    assert sampler2.state == {"epoch": 3, "diagnostics": {"kept": 17}}
    assert {k: saved[k] for k in params} == dict(params)
    assert set(saved) == set(params) | {"rng_state"}
    # the tied weight is still tied after loading
    assert model2.out.weight.data_ptr() == model2.embed.weight.data_ptr()


def test_resume_is_bit_exact(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    model, optimizer, scheduler = _make_training()
    for _ in range(3):
        _train_step(model, optimizer, scheduler)
    save_checkpoint(tmp_path / "mid.pt", model, optimizer=optimizer, scheduler=scheduler)
    for _ in range(3):
        _train_step(model, optimizer, scheduler)

    # A new process would start from other generator states.
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    resumed, optimizer2, scheduler2 = _make_training()
    load_checkpoint(
        tmp_path / "mid.pt",
        resumed,
        optimizer=optimizer2,
        scheduler=scheduler2,
        restore_rng_state=True,
    )
    for _ in range(3):
        _train_step(resumed, optimizer2, scheduler2)
    _assert_state_equal(model.state_dict(), resumed.state_dict())


def test_ddp_prefix_is_stripped(tmp_path):
    model = TinyModel()
    # DataParallel prefixes keys with `module.` like DDP and runs without a process group.
    save_checkpoint(tmp_path / "wrapped.pt", nn.DataParallel(model))
    raw = torch.load(tmp_path / "wrapped.pt", weights_only=True)
    assert set(raw["model"]) == set(model.state_dict())

    # A checkpoint whose states were saved from a wrapped model still loads into a bare one.
    prefixed = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": prefixed, "model_avg": prefixed, "cur_epoch": 4}, tmp_path / "ddp.pt")
    bare, bare_avg = TinyModel(), TinyModel()
    saved = load_checkpoint(tmp_path / "ddp.pt", bare, model_avg=bare_avg)
    _assert_state_equal(model.state_dict(), bare.state_dict())
    _assert_state_equal(model.state_dict(), bare_avg.state_dict())
    assert saved == {"cur_epoch": 4}

    # ... and into a wrapped one.
    wrapped = nn.DataParallel(TinyModel())
    load_checkpoint(tmp_path / "ddp.pt", wrapped)
    _assert_state_equal(model.state_dict(), wrapped.module.state_dict())


def test_rank_and_params_checks(tmp_path):
    model = TinyModel()
    save_checkpoint(tmp_path / "r1.pt", model, rank=1)
    assert not (tmp_path / "r1.pt").exists()
    with pytest.raises(ValueError, match="'optimizer'"):
        save_checkpoint(tmp_path / "p.pt", model, params={"optimizer": "adam"})
    with pytest.raises(ValueError, match="no 'model' key"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt", model)


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = TinyModel()
    path = tmp_path / "epoch-1.pt"
    save_checkpoint(path, model, params={"cur_epoch": 1})
    before = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, params={"cur_epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["epoch-1.pt"]


def test_kill_during_write_never_truncates(tmp_path):
    """SIGKILL in the middle of torch.save: the old checkpoint must survive intact."""
    script = textwrap.dedent(
        """
        import io, os, signal, sys
        import torch
        from icefall_cif.checkpoint import save_checkpoint

        path = sys.argv[1]
        model = torch.nn.Linear(64, 64)
        save_checkpoint(path, model, params={"cur_epoch": 1})
        real_save = torch.save

        def dying_save(obj, f):
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save
        save_checkpoint(path, model, params={"cur_epoch": 2})
        """
    )
    path = tmp_path / "epoch-1.pt"
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    saved = load_checkpoint(path, nn.Linear(64, 64))
    assert saved["cur_epoch"] == 1
    assert find_checkpoints(tmp_path) == []  # a stray temp file is not a checkpoint


def test_find_and_remove_checkpoints(tmp_path):
    for n in (1, 20, 300, 4000):
        (tmp_path / f"checkpoint-{n}.pt").write_bytes(b"")
    for decoy in ("checkpoint-5.pt.tmp-12", ".checkpoint-7.pt.tmp-1", "checkpoint-x.pt",
                  "checkpoint-9a.pt", "epoch-3.pt"):
        (tmp_path / decoy).write_bytes(b"")

    def names(paths):
        return [os.path.basename(p) for p in paths]

    assert names(find_checkpoints(tmp_path)) == [
        "checkpoint-4000.pt", "checkpoint-300.pt", "checkpoint-20.pt", "checkpoint-1.pt"
    ]
    assert names(find_checkpoints(tmp_path, iteration=20)) == [
        "checkpoint-4000.pt", "checkpoint-300.pt", "checkpoint-20.pt"
    ]
    assert names(find_checkpoints(tmp_path, iteration=-20)) == [
        "checkpoint-20.pt", "checkpoint-1.pt"
    ]
    remove_checkpoints(tmp_path, topk=2, rank=1)
    assert len(find_checkpoints(tmp_path)) == 4
    remove_checkpoints(tmp_path, topk=2)
    assert names(find_checkpoints(tmp_path)) == ["checkpoint-4000.pt", "checkpoint-300.pt"]
    assert (tmp_path / "epoch-3.pt").exists()
    with pytest.raises(ValueError, match="topk"):
        remove_checkpoints(tmp_path, topk=0)


def test_average_checkpoints_equals_float64_mean(tmp_path):
    models = []
    for i in range(3):
        model = TinyModel()
        model.norm.num_batches_tracked.fill_(10 + i * 2 + (i == 2))  # 10, 12, 15
        save_checkpoint(tmp_path / f"epoch-{i}.pt", model)
        models.append(model)

    avg = average_checkpoints([tmp_path / f"epoch-{i}.pt" for i in range(3)])
    states = [m.state_dict() for m in models]
    for k, v in avg.items():
        if v.is_floating_point():
            expected = sum(s[k].to(torch.float64) for s in states) / 3
            assert v.dtype == states[0][k].dtype
            torch.testing.assert_close(v, expected.float(), rtol=1e-6, atol=1e-7)
    assert int(avg["norm.num_batches_tracked"]) == (10 + 12 + 15) // 3
    assert avg["out.weight"].data_ptr() == avg["embed.weight"].data_ptr()

    averaged = TinyModel()
    averaged.load_state_dict(avg)


def _simulate(num_steps: int, period: int, save_at, tmp_path):
    """Train-like loop: random updates, icefall's averaging every `period` batches.

    Returns the float64 snapshots of the model at every multiple of `period`.
    """
    model = TinyModel()
    model_avg = copy.deepcopy(model).to(torch.float64)
    params = AttributeDict(average_period=period, batch_idx_train=0)
    snapshots = {}
    for step in range(1, num_steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.norm.running_mean.add_(torch.randn(4))
        params.batch_idx_train = step
        if step % period == 0:
            update_averaged_model(params, model, model_avg)
            snapshots[step] = {k: v.to(torch.float64) for k, v in model.state_dict().items()}
        if step in save_at:
            save_checkpoint(
                tmp_path / f"checkpoint-{step}.pt", model, model_avg=model_avg, params=params
            )
    return model, model_avg, snapshots


def test_update_averaged_model_is_running_mean(tmp_path):
    model, model_avg, snapshots = _simulate(num_steps=20, period=4, save_at=(), tmp_path=tmp_path)
    for k, v in model_avg.state_dict().items():
        if not v.is_floating_point():
            # integer buffers are not averaged
            assert torch.equal(v, TinyModel().state_dict()[k])
            continue
        expected = sum(s[k] for s in snapshots.values()) / len(snapshots)
        torch.testing.assert_close(v, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="batch_idx_train > 0"):
        update_averaged_model({"average_period": 4, "batch_idx_train": 0}, model, model_avg)


def test_average_with_averaged_model_equals_mean_between_checkpoints(tmp_path):
    period = 3
    _, _, snapshots = _simulate(num_steps=26, period=period, save_at=(10, 26), tmp_path=tmp_path)
    avg = average_checkpoints_with_averaged_model(
        tmp_path / "checkpoint-10.pt", tmp_path / "checkpoint-26.pt"
    )
    # batch 10 rounds down to 9, batch 26 to 24: the models at 12, 15, ..., 24
    between = [s for step, s in snapshots.items() if 9 < step <= 24]
    assert len(between) == 5
    for k, v in avg.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32  # the trained model's dtype
            expected = sum(s[k] for s in between) / len(between)
            torch.testing.assert_close(v.double(), expected, rtol=1e-6, atol=1e-5)
    TinyModel().load_state_dict(avg)

    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints_with_averaged_model(
            tmp_path / "checkpoint-26.pt", tmp_path / "checkpoint-26.pt"
        )
    save_checkpoint(tmp_path / "plain.pt", TinyModel(), params={"batch_idx_train": 30})
    with pytest.raises(ValueError, match="use-averaged-model 0"):
        average_checkpoints_with_averaged_model(
            tmp_path / "checkpoint-10.pt", tmp_path / "plain.pt"
        )


# ---------------------------------------------------------------------------- safe loading
class _WritesAMarker:
    """Unpickling this calls `open(marker, "w")`: a stand-in for a file that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "epoch-1.pt"
    torch.save({"model": TinyModel().state_dict(), "cur_epoch": 1, "payload": _WritesAMarker(marker)}, evil)
    for load in (lambda: load_checkpoint(evil, TinyModel()), lambda: load_safely(evil),
                 lambda: average_checkpoints([evil, evil], torch.device("cpu"))):
        with pytest.raises(UnsafeCheckpointError, match=r"epoch-1\.pt: refused to load: unpickling it would use "
                                                         r"io\.open.*local/convert_checkpoint\.py"):
            load()
        assert not marker.exists()


def test_old_and_icefall_checkpoints_load_safely(tmp_path, monkeypatch):
    import sys
    import types

    model = TinyModel()
    # Written the old way: option values as Paths, numpy's RNG state as an array.
    old = {"model": model.state_dict(), "exp_dir": Path("exp"), "rng_state": {"numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "old.pt")
    loaded = load_safely(tmp_path / "old.pt")
    assert loaded["exp_dir"] == Path("exp") and (loaded["rng_state"]["numpy"][1] == old["rng_state"]["numpy"][1]).all()

    # icefall pickles its params as icefall.utils.AttributeDict.
    fake = types.ModuleType("icefall.utils")

    class IcefallDict(dict):
        pass

    IcefallDict.__module__, IcefallDict.__qualname__ = "icefall.utils", "AttributeDict"
    fake.AttributeDict = IcefallDict
    monkeypatch.setitem(sys.modules, "icefall", types.ModuleType("icefall"))
    monkeypatch.setitem(sys.modules, "icefall.utils", fake)
    torch.save({"model": model.state_dict(), "params": IcefallDict(lr=0.045)}, tmp_path / "icefall.pt")
    monkeypatch.delitem(sys.modules, "icefall.utils")
    monkeypatch.delitem(sys.modules, "icefall")
    loaded = load_safely(tmp_path / "icefall.pt")
    assert loaded["params"] == {"lr": 0.045}
    _assert_state_equal(loaded["model"], model.state_dict())


def test_new_checkpoints_are_plain_data_and_conversion_makes_them_so(tmp_path):
    model = TinyModel()
    params = AttributeDict(exp_dir=Path("exp"), cur_epoch=3, scale=np.float32(0.5))
    save_checkpoint(tmp_path / "new.pt", model, params=params)
    raw = torch.load(tmp_path / "new.pt", weights_only=True)  # plain torch, no allow-list
    assert raw["exp_dir"] == "exp" and raw["scale"] == 0.5 and isinstance(raw["rng_state"]["numpy"][1], list)
    set_rng_state(raw["rng_state"])  # the plain RNG state restores

    torch.save({"model": model.state_dict(), "payload": _WritesAMarker(tmp_path / "m"), "cur_epoch": 2},
               tmp_path / "trusted.pt")
    dropped = convert_to_plain(tmp_path / "trusted.pt", tmp_path / "plain.pt")
    assert dropped == ["payload"]
    converted = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert converted["cur_epoch"] == 2 and set(converted) == {"model", "cur_epoch"}
