"""Small helpers shared by every recipe: options, logging, masks, loss accounting."""
import argparse
import logging
import os
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch


class AttributeDict(dict):
    """A dict whose keys can also be read and written as attributes (icefall's `params`)."""

    def __getattr__(self, key):
        if key in self:
            return self[key]
        raise AttributeError(f"No such attribute '{key}'")

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        if key in self:
            del self[key]
            return
        raise AttributeError(f"No such attribute '{key}'")


def str2bool(v: Union[str, bool]) -> bool:
    """argparse type for boolean options given as 1/0, true/false, yes/no."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Boolean value expected (1/0, true/false), got '{v}'")


def setup_logger(
    log_filename: Union[str, Path],
    log_level: str = "info",
    use_console: bool = True,
) -> None:
    """Log to `<log_filename>-<date>` (and `-<rank>` under DDP) and to the console.

    Mirrors icefall's layout: `exp/log/log-train-2026-11-27-18-30-00`.
    """
    now = datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        formatter = f"%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] ({rank}/{world_size}) %(message)s"
        log_filename = f"{log_filename}-{now}-{rank}"
    else:
        formatter = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
        log_filename = f"{log_filename}-{now}"
    Path(log_filename).parent.mkdir(parents=True, exist_ok=True)

    level = getattr(logging, log_level.upper())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    file_handler = logging.FileHandler(log_filename, mode="w")
    file_handler.setFormatter(logging.Formatter(formatter))
    root.addHandler(file_handler)
    if use_console:
        console = logging.StreamHandler()
        console.setLevel(level)
        console.setFormatter(logging.Formatter(formatter))
        root.addHandler(console)


def pad_token_ids(y: List[List[int]], pad_value: int, device: torch.device) -> torch.Tensor:
    """Right-pad ragged token ids to (N, max(len)) int64 (width 0 if every list is empty)."""
    width = max((len(seq) for seq in y), default=0)
    out = torch.full((len(y), width), pad_value, dtype=torch.int64)
    for i, seq in enumerate(y):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out.to(device)


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """Padding mask from lengths.

    Args:
      lengths: (N,) number of valid frames of each sequence.
      max_len: width of the mask; at least `lengths.max()`.
    Returns:
      (N, max(max_len, lengths.max())) bool tensor, True at padded positions.
    """
    assert lengths.ndim == 1, lengths.ndim
    max_len = max(max_len, int(lengths.max()) if lengths.numel() > 0 else 0)
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) >= lengths.unsqueeze(1)


class MetricsTracker(defaultdict):
    """Sums of losses and counts (frames, tokens, utterances) over many batches.

    Each loss is stored summed over its batch; `norm_items()` divides every key that is
    not a count by the key named in `normalizers` (default "frames"), which is what icefall
    logs as "loss per frame".
    """

    COUNT_KEYS = ("frames", "tokens", "utterances", "errors", "ref_units")

    def __init__(self, normalizers: Optional[Dict[str, str]] = None):
        super().__init__(float)
        self.normalizers = dict(normalizers or {})

    def __add__(self, other: "MetricsTracker") -> "MetricsTracker":
        result = MetricsTracker({**self.normalizers, **other.normalizers})
        for k, v in self.items():
            result[k] = v
        for k, v in other.items():
            result[k] = result[k] + v
        return result

    def __mul__(self, alpha: float) -> "MetricsTracker":
        result = MetricsTracker(self.normalizers)
        for k, v in self.items():
            result[k] = v * alpha
        return result

    def norm_items(self) -> Dict[str, float]:
        """Each loss divided by its normalizer, e.g. {"ctc_loss": 0.71, ...}."""
        out = {}
        for k, v in self.items():
            if k in self.COUNT_KEYS:
                continue
            denom_key = self.normalizers.get(k, "frames")
            denom = self.get(denom_key, 0.0)
            out[k] = v / denom if denom > 0 else float("nan")
        return out

    def __str__(self) -> str:
        parts = [f"{k}={v:.4g}" for k, v in self.norm_items().items()]
        counts = [f"{k}={self[k]:.0f}" for k in self.COUNT_KEYS if k in self]
        return ", ".join(parts + counts)

    def reduce(self, device: torch.device) -> None:
        """Sum the values over all DDP ranks, in place."""
        keys = sorted(self.keys())
        values = torch.tensor([float(self[k]) for k in keys], device=device, dtype=torch.float64)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        for k, v in zip(keys, values.tolist()):
            self[k] = v

    def write_summary(self, tb_writer, prefix: str, batch_idx: int) -> None:
        """Write each normalized loss to tensorboard as `<prefix><key>`."""
        for k, v in self.norm_items().items():
            tb_writer.add_scalar(prefix + k, v, batch_idx)


def get_tensorboard_writer(log_dir: Union[str, Path]):
    """A tensorboard SummaryWriter, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional for library users
        logging.warning("tensorboard is not installed; no tensorboard logs will be written")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def fix_random_seed(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_num_threads(num_threads: int, processes_on_node: int) -> int:
    """Set PyTorch's intra-op threads (0: cores / processes on this node); return the number set.

    Several processes with all cores each oversubscribe the CPU; so do other jobs on a shared
    machine, where OpenMP threads spin-waiting for a descheduled peer made training ~15x slower
    with 2 threads than with 1.
    """
    if num_threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_threads = max(1, cores // max(1, processes_on_node))
    torch.set_num_threads(num_threads)
    return num_threads
