"""The training loop shared by every recipe's `zipformer_cif/train.py`.

A recipe supplies a :class:`icefall_cif.recipe.Recipe` (its corpus, its model config and how to
build the model); the loop sees the model only through `icefall_cif.model_contract.CifModel`.
Everything else lives here once: DDP (`--world-size N` or torchrun), ScaledAdam + Eden, AMP,
model averaging, checkpoints and exact resume (resume.py), preemption on SIGTERM/SIGUSR1
(preemption.py), bad-batch handling, tensorboard, progress logs with JSON-lines records
(records.py), and per-epoch validation (loss, greedy WER/CER, CIF fire-count error).

Exactness of a resume: with `--num-workers 0` a resumed run computes exactly what the
uninterrupted run computes, in one process and under DDP, where every rank's generator and
adaptive states are saved (`rank_states`); both are tested bit for bit. With DataLoader workers,
augmentation randomness lives in the workers, which restart with their initial seeds, so it
differs after a resume; the data order is exact in every case.
"""
import argparse
import copy
import dataclasses
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
    get_rng_state,
    remove_checkpoints,
    save_checkpoint,
    set_rng_state,
    update_averaged_model,
)
from icefall_cif.config import LossConfig, config_from_options, config_to_dict
from icefall_cif.datamodule import AsrDataModule, filter_cuts, restore_sampler_position
from icefall_cif.decode.greedy import greedy_search
from icefall_cif.dist import cleanup_dist, get_local_rank, get_world_size, is_torchrun, setup_dist, unwrap_model
from icefall_cif.distill import TeacherFeatures, teacher_dim
from icefall_cif.kd import KdTeacher
from icefall_cif.model_contract import check_model, weighted_loss
from icefall_cif.optim import Eden, ScaledAdam
from icefall_cif.recipe import Recipe
from icefall_cif.tokenizer import Tokenizer, token_table
from icefall_cif.training.options import check_options, get_params, get_parser
from icefall_cif.training.preemption import Preempted, PreemptionFlag, ignore_in_launcher
from icefall_cif.training.records import TrainingRecords
from icefall_cif.training.resume import load_init_encoder, own_rank_state, resume
from icefall_cif.utils import (
    AttributeDict,
    MetricsTracker,
    fix_random_seed,
    get_tensorboard_writer,
    pad_token_ids,
    set_num_threads,
    setup_logger,
)


class BadBatchError(RuntimeError):
    """Raised after too many consecutive batches with a non-finite loss, or a collapsed fp16 grad scale."""


def autocast_context(params: AttributeDict, device: torch.device):
    if params.use_fp16:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if params.use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def adjusted_batch_count(params: AttributeDict, world_size: int) -> float:
    """Batches so far in units of a `--ref-duration` batch (icefall's get_adjusted_batch_count)."""
    return params.batch_idx_train * (params.max_duration * world_size) / params.ref_duration


def compute_loss(
    params: AttributeDict,
    model: nn.Module,
    tokenizer: Tokenizer,
    batch: Dict[str, Any],
    device: torch.device,
    loss_config: LossConfig,
    kd_teacher: Optional[KdTeacher] = None,
) -> Tuple[torch.Tensor, MetricsTracker]:
    """Forward one batch and weight its losses (warm-up schedules included).

    Args:
      model: a CifModel, possibly DDP-wrapped.
      batch: a K2SpeechRecognitionDataset batch: `inputs` (N, T, 80), `supervisions`, and with
        --plm-manifest `teacher` (datamodule.TeacherDataset), passed to the model.
      kd_teacher: the --kd-teacher-checkpoint model; its outputs on the batch go to the model
        when `loss_config` turns knowledge transfer on.
    Returns:
      The total loss (summed over utterances, a scalar tensor) and its accounting per component.
      Per-token losses (CE, alignment, ACD, LRD) are reported per token, the quantity loss per
      utterance, the rest per CIF frame.
    """
    feature = batch["inputs"].to(device)
    supervisions = batch["supervisions"]
    feature_lens = supervisions["num_frames"].to(device)
    y = tokenizer.encode(supervisions["text"])
    inner = unwrap_model(model)
    extra = {}
    if "teacher" in batch:
        teacher = TeacherFeatures(batch["teacher"]["feats"], batch["teacher"]["lens"])
        check_teacher_rows(teacher, y, batch)
        extra["teacher"] = teacher.to(device)
    if loss_config.transfers_knowledge:
        if kd_teacher is None:
            raise ValueError("--kd-frame-scale / --kd-seq-scale > 0 need --kd-teacher-checkpoint")
        y_padded = pad_token_ids(y, inner.blank_id, device)
        y_lens = torch.tensor([len(t) for t in y], dtype=torch.int64, device=device)
        extra["kd"] = kd_teacher.targets(feature, feature_lens, y_padded, y_lens,
                                         token_level=loss_config.kd_seq_scale > 0, nbest=loss_config.kd_nbest)
    losses = model(feature, feature_lens, y, loss_config, **extra)
    loss = weighted_loss(inner, losses, loss_config, params.batch_idx_train)
    info = MetricsTracker(normalizers={"ce_loss": "tokens", "token_ce_loss": "tokens", "cif_align_loss": "tokens",
                                     "acd_loss": "tokens", "lrd_loss": "tokens", "kd_seq_loss": "tokens", "kd_nbest_loss": "tokens",
                                     "cmlm_loss": "tokens", "quantity_loss": "utterances"})
    # The CIF frames the model integrates over: the per-frame loss normaliser.
    info["frames"] = float(inner.num_output_frames(feature_lens).sum())
    info["tokens"] = float(sum(len(t) for t in y))
    info["utterances"] = float(feature.size(0))
    for name, value in losses.items():
        info[name] = value.detach().float().item()
    info["loss"] = loss.detach().float().item()
    return loss, info


