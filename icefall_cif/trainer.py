"""The training loop shared by every recipe's `zipformer_cif/train.py`.

A recipe supplies a :class:`Recipe` (how to build its model and which cuts it trains on);
everything else lives here once: DDP (`--world-size N` or torchrun), ScaledAdam + Eden, AMP,
model averaging, checkpoints and exact resume, bad-batch handling, tensorboard and progress logs,
and per-epoch validation (loss and greedy WER/CER).

Resume. `exp/checkpoint-<batch>.pt` holds, next to the model/optimizer/scheduler/scaler states,
`cur_epoch` and `batches_in_epoch` (batches the loop had taken from the DataLoader in that epoch)
and the random generators' states. `--start-batch` rebuilds the epoch's sampler, steps it past
those batches (:func:`fast_forward_sampler`) and restores the generators once the DataLoader
iterator exists. With `--num-workers 0` a resumed single-process run therefore computes exactly
what the uninterrupted run computes (tested bit for bit). Known differences otherwise: with
DataLoader workers, augmentation randomness lives in the workers, which restart with their
initial seeds; under DDP only rank 0's generator states are saved, so the other ranks' dropout
and augmentation draws differ after a resume. The data order is exact in every case.
"""
import argparse
import copy
import hashlib
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import kaldialign
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from icefall_cif.checkpoint import (
    find_checkpoints,
    remove_checkpoints,
    save_checkpoint,
    set_rng_state,
    strip_ddp_prefix,
    update_averaged_model,
)
from icefall_cif.datamodule import AsrDataModule, filter_cuts
from icefall_cif.decode.greedy import greedy_search
from icefall_cif.dist import cleanup_dist, get_world_size, is_torchrun, setup_dist
from icefall_cif.optim import Eden, ScaledAdam
from icefall_cif.recipe import Recipe
from icefall_cif.tokenizer import Tokenizer
from icefall_cif.utils import AttributeDict, MetricsTracker, get_tensorboard_writer, setup_logger, str2bool

ENCODER_PREFIXES = ("encoder_embed.", "encoder.")


class BadBatchError(RuntimeError):
    """Raised after too many consecutive batches with a non-finite loss, or a collapsed fp16 grad scale."""


def add_training_arguments(parser: argparse.ArgumentParser, default_lang_dir: str) -> None:
    """icefall's training options (names and defaults of its zipformer/train.py), plus ours."""
    g = parser.add_argument_group("Training", "icefall-compatible training options")
    g.add_argument("--world-size", type=int, default=1, help="Number of processes (GPUs) for DDP on this machine.")
    g.add_argument("--master-port", type=int, default=12354, help="Port for DDP rendezvous (--world-size > 1).")
    g.add_argument("--tensorboard", type=str2bool, default=True, help="Write tensorboard logs to exp-dir/tensorboard.")
    g.add_argument("--num-epochs", type=int, default=30)
    g.add_argument("--start-epoch", type=int, default=1,
                   help="Resume from exp-dir/epoch-(start-epoch - 1).pt when > 1.")
    g.add_argument("--start-batch", type=int, default=0,
                   help="Resume from exp-dir/checkpoint-<start-batch>.pt when > 0 (overrides --start-epoch); "
                        "-1 picks the newest checkpoint-*.pt.")
    g.add_argument("--exp-dir", type=Path, default=Path("zipformer_cif/exp"))
    g.add_argument("--lang-dir", type=Path, default=Path(default_lang_dir),
                   help="Token files: bpe.model and/or tokens.txt.")
    g.add_argument("--base-lr", type=float, default=0.045)
    g.add_argument("--lr-batches", type=float, default=7500)
    g.add_argument("--lr-epochs", type=float, default=3.5)
    g.add_argument("--warmup-batches", type=float, default=500.0, help="Eden's linear warm-up length.")
    g.add_argument("--ref-duration", type=float, default=600,
                   help="Reference batch duration (s): the model's schedules (dropout, balancers, ...) advance "
                        "by batch * max-duration * world-size / ref-duration, as in icefall.")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--use-fp16", type=str2bool, default=False, help="Mixed precision with float16 and a GradScaler.")
    g.add_argument("--use-bf16", type=str2bool, default=False, help="Mixed precision with bfloat16.")
    g.add_argument("--save-every-n", type=int, default=4000, help="Save checkpoint-<batch>.pt every N batches.")
    g.add_argument("--keep-last-k", type=int, default=30, help="Keep only the newest K checkpoint-*.pt files.")
    g.add_argument("--average-period", type=int, default=200,
                   help="Update the running averaged model every this many batches.")
    g.add_argument("--log-interval", type=int, default=50)
    g.add_argument("--log-level", type=str, default="info", choices=["debug", "info", "warning"],
                   help="'debug' also logs the cut ids of every batch (per rank under DDP).")
    g.add_argument("--max-bad-batches", type=int, default=20,
                   help="Stop after this many consecutive batches with inf/NaN loss.")
    g.add_argument("--valid-decode", type=str2bool, default=True,
                   help="Greedy-decode the validation set each epoch and log its WER/CER.")
    g.add_argument("--init-encoder", type=Path, default=None,
                   help="Initialise encoder_embed.* and encoder.* from an icefall zipformer checkpoint "
                        "(a fresh run only; ignored when resuming).")
    g.add_argument("--min-duration", type=float, default=1.0, help="Drop training cuts shorter than this (s).")
    g.add_argument("--max-cut-duration", type=float, default=20.0, help="Drop training cuts longer than this (s).")
    g.add_argument("--num-threads", type=int, default=1,
                   help="PyTorch intra-op threads per process (icefall uses 1); 0 = the CPU cores of this machine "
                        "divided by the processes on it. More threads only pay off on otherwise idle cores: on a "
                        "busy machine OpenMP's spinning threads made training 15x slower (bench/bench_train.py).")


