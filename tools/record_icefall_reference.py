#!/usr/bin/env python3
"""Record icefall's outputs as fixtures for test/test_icefall_parity.py.

Developer tool, never imported by the test suite. It runs icefall's own code, taken from a
fetched copy of k2-fsa/icefall, and saves only what that code produced (no icefall source):

  encoder_input.pt   a fixed batch of features (N=2, T=120, F=16) and its lengths
  encoder.pt         icefall's Conv2dSubsampling + Zipformer2 (non-causal) with a tiny config:
                     state_dicts, eval-mode encoder_embed output and encoder_out /
                     encoder_out_lens for encoder_input.pt
  encoder_causal.pt  the same with causal=True and a fixed chunk size / left context
  optim.pt           a tiny model trained for a few dozen steps by icefall's ScaledAdam + Eden
                     (two parameter groups, gradient spikes that trigger clipping, one
                     non-finite gradient): initial parameters, data, the parameters after
                     every step and the learning rate of every step
  meta.json          icefall commit, configs, which steps were clipped, torch version

Usage, from the repository root, with the project's .venv:

  .venv/bin/python tools/record_icefall_reference.py --icefall-git-dir <icefall .git dir>

(<icefall .git dir> is e.g. `git clone --bare https://github.com/k2-fsa/icefall`.) Re-record when
the configs below change or to check against a newer icefall; then run
`.venv/bin/python -m pytest -q test/test_icefall_parity.py`.

icefall needs k2 for its Swoosh activations and icefall.utils for `torch_autocast`; both are
replaced by small stand-ins. The stand-in Swoosh functions call icefall's own plain-torch
formulas (scaling.SwooshLFunction / SwooshRFunction and the Onnx variants), so the constants
in the fixtures are icefall's, not ours.
"""
import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The optimizer run's model is defined once, next to the test that replays it.
sys.path.insert(0, str(REPO / "test"))
from icefall_parity_model import TinyModel  # noqa: E402
DEFAULT_OUT = REPO / "test" / "fixtures" / "icefall_reference"

ICEFALL_FILES = {
    "zipformer.py": "egs/librispeech/ASR/zipformer/zipformer.py",
    "scaling.py": "egs/librispeech/ASR/zipformer/scaling.py",
    "subsampling.py": "egs/librispeech/ASR/zipformer/subsampling.py",
    "optim.py": "egs/librispeech/ASR/zipformer/optim.py",
    "encoder_interface.py": "egs/librispeech/ASR/transducer_stateless/encoder_interface.py",
}

# Conv2dSubsampling(**EMBED) and Zipformer2(**ENCODER): three stacks (1x, 2x, 4x) of different
# widths, so downsampling, bypass, stack-width changes and the output combination are all
# exercised. ENCODER_CAUSAL: two stacks, the second with two layers, causal convolutions and a
# chunked attention mask (eval mode uses chunk_size[0] and left_context_frames[0]). About 22 k
# and 19 k parameters, stored as float32.
FEATURE_DIM = 16
EMBED = dict(in_channels=FEATURE_DIM, out_channels=12, layer1_channels=4, layer2_channels=8,
             layer3_channels=16)
ENCODER = dict(
    output_downsampling_factor=2,
    downsampling_factor=[1, 2, 4],
    num_encoder_layers=[1, 1, 1],
    encoder_dim=[12, 16, 12],
    encoder_unmasked_dim=[8, 12, 8],
    query_head_dim=[8],
    pos_head_dim=[4],
    value_head_dim=[4],
    num_heads=[2, 3, 2],
    feedforward_dim=[24, 32, 24],
    cnn_module_kernel=[7, 5, 3],
    pos_dim=16,
    causal=False,
    chunk_size=[-1],
    left_context_frames=[-1],
)
ENCODER_CAUSAL = dict(
    ENCODER,
    downsampling_factor=[1, 2],
    num_encoder_layers=[1, 2],
    encoder_dim=[12, 12],
    encoder_unmasked_dim=[8, 8],
    num_heads=[2],
    feedforward_dim=[24],
    cnn_module_kernel=[7, 5],
    causal=True,
    chunk_size=[8],
    left_context_frames=[16],
)
ENCODER_INPUT = dict(batch=2, frames=120, lengths=[120, 87], seed=1)

OPTIM = dict(
    steps=40, batch=8, in_dim=6, hidden=8, out_dim=3, seed=0, data_seed=1,
    base_lr=0.05, group1_lr=0.02, clipping_scale=2.0, clipping_update_period=25,
    lr_batches=10, lr_epochs=1.5, warmup_batches=8, warmup_start=0.5, steps_per_epoch=10,
    # loss multiplied by this at these steps (clipping triggers), one gradient set to inf
    spike_steps=[15, 24, 33], spike_factor=50.0, inf_step=37,
)


