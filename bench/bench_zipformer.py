#!/usr/bin/env python3
"""Zipformer2 encoder (Conv2dSubsampling + Zipformer2) on CPU: ours against icefall's.

1. Time, ours vs icefall's, same config, same weights (icefall's state_dict loaded strictly
   into ours), same input, timed alternately in one process (best of --reps), for
   - an eval forward under no_grad, and
   - a training step (forward + backward of a mean-square loss) of --train-config.
   Needs ICEFALL_MIRROR (the git dir of a fetched k2-fsa/icefall). icefall's k2 Swoosh calls
   are replaced by plain-torch functions, as in tools/record_icefall_reference.py.
2. Peak memory of one training step for each --memory-configs config, ours (and icefall's with
   ICEFALL_MIRROR), each in a fresh subprocess: the peak resident set size during the step
   minus the resident size before it. The peak is the kernel's max-RSS counter (what
   resource.getrusage reports as ru_maxrss), read as VmHWM from /proc/self/status after
   resetting it through /proc/self/clear_refs, so that earlier peaks (imports, model
   building, a warm-up step) do not hide the step's. It counts everything the step touches:
   activations saved for backward, gradients, temporaries.

  ICEFALL_MIRROR=/work/.mirror/k2-fsa+icefall/repo .venv/bin/python bench/bench_zipformer.py \
      [--config small] [--train-config small] [--memory-configs tiny,small] [--batch 2] \
      [--frames 500] [--reps 5] [--threads 1]
"""
import argparse
import ctypes
import gc
import importlib
import json
import os
import random
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "egs" / "librispeech" / "ASR" / "zipformer_cif"
TOOLS_DIR = REPO.parent / "shared" / "tools"
Pair = Tuple[torch.nn.Module, torch.nn.Module]


def load_icefall(mirror: str) -> types.SimpleNamespace:
    """Import icefall's zipformer.py and subsampling.py (k2 stubbed) and then drop their
    module names, so that ours (same file names) can be imported next to them."""
    sys.path.insert(0, str(TOOLS_DIR))
    import icefall_reference

    src_dir = icefall_reference.materialise(mirror)
    sys.path.insert(0, src_dir)
    try:
        mods = types.SimpleNamespace(
            zipformer=importlib.import_module("zipformer"), subsampling=importlib.import_module("subsampling")
        )
    finally:
        sys.path.remove(src_dir)
        for name in ("zipformer", "subsampling", "scaling", "encoder_interface", "k2", "icefall", "icefall.utils"):
            sys.modules.pop(name, None)
    return mods


def import_ours() -> types.ModuleType:
    if str(RECIPE_DIR) not in sys.path:
        sys.path.insert(0, str(RECIPE_DIR))
    import encoder_configs

    return encoder_configs


def build(impl: str, config: str, ice) -> Pair:
    """(embed, encoder) of `config` for "ours" or "icefall", with icefall's padding behaviour
    (mask_padding=False) so that outputs are comparable on every frame."""
    encoder_configs = import_ours()
    cfg = encoder_configs.get_encoder_config(config)
    cfg["mask_padding"] = False
    if impl == "ours":
        return encoder_configs.build_encoder(cfg)
    kwargs = {k: v for k, v in cfg.items() if k not in ("encoder_embed_dim", "mask_padding")}
    return ice.subsampling.Conv2dSubsampling(80, cfg["encoder_embed_dim"]), ice.zipformer.Zipformer2(**kwargs)


def build_both(config: str, ice) -> Dict[str, Pair]:
    torch.manual_seed(0)
    pairs = {"icefall": build("icefall", config, ice), "ours": build("ours", config, ice)}
    for src, dst in zip(pairs["icefall"], pairs["ours"]):
        dst.load_state_dict(src.state_dict(), strict=True)
    return pairs