def get_params() -> AttributeDict:
    """Values that are not command-line options but are saved in checkpoints."""
    return AttributeDict(
        best_train_loss=float("inf"),
        best_valid_loss=float("inf"),
        best_train_epoch=-1,
        best_valid_epoch=-1,
        batch_idx_train=0,
        cur_epoch=1,
        # Batches taken from the DataLoader in the current epoch (skipped bad ones included).
        batches_in_epoch=0,
        feature_dim=80,
        reset_interval=200,
    )


def check_options(params: AttributeDict) -> None:
    """Reject impossible option combinations before anything is started, naming each problem."""
    problems = []
    if params.use_fp16 and params.use_bf16:
        problems.append("--use-fp16 and --use-bf16 are exclusive: choose one")
    if params.world_size < 1:
        problems.append(f"--world-size must be >= 1, got {params.world_size}")
    elif params.world_size > 1 and torch.cuda.is_available() and not is_torchrun():
        if params.world_size > torch.cuda.device_count():
            problems.append(
                f"--world-size {params.world_size} needs one GPU per process but {torch.cuda.device_count()} "
                f"are visible: lower --world-size"
            )
    if params.start_epoch < 1:
        problems.append(f"--start-epoch must be >= 1, got {params.start_epoch}")
    if params.num_epochs < params.start_epoch:
        problems.append(f"--num-epochs ({params.num_epochs}) is smaller than --start-epoch ({params.start_epoch})")
    if params.start_batch < -1:
        problems.append(f"--start-batch must be -1 (newest checkpoint), 0 (none) or a batch index, got "
                        f"{params.start_batch}")
    if params.max_duration is not None and params.max_duration <= 0:
        problems.append(f"--max-duration must be positive, got {params.max_duration}")
    for name in ("save_every_n", "keep_last_k", "average_period", "log_interval", "max_bad_batches"):
        if params[name] < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {params[name]}")
    if params.num_threads < 0:
        problems.append(f"--num-threads must be >= 0 (0 = automatic), got {params.num_threads}")
    if params.ref_duration <= 0:
        problems.append(f"--ref-duration must be positive, got {params.ref_duration}")
    if problems:
        raise ValueError("Invalid training options:\n  " + "\n  ".join(problems))


def fix_random_seed(seed: int) -> None:
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


def token_table_digest(tokenizer: Tokenizer) -> str:
    """A short hash of the token table, saved in checkpoints to catch a different token set of the same size."""
    text = "\n".join(f"{i} {tokenizer.id2token[i]}" for i in range(tokenizer.vocab_size))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_token_table(saved: Dict[str, Any], tokenizer: Tokenizer, what: str, option_hint: str) -> None:
    """Raise a ValueError when the checkpoint `saved` was trained with another token set than `tokenizer`."""
    saved_vocab = saved.get("vocab_size")
    if saved_vocab is not None and saved_vocab != tokenizer.vocab_size:
        raise ValueError(
            f"{what} was trained with {saved_vocab} tokens but {tokenizer.lang_dir} has {tokenizer.vocab_size}: "
            f"{option_hint}"
        )
    saved_digest = saved.get("token_table_digest")
    if saved_digest is not None and saved_digest != token_table_digest(tokenizer):
        raise ValueError(
            f"{what} was trained with a different token table than {tokenizer.lang_dir} (same size, other "
            f"tokens, e.g. a re-trained bpe.model): {option_hint}"
        )