def check_teacher_rows(teacher: TeacherFeatures, y: List[List[int]], batch: Dict[str, Any]) -> None:
    """Raise a ValueError naming the cuts whose teacher vectors are not one per token of `y`
    (features extracted with another lang dir, or an edited transcript)."""
    wrong = [i for i, (rows, tokens) in enumerate(zip(teacher.lens.tolist(), y)) if rows != len(tokens)]
    if not wrong:
        return
    ids = batch_cut_ids(batch) or [f"#{i} of the batch" for i in range(len(y))]
    details = ", ".join(f"{ids[i]} ({teacher.lens[i]} rows, {len(y[i])} tokens)" for i in wrong)
    raise ValueError(
        f"Teacher features do not match the tokens of cut(s) {details}: --plm-manifest was extracted with "
        f"another --lang-dir or from other transcripts; run local/extract_plm_feats.py again with this --lang-dir"
    )


def distillation_dims(params: AttributeDict, loss_config: LossConfig) -> Tuple[int, int]:
    """(acd_teacher_dim, lrd_teacher_dim) of the model: the teacher's D for each distillation
    loss that is on (read from the first cut of --plm-manifest), else 0."""
    if not loss_config.distills:
        return 0, 0
    from lhotse import load_manifest_lazy

    path = Path(params.plm_manifest)
    if not path.is_file():
        raise FileNotFoundError(f"--plm-manifest {path} not found: write it with local/extract_plm_feats.py")
    dim = teacher_dim(load_manifest_lazy(path), path)
    logging.info(f"Distillation from the {dim}-dim teacher vectors of {path}: ACD x {loss_config.acd_loss_scale}, "
                 f"LRD x {loss_config.lrd_loss_scale}")
    return (dim if loss_config.acd_loss_scale > 0 else 0), (dim if loss_config.lrd_loss_scale > 0 else 0)