def encode(pair: Pair, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    embed, encoder = pair
    y, y_lens = embed(x, x_lens)
    mask = torch.arange(y.shape[1])[None, :] >= y_lens[:, None]
    out, out_lens = encoder(y.permute(1, 0, 2), y_lens, mask)
    return out.permute(1, 0, 2), out_lens


def make_input(batch: int, frames: int) -> Tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, frames, 80, generator=gen)
    x_lens = torch.linspace(frames, frames * 2 // 3, batch).round().long()  # frames .. 2/3 of it
    return x, x_lens


def train_step(pair: Pair, x: torch.Tensor, x_lens: torch.Tensor) -> None:
    out, _ = encode(pair, x, x_lens)
    out.pow(2).mean().backward()
    for module in pair:
        module.zero_grad(set_to_none=True)


def prepare_training(pair: Pair) -> None:
    for module in pair:
        module.train()
        for m in module.modules():  # both implementations read ScheduledFloat.batch_count
            if hasattr(m, "batch_count"):
                m.batch_count = 5000


def best_times(runs: Dict[str, Callable[[], object]], reps: int) -> Dict[str, float]:
    """Best time of each run over `reps` rounds, runs alternating so load changes hit all."""
    best = {k: float("inf") for k in runs}
    for f in runs.values():
        f()  # warm-up
    for r in range(reps):
        for k, f in runs.items():
            random.seed(r)  # the same random regulariser decisions for both
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def compare_forward(args, ice) -> str:
    pairs = build_both(args.config, ice)
    x, x_lens = make_input(args.batch, args.frames)
    with torch.no_grad():
        for pair in pairs.values():
            for m in pair:
                m.eval()
        diff = (encode(pairs["ours"], x, x_lens)[0] - encode(pairs["icefall"], x, x_lens)[0]).abs().max().item()
        best = best_times({k: (lambda p=p: encode(p, x, x_lens)) for k, p in pairs.items()}, args.reps)
    return (
        f"eval forward {args.config} {args.batch}x{args.frames}: icefall {best['icefall'] * 1e3:.0f} ms, "
        f"ours {best['ours'] * 1e3:.0f} ms, ours/icefall {best['ours'] / best['icefall']:.2f}, max|diff| {diff:.1e}"
    )


def compare_train_time(args, ice) -> str:
    pairs = build_both(args.train_config, ice)
    x, x_lens = make_input(args.batch, args.frames)
    for pair in pairs.values():
        prepare_training(pair)
    best = best_times({k: (lambda p=p: train_step(p, x, x_lens)) for k, p in pairs.items()}, args.reps)
    return (
        f"train step {args.train_config} {args.batch}x{args.frames}: icefall {best['icefall'] * 1e3:.0f} ms, "
        f"ours {best['ours'] * 1e3:.0f} ms, ours/icefall {best['ours'] / best['icefall']:.2f}"
    )


def _rss_kib(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status: this benchmark needs Linux")


def step_peak_memory(impl: str, config: str, args) -> float:
    """MiB by which one training step raises the peak RSS of this (fresh) process."""
    ice = load_icefall(os.environ["ICEFALL_MIRROR"]) if impl == "icefall" else None
    random.seed(0)
    torch.manual_seed(0)
    pair = build(impl, config, ice)
    prepare_training(pair)
    x, x_lens = make_input(args.batch, args.frames)
    train_step(pair, x, x_lens)  # warm-up: one-time allocations are not the step's
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed warm-up memory, so it cannot be reused unseen
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS to the current RSS (Linux >= 4.0)
    train_step(pair, x, x_lens)
    return (_rss_kib("VmHWM") - before) / 1024.0


def memory_in_subprocess(impl: str, config: str, args) -> float:
    cmd = [sys.executable, __file__, "--memory-worker", impl, "--config", config,
           "--batch", str(args.batch), "--frames", str(args.frames), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", help="config of the eval-forward comparison")
    p.add_argument("--train-config", default="small", help="config of the training-step time comparison")
    p.add_argument("--memory-configs", default="tiny,small", help="configs of the training-step memory")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=500, help="100 Hz input frames of the longest utterance")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    p.add_argument("--memory-worker", choices=["ours", "icefall"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mirror = os.environ.get("ICEFALL_MIRROR")

    if args.memory_worker:
        print(json.dumps(step_peak_memory(args.memory_worker, args.config, args)))
        return

    lines = [f"CPU, threads={args.threads}, best of {args.reps}"]
    impls = ["ours", "icefall"] if mirror else ["ours"]
    if mirror:
        ice = load_icefall(mirror)
        lines.append(compare_forward(args, ice))
        lines.append(compare_train_time(args, ice))
    else:
        lines.append("time comparisons skipped: set ICEFALL_MIRROR to a fetched k2-fsa/icefall git dir")
    for config in args.memory_configs.split(","):
        mem = {impl: memory_in_subprocess(impl, config, args) for impl in impls}
        lines.append(
            f"train step {config} {args.batch}x{args.frames} peak RSS growth: "
            + ", ".join(f"{impl} {mib:.0f} MiB" for impl, mib in mem.items())
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