def autocast_context(params: AttributeDict, device: torch.device):
    if params.use_fp16:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if params.use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Tell every module with a `batch_count` (Zipformer's ScheduledFloat) where training is.

    Also names modules that have a `name` attribute after their path, for their log messages.
    """
    for name, module in unwrap(model).named_modules():
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
        if hasattr(module, "name"):
            module.name = name


def adaptive_module_state(model: nn.Module) -> Dict[str, float]:
    """Module state that adapts during training but is not in `state_dict()`.

    Zipformer's Whiten modules (as icefall's) switch their checking probability `prob` between
    two values in backward; a resume that reset it would diverge from the uninterrupted run.
    Collected as {module path: value} for every module whose `prob` is a plain float.
    """
    return {
        name: module.prob
        for name, module in unwrap(model).named_modules()
        if isinstance(getattr(module, "prob", None), float)
    }


def load_adaptive_module_state(model: nn.Module, state: Dict[str, float]) -> None:
    """Restore what :func:`adaptive_module_state` collected."""
    for name, module in unwrap(model).named_modules():
        if name in state:
            module.prob = state[name]


def adjusted_batch_count(params: AttributeDict, world_size: int) -> float:
    """Batches so far in units of a `--ref-duration` batch (icefall's get_adjusted_batch_count)."""
    return params.batch_idx_train * (params.max_duration * world_size) / params.ref_duration


def fast_forward_sampler(sampler, epoch: int, num_batches: int) -> float:
    """Position a Lhotse sampler after the first `num_batches` batches of `epoch` (0-based).

    Works for every Lhotse CutSampler, with or without DDP, and is independent of how far the
    DataLoader had prefetched when the checkpoint was taken (the sampler's own state_dict counts
    prefetched batches too, and SimpleCutSampler's restore counts only this rank's cuts).

    Returns:
      The audio seconds of the skipped batches (for the progress ETA).
    """
    sampler.set_epoch(epoch)
    batches = iter(sampler)
    seconds = 0.0
    for i in range(num_batches):
        try:
            cuts = next(batches)
        except StopIteration:
            raise ValueError(
                f"The checkpoint was taken after {num_batches} batches of epoch {epoch + 1}, but the training "
                f"data now gives only {i}: resume with the same data options (--manifest-dir, --max-duration, "
                f"--min-duration, --max-cut-duration, ...), or from an epoch checkpoint with --start-epoch"
            ) from None
        seconds += sum(c.duration for c in cuts)
    # A Lhotse sampler restarts its epoch on the next iter() unless flagged as just restored
    # (the flag its own load_state_dict sets after fast-forwarding).
    sampler._just_restored_state = True
    return seconds


def load_init_encoder(model: nn.Module, path: Path) -> int:
    """Copy `encoder_embed.*` and `encoder.*` from a checkpoint (icefall's or ours) into `model`.

    Returns:
      The number of tensors copied. Every other parameter keeps its value.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--init-encoder {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    state = strip_ddp_prefix(state)
    wanted = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    if not wanted:
        raise ValueError(f"--init-encoder {path}: no encoder_embed.* / encoder.* weights in this checkpoint")
    own = model.state_dict()
    own_encoder = [k for k in own if k.startswith(ENCODER_PREFIXES)]
    missing = [k for k in own_encoder if k not in wanted]
    unexpected = [k for k in wanted if k not in own]
    mismatched = [k for k, v in wanted.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"--init-encoder {path}: its encoder differs from the one built from these options "
            f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}; "
            f"{len(mismatched)} shape mismatches, e.g. {mismatched[:3]}). Pass the --encoder-config and encoder "
            f"options (--num-encoder-layers, --encoder-dim, ...) the checkpoint was trained with."
        )
    model.load_state_dict(wanted, strict=False)
    logging.info(f"Initialised the encoder from {path} ({len(wanted)} tensors)")
    return len(wanted)


def resume_checkpoint_path(params: AttributeDict) -> Optional[Path]:
    """The checkpoint named by --start-batch / --start-epoch, or None for a fresh start."""
    if params.start_batch == -1:
        found = find_checkpoints(params.exp_dir)
        if not found:
            raise FileNotFoundError(
                f"--start-batch -1: no checkpoint-*.pt in {params.exp_dir}; check --exp-dir, or start with "
                f"--start-batch 0"
            )
        return Path(found[0])
    if params.start_batch > 0:
        filename = params.exp_dir / f"checkpoint-{params.start_batch}.pt"
    elif params.start_epoch > 1:
        filename = params.exp_dir / f"epoch-{params.start_epoch - 1}.pt"
    else:
        return None
    if not filename.is_file():
        available = sorted(p.name for p in params.exp_dir.glob("*.pt")) if params.exp_dir.is_dir() else []
        raise FileNotFoundError(
            f"Cannot resume: {filename} does not exist (available: {available or 'none'}); check --exp-dir, "
            f"--start-epoch and --start-batch"
        )
    return filename


def resume(
    params: AttributeDict, model: nn.Module, model_avg: Optional[nn.Module], tokenizer: Tokenizer
) -> Optional[Dict[str, Any]]:
    """Load the checkpoint to resume from into the model (and averaged model); return its contents.

    Updates params: batch counters and best losses; for --start-batch also the epoch to continue
    (`start_epoch`) and the batches of it already done (`batches_in_epoch`).
    """
    filename = resume_checkpoint_path(params)
    if filename is None:
        return None
    logging.info(f"Resuming from {filename}")
    saved = torch.load(filename, map_location="cpu", weights_only=False)
    check_token_table(saved, tokenizer, str(filename), "point --lang-dir at the token set the checkpoint was "
                      "trained with (see its log-train-* 'Options' line)")
    try:
        model.load_state_dict(strip_ddp_prefix(saved["model"]), strict=True)
        if model_avg is not None and saved.get("model_avg") is not None:
            model_avg.load_state_dict(strip_ddp_prefix(saved["model_avg"]), strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{filename} does not fit the model built from these options: pass the model options it was trained "
            f"with (--encoder-config, --decoder-type, ...; see the 'Options' line of {params.exp_dir}/log/"
            f"log-train-*). Details: {str(e)[:400]}"
        ) from None
    load_adaptive_module_state(model, saved.get("adaptive_module_state", {}))
    for key in ("batch_idx_train", "best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch"):
        if key in saved:
            params[key] = saved[key]
    if params.start_batch != 0:
        params.start_epoch = saved["cur_epoch"]
        params.batches_in_epoch = saved.get("batches_in_epoch", 0)
    else:
        params.batches_in_epoch = 0
    saved["_filename"] = str(filename)
    return saved


def compute_loss(
    params: AttributeDict,
    model: nn.Module,
    tokenizer: Tokenizer,
    batch: Dict[str, Any],
    device: torch.device,
) -> Tuple[torch.Tensor, MetricsTracker]:
    """Forward one batch.

    Args:
      batch: a K2SpeechRecognitionDataset batch: `inputs` (N, T, 80), `supervisions`.
    Returns:
      The total loss (summed over utterances, a scalar tensor) and its accounting per component.
    """
    feature = batch["inputs"].to(device)
    supervisions = batch["supervisions"]
    feature_lens = supervisions["num_frames"].to(device)
    y = tokenizer.encode(supervisions["text"])
    losses = model(feature, feature_lens, y, batch_idx_train=params.batch_idx_train)
    info = MetricsTracker(normalizers={"ce_loss": "tokens", "quantity_loss": "utterances"})
    # Encoder output frames at 25 Hz (Conv2dSubsampling then Zipformer's 2x), the loss normalizer.
    info["frames"] = float(((feature_lens - 7) // 2 // 2).sum())
    info["tokens"] = float(sum(len(t) for t in y))
    info["utterances"] = float(feature.size(0))
    for name, value in losses.items():
        info[name] = value.detach().float().item()
    return losses["loss"], info


def batch_cut_ids(batch: Dict[str, Any]) -> List[str]:
    cuts = batch["supervisions"].get("cut")
    return [c.id for c in cuts] if cuts is not None else []


@torch.no_grad()
def validate(
    params: AttributeDict,
    model: nn.Module,
    tokenizer: Tokenizer,
    valid_dl: torch.utils.data.DataLoader,
    device: torch.device,
    world_size: int,
) -> MetricsTracker:
    """Validation loss, and the greedy WER/CER of the validation set when --valid-decode.

    Under DDP each rank scores its share of the set and the sums are all-reduced.
    """
    model.eval()
    tot = MetricsTracker()
    errors = ref_units = 0
    for batch in valid_dl:
        with autocast_context(params, device):
            _, info = compute_loss(params, model, tokenizer, batch, device)
        tot = tot + info
        if params.valid_decode:
            inner = unwrap(model)
            feature = batch["inputs"].to(device)
            lens = batch["supervisions"]["num_frames"].to(device)
            encoder_out, encoder_out_lens = inner.forward_encoder(feature, lens)
            hyps = greedy_search(inner, encoder_out, encoder_out_lens)
            for ref_text, hyp_ids in zip(batch["supervisions"]["text"], hyps):
                ref = tokenizer.text_units(ref_text)
                hyp = tokenizer.text_units(tokenizer.decode(hyp_ids))
                errors += kaldialign.edit_distance(ref, hyp)["total"]
                ref_units += len(ref)
    if params.valid_decode:
        tot["errors"] = float(errors)
        tot["ref_units"] = float(ref_units)
    if world_size > 1:
        tot.reduce(device)
    model.train()
    return tot


class GradScaleWatchdog:
    """icefall's fp16 guard: grow a collapsed grad scale, fail loudly when it keeps collapsing."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def check(self, batch_idx: int, params: AttributeDict, save_bad_model) -> None:
        """Call after each optimizer step; `batch_idx` counts the batches of this epoch."""
        if not self.scaler.is_enabled():
            return
        scale = self.scaler.get_scale()
        if scale < 0.01:
            logging.warning(f"Grad scale is small: {scale:.3g}")
        if scale < 1.0e-05:
            save_bad_model()
            raise BadBatchError(
                f"Grad scale collapsed to {scale:.3g} at batch {params.batch_idx_train}: fp16 training diverged. "
                f"Try --use-fp16 0 or --use-bf16 1, or a smaller --base-lr."
            )
        # GradScaler only grows the scale after `growth_interval` clean steps; icefall nudges a
        # small scale up sooner, more often the smaller it is.
        if (
            (batch_idx % 25 == 0 and scale < 2.0)
            or (batch_idx % 100 == 0 and scale < 8.0)
            or (batch_idx % 400 == 0 and scale < 32.0)
        ):
            self.scaler.update(scale * 2.0)


def all_ranks_finite(loss: torch.Tensor, world_size: int) -> bool:
    """Whether the loss is finite on every rank (all ranks must skip a batch together under DDP)."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() > 0)


class TrainingState:
    """What one training process holds: the model, its optimizer and the rest of the loop's state."""

    def __init__(
        self,
        params: AttributeDict,
        model: nn.Module,
        model_avg: Optional[nn.Module],
        optimizer: ScaledAdam,
        scheduler: Eden,
        scaler: torch.amp.GradScaler,
        tokenizer: Tokenizer,
        device: torch.device,
        rank: int,
        world_size: int,
        tb_writer,
    ):
        self.params = params
        self.model = model
        self.model_avg = model_avg
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.tokenizer = tokenizer
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.tb_writer = tb_writer

    def save(self, filename: Path, sampler) -> None:
        """Everything needed to resume (rank 0 writes; the sampler's own state is informational:
        a resume positions a fresh sampler from `cur_epoch` and `batches_in_epoch`)."""
        self.params.adaptive_module_state = adaptive_module_state(self.model)
        save_checkpoint(
            filename,
            model=unwrap(self.model),
            model_avg=self.model_avg,
            params=self.params,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            sampler=sampler,
            rank=self.rank,
        )

    def save_bad_model(self) -> Path:
        filename = self.params.exp_dir / f"bad-model-{self.rank}.pt"
        # Every rank writes its own file, hence rank=0 here.
        save_checkpoint(filename, model=unwrap(self.model), params=self.params, rank=0)
        return filename


def train_one_epoch(
    state: TrainingState,
    batches: Iterator[Dict[str, Any]],
    sampler,
    epoch_audio_seconds: float,
    audio_seconds_done: float = 0.0,
) -> MetricsTracker:
    """Train on the remaining batches of the current epoch.

    Args:
      batches: the epoch's DataLoader iterator (possibly fast-forwarded).
      sampler: the DataLoader's sampler, saved in batch checkpoints.
      epoch_audio_seconds: audio this rank sees in a whole epoch (for the ETA).
      audio_seconds_done: audio of the batches skipped by a mid-epoch resume.
    Returns:
      The decaying sum of the training losses (icefall's tot_loss).
    """
    params, model, optimizer, scheduler, scaler = (
        state.params, state.model, state.optimizer, state.scheduler, state.scaler,
    )
    model.train()
    tot = MetricsTracker()
    watchdog = GradScaleWatchdog(scaler)
    consecutive_bad = skipped = 0
    t_start = t_interval = time.time()
    audio_at_start = audio_seconds_done
    frames_interval = 0.0

    for batch in batches:
        params.batches_in_epoch += 1
        cut_ids = batch_cut_ids(batch)
        logging.debug(f"Epoch {params.cur_epoch}, batch {params.batches_in_epoch}: cuts {cut_ids}")
        set_batch_count(model, adjusted_batch_count(params, state.world_size))
        with autocast_context(params, state.device):
            loss, info = compute_loss(params, model, state.tokenizer, batch, state.device)

        if not all_ranks_finite(loss, state.world_size):
            skipped += 1
            consecutive_bad += 1
            logging.warning(
                f"Epoch {params.cur_epoch}, batch {params.batches_in_epoch}: loss is {loss.item()} "
                f"(on this or another rank); skipping the batch ({skipped} skipped in this epoch). "
                f"Cuts: {cut_ids}"
            )
            if state.world_size > 1:
                # DDP expects a backward after each forward; a zero-weighted one keeps the ranks'
                # gradient reductions in step, and its gradients are discarded below.
                (loss * 0.0).backward()
            optimizer.zero_grad()
            if consecutive_bad >= params.max_bad_batches:
                dump = params.exp_dir / f"bad-batch-{state.rank}.pt"
                torch.save(batch, dump)
                bad_model = state.save_bad_model()
                raise BadBatchError(
                    f"{consecutive_bad} consecutive batches had an inf/NaN loss (the last one's cuts: {cut_ids}). "
                    f"The batch is in {dump} and the model in {bad_model}. Check those cuts, lower --base-lr, "
                    f"or train without --use-fp16 (--max-bad-batches sets this limit)."
                )
            continue
        consecutive_bad = 0
        params.batch_idx_train += 1
        audio_seconds_done += float(batch["supervisions"]["num_frames"].sum()) / 100.0

        scaler.scale(loss).backward()
        scheduler.step_batch(params.batch_idx_train)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        watchdog.check(params.batches_in_epoch, params, state.save_bad_model)

        tot = tot * (1 - 1 / params.reset_interval) + info
        frames_interval += info["frames"]

        if state.model_avg is not None and params.batch_idx_train % params.average_period == 0:
            update_averaged_model(params=params, model_cur=unwrap(model), model_avg=state.model_avg)

        if params.batch_idx_train % params.save_every_n == 0:
            state.save(params.exp_dir / f"checkpoint-{params.batch_idx_train}.pt", sampler)
            remove_checkpoints(params.exp_dir, topk=params.keep_last_k, rank=state.rank)

        if params.batch_idx_train % params.log_interval == 0:
            now = time.time()
            rate = (audio_seconds_done - audio_at_start) / max(now - t_start, 1e-6)  # audio s per s, this rank
            eta = max(epoch_audio_seconds - audio_seconds_done, 0.0) / rate if rate > 0 else float("nan")
            frames_per_s = frames_interval / max(now - t_interval, 1e-6)
            t_interval, frames_interval = now, 0.0
            lr = scheduler.get_last_lr()[0]
            logging.info(
                f"Epoch {params.cur_epoch}, batch {params.batches_in_epoch}, global {params.batch_idx_train}: "
                f"loss[{info}], tot_loss[{tot}], batch size {len(cut_ids) or batch['inputs'].size(0)}, "
                f"lr {lr:.3e}, {frames_per_s:.0f} frames/s, {rate * state.world_size:.2f}x real time, "
                f"epoch ETA {eta / 60:.1f} min"
                + (f", grad scale {scaler.get_scale():.3g}" if scaler.is_enabled() else "")
            )
            if state.tb_writer is not None:
                state.tb_writer.add_scalar("train/learning_rate", lr, params.batch_idx_train)
                info.write_summary(state.tb_writer, "train/current_", params.batch_idx_train)
                tot.write_summary(state.tb_writer, "train/tot_", params.batch_idx_train)

    if skipped:
        logging.warning(f"Epoch {params.cur_epoch}: skipped {skipped} batches with an inf/NaN loss")
    return tot


def end_of_epoch(state: TrainingState, tot: MetricsTracker, valid_dl) -> None:
    """Validate, log and track the best losses."""
    params, tb_writer = state.params, state.tb_writer
    valid_info = validate(params, state.model, state.tokenizer, valid_dl, state.device, state.world_size)
    valid_loss = valid_info.norm_items().get("loss", float("nan"))
    message = f"Epoch {params.cur_epoch}, validation: {valid_info}"
    if params.valid_decode and valid_info["ref_units"] > 0:
        rate = 100.0 * valid_info["errors"] / valid_info["ref_units"]
        message += f", greedy {state.tokenizer.error_rate_name} {rate:.2f}%"
        if tb_writer is not None:
            tb_writer.add_scalar(f"valid/{state.tokenizer.error_rate_name}", rate, params.batch_idx_train)
    logging.info(message)
    if tb_writer is not None:
        valid_info.write_summary(tb_writer, "valid/", params.batch_idx_train)
    if valid_loss < params.best_valid_loss:
        params.best_valid_epoch = params.cur_epoch
        params.best_valid_loss = valid_loss
    train_loss = tot.norm_items().get("loss", float("nan"))
    if train_loss < params.best_train_loss:
        params.best_train_epoch = params.cur_epoch
        params.best_train_loss = train_loss


def run(rank: int, world_size: int, args: argparse.Namespace, recipe: Recipe) -> None:
    """One training process (rank `rank` of `world_size`)."""
    params = get_params()
    params.update(vars(args))
    if world_size > 1:
        setup_dist(rank, world_size, params.master_port)
    params.exp_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(params.exp_dir / "log" / "log-train", log_level=params.log_level)
    processes_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    num_threads = set_num_threads(params.num_threads, processes_on_node)
    logging.info(f"Training {recipe.name} on {world_size} process(es), {num_threads} thread(s) each")
    check_options(params)
    fix_random_seed(params.seed)

    tokenizer = Tokenizer.from_lang_dir(params.lang_dir)
    params.vocab_size = tokenizer.vocab_size
    params.blank_id = tokenizer.blank_id
    params.token_table_digest = token_table_digest(tokenizer)
    logging.info(f"Options: {dict(params)}")

    # The cut files first, so that a missing manifest fails before anything slow happens.
    datamodule = AsrDataModule(args)
    train_cuts = datamodule.train_cuts()
    dev_cuts = datamodule.dev_cuts()

    model = recipe.get_model(params)
    logging.info(f"Number of model parameters: {sum(p.numel() for p in model.parameters())}")
    resuming = params.start_batch != 0 or params.start_epoch > 1
    if params.init_encoder is not None:
        if resuming:
            logging.warning("--init-encoder is ignored when resuming: the checkpoint has the encoder weights")
        else:
            load_init_encoder(model, params.init_encoder)
    # The running average lives on rank 0 in float64, as in icefall.
    model_avg = copy.deepcopy(model).to(torch.float64) if rank == 0 else None
    saved = resume(params, model, model_avg, tokenizer)
    mid_epoch = saved is not None and params.start_batch != 0

    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if params.use_fp16 and device.type == "cpu":
        logging.warning("--use-fp16 on a CPU is very slow (float16 kernels are emulated); --use-bf16 1 is the CPU's "
                        "mixed precision")
    model.to(device)
    if world_size > 1:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None, find_unused_parameters=True)

    optimizer = ScaledAdam(unwrap(model).named_parameters(), lr=params.base_lr, clipping_scale=2.0)
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs, warmup_batches=params.warmup_batches)
    scaler = torch.amp.GradScaler(device.type, enabled=params.use_fp16, init_scale=1.0)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("grad_scaler") is not None:
            scaler.load_state_dict(saved["grad_scaler"])

    train_cuts = filter_cuts(
        train_cuts,
        tokenizer,
        min_duration=params.min_duration,
        max_duration=params.max_cut_duration,
        cif_downsample=params.cif_downsample,
    )
    epoch_audio_seconds = sum(c.duration for c in train_cuts) / world_size
    train_dl = datamodule.train_dataloaders(train_cuts)
    valid_dl = datamodule.valid_dataloaders(dev_cuts)

    if device.type == "cuda" and not mid_epoch:
        scan_pessimistic_batches_for_oom(params, model, tokenizer, optimizer, train_dl, device)

    tb_writer = get_tensorboard_writer(params.exp_dir / "tensorboard") if params.tensorboard and rank == 0 else None
    state = TrainingState(
        params, model, model_avg, optimizer, scheduler, scaler, tokenizer, device, rank, world_size, tb_writer
    )
    try:
        train_epochs(state, train_dl, valid_dl, saved if mid_epoch else None, epoch_audio_seconds)
    finally:
        if tb_writer is not None:
            tb_writer.close()
    logging.info("Done!")
    if world_size > 1:
        dist.barrier()
        cleanup_dist()