def dumpable_batch(batch: Dict[str, Any]) -> Dict[str, Any]:
    """The batch as plain data (its cuts as dicts), so the dump opens with `weights_only=True`."""
    supervisions = {
        k: [c.to_dict() for c in v] if k == "cut" else v for k, v in batch["supervisions"].items()
    }
    return {**batch, "supervisions": supervisions}


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
    loss_config: LossConfig,
) -> MetricsTracker:
    """Validation loss, and the greedy WER/CER of the validation set when --valid-decode.

    Under DDP each rank scores its share of the set and the sums are all-reduced. The
    distillation and knowledge-transfer losses are left out (the validation cuts have no teacher
    features, and the teacher is not run on them), so the validation loss of a distilled run
    compares with an undistilled one's.
    """
    loss_config = dataclasses.replace(loss_config, acd_loss_scale=0.0, lrd_loss_scale=0.0, kd_frame_scale=0.0,
                                      kd_seq_scale=0.0, kd_nbest=0)
    model.eval()
    tot = MetricsTracker()
    errors = ref_units = 0
    fire_error = fire_abs_error = fires_exact = 0.0
    for batch in valid_dl:
        with autocast_context(params, device):
            _, info = compute_loss(params, model, tokenizer, batch, device, loss_config)
        tot = tot + info
        if params.valid_decode:
            inner = unwrap_model(model)
            feature = batch["inputs"].to(device)
            lens = batch["supervisions"]["num_frames"].to(device)
            encoder_out, encoder_out_lens = inner.forward_encoder(feature, lens)
            result = greedy_search(inner, encoder_out, encoder_out_lens, return_timestamps=True)
            num_tokens = torch.tensor([len(t) for t in tokenizer.encode(batch["supervisions"]["text"])])
            diff = result.cif_lens.cpu() - num_tokens
            fire_error += float(diff.sum())
            fire_abs_error += float(diff.abs().sum())
            fires_exact += float((diff == 0).sum())
            for ref_text, hyp_ids in zip(batch["supervisions"]["text"], result.hyps):
                ref = tokenizer.text_units(ref_text)
                hyp = tokenizer.text_units(tokenizer.decode(hyp_ids))
                errors += kaldialign.edit_distance(ref, hyp)["total"]
                ref_units += len(ref)
    if params.valid_decode:
        tot["errors"] = float(errors)
        tot["ref_units"] = float(ref_units)
        # CIF fires at inference minus reference tokens, per utterance: how well the fire count
        # the quantity loss trains transfers to inference.
        for name, value in (("fire_error", fire_error), ("fire_abs_error", fire_abs_error),
                            ("fires_exact", fires_exact)):
            tot[name] = value
            tot.normalizers[name] = "utterances"
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


