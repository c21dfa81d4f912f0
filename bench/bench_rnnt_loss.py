#!/usr/bin/env python3
"""Time and peak memory of the pruned RNN-T path against the full loss, forward + backward.

Every loss row runs for each --rnnt-types topology ("regular": any number of symbols per
frame; "modified": one per frame), side by side in one table.
Rows (each in a fresh subprocess so that peak memory is not polluted by earlier rows):
  log_softmax    one log_softmax over a prebuilt (N, T, U+1, V) lattice (the floor of any full
                 loss; the same for every topology, measured once)
  full           rnnt_loss on prebuilt (N, T, U+1, V) logits
  simple         rnnt_loss_smoothed(return_grad=True) on am (N, T, V), lm (N, U+1, V)
  pruned         rnnt_loss_pruned on prebuilt (N, T, s_range, V) logits
  simple+pruned  the training path: smoothed simple loss -> ranges -> do_rnnt_pruning ->
                 trivial joiner am + lm on (N, T, s_range, V) -> pruned loss; backward of the sum

Peak memory is the growth over the inputs: torch.cuda.max_memory_allocated on CUDA, the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs) on CPU.

Usage: python bench/bench_rnnt_loss.py [--device cpu|cuda] [--batch 4 --frames 300 --symbols 60 --vocab 500]
                                      [--rnnt-types regular,modified]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

from icefall_cif import rnnt_loss as rnnt

CASES = ("log_softmax", "full", "simple", "pruned", "simple+pruned")
RNNT_TYPES = ("regular", "modified", "constrained")


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--symbols", type=int, default=60)
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--s-range", type=int, default=5)
    parser.add_argument(
        "--rnnt-types", default="regular,modified",
        help=f"comma-separated topologies among {RNNT_TYPES}, one column each",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (best kept), after one warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads; 1 keeps CPU timings stable on a shared machine",
    )
    parser.add_argument("--case", choices=CASES, help="internal: run one row and print JSON")
    parser.add_argument("--rnnt-type", choices=RNNT_TYPES, default="regular", help="internal: the row's topology")
    args = parser.parse_args()
    args.rnnt_types = args.rnnt_types.split(",")
    for rnnt_type in args.rnnt_types:
        if rnnt_type not in RNNT_TYPES:
            parser.error(f"--rnnt-types: {rnnt_type!r} is not one of {RNNT_TYPES}")
    return args


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak(device: torch.device) -> int:
    """Start a new peak-memory window; returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    return _rss_kib("VmRSS") * 1024


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _rss_kib("VmHWM") * 1024


def _make_case(
    name: str, args: argparse.Namespace, device: torch.device
) -> Tuple[Callable[[], None], List[torch.Tensor]]:
    """Build the inputs of one row; return the step to time (forward + backward) and its leaves."""
    N, T, U, V, R, kind = args.batch, args.frames, args.symbols, args.vocab, args.s_range, args.rnnt_type
    # Ragged lengths as in a real batch: the longest utterance fills the padding; T_b >= U_b
    # so that every topology has paths.
    t_lens = torch.tensor([T - 37 * i for i in range(N)]).clamp(min=U)
    u_lens = torch.tensor([U - 7 * i for i in range(N)]).clamp(min=1)
    boundary = torch.stack([torch.zeros(N), torch.zeros(N), u_lens, t_lens], dim=1).long().to(device)
    symbols = torch.randint(1, V, (N, U), device=device)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device).requires_grad_(True)

    if name == "log_softmax":
        logits = leaf(N, T, U + 1, V)
        return (lambda: logits.log_softmax(-1).sum().backward()), [logits]
    if name == "full":
        logits = leaf(N, T, U + 1, V)
        return (lambda: rnnt.rnnt_loss(logits, symbols, 0, boundary, kind, reduction="sum").backward()), [logits]
    if name == "pruned":
        logits = leaf(N, T, R, V)
        # A window that climbs steadily, at most one position per frame (valid for every topology).
        starts = (torch.arange(T, device=device) * (U + 1 - R) // T).reshape(1, T, 1)
        ranges = (starts + torch.arange(R, device=device)).expand(N, T, R).contiguous()
        return (
            lambda: rnnt.rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, kind, reduction="sum").backward()
        ), [logits]
    am, lm = leaf(N, T, V), leaf(N, U + 1, V)

    def simple() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, (px_grad, py_grad) = rnnt.rnnt_loss_smoothed(
            lm, am, symbols, 0, 0.1, 0.1, boundary, kind, reduction="sum", return_grad=True
        )
        return loss, px_grad, py_grad

    if name == "simple":
        return (lambda: simple()[0].backward()), [am, lm]

    def simple_and_pruned() -> None:
        simple_loss, px_grad, py_grad = simple()
        ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, R)
        am_pruned, lm_pruned = rnnt.do_rnnt_pruning(am, lm, ranges)
        pruned_loss = rnnt.rnnt_loss_pruned(
            am_pruned + lm_pruned, symbols, ranges, 0, boundary, kind, reduction="sum"
        )
        (0.5 * simple_loss + pruned_loss).backward()

    return simple_and_pruned, [am, lm]