def train_epochs(
    state: TrainingState,
    train_dl: torch.utils.data.DataLoader,
    valid_dl: torch.utils.data.DataLoader,
    mid_epoch_checkpoint: Optional[Dict[str, Any]],
    epoch_audio_seconds: float,
) -> None:
    """Epochs --start-epoch..--num-epochs; the first continues `mid_epoch_checkpoint` if given."""
    params = state.params
    for epoch in range(params.start_epoch, params.num_epochs + 1):
        params.cur_epoch = epoch
        state.scheduler.step_epoch(epoch - 1)
        continuing = mid_epoch_checkpoint is not None and epoch == params.start_epoch
        skipped_seconds = 0.0
        if continuing:
            skipped_seconds = fast_forward_sampler(train_dl.sampler, epoch - 1, params.batches_in_epoch)
            logging.info(f"Continuing epoch {epoch} after its first {params.batches_in_epoch} batches")
        else:
            fix_random_seed(params.seed + epoch - 1)
            train_dl.sampler.set_epoch(epoch - 1)
            params.batches_in_epoch = 0
        if state.tb_writer is not None:
            state.tb_writer.add_scalar("train/epoch", epoch, params.batch_idx_train)
        batches = iter(train_dl)
        if continuing:
            # After iter(): creating a DataLoader iterator draws a seed from the global generator,
            # which the original run did at the start of the epoch, not here.
            set_rng_state(mid_epoch_checkpoint["rng_state"])
        tot = train_one_epoch(state, batches, train_dl.sampler, epoch_audio_seconds, skipped_seconds)
        params.batches_in_epoch = 0
        end_of_epoch(state, tot, valid_dl)
        state.save(params.exp_dir / f"epoch-{epoch}.pt", train_dl.sampler)