def agree_on_batch(loss: torch.Tensor, world_size: int, preemption: PreemptionFlag) -> Tuple[bool, bool]:
    """(the loss is finite on every rank, some rank was asked to stop), in one all-reduce.

    Under DDP all ranks must skip a batch together, and stop after the same batch.
    """
    flags = torch.tensor([float(torch.isfinite(loss.detach()).all()), -float(preemption.raised)])
    if world_size > 1:
        flags = flags.to(loss.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return bool(flags[0].item() > 0), bool(flags[1].item() < 0)


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
        records: TrainingRecords,
        loss_config: LossConfig,
        preemption: PreemptionFlag,
        kd_teacher: Optional[KdTeacher] = None,
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
        self.records = records
        self.loss_config = loss_config
        self.preemption = preemption
        self.kd_teacher = kd_teacher

    def save(self, filename: Path, sampler) -> None:
        """Everything needed to resume (rank 0 writes; the sampler's own state is informational:
        a resume positions a fresh sampler from `cur_epoch` and `batches_in_epoch`).

        Every rank must call it: under DDP each rank's generator and adaptive states are
        gathered, so that every rank of a resumed run continues as it would have.
        """
        self.params.adaptive_module_state = unwrap_model(self.model).adaptive_state()
        if self.world_size > 1:
            mine = {"rng_state": get_rng_state(), "adaptive_module_state": self.params.adaptive_module_state}
            gathered: List[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, mine)
            self.params.rank_states = gathered
        save_checkpoint(
            filename,
            model=self.model,
            model_avg=self.model_avg,
            params=self.params,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            sampler=sampler,
            rank=self.rank,
        )
        if self.rank == 0:
            self.records.write("checkpoint", path=str(filename), **{"global": self.params.batch_idx_train})

    def save_bad_model(self) -> Path:
        filename = self.params.exp_dir / f"bad-model-{self.rank}.pt"
        # Every rank writes its own file, hence rank=0 here.
        save_checkpoint(filename, model=self.model, params=self.params, rank=0)
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
      batches: the epoch's DataLoader iterator (possibly positioned mid-epoch).
      sampler: the DataLoader's sampler, saved in batch checkpoints.
      epoch_audio_seconds: audio this rank sees in a whole epoch (for the ETA).
      audio_seconds_done: audio of the batches skipped by a mid-epoch resume.
    Returns:
      The decaying sum of the training losses (icefall's tot_loss).
    """
    params, model, optimizer, scheduler, scaler = (
        state.params, state.model, state.optimizer, state.scheduler, state.scaler,
    )
    inner = unwrap_model(model)
    model.train()
    tot = MetricsTracker()
    watchdog = GradScaleWatchdog(scaler)
    consecutive_bad = skipped = 0
    t_start = t_interval = time.time()
    audio_at_start = audio_seconds_done
    frames_interval = 0.0
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)

    for batch in batches:
        params.batches_in_epoch += 1
        cut_ids = batch_cut_ids(batch)
        if debug:
            logging.debug(f"Epoch {params.cur_epoch}, batch {params.batches_in_epoch}: cuts {cut_ids}")
            state.records.write("cuts", epoch=params.cur_epoch, batch=params.batches_in_epoch, cuts=cut_ids)
        inner.set_batch_count(adjusted_batch_count(params, state.world_size))
        with autocast_context(params, state.device):
            loss, info = compute_loss(params, model, state.tokenizer, batch, state.device, state.loss_config,
                                      state.kd_teacher)

        finite, preempted = agree_on_batch(loss, state.world_size, state.preemption)
        if not finite:
            skipped += 1
            consecutive_bad += 1
            logging.warning(
                f"Epoch {params.cur_epoch}, batch {params.batches_in_epoch}: loss is {loss.item()} "
                f"(on this or another rank); skipping the batch ({skipped} skipped in this epoch). "
                f"Cuts: {cut_ids}"
            )
            state.records.write(
                "skipped", epoch=params.cur_epoch, batch=params.batches_in_epoch, loss=str(loss.item()),
                skipped=skipped, cuts=cut_ids,
            )
            if state.world_size > 1:
                # DDP expects a backward after each forward; a zero-weighted one keeps the ranks'
                # gradient reductions in step, and its gradients are discarded below.
                (loss * 0.0).backward()
            optimizer.zero_grad()
            if consecutive_bad >= params.max_bad_batches:
                dump = params.exp_dir / f"bad-batch-{state.rank}.pt"
                torch.save(dumpable_batch(batch), dump)
                bad_model = state.save_bad_model()
                raise BadBatchError(
                    f"{consecutive_bad} consecutive batches had an inf/NaN loss (the last one's cuts: {cut_ids}). "
                    f"The batch is in {dump} and the model in {bad_model}. Check those cuts, lower --base-lr, "
                    f"or train without --use-fp16 (--max-bad-batches sets this limit)."
                )
            if preempted:
                stop_for_preemption(state, sampler)
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
            update_averaged_model(params=params, model_cur=inner, model_avg=state.model_avg)

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
            batch_size = len(cut_ids) or batch["inputs"].size(0)
            logging.info(
                f"Epoch {params.cur_epoch}, batch {params.batches_in_epoch}, global {params.batch_idx_train}: "
                f"loss[{info}], tot_loss[{tot}], batch size {batch_size}, "
                f"lr {lr:.3e}, {frames_per_s:.0f} frames/s, {rate * state.world_size:.2f}x real time, "
                f"epoch ETA {eta / 60:.1f} min"
                + (f", grad scale {scaler.get_scale():.3g}" if scaler.is_enabled() else "")
            )
            state.records.write(
                "batch", epoch=params.cur_epoch, batch=params.batches_in_epoch,
                **{"global": params.batch_idx_train}, loss=info.norm_items(), tot_loss=tot.norm_items(),
                batch_size=batch_size, lr=lr, frames_per_s=frames_per_s, real_time=rate * state.world_size,
                eta_min=eta / 60,
            )
            if state.tb_writer is not None:
                state.tb_writer.add_scalar("train/learning_rate", lr, params.batch_idx_train)
                info.write_summary(state.tb_writer, "train/current_", params.batch_idx_train)
                tot.write_summary(state.tb_writer, "train/tot_", params.batch_idx_train)

        if preempted:
            stop_for_preemption(state, sampler)

    if skipped:
        logging.warning(f"Epoch {params.cur_epoch}: skipped {skipped} batches with an inf/NaN loss")
    return tot


def stop_for_preemption(state: TrainingState, sampler) -> None:
    """Write the checkpoint of the batch just finished (unless it was just written) and raise
    :class:`Preempted`."""
    params = state.params
    filename = params.exp_dir / f"checkpoint-{params.batch_idx_train}.pt"
    if params.batch_idx_train % params.save_every_n != 0:
        state.save(filename, sampler)
    cause = state.preemption.name if state.preemption.raised else "another rank's signal"
    logging.info(
        f"Stopping on {cause} after "
        f"batch {params.batches_in_epoch} of epoch {params.cur_epoch} (global {params.batch_idx_train}): "
        f"{filename.name} holds the state; resume with --start-batch -1"
    )
    state.records.write("preempted", epoch=params.cur_epoch, batch=params.batches_in_epoch,
                        **{"global": params.batch_idx_train}, checkpoint=str(filename))
    raise Preempted(filename)


def end_of_epoch(state: TrainingState, tot: MetricsTracker, valid_dl) -> None:
    """Validate, log and track the best losses."""
    params, tb_writer = state.params, state.tb_writer
    valid_info = validate(
        params, state.model, state.tokenizer, valid_dl, state.device, state.world_size, state.loss_config
    )
    valid_loss = valid_info.norm_items().get("loss", float("nan"))
    message = f"Epoch {params.cur_epoch}, validation: {valid_info}"
    error_rate = None
    if params.valid_decode and valid_info["ref_units"] > 0:
        error_rate = 100.0 * valid_info["errors"] / valid_info["ref_units"]
        message += f", greedy {state.tokenizer.error_rate_name} {error_rate:.2f}%"
        if tb_writer is not None:
            tb_writer.add_scalar(f"valid/{state.tokenizer.error_rate_name}", error_rate, params.batch_idx_train)
    logging.info(message)
    state.records.write(
        "valid", epoch=params.cur_epoch, **{"global": params.batch_idx_train}, loss=valid_info.norm_items(),
        totals=dict(valid_info), error_rate=error_rate, metric=state.tokenizer.error_rate_name,
    )
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
    """One training process (rank `rank` of `world_size`); SIGTERM/SIGUSR1 stop it at the next
    batch boundary with a checkpoint (preemption.py)."""
    with PreemptionFlag() as preemption:
        try:
            _train(rank, world_size, args, recipe, preemption)
        except Exception as e:
            # In this rank's log too: under DDP the launcher reports only the first rank to fail.
            logging.error(f"Rank {rank} of {world_size} stops: {type(e).__name__}: {e}")
            raise


def _train(rank: int, world_size: int, args: argparse.Namespace, recipe: Recipe, preemption: PreemptionFlag) -> None:
    params = get_params()
    params.update(vars(args))
    if world_size > 1:
        setup_dist(rank, world_size, params.master_port)
    try:
        params.exp_dir.mkdir(parents=True, exist_ok=True)
        setup_logger(params.exp_dir / "log" / "log-train", log_level=params.log_level)
    except OSError as e:
        raise ValueError(
            f"--exp-dir {params.exp_dir} cannot be written ({type(e).__name__}: {e}): choose another --exp-dir or "
            f"fix its permissions"
        ) from None
    records = TrainingRecords(params.exp_dir / "log", rank, world_size)
    processes_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    num_threads = set_num_threads(params.num_threads, processes_on_node)
    logging.info(f"Training {recipe.name} on {world_size} process(es), {num_threads} thread(s) each")
    check_options(params)
    fix_random_seed(params.seed)

    tokenizer = Tokenizer.from_lang_dir(params.lang_dir)
    params.vocab_size = tokenizer.vocab_size
    params.blank_id = tokenizer.blank_id
    loss_config = config_from_options(LossConfig, params)
    # Before the model config: the distillation projections' sizes come from the teacher manifest.
    params.acd_teacher_dim, params.lrd_teacher_dim = distillation_dims(params, loss_config)
    model_config = config_from_options(recipe.model_config, params)
    logging.info(f"Options: {dict(params)}")
    params.model_config = config_to_dict(model_config)
    params.token_table = token_table(tokenizer)

    # The cut files first, so that a missing manifest fails before anything slow happens.
    datamodule = AsrDataModule(args)
    train_cuts = datamodule.train_cuts()
    dev_cuts = datamodule.dev_cuts()

    model = recipe.get_model(model_config)
    check_model(model)
    logging.info(f"Number of model parameters: {sum(p.numel() for p in model.parameters())}")
    resuming = params.start_batch != 0 or params.start_epoch > 1
    if params.init_encoder is not None:
        if resuming:
            logging.warning("--init-encoder is ignored when resuming: the checkpoint has the encoder weights")
        else:
            load_init_encoder(model, params.init_encoder)
    # The running average lives on rank 0 in float64, as in icefall.
    model_avg = copy.deepcopy(model).to(torch.float64) if rank == 0 else None

    local_rank = get_local_rank()
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if params.use_fp16 and device.type == "cpu":
        logging.warning("--use-fp16 on a CPU is very slow (float16 kernels are emulated); --use-bf16 1 is the CPU's "
                        "mixed precision")
    model.to(device)
    kd_teacher = None
    if loss_config.transfers_knowledge:
        kd_teacher = KdTeacher.from_checkpoint(recipe, params.kd_teacher_checkpoint, tokenizer, device)
        logging.info(
            f"Knowledge transfer from {params.kd_teacher_checkpoint} ({kd_teacher.model.head.name}, "
            f"{sum(p.numel() for p in kd_teacher.model.parameters())} parameters): frame level x "
            f"{loss_config.kd_frame_scale}, sequence level x {loss_config.kd_seq_scale}, temperature "
            f"{loss_config.kd_temperature}"
        )
    optimizer = ScaledAdam(model.named_parameters(), lr=params.base_lr, clipping_scale=2.0)
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs, warmup_batches=params.warmup_batches)
    scaler = torch.amp.GradScaler(device.type, enabled=params.use_fp16, init_scale=1.0)
    saved = resume(params, model, model_avg, optimizer, scheduler, scaler, tokenizer, model_config, rank, world_size)
    mid_epoch = saved is not None and params.start_batch != 0
    if world_size > 1:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None, find_unused_parameters=True)

    train_cuts, cut_filter = filter_cuts(
        train_cuts,
        tokenizer,
        num_output_frames=unwrap_model(model).num_output_frames,
        min_duration=params.min_duration,
        max_duration=params.max_cut_duration,
    )
    epoch_audio_seconds = sum(c.duration for c in train_cuts) / world_size
    cut_filter.log_summary()
    train_dl = datamodule.train_dataloaders(train_cuts)
    valid_dl = datamodule.valid_dataloaders(dev_cuts)

    if device.type == "cuda" and not mid_epoch:
        scan_pessimistic_batches_for_oom(params, model, tokenizer, optimizer, train_dl, device, loss_config,
                                         kd_teacher)

    tb_writer = get_tensorboard_writer(params.exp_dir / "tensorboard") if params.tensorboard and rank == 0 else None
    state = TrainingState(
        params, model, model_avg, optimizer, scheduler, scaler, tokenizer, device, rank, world_size, tb_writer,
        records, loss_config, preemption, kd_teacher,
    )
    try:
        train_epochs(state, train_dl, valid_dl, saved if mid_epoch else None, epoch_audio_seconds)
        logging.info("Done!")
    except Preempted:
        pass
    finally:
        if tb_writer is not None:
            tb_writer.close()
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
            skipped_seconds = restore_sampler_position(train_dl.sampler, epoch - 1, params.batches_in_epoch)
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
            set_rng_state(own_rank_state(mid_epoch_checkpoint, state.rank, state.world_size)["rng_state"])
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
    loss_config: LossConfig,
    kd_teacher: Optional[KdTeacher] = None,
) -> None:
    """Run forward+backward on the largest batches first so an OOM shows up now, with advice."""
    from lhotse.dataset import find_pessimistic_batches

    logging.info("Sanity check: trying the most memory-hungry batches (GPU only)")
    batches, crit_values = find_pessimistic_batches(train_dl.sampler)
    for criterion, cuts in batches.items():
        batch = train_dl.dataset[cuts]
        try:
            with autocast_context(params, device):
                loss, _ = compute_loss(params, model, tokenizer, batch, device, loss_config, kd_teacher)
            loss.backward()
            optimizer.zero_grad()
        except torch.OutOfMemoryError:
            raise RuntimeError(
                f"Out of GPU memory on the pessimistic batch '{criterion}' ({crit_values[criterion]}). "
                f"Reduce --max-duration (now {params.max_duration})."
            ) from None
    logging.info(f"Max memory allocated so far: {torch.cuda.max_memory_allocated() // 2**20} MB")


def main(recipe: Recipe, description: str = "") -> None:
    """Entry point of a recipe's train.py: parse the options and start training."""
    launch(get_parser(recipe, description).parse_args(), recipe)


def launch(args: argparse.Namespace, recipe: Recipe) -> None:
    """Start training: torchrun's environment if present, else `--world-size` local processes."""
    check_options(AttributeDict(vars(args)))
    if is_torchrun():
        run(int(os.environ["RANK"]), get_world_size(), args, recipe)
    elif args.world_size > 1:
        ignore_in_launcher()
        mp.spawn(run, args=(args.world_size, args, recipe), nprocs=args.world_size, join=True)
    else:
        run(rank=0, world_size=1, args=args, recipe=recipe)