def run_case(args: argparse.Namespace) -> Dict[str, float]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step, leaves = _make_case(args.case, args, device)
    baseline = _reset_peak(device)
    times = []
    for i in range(args.repeats + 1):
        for x in leaves:  # a training step starts without gradients
            x.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:  # the first run warms up allocators and kernels
            times.append(time.perf_counter() - start)
    # The best run: other load on a shared machine only ever adds time.
    return {"ms": 1000 * min(times), "mib": (_peak(device) - baseline) / 2**20}


def main() -> None:
    args = get_args()
    if args.case is not None:
        print(json.dumps(run_case(args)))
        return
    env = dict(os.environ, ICEFALL_CIF_PURE_RNNT=os.environ.get("ICEFALL_CIF_PURE_RNNT", "1"))
    # The user's arguments minus --rnnt-types, which each row replaces by its own --rnnt-type.
    passed, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--rnnt-types"):
            skip = arg == "--rnnt-types"
            continue
        passed.append(arg)
    results: Dict[str, Dict[str, Dict[str, float]]] = {kind: {} for kind in args.rnnt_types}
    for case in CASES:
        for kind in args.rnnt_types[:1] if case == "log_softmax" else args.rnnt_types:
            cmd = [sys.executable, __file__, "--case", case, "--rnnt-type", kind] + passed
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            results[kind][case] = json.loads(out.strip().splitlines()[-1])
    lsm = results[args.rnnt_types[0]]["log_softmax"]
    for kind in args.rnnt_types[1:]:
        results[kind]["log_softmax"] = lsm

    backend = "k2" if rnnt.k2 is not None and env["ICEFALL_CIF_PURE_RNNT"] != "1" else "pure PyTorch"
    kinds = args.rnnt_types
    print(
        f"| row ({backend}, {args.device}, {args.threads} thread(s)) | "
        + " | ".join(f"{k} time (ms)" for k in kinds) + " | "
        + " | ".join(f"{k} peak memory (MiB)" for k in kinds) + " |"
    )
    print("| --- |" + " ---: |" * (2 * len(kinds)))
    for case in CASES:
        times = " | ".join(f"{results[k][case]['ms']:.1f}" for k in kinds)
        mems = " | ".join(f"{results[k][case]['mib']:.1f}" for k in kinds)
        print(f"| {case} | {times} | {mems} |")
    for kind in kinds:
        path, full = results[kind]["simple+pruned"], results[kind]["full"]
        print(
            f"rnnt_loss {kind} N={args.batch} T={args.frames} U={args.symbols} V={args.vocab} "
            f"s_range={args.s_range} ({backend}, {args.device}): simple+pruned {path['ms']:.0f} ms / "
            f"{path['mib']:.0f} MiB, full {full['ms']:.0f} ms / {full['mib']:.0f} MiB "
            f"({full['ms'] / path['ms']:.1f}x time, {full['mib'] / max(path['mib'], 1e-3):.1f}x memory), "
            f"one log_softmax {lsm['ms']:.0f} ms / {lsm['mib']:.0f} MiB (pruned path = "
            f"{path['ms'] / lsm['ms']:.2f}x its time, {path['mib'] / max(lsm['mib'], 1e-3):.2f}x its memory)"
        )
    for kind in kinds[1:]:
        ratios = ", ".join(
            f"{case} {results[kind][case]['ms'] / results[kinds[0]][case]['ms']:.2f}x" for case in CASES[1:]
        )
        print(f"time {kind} / {kinds[0]}: {ratios}")


if __name__ == "__main__":
    main()
