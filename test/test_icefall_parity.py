"""Parity with k2-fsa/icefall, checked against outputs recorded from icefall's own code.

The fixtures in test/fixtures/icefall_reference/ were produced by
tools/record_icefall_reference.py from icefall's zipformer recipe (the commit is in meta.json);
no icefall code is needed here. The tests check that:

- icefall's Conv2dSubsampling + Zipformer2 state_dicts load strictly into ours (same keys and
  shapes), and our eval-mode outputs equal icefall's, for a non-causal three-stack encoder and
  a causal chunked two-stack one, through both the no-grad and the autograd code paths
  (tolerance ENCODER_ATOL = 1e-4; measured max |diff| <= 2e-6 on the recording machine);
- icefall_cif.optim.ScaledAdam + Eden, replaying the recorded run (two parameter groups, scalar
  parameters, a parameter without a gradient on odd steps, clipping after gradient spikes and
  an inf gradient), follow icefall's learning rates and parameter trajectory step by step
  (tolerance OPTIM_RTOL = 1e-5; measured bit-identical on the recording machine).

To re-record (e.g. against a newer icefall):
  .venv/bin/python tools/record_icefall_reference.py --icefall-git-dir <k2-fsa/icefall .git dir>
"""
import json
import logging
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from icefall_cif.optim import Eden, ScaledAdam
from icefall_parity_model import TinyModel
from subsampling import Conv2dSubsampling
from zipformer import Zipformer2

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "icefall_reference"
META = json.loads((FIXTURES / "meta.json").read_text())

# Float32 outputs are O(1); 1e-4 leaves room for other BLAS / CPU kernels than the recording
# machine's while still catching any change of formula (a Swoosh constant off by 0.001 moves
# the outputs by ~1e-3).
ENCODER_ATOL = 1e-4
# Relative to each tensor's largest magnitude, after 40 steps; room for other kernels only.
OPTIM_RTOL = 1e-5
LR_RTOL = 1e-12


def load(name):
    return torch.load(FIXTURES / name, weights_only=True)


def unpack(packed):
    """{"names", "shapes", "flat"} (tools/record_icefall_reference.pack) -> a state_dict."""
    state, offset = OrderedDict(), 0
    for name, shape in zip(packed["names"], packed["shapes"]):
        n = math.prod(shape)
        state[name] = packed["flat"][offset:offset + n].reshape(shape).clone()
        offset += n
    assert offset == packed["flat"].numel()
    return state


def build_ours(encoder_cfg, mask_padding=False):
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in encoder_cfg.items()}
    embed = Conv2dSubsampling(**META["embed"], mask_padding=mask_padding)
    encoder = Zipformer2(**cfg, mask_padding=mask_padding)
    return embed.eval(), encoder.eval()


def run(embed, encoder, x, x_lens, grad=False):
    """Eval-mode forward. grad=True takes the autograd paths (custom Functions for Swoosh,
    BiasNorm, ...), which compute the same values as the no-grad paths."""
    with torch.set_grad_enabled(grad):
        y, y_lens = embed(x, x_lens)
        mask = torch.arange(y.shape[1])[None, :] >= y_lens[:, None]
        out, out_lens = encoder(y.permute(1, 0, 2), y_lens, mask)
    return y.detach(), y_lens, out.permute(1, 0, 2).detach(), out_lens


