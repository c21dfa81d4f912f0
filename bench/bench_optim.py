#!/usr/bin/env python3
"""Speed of ScaledAdam's shape batching: one optimizer step on a Zipformer-like parameter set.

Three runs side by side, with the same number of tensors:
  shared : tensors repeat a few shapes, as in Zipformer's stacks (ScaledAdam stacks them);
  unique : every non-scalar tensor has its own shape (a few % more elements), so only the
           scalars can be stacked;
  adam   : torch.optim.Adam (foreach) on the shared set, for reference.

  .venv/bin/python bench/bench_optim.py [--layers 12] [--dim 256] [--steps 5] [--threads 2]
"""
import argparse
import time
from typing import Callable, Dict, List, Tuple

import torch

from icefall_cif.optim import ScaledAdam


def layer_shapes(dim: int, ff: int) -> List[Tuple[int, ...]]:
    """Roughly one Zipformer layer: attention in/out projections, two feed-forwards, conv,
    biases and a few per-layer scalars."""
    return [(dim * 3, dim), (dim, dim), (ff, dim), (dim, ff), (ff, dim), (dim, ff), (2 * dim, dim),
            (dim, 31), (dim, dim), (dim * 3,), (dim,), (ff,), (dim,), (ff,), (dim,), (2 * dim,), (dim,),
            (), (), ()]


def make_params(layers: int, dim: int, unique: bool) -> List[torch.nn.Parameter]:
    """Parameters with gradients; with `unique`, the k-th repeat of a non-scalar shape gets k
    added to its last dim, so no two non-scalar tensors share a shape."""
    gen = torch.Generator().manual_seed(0)
    repeats: Dict[Tuple[int, ...], int] = {}
    params = []
    for _ in range(layers):
        for shape in layer_shapes(dim, 3 * dim):
            k = repeats.get(shape, 0)
            repeats[shape] = k + 1
            if unique and shape:
                shape = shape[:-1] + (shape[-1] + k,)
            p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.1)
            p.grad = torch.randn(shape, generator=gen) * 0.01
            params.append(p)
    return params


def time_steps(step: Callable[[], None], steps: int) -> float:
    """Best-of-3 mean seconds per step."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=256, help="model dim; feed-forward dim is 3x")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shared = make_params(args.layers, args.dim, unique=False)
    unique = make_params(args.layers, args.dim, unique=True)
    opt_shared = ScaledAdam(shared, lr=0.045, clipping_scale=2.0)
    opt_unique = ScaledAdam(unique, lr=0.045, clipping_scale=2.0)
    adam_params = [torch.nn.Parameter(p.detach().clone()) for p in shared]
    for p, q in zip(adam_params, shared):
        p.grad = q.grad.clone()
    adam = torch.optim.Adam(adam_params, lr=1e-3, foreach=True)

    t_shared = time_steps(opt_shared.step, args.steps)
    t_unique = time_steps(opt_unique.step, args.steps)
    t_adam = time_steps(adam.step, args.steps)
    n_shared = sum(p.numel() for p in shared)
    n_unique = sum(p.numel() for p in unique)
    n_shapes = len({tuple(p.shape) for p in shared})
    n_unique_shapes = len({tuple(p.shape) for p in unique})
    print(f"ScaledAdam step, dim={args.dim}, {len(shared)} tensors ({n_shared / 1e6:.2f} M elements), threads={args.threads}: "
          f"shared shapes ({n_shapes} batches) {t_shared * 1e3:.1f} ms, "
          f"unique shapes ({n_unique_shapes} batches, {n_unique / 1e6:.2f} M) {t_unique * 1e3:.1f} ms, "
          f"unique/shared {t_unique / t_shared:.2f}x; torch Adam(foreach) {t_adam * 1e3:.1f} ms, "
          f"ScaledAdam/Adam {t_shared / t_adam:.2f}x")


if __name__ == "__main__":
    main()