def scan_pessimistic_batches_for_oom(
    params: AttributeDict,
    model: nn.Module,
    tokenizer: Tokenizer,
    optimizer: ScaledAdam,
    train_dl: torch.utils.data.DataLoader,
    device: torch.device,
) -> None:
    """Run forward+backward on the largest batches first so an OOM shows up now, with advice."""
    from lhotse.dataset import find_pessimistic_batches

    logging.info("Sanity check: trying the most memory-hungry batches (GPU only)")
    batches, crit_values = find_pessimistic_batches(train_dl.sampler)
    for criterion, cuts in batches.items():
        batch = train_dl.dataset[cuts]
        try:
            with autocast_context(params, device):
                loss, _ = compute_loss(params, model, tokenizer, batch, device)
            loss.backward()
            optimizer.zero_grad()
        except torch.OutOfMemoryError:
            raise RuntimeError(
                f"Out of GPU memory on the pessimistic batch '{criterion}' ({crit_values[criterion]}). "
                f"Reduce --max-duration (now {params.max_duration})."
            ) from None
    logging.info(f"Max memory allocated so far: {torch.cuda.max_memory_allocated() // 2**20} MB")


def get_parser(recipe: Recipe, description: str = "") -> argparse.ArgumentParser:
    """All options of a recipe's train.py: training, model, data."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, recipe.default_lang_dir)
    recipe.add_model_arguments(parser)
    AsrDataModule.add_arguments(parser)
    parser.set_defaults(corpus=recipe.name)
    return parser


def main(recipe: Recipe, description: str = "") -> None:
    """Entry point of a recipe's train.py: parse the options and start training."""
    launch(get_parser(recipe, description).parse_args(), recipe)


def launch(args: argparse.Namespace, recipe: Recipe) -> None:
    """Start training: torchrun's environment if present, else `--world-size` local processes."""
    check_options(AttributeDict(vars(args)))
    if is_torchrun():
        run(int(os.environ["RANK"]), get_world_size(), args, recipe)
    elif args.world_size > 1:
        mp.spawn(run, args=(args.world_size, args, recipe), nprocs=args.world_size, join=True)
    else:
        run(rank=0, world_size=1, args=args, recipe=recipe)