@pytest.fixture(scope="module")
def encoder_input():
    inp = load("encoder_input.pt")
    return inp["x"], inp["x_lens"]


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("variant", ["encoder", "encoder_causal"])
def test_encoder_matches_icefall(variant, grad, encoder_input):
    ref = load(f"{variant}.pt")
    embed, encoder = build_ours(META[variant])
    embed.load_state_dict(unpack(ref["embed_state"]), strict=True)
    encoder.load_state_dict(unpack(ref["encoder_state"]), strict=True)
    y, y_lens, out, out_lens = run(embed, encoder, *encoder_input, grad=grad)

    assert torch.equal(y_lens, ref["embed_out_lens"])
    assert y.shape == ref["embed_out"].shape
    embed_diff = (y - ref["embed_out"]).abs().max().item()
    assert embed_diff < ENCODER_ATOL, f"Conv2dSubsampling differs from icefall's: max |diff| {embed_diff:.3g}"

    assert torch.equal(out_lens, ref["encoder_out_lens"])
    assert out.shape == ref["encoder_out"].shape
    diff = (out - ref["encoder_out"]).abs().max().item()
    assert diff < ENCODER_ATOL, f"Zipformer2 differs from icefall's: max |diff| {diff:.3g}"
    # the check is not vacuous: outputs are O(1) and differ between utterances and frames
    assert ref["encoder_out"].abs().max() > 0.1


@pytest.mark.parametrize("variant", ["encoder", "encoder_causal"])
def test_mask_padding_keeps_a_full_length_utterance(variant, encoder_input):
    # mask_padding=True (our default in encoder_configs) only changes padded utterances: the
    # full-length one still gets icefall's output.
    ref = load(f"{variant}.pt")
    x, x_lens = encoder_input
    assert int(x_lens[0]) == x.shape[1]
    embed, encoder = build_ours(META[variant], mask_padding=True)
    embed.load_state_dict(unpack(ref["embed_state"]), strict=True)
    encoder.load_state_dict(unpack(ref["encoder_state"]), strict=True)
    _, _, out, out_lens = run(embed, encoder, x, x_lens)
    assert torch.equal(out_lens, ref["encoder_out_lens"])
    assert (out[0] - ref["encoder_out"][0]).abs().max().item() < ENCODER_ATOL


def test_scaled_adam_and_eden_follow_icefalls_trajectory(caplog):
    c = META["optim"]
    ref = load("optim.pt")
    model = TinyModel(c)
    model.load_state_dict(ref["initial"], strict=True)
    x, y = ref["x"], ref["y"]
    opt = ScaledAdam(model.param_groups(c["group1_lr"]), lr=c["base_lr"],
                     clipping_scale=c["clipping_scale"],
                     clipping_update_period=c["clipping_update_period"])
    sched = Eden(opt, lr_batches=c["lr_batches"], lr_epochs=c["lr_epochs"],
                 warmup_batches=c["warmup_batches"], warmup_start=c["warmup_start"])
    clipped = []
    worst = 0.0
    with caplog.at_level(logging.WARNING, logger="icefall_cif.optim"):
        for step in range(c["steps"]):
            if step % c["steps_per_epoch"] == 0:
                sched.step_epoch(step // c["steps_per_epoch"])
            loss = ((model(x[step], step) - y[step]) ** 2).mean()
            if step in c["spike_steps"]:
                loss = loss * c["spike_factor"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == c["inf_step"]:
                model.lin2.weight.grad[0, 0] = math.inf

            lrs = [group["lr"] for group in opt.param_groups]
            for ours, theirs in zip(lrs, ref["lrs"][step].tolist()):
                assert math.isclose(ours, theirs, rel_tol=LR_RTOL), f"step {step}: lr {ours} != icefall's {theirs}"

            n_warnings = len(caplog.records)
            opt.step()
            if any(r.getMessage().startswith("Scaling gradients by") for r in caplog.records[n_warnings:]):
                clipped.append(step)
            sched.step_batch(step + 1)

            for name, p in model.state_dict().items():
                theirs = ref["trajectory"][name][step]
                rel = ((p - theirs).abs().max() / theirs.abs().max()).item()
                worst = max(worst, rel)
                assert rel <= OPTIM_RTOL, f"step {step}: {name} differs from icefall's by {rel:.3g} (relative)"
    assert clipped == META["optim_clipped_steps"] and clipped, clipped
    assert torch.isfinite(model.lin2.weight).all()
