"""Checkpoints in icefall's format, checkpoint averaging and the running averaged model.

A checkpoint is one `torch.save`d dict with icefall's keys: `model`, `model_avg`,
`optimizer`, `scheduler`, `grad_scaler`, `sampler` (each a `state_dict()` or None), every
entry of `params` (the training loop puts the model architecture there as `model_config` and
the token symbols in id order as `token_table`, so that decoding rebuilds the model from the
checkpoint alone) (`batch_idx_train`, `cur_epoch`, `best_train_loss`, ...) at the top
level, and `rng_state` (python / numpy / torch / cuda generator states) so that a resumed
run draws the same random numbers as an uninterrupted one.

Writes are atomic: the dict goes to a hidden temporary file in the same directory, is
fsync'ed, and then renamed over the target, so a crash or `kill -9` leaves either the
previous file or the complete new one, never a truncated checkpoint.
"""
import glob
import io
import logging
import os
import pathlib
import pickle
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from icefall_cif.dist import unwrap_model

Pathlike = Union[str, Path]


class UnsafeCheckpointError(ValueError):
    """A file whose unpickling would construct or call something other than tensors and plain data."""


def _allowed_legacy_globals() -> list:
    """What checkpoints written before they held only plain data need, and icefall's need.

    Our older checkpoints hold option values as `pathlib` paths and numpy's RNG state as an
    array; icefall's hold their params as `icefall.utils.AttributeDict` (a dict subclass, read
    as a plain dict). None of these runs code the file chooses.
    """
    return [
        pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
        np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64)),
        (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np._core.multiarray._reconstruct,
        (dict, "icefall.utils.AttributeDict"),
    ]


