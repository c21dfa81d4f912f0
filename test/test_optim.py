"""Tests for icefall_cif/optim.py: ScaledAdam against a naive float64 re-derivation, clipping,
state_dict resume, parameter groups and names, and Eden against its formula."""
import copy
import io
import logging
import math
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from icefall_cif.optim import Eden, LRScheduler, ScaledAdam

CFG = dict(betas=(0.9, 0.98), scalar_lr_scale=0.1, eps=1e-8, param_min_rms=1e-5, param_max_rms=3.0,
           scalar_max=10.0, size_update_period=4)


def reference_scaled_adam(
    p0: torch.Tensor, grads: Sequence[Optional[torch.Tensor]], lrs: Sequence[float], cfg: Dict
) -> torch.Tensor:
    """ScaledAdam without clipping for one tensor, in float64, one plain step at a time.

    Written from the update equations (module docstring of icefall_cif/optim.py and the Zipformer
    paper), not from the implementation: Adam second moment with bias correction while it is
    < 0.99, step scaled by the tensor's RMS (refreshed every `size_update_period` steps), a
    log-scale step from the period's sum of <p, g>, and momentum without bias correction.
    A `None` gradient counts as zeros.
    """
    beta1, beta2 = cfg["betas"]
    period = cfg["size_update_period"]
    p = p0.double().clone()
    is_scalar = p.numel() == 1
    v = torch.zeros_like(p)
    momentum = torch.zeros_like(p)
    rms = p.pow(2).mean().sqrt().item()
    scale_v = 0.0
    period_dots: List[float] = []
    for t, (g, lr) in enumerate(zip(grads, lrs)):
        g = torch.zeros_like(p) if g is None else g.double()
        v = beta2 * v + (1 - beta2) * g * g
        correction = 1 - beta2 ** (t + 1)
        v_hat = v / correction if correction < 0.99 else v
        step_lr = lr * cfg["scalar_lr_scale"] if is_scalar else lr
        d = -step_lr * g / (v_hat.sqrt() + cfg["eps"])
        if not is_scalar:
            period_dots.append((p * g).sum().item())
            period_end = (t + 1) % period == 0
            if period_end:
                rms = p.pow(2).mean().sqrt().item()
            d = d * max(rms, cfg["param_min_rms"])
            if period_end and t > 0:
                decay = beta2**period
                scale_v = decay * scale_v + (1 - decay) * sum(x * x for x in period_dots) / period
                n_updates = (t + 1) // period
                # Note the slow start: multiplied (not divided) by sqrt(1 - decay^n).
                s = (-lr * cfg["scalar_lr_scale"] * math.sqrt(1 - decay**n_updates) * sum(period_dots)
                     / (math.sqrt(scale_v) + cfg["eps"]))
                if rms < cfg["param_min_rms"]:
                    s = 0.0
                s = min(max(s, -0.1), 0.1)
                s = min(s, (cfg["param_max_rms"] - rms) / rms)
                d = d + p * s
            if period_end:
                period_dots = []
        momentum = beta1 * momentum + (1 - beta1) * d
        p = p + momentum
        if is_scalar:
            p = p.clamp(-cfg["scalar_max"], cfg["scalar_max"])
    return p


def run_ours(params: List[torch.nn.Parameter], grads: List[List[Optional[torch.Tensor]]], opt: ScaledAdam,
             lrs: Optional[Sequence[float]] = None) -> None:
    """Feed `grads[t][i]` to `params[i]` at step t; with `lrs`, set every group's lr to `lrs[t]` first."""
    for t, row in enumerate(grads):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        for p, g in zip(params, row):
            p.grad = None if g is None else g.clone()
        opt.step()


