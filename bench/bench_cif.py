#!/usr/bin/env python3
"""Vectorized integrate-and-fire vs a batch-vectorized frame loop (the seed implementations' shape).

The baseline loops over the T frames and handles the whole batch at each step (as the CIF seed
code does), then packs the fired states into (N, U, C). Both run the same inputs in the same
process; outputs are checked equal before timing.

Usage:
  .venv/bin/python bench/bench_cif.py [--N 16] [--T 500] [--C 256] [--repeats 5] [--threads 1]
      [--device cpu]
Prints one summary line: median (and best-of) times and their ratios. One intra-op thread by
default: on a shared 2-core machine a second thread waits on other processes and makes every
small op erratically slow.
"""
import argparse
import statistics
import time
from typing import Callable, List, Tuple

import torch

from icefall_cif.cif import integrate_and_fire


def frame_loop_cif(
    h: torch.Tensor, alpha: torch.Tensor, h_lens: torch.Tensor, threshold: float = 0.99
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference-style CIF: one step per frame over the whole batch, no tail handling.

    Args:
      h: (N, T, C), alpha: (N, T) weights in [0, 1), h_lens: (N,).
    Returns:
      cif (N, U, C) zero-padded, cif_lens (N,).
    """
    N, T, C = h.shape
    alpha = alpha.masked_fill(torch.arange(T, device=h.device) >= h_lens.unsqueeze(1), 0.0)
    acc_w = h.new_zeros(N)
    acc_h = h.new_zeros(N, C)
    fired_states, fired_masks = [], []
    for t in range(T):
        a_t, h_t = alpha[:, t], h[:, t]
        fire = acc_w + a_t >= threshold
        leftover = acc_w + a_t - 1.0
        fired_states.append(torch.where(fire.unsqueeze(1), acc_h + (1.0 - acc_w).unsqueeze(1) * h_t, 0.0))
        fired_masks.append(fire)
        acc_h = torch.where(fire.unsqueeze(1), leftover.unsqueeze(1) * h_t, acc_h + a_t.unsqueeze(1) * h_t)
        acc_w = torch.where(fire, leftover, acc_w + a_t)
    states = torch.stack(fired_states, dim=1)  # (N, T, C)
    masks = torch.stack(fired_masks, dim=1)  # (N, T)
    cif_lens = masks.sum(dim=1)
    max_len = int(cif_lens.max())
    # Pack fired frames to the front: token index = number of earlier fires; others go to a dump slot.
    slot = torch.where(masks, masks.cumsum(dim=1) - 1, max_len)
    cif = h.new_zeros(N, max_len + 1, C).scatter_add(1, slot.unsqueeze(-1).expand(N, T, C), states)
    return cif[:, :max_len], cif_lens


def time_interleaved(
    fns: List[Callable[[], None]], device: torch.device, repeats: int
) -> List[Tuple[float, float]]:
    """(median, best) wall time in ms of each fn, after a warm-up call. The fns take turns in
    every repeat, so that load from other processes hits them alike."""
    times: List[List[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            fn_times.append(1000.0 * (time.perf_counter() - start))
    return [(statistics.median(t), min(t)) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--N", type=int, default=16)
    parser.add_argument("--T", type=int, default=500)
    parser.add_argument("--C", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="fwd+bwd repeats; fwd runs 4x as many")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h = torch.randn(args.N, args.T, args.C, device=device, requires_grad=True)
    # ~0.3 per frame: about one token every 3 frames, like a 12.5 Hz CIF on speech.
    alpha = (0.05 + 0.5 * torch.rand(args.N, args.T, device=device)).requires_grad_(True)
    h_lens = torch.randint(args.T // 2, args.T + 1, (args.N,), device=device)
    h_lens[0] = args.T

    with torch.no_grad():
        fast, slow = integrate_and_fire(h, alpha, h_lens), frame_loop_cif(h, alpha, h_lens)
    if fast.cif_lens.tolist() != slow[1].tolist() or not torch.allclose(fast.cif, slow[0], atol=1e-4):
        raise RuntimeError("vectorized and frame-loop CIF disagree; fix that before timing")

    def fwd(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn(h, alpha, h_lens)
        return run

    def fwd_bwd(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            h.grad = alpha.grad = None
            fn(h, alpha, h_lens)[0].square().sum().backward()
        return run

    results = {}
    for mode, wrap, repeats in (("fwd", fwd, 4 * args.repeats), ("fwd+bwd", fwd_bwd, args.repeats)):
        results[mode] = time_interleaved([wrap(frame_loop_cif), wrap(integrate_and_fire)], device, repeats)
    summary = ", ".join(
        f"{mode}: loop {loop[0]:.1f} ms, vectorized {vec[0]:.2f} ms, speed-up {loop[0] / vec[0]:.1f}x "
        f"(best-of: {loop[1]:.1f} / {vec[1]:.2f} ms = {loop[1] / vec[1]:.1f}x)"
        for mode, (loop, vec) in results.items()
    )
    print(
        f"bench_cif device={device} N={args.N} T={args.T} C={args.C} "
        f"threads={torch.get_num_threads()} U~{int(fast.cif_lens.float().mean())} | {summary}"
    )


if __name__ == "__main__":
    main()