README = """# icefall reference outputs

Recorded by `tools/record_icefall_reference.py` from k2-fsa/icefall commit {commit}
({date}), by running icefall's own `egs/librispeech/ASR/zipformer/` code (k2 replaced by
icefall's plain-torch Swoosh formulas). No icefall code is stored here, only what it produced.
`test/test_icefall_parity.py` checks our encoder and optimizer against these files.

- `encoder_input.pt`: features x (2, 120, 16) and lengths (120, 87)
- `encoder.pt`, `encoder_causal.pt`: icefall's Conv2dSubsampling + Zipformer2 weights (packed
  state_dicts) and their eval-mode outputs for that input; configs in `meta.json`
- `optim.pt`: a 40-step ScaledAdam + Eden run of a tiny model (initial parameters, data, the
  parameters after every step, the learning rates); clipping at steps {clipped}
- `meta.json`: the icefall commit, every config, the torch version

Re-record from the repository root:

    .venv/bin/python tools/record_icefall_reference.py --icefall-git-dir <k2-fsa/icefall .git dir>
"""


def git(git_dir, *args):
    return subprocess.run(["git", "--git-dir", git_dir, *args], capture_output=True, text=True,
                          check=True).stdout


def materialise_icefall(git_dir):
    """Write icefall's files to a temp dir, install the k2 / icefall.utils stand-ins, return it."""
    d = tempfile.mkdtemp(prefix="icefall_src_")
    for name, path in ICEFALL_FILES.items():
        Path(d, name).write_text(git(git_dir, "show", f"HEAD:{path}"))

    def icefall_scaling():
        return sys.modules["scaling"]

    def forward_fn(name):
        # SwooshXFunction.forward returns the plain formula when x does not require grad.
        def f(x):
            return getattr(icefall_scaling(), name + "Function").apply(x.detach())
        return f

    def forward_and_deriv_fn(name):
        def f(x):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                y = getattr(icefall_scaling(), name + "Onnx")()(x)
                (d,) = torch.autograd.grad(y.sum(), x)
            return y.detach(), d
        return f

    def with_grad_fn(name):
        def f(x):
            return getattr(icefall_scaling(), name + "Function").apply(x)
        return f

    k2 = types.ModuleType("k2")
    k2.swoosh_l_forward = forward_fn("SwooshL")
    k2.swoosh_r_forward = forward_fn("SwooshR")
    k2.swoosh_l = with_grad_fn("SwooshL")
    k2.swoosh_r = with_grad_fn("SwooshR")
    k2.swoosh_l_forward_and_deriv = forward_and_deriv_fn("SwooshL")
    k2.swoosh_r_forward_and_deriv = forward_and_deriv_fn("SwooshR")

    utils = types.ModuleType("icefall.utils")

    @contextlib.contextmanager
    def torch_autocast(device_type="cuda", **kwargs):
        with torch.amp.autocast(device_type=device_type, **kwargs):
            yield

    utils.torch_autocast = torch_autocast
    icefall = types.ModuleType("icefall")
    icefall.utils = utils
    sys.modules.update({"k2": k2, "icefall": icefall, "icefall.utils": utils})
    sys.path.insert(0, d)
    return d


def pack(state_dict):
    """A float32 state_dict as {"names", "shapes", "flat"}: one storage instead of ~100 small
    ones keeps the fixture near 4 bytes per parameter (test_icefall_parity.unpack reverses it)."""
    for name, t in state_dict.items():
        if t.dtype != torch.float32:
            raise TypeError(f"{name} is {t.dtype}; pack() stores float32 only")
    return dict(names=list(state_dict), shapes=[list(t.shape) for t in state_dict.values()],
                flat=torch.cat([t.reshape(-1) for t in state_dict.values()]))


def encoder_input():
    g = torch.Generator().manual_seed(ENCODER_INPUT["seed"])
    x = torch.randn(ENCODER_INPUT["batch"], ENCODER_INPUT["frames"], FEATURE_DIM, generator=g)
    return x, torch.tensor(ENCODER_INPUT["lengths"], dtype=torch.int64)