def test_matches_float64_reference_without_clipping():
    """Several tensors, two sharing a shape (stacked together), a bias, a 0-d and a (1,) scalar,
    a tiny tensor below param_min_rms, a tensor that loses its gradient; changing lr."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (6, 5), (5,), (), (1,), (3, 2, 2), (4,)]
    init = [torch.randn(s, generator=gen) * 0.3 for s in shapes]
    init[6] = torch.full((4,), 1e-6)  # below param_min_rms: the RMS scaling uses the floor
    params = [torch.nn.Parameter(x.clone()) for x in init]
    steps = 41
    grads: List[List[Optional[torch.Tensor]]] = []
    for t in range(steps):
        row = [torch.randn(s, generator=gen) for s in shapes]
        row[0] = row[0] - 0.5 * params[0].detach()  # a consistent pull so the scale step matters
        if t >= 20:
            row[5] = None  # momentum and zero-gradient updates continue
        grads.append(row)
    lrs = [0.045 * (0.5 + 0.5 * min(t, 20) / 20) for t in range(steps)]
    opt = ScaledAdam(params, lr=lrs[0], clipping_scale=None, **CFG)
    run_ours(params, grads, opt, lrs)
    for i, (x0, p) in enumerate(zip(init, params)):
        expected = reference_scaled_adam(x0, [row[i] for row in grads], lrs, CFG)
        moved = (expected - x0.double()).abs().max()
        assert moved > 1e-4 * x0.abs().max(), f"param {i} barely moved: the test would not detect a wrong update"
        # float32 vs float64: a tolerance well below the distance moved, so a wrong update fails.
        torch.testing.assert_close(p.detach().double(), expected, rtol=2e-5, atol=1e-4 * moved.item(),
                                   msg=f"param {i} of shape {shapes[i]}")


def test_scale_limits_and_scalar_clamp():
    """A gradient pulling a tensor to grow meets param_max_rms; a scalar pushed up meets scalar_max."""
    # scalar_lr_scale 0.5: size steps up to 4 * lr * 0.5 per period, so the +-0.1 clamp binds.
    cfg = dict(CFG, param_max_rms=0.5, scalar_max=1.0, scalar_lr_scale=0.5)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 8, generator=gen) * 0.2
    s0 = torch.tensor(0.95)
    w, s = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(s0.clone())
    opt = ScaledAdam([w, s], lr=0.2, **cfg)
    steps = 60
    w_grads = []
    for _ in range(steps):
        # -3w: the gradient of -1.5 |w|^2, so the learned scale wants to grow.
        w.grad = -3.0 * w.detach().clone() + 0.01 * torch.randn(8, 8, generator=gen)
        s.grad = torch.tensor(-1.0)
        w_grads.append(w.grad.clone())
        opt.step()
    w_ref = reference_scaled_adam(x0, w_grads, [0.2] * steps, cfg)
    w_uncapped = reference_scaled_adam(x0, w_grads, [0.2] * steps, dict(cfg, param_max_rms=3.0))
    # The cap must bind here, or this test would not check it.  (It limits only the learned
    # scale step: the RMS-scaled Adam step along +w still grows the tensor, as in icefall.)
    assert (w_uncapped - w_ref).abs().max() > 0.1 * w_ref.abs().max()
    torch.testing.assert_close(w.detach().double(), w_ref, rtol=2e-5, atol=1e-6)
    assert s.item() == pytest.approx(1.0)
    assert reference_scaled_adam(s0, [torch.tensor(-1.0)] * steps, [0.2] * steps, cfg).item() == pytest.approx(1.0)


def _unit_grad(gen: torch.Generator, shape) -> torch.Tensor:
    g = torch.randn(shape, generator=gen)
    return g / g.norm()


def _twin_without_clipping(opt: ScaledAdam) -> ScaledAdam:
    twin = copy.deepcopy(opt)
    for group in twin.param_groups:
        group["clipping_scale"] = None
    return twin


@pytest.mark.parametrize("spike_step", [12, 25])
def test_gradient_spike_is_clipped_to_threshold(spike_step):
    """With size_update_period beyond the run, param_rms stays at its initial value r, so the
    clipping norm of a gradient g is r * |g|.  The threshold is clipping_scale times the median
    (icefall's: sorted[2 * (n // 4)]) of the norms seen at steps 1..t, re-estimated at
    t = 10 (with the threshold doubled, the early estimates 10, 20, 40 < period) and t = 20 =
    clipping_update_period.  A 1000x spike must be scaled to exactly the threshold."""
    gen = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(torch.randn(8, 8, generator=gen) * 0.5)
    opt = ScaledAdam([w], lr=0.01, clipping_scale=2.0, clipping_update_period=20, size_update_period=1000)
    norms = [1.0 + (t * 7 % 11) / 10 for t in range(spike_step)]
    for t in range(spike_step):
        w.grad = norms[t] * _unit_grad(gen, (8, 8))
        opt.step()
    last_estimate, leniency = (10, 2.0) if spike_step < 20 else (20, 1.0)
    seen = sorted(norms[1:last_estimate + 1])  # step 0 is never recorded
    threshold = 2.0 * leniency * seen[2 * (len(seen) // 4)]

    spike = 1000.0 * _unit_grad(gen, (8, 8))
    twin = _twin_without_clipping(opt)
    w_twin = twin.param_groups[0]["params"][0]
    w.grad = spike.clone()
    opt.step()
    w_twin.grad = spike * (threshold / 1000.0)
    twin.step()
    torch.testing.assert_close(w.detach(), w_twin.detach(), rtol=1e-5, atol=1e-7)
    # The spike did not reach the second moment unscaled.
    assert opt.state[w]["exp_avg_sq"].max() < 1.0


def test_non_finite_gradient_acts_as_zero_gradient():
    gen = torch.Generator().manual_seed(4)
    w = torch.nn.Parameter(torch.randn(5, 7, generator=gen))
    b = torch.nn.Parameter(torch.randn(7, generator=gen))
    opt = ScaledAdam([w, b], lr=0.03, clipping_scale=2.0)
    for _ in range(15):
        w.grad, b.grad = torch.randn(5, 7, generator=gen), torch.randn(7, generator=gen)
        opt.step()
    twin = _twin_without_clipping(opt)
    bad = torch.randn(5, 7, generator=gen)
    bad[2, 3] = float("inf")
    w.grad, b.grad = bad, torch.randn(7, generator=gen)
    opt.step()
    for p in twin.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    twin.step()
    for p, q in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3))


def _data(n: int):
    gen = torch.Generator().manual_seed(5)
    out = []
    for step in range(n):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        if step % 7 == 3:  # spikes, so that clipping state is in play
            x, y = 40 * x, 40 * y
        out.append((x, y))
    return out


def _build(model: torch.nn.Module):
    opt = ScaledAdam(model.named_parameters(), lr=0.045, clipping_scale=2.0, clipping_update_period=10)
    return opt, Eden(opt, lr_batches=30, lr_epochs=2, warmup_batches=10)


def _train(model, opt, sched, data, start: int, stop: int) -> None:
    for step in range(start, stop):
        if step % 20 == 0:
            sched.step_epoch(step // 20)
        x, y = data[step]
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step_batch()


def test_state_dict_resume_is_exact(caplog):
    """An optimizer and scheduler restored mid-run (through torch.save) continue bit for bit like
    an uninterrupted run, with clipping active on both sides of the checkpoint."""
    data = _data(50)
    torch.manual_seed(0)
    straight = _mlp()
    opt, sched = _build(straight)
    with caplog.at_level(logging.WARNING, logger="icefall_cif.optim"):
        _train(straight, opt, sched, data, 0, 50)
    assert any("Scaling gradients" in r.getMessage() for r in caplog.records), "clipping never triggered"

    torch.manual_seed(0)
    first = _mlp()
    opt, sched = _build(first)
    _train(first, opt, sched, data, 0, 23)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)

    torch.manual_seed(123)  # a different init, fully overwritten by the checkpoint
    resumed = _mlp()
    resumed.load_state_dict(ckpt["model"])
    opt2, sched2 = _build(resumed)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.get_lr() == sched.get_lr()
    _train(resumed, opt2, sched2, data, 23, 50)
    for (name, p), q in zip(resumed.named_parameters(), straight.parameters()):
        assert torch.equal(p, q), name


def test_param_groups_use_their_own_lr():
    """Two groups with lr 0.04 and 0.01 each follow the float64 reference at their own lr."""
    gen = torch.Generator().manual_seed(6)
    x0 = torch.randn(4, 6, generator=gen)
    a, b = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    opt = ScaledAdam([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.04)
    lrs = [0.04] * 12
    grads = [[torch.randn(4, 6, generator=gen)] * 2 for _ in lrs]
    run_ours([a, b], grads, opt)
    torch.testing.assert_close(a.detach().double(), reference_scaled_adam(x0, [g[0] for g in grads], lrs, CFG),
                               rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(b.detach().double(),
                               reference_scaled_adam(x0, [g[1] for g in grads], [lr / 4 for lr in lrs], CFG),
                               rtol=2e-5, atol=1e-6)
    # Eden scales each group's own base lr.
    opt = ScaledAdam([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.04)
    sched = Eden(opt, lr_batches=10, lr_epochs=1, warmup_batches=0)
    sched.step_batch(10)
    assert sched.get_last_lr() == pytest.approx([0.04 * 2**-0.25, 0.01 * 2**-0.25], rel=1e-12)


class _Named(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 2)


def test_named_parameters_and_icefall_named_groups(caplog):
    """parameters(), named_parameters() and icefall's {"named_params": ...} groups give the same
    trajectory; on a clipped spike the log names the parameter that dominates the norm."""
    torch.manual_seed(0)
    plain_model = _Named()
    named_model = copy.deepcopy(plain_model)
    group_model = copy.deepcopy(plain_model)
    plain = ScaledAdam(plain_model.parameters(), lr=0.03, clipping_scale=2.0)
    named = ScaledAdam(named_model.named_parameters(), lr=0.03, clipping_scale=2.0)
    grouped = ScaledAdam([{"named_params": list(group_model.named_parameters())}], lr=0.03, clipping_scale=2.0)
    assert named.param_groups[0]["param_names"] == ["proj.weight", "proj.bias", "out.weight", "out.bias"]
    assert grouped.param_groups[0]["param_names"] == named.param_groups[0]["param_names"]

    gen = torch.Generator().manual_seed(7)
    for step in range(16):
        grads = [torch.randn(p.shape, generator=gen) for p in plain_model.parameters()]
        if step == 14:
            grads[2] = grads[2] * 1e4  # out.weight spikes
        for model, opt in ((plain_model, plain), (named_model, named), (group_model, grouped)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            with caplog.at_level(logging.WARNING, logger="icefall_cif.optim"):
                opt.step()
    for p, q, r in zip(plain_model.parameters(), named_model.parameters(), group_model.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)
    shares = [r.getMessage() for r in caplog.records if "Largest shares" in r.getMessage()]
    assert len(shares) == 3  # one per optimizer, on the spike step only
    assert "param_groups[0][2]" in shares[0].split(":", 1)[1].split(",")[0]  # unnamed: by position
    assert "out.weight" in shares[1].split(":", 1)[1].split(",")[0]
    assert "out.weight" in shares[2].split(":", 1)[1].split(",")[0]


def test_invalid_arguments_say_what_is_wrong():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="empty parameter list"):
        ScaledAdam([])
    with pytest.raises(ValueError, match="betas"):
        ScaledAdam([w], betas=(0.99, 0.9))
    with pytest.raises(ValueError, match="warmup_start"):
        Eden(ScaledAdam([w]), lr_batches=10, lr_epochs=1, warmup_start=1.5)
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        LRScheduler(object())
    emb = torch.nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        ScaledAdam(emb.named_parameters()).step()


def eden_formula(base_lr, batch, epoch, lr_batches, lr_epochs, warmup_batches, warmup_start):
    decay = ((batch**2 + lr_batches**2) / lr_batches**2) ** -0.25 * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    warmup = 1.0 if batch >= warmup_batches else warmup_start + (1 - warmup_start) * batch / warmup_batches
    return base_lr * decay * warmup


def test_eden_matches_formula():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    b = torch.nn.Parameter(torch.zeros(3))
    opt = ScaledAdam([{"params": [w]}, {"params": [b], "lr": 0.01}], lr=0.045)
    sched = Eden(opt, lr_batches=7500, lr_epochs=3.5, warmup_batches=500, warmup_start=0.4)
    assert sched.get_last_lr() == [0.045, 0.01]  # nothing scheduled yet
    for batch, epoch in [(0, 0), (1, 0), (250, 1), (499, 1), (500, 2), (7500, 3), (30000, 10), (123456, 40)]:
        sched.step_epoch(epoch)
        sched.step_batch(batch)
        expected = [eden_formula(base, batch, epoch, 7500, 3.5, 500, 0.4) for base in (0.045, 0.01)]
        assert sched.get_last_lr() == pytest.approx(expected, rel=1e-12), (batch, epoch)
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
    # Without arguments, the indices advance by one.
    sched.step_batch()
    sched.step_epoch()
    assert (sched.batch, sched.epoch) == (123457, 41)
    restored = Eden(ScaledAdam([torch.nn.Parameter(torch.zeros(1)), ], lr=0.045), 7500, 3.5, 500, 0.4)
    restored.load_state_dict(sched.state_dict())
    assert restored.get_lr() == pytest.approx([eden_formula(0.045, 123457, 41, 7500, 3.5, 500, 0.4)], rel=1e-12)