def load_safely(filename: Pathlike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load` that never executes code from the file (`weights_only=True`).

    Tensors and plain Python data load; so do this repository's older checkpoints and
    icefall's (see :func:`_allowed_legacy_globals`). Anything else is refused before it runs.

    Raises:
      UnsafeCheckpointError: naming the file and the global it would have used.
    """
    try:
        with torch.serialization.safe_globals(_allowed_legacy_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e)) or re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
        what = found.group(1)[:200] if found else "objects that are not tensors"
        raise UnsafeCheckpointError(
            f"{filename}: refused to load: unpickling it would use {what}, which is not a tensor or plain "
            f"data (a file that runs code when opened). Only open checkpoints from sources you trust; if you "
            f"trust this one, rewrite it as plain data with local/convert_checkpoint.py."
        ) from None


def plain_data(obj: Any) -> Any:
    """`obj` with paths as str and numpy values as lists/numbers, so that it saves as plain data."""
    if isinstance(obj, dict):
        return {k: plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj

STATE_KEYS = ("model", "model_avg", "optimizer", "scheduler", "grad_scaler", "sampler")
RNG_KEY = "rng_state"
_DDP_PREFIX = "module."
_CHECKPOINT_NAME = re.compile(r"^checkpoint-([0-9]+)\.pt$")


def strip_ddp_prefix(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """Remove the `module.` that DDP puts in front of every key, if every key has it.

    State dicts saved from a wrapped model (icefall before it unwrapped, or other code)
    then load into a bare model in a single process.
    """
    if state_dict and all(k.startswith(_DDP_PREFIX) for k in state_dict):
        logging.info("Loading a state dict saved from a DDP-wrapped model; stripping 'module.'")
        return {k[len(_DDP_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


def get_rng_state() -> Dict[str, Any]:
    """The states of python's, numpy's, torch's CPU and (when available) CUDA generators."""
    state = {
        "python": random.getstate(),
        "numpy": plain_data(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore generator states saved by `get_rng_state`."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        logging.warning("The checkpoint holds CUDA RNG states but CUDA is not available; skipped")
    elif len(cuda_states) != torch.cuda.device_count():
        logging.warning(
            f"The checkpoint holds CUDA RNG states of {len(cuda_states)} devices but "
            f"{torch.cuda.device_count()} are visible; CUDA RNG states not restored"
        )
    else:
        torch.cuda.set_rng_state_all(cuda_states)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, filename: Pathlike) -> None:
    """`torch.save(obj, filename)` that never leaves a partially written `filename`."""
    filename = Path(filename)
    filename.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and with a suffix after `.pt`, so globs for checkpoints never pick it up.
    tmp = filename.with_name(f".{filename.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(filename.parent)


def save_checkpoint(
    filename: Pathlike,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    params: Optional[Dict[str, Any]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    rank: int = 0,
    save_rng_state: bool = True,
) -> None:
    """Save the training state to `filename` (atomically; only on rank 0).

    Args:
      filename: e.g. `exp/epoch-3.pt`.
      model: the model, DDP-wrapped or not; its keys are saved without `module.`.
      model_avg: the running averaged model (see `update_averaged_model`); saved in its own
        dtype (icefall keeps it in float64) so that a resumed average is bit-exact.
      params: training info saved at the top level of the dict (`batch_idx_train`,
        `cur_epoch`, `best_valid_loss`, `average_period`, ...).
      optimizer, scheduler, scaler, sampler: anything with `state_dict()`; a scheduler is
        duck-typed (icefall's Eden or torch's), the sampler is lhotse's CutSampler.
      rank: the DDP rank; ranks other than 0 return without writing.
      save_rng_state: also save the random generators' states under `rng_state`.
    """
    if rank != 0:
        return
    logging.info(f"Saving checkpoint to {filename}")

    checkpoint: Dict[str, Any] = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
    }
    if model_avg is not None:
        checkpoint["model_avg"] = model_avg.state_dict()
    if save_rng_state:
        checkpoint[RNG_KEY] = get_rng_state()
    for k, v in (params or {}).items():
        if k in checkpoint or k in STATE_KEYS or k == RNG_KEY:
            raise ValueError(
                f"params has a key '{k}' that the checkpoint uses for its own state; "
                f"rename that entry of params"
            )
        checkpoint[k] = plain_data(v)
    atomic_save(checkpoint, filename)


def load_checkpoint(
    filename: Pathlike,
    model: nn.Module,
    model_avg: Optional[nn.Module] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    sampler: Optional[Any] = None,
    strict: bool = True,
    restore_rng_state: bool = False,
) -> Dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` into the given objects.

    The model states may come from a DDP run (`module.` prefix) and load into a bare model.

    Args:
      filename: the checkpoint.
      model: receives `model` (DDP-wrapped or not).
      model_avg, optimizer, scheduler, scaler, sampler: receive their states when both the
        object and the saved state exist.
      strict: passed to `load_state_dict` of `model` and `model_avg`.
      restore_rng_state: also restore `rng_state`, rank 0's generator states (a DDP run also
        saves every rank's under `rank_states`; the training loop restores those itself).
    Returns:
      Everything else in the checkpoint: the saved params (`batch_idx_train`, `cur_epoch`,
      best losses, ...) and `rng_state` when it was saved.
    """
    logging.info(f"Loading checkpoint from {filename}")
    checkpoint = load_safely(filename)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(
            f"{filename} is not a checkpoint written by save_checkpoint/export (no 'model' key)"
        )

    unwrap_model(model).load_state_dict(strip_ddp_prefix(checkpoint.pop("model")), strict=strict)

    avg_state = checkpoint.pop("model_avg", None)
    if model_avg is not None:
        if avg_state is None:
            logging.warning(f"{filename} has no averaged model; model_avg left unchanged")
        else:
            logging.info("Loading averaged model")
            model_avg.load_state_dict(strip_ddp_prefix(avg_state), strict=strict)

    targets = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "grad_scaler": scaler,
        "sampler": sampler,
    }
    for name, obj in targets.items():
        state = checkpoint.pop(name, None)
        if obj is None:
            continue
        if state is None:
            logging.warning(f"{filename} has no {name} state; the {name} starts fresh")
        else:
            obj.load_state_dict(state)

    if restore_rng_state:
        if RNG_KEY in checkpoint:
            set_rng_state(checkpoint[RNG_KEY])
        else:
            logging.warning(f"{filename} has no RNG states; random generators left as they are")
    return checkpoint


def find_checkpoints(out_dir: Pathlike, iteration: int = 0) -> List[str]:
    """The `checkpoint-<N>.pt` files in `out_dir`, largest N first.

    Args:
      out_dir: the experiment directory.
      iteration: 0 returns all; a positive value the checkpoints with N >= iteration; a
        negative value those with N <= -iteration (icefall's semantics).
    Returns:
      File names, sorted by N in descending order.
    """
    found = []
    for path in glob.glob(f"{glob.escape(str(out_dir))}/checkpoint-[0-9]*.pt"):
        m = _CHECKPOINT_NAME.match(os.path.basename(path))
        if m is None:
            logging.warning(f"Ignoring {path}: not named checkpoint-<number>.pt")
            continue
        found.append((int(m.group(1)), path))
    found.sort(key=lambda x: x[0], reverse=True)
    if iteration >= 0:
        return [path for n, path in found if n >= iteration]
    return [path for n, path in found if n <= -iteration]


def remove_checkpoints(out_dir: Pathlike, topk: int, rank: int = 0) -> None:
    """Keep only the `topk` newest `checkpoint-<N>.pt` files of `out_dir` (rank 0 only)."""
    if topk < 1:
        raise ValueError(f"topk must be at least 1 (the checkpoints to keep), got {topk}")
    if rank != 0:
        return
    for path in find_checkpoints(out_dir)[topk:]:
        os.remove(path)


def _storage_key(t: torch.Tensor) -> Optional[tuple]:
    """Identity of a tensor's memory, so tied parameters are averaged once.

    Empty tensors all share data_ptr 0 and are never treated as tied.
    """
    if t.numel() == 0:
        return None
    return (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def _load_model_state(filename: Pathlike, device: torch.device) -> Dict[str, torch.Tensor]:
    checkpoint = load_safely(filename, map_location=device)
    if "model" not in checkpoint:
        raise ValueError(f"{filename} has no 'model' entry; is it a checkpoint?")
    return strip_ddp_prefix(checkpoint["model"])


def average_checkpoints(
    filenames: List[Pathlike], device: torch.device = torch.device("cpu")
) -> Dict[str, torch.Tensor]:
    """The element-wise mean of the `model` states of several checkpoints.

    Floating-point entries are summed in float64 and cast back to their dtype; integer
    entries (e.g. BatchNorm's `num_batches_tracked`) use floor division as icefall does.
    Tied parameters stay tied in the result.

    Args:
      filenames: checkpoints written by `save_checkpoint` (or with a `model` key).
      device: where the states are loaded and averaged.
    Returns:
      A state dict for `model.load_state_dict`.
    """
    if not filenames:
        raise ValueError("average_checkpoints needs at least one checkpoint file")
    n = len(filenames)
    first = _load_model_state(filenames[0], device)

    owner: Dict[tuple, str] = {}  # storage -> first key that uses it
    alias: Dict[str, str] = {}  # tied key -> key holding the sum
    sums: Dict[str, torch.Tensor] = {}
    for k, v in first.items():
        sk = _storage_key(v)
        if sk is not None and sk in owner:
            alias[k] = owner[sk]
            continue
        if sk is not None:
            owner[sk] = k
        if v.is_floating_point():
            sums[k] = v.to(torch.float64)
        elif v.dtype != torch.bool and not v.is_complex():
            sums[k] = v.clone()

    for filename in filenames[1:]:
        state = _load_model_state(filename, device)
        if state.keys() != first.keys():
            diff = sorted(set(state.keys()) ^ set(first.keys()))[:5]
            raise ValueError(
                f"{filename} and {filenames[0]} hold different models (keys differ: {diff}); "
                "average only checkpoints of the same model"
            )
        for k in sums:
            sums[k] += state[k].to(sums[k].dtype)

    # Entries without a meaningful mean (bool, complex) come from the first checkpoint.
    avg: Dict[str, torch.Tensor] = {k: v for k, v in first.items() if k not in alias}
    for k, s in sums.items():
        avg[k] = (s / n).to(first[k].dtype) if s.is_floating_point() else s // n
    for k, target in alias.items():
        avg[k] = avg[target]
    return {k: avg[k] for k in first}


@torch.no_grad()
def update_averaged_model(
    params: Dict[str, Any], model_cur: nn.Module, model_avg: nn.Module
) -> None:
    """Fold the current model into the running average, in place.

    `model_avg = model_avg * (1 - w) + model_cur * w` with
    `w = params.average_period / params.batch_idx_train`. Called every `average_period`
    batches, this keeps `model_avg` equal to the mean of the models at batches
    `P, 2P, ..., batch_idx_train` (icefall's scheme). Only floating-point entries change.

    Args:
      params: has `average_period` and `batch_idx_train` (> 0).
      model_cur: the model being trained (DDP-wrapped or not).
      model_avg: the averaged model, usually a float64 copy of the model.
    """
    period, step = params["average_period"], params["batch_idx_train"]
    if step <= 0 or period <= 0:
        raise ValueError(
            f"update_averaged_model needs batch_idx_train > 0 and average_period > 0, "
            f"got {step} and {period}"
        )
    weight_cur = period / step
    weight_avg = 1.0 - weight_cur

    cur = unwrap_model(model_cur).state_dict()
    avg = model_avg.state_dict()
    seen = set()
    for k, v in avg.items():
        if not v.is_floating_point():
            continue
        sk = _storage_key(v)
        if sk is not None:
            if sk in seen:  # a tied parameter: already updated through its first key
                continue
            seen.add(sk)
        if k not in cur:
            raise KeyError(f"'{k}' is in the averaged model but not in the current model")
        v.mul_(weight_avg).add_(cur[k].to(device=v.device, dtype=v.dtype), alpha=weight_cur)


def average_checkpoints_with_averaged_model(
    filename_start: Pathlike,
    filename_end: Pathlike,
    device: torch.device = torch.device("cpu"),
) -> Dict[str, torch.Tensor]:
    """The mean of the models between two checkpoints, from their running averages.

    With `s`, `e` the checkpoints' `batch_idx_train` rounded down to multiples of
    `average_period`, `model_avg` at `e` is the mean of the models at `P, 2P, ..., e`, so
    `(avg_e * e - avg_s * s) / (e - s)` is the mean of the models at `s + P, ..., e`
    (icefall's `--use-averaged-model`). It is computed in float64 as
    `avg_e + (avg_e - avg_s) * s / (e - s)`, which never forms the large products.

    Args:
      filename_start: the earlier checkpoint (excluded from the range).
      filename_end: the later checkpoint (included).
      device: where the states are loaded and combined.
    Returns:
      A state dict in the dtypes of the end checkpoint's `model` entry.
    """
    ckpts = []
    for filename in (filename_start, filename_end):
        ckpt = load_safely(filename, map_location=device)
        missing = [k for k in ("model_avg", "batch_idx_train", "average_period") if k not in ckpt]
        if missing:
            raise ValueError(
                f"{filename} lacks {missing}, so it was not saved with an averaged model; "
                "decode with --use-averaged-model 0 instead"
            )
        ckpts.append(ckpt)
    start, end = ckpts
    period = start["average_period"]
    if end["average_period"] != period:
        raise ValueError(
            f"The checkpoints were trained with different average_period "
            f"({period} in {filename_start}, {end['average_period']} in {filename_end})"
        )
    s = (start["batch_idx_train"] // period) * period
    e = (end["batch_idx_train"] // period) * period
    if e <= s:
        raise ValueError(
            f"{filename_end} (batch {end['batch_idx_train']}) must be at least one "
            f"average_period ({period}) later than {filename_start} "
            f"(batch {start['batch_idx_train']}); choose a smaller --avg or later --epoch"
        )

    avg_s = strip_ddp_prefix(start["model_avg"])
    avg_e = strip_ddp_prefix(end["model_avg"])
    model_e = strip_ddp_prefix(end.get("model") or {})
    ratio = s / (e - s)
    out: Dict[str, torch.Tensor] = {}
    for k, v_e in avg_e.items():
        if not v_e.is_floating_point():
            out[k] = v_e
            continue
        v_e64 = v_e.to(torch.float64)
        mean = v_e64 + (v_e64 - avg_s[k].to(device=v_e.device, dtype=torch.float64)) * ratio
        dtype = model_e[k].dtype if k in model_e else v_e.dtype
        out[k] = mean.to(dtype)
    return out


def convert_to_plain(src: Pathlike, dst: Pathlike) -> List[str]:
    """Rewrite a checkpoint you trust as plain data that `load_safely` opens.

    Reads `src` with full unpickling (so run it only on files whose origin you trust), turns
    paths and numpy values into plain data, drops entries that are still not plain (named in
    the returned list), and writes `dst` atomically.
    """
    checkpoint = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{src} is not a checkpoint dict")
    out, dropped = {}, []
    for key, value in checkpoint.items():
        value = plain_data(value)
        try:
            buffer = io.BytesIO()
            torch.save(value, buffer)
            buffer.seek(0)
            torch.load(buffer, weights_only=True)
        except (pickle.PickleError, TypeError, AttributeError):
            dropped.append(key)
            continue
        out[key] = value
    atomic_save(out, dst)
    return dropped