def record_encoder(cfg, seed):
    import subsampling
    import zipformer

    torch.manual_seed(seed)
    embed = subsampling.Conv2dSubsampling(**EMBED).eval()
    encoder = zipformer.Zipformer2(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in cfg.items()}).eval()
    # A fresh init leaves many parameters at constants (zero biases, BiasNorm's bias and
    # log_scale, bypass scales), where mistakes such as normalising x - b instead of x, or
    # swapping two biases, would not show. Perturb every parameter: vectors by ~0.1, matrices
    # by ~10% of their mean magnitude.
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in list(embed.parameters()) + list(encoder.parameters()):
            floor = 1.0 if p.dim() <= 1 else 0.1
            p.add_(0.1 * max(p.abs().mean().item(), floor) * torch.randn(p.shape, generator=g))
    x, x_lens = encoder_input()
    with torch.no_grad():
        y, y_lens = embed(x, x_lens)
        mask = torch.arange(y.shape[1])[None, :] >= y_lens[:, None]
        out, out_lens = encoder(y.permute(1, 0, 2), y_lens, mask)
    n_params = sum(p.numel() for p in embed.parameters()) + sum(p.numel() for p in encoder.parameters())
    return dict(
        embed_state=pack(embed.state_dict()),
        encoder_state=pack(encoder.state_dict()),
        embed_out=y, embed_out_lens=y_lens,
        encoder_out=out.permute(1, 0, 2).contiguous(), encoder_out_lens=out_lens,
    ), n_params


def optim_data(c):
    g = torch.Generator().manual_seed(c["data_seed"])
    x = torch.randn(c["steps"], c["batch"], c["in_dim"], generator=g)
    y = torch.randn(c["steps"], c["batch"], c["out_dim"], generator=g)
    return x, y


def record_optim():
    import optim

    c = OPTIM
    torch.manual_seed(c["seed"])
    model = TinyModel(c)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = optim_data(c)

    clipped = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Scaling gradients by"):
                clipped.append(step)

    handler = Catch()
    logging.getLogger().addHandler(handler)
    opt = optim.ScaledAdam(model.param_groups(c["group1_lr"]), lr=c["base_lr"],
                           clipping_scale=c["clipping_scale"],
                           clipping_update_period=c["clipping_update_period"])
    sched = optim.Eden(opt, lr_batches=c["lr_batches"], lr_epochs=c["lr_epochs"],
                       warmup_batches=c["warmup_batches"], warmup_start=c["warmup_start"])
    lrs, trajectory = [], []
    for step in range(c["steps"]):
        if step % c["steps_per_epoch"] == 0:
            sched.step_epoch(step // c["steps_per_epoch"])  # icefall: step_epoch(epoch - 1)
        loss = ((model(x[step], step) - y[step]) ** 2).mean()
        if step in c["spike_steps"]:
            loss = loss * c["spike_factor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == c["inf_step"]:
            model.lin2.weight.grad[0, 0] = math.inf
        lrs.append([group["lr"] for group in opt.param_groups])
        opt.step()
        sched.step_batch(step + 1)  # icefall: step_batch(batch_idx_train) after the step
        trajectory.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    logging.getLogger().removeHandler(handler)
    stacked = {k: torch.stack([t[k] for t in trajectory]) for k in initial}
    return dict(initial=initial, x=x, y=y, lrs=torch.tensor(lrs, dtype=torch.float64),
                trajectory=stacked), sorted(set(clipped))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--icefall-git-dir", required=True, help="git directory of a k2-fsa/icefall copy")
    p.add_argument("--out-dir", default=str(DEFAULT_OUT))
    a = p.parse_args()
    git_dir = os.path.abspath(a.icefall_git_dir)
    commit = git(git_dir, "rev-parse", "HEAD").strip()
    commit_date = git(git_dir, "log", "-1", "--format=%cI", "HEAD").strip()
    materialise_icefall(git_dir)
    torch.set_num_threads(1)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    x, x_lens = encoder_input()
    torch.save(dict(x=x, x_lens=x_lens), out / "encoder_input.pt")
    enc, n_enc = record_encoder(ENCODER, seed=0)
    torch.save(enc, out / "encoder.pt")
    enc_c, n_enc_c = record_encoder(ENCODER_CAUSAL, seed=2)
    torch.save(enc_c, out / "encoder_causal.pt")
    opt, clipped = record_optim()
    if not clipped:
        sys.exit("no step was clipped: raise spike_factor")
    torch.save(opt, out / "optim.pt")

    meta = dict(
        icefall_commit=commit,
        icefall_commit_date=commit_date,
        icefall_files=ICEFALL_FILES,
        recorded=datetime.date.today().isoformat(),
        torch_version=torch.__version__,
        embed=EMBED,
        encoder=ENCODER,
        encoder_causal=ENCODER_CAUSAL,
        encoder_input=ENCODER_INPUT,
        encoder_params=n_enc,
        encoder_causal_params=n_enc_c,
        optim=OPTIM,
        optim_clipped_steps=clipped,
        command="python tools/record_icefall_reference.py --icefall-git-dir <icefall .git dir>",
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "README.md").write_text(README.format(commit=commit, date=commit_date, clipped=clipped))
    print(f"icefall {commit}: encoder {n_enc} params, causal {n_enc_c}; "
          f"out lens {enc['encoder_out_lens'].tolist()}; clipped steps {clipped}")
    for f in sorted(out.iterdir()):
        print(f"  {f.relative_to(REPO) if f.is_relative_to(REPO) else f}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
