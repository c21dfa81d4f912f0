"""Where a training run starts: a fresh model, an encoder from another checkpoint, or the exact
state of an interrupted run.

`exp/checkpoint-<batch>.pt` holds, next to the model/optimizer/scheduler/scaler states,
`cur_epoch` and `batches_in_epoch` (batches the loop had taken from the DataLoader in that
epoch), the random generators' states and the model's adaptive state (see
`CifModel.adaptive_state`). `--start-batch` loads it here; the loop then positions the epoch's
sampler after those batches (`icefall_cif.datamodule.restore_sampler_position`) and restores the
generators once the DataLoader iterator exists.
"""
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from icefall_cif.checkpoint import find_checkpoints, load_checkpoint, load_safely, strip_ddp_prefix
from icefall_cif.config import config_to_dict, option_name
from icefall_cif.tokenizer import Tokenizer, check_token_table
from icefall_cif.utils import AttributeDict

ENCODER_PREFIXES = ("encoder_embed.", "encoder.")


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


def _config_differences(saved: Dict[str, Any], current: Any) -> str:
    """'--encoder-dim is 64,64 here but 48,48 in the checkpoint; ...' for the differing fields."""
    here = config_to_dict(current)
    diffs = [
        f"{option_name(k)} is {here.get(k)} here but {v} in the checkpoint"
        for k, v in saved.items()
        if here.get(k) != v
    ]
    return "; ".join(diffs)


def resume(
    params: AttributeDict,
    model: nn.Module,
    model_avg: Optional[nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    tokenizer: Tokenizer,
    model_config: Any,
    rank: int = 0,
    world_size: int = 1,
) -> Optional[Dict[str, Any]]:
    """Load the checkpoint to resume from, if any, into the training objects; return its contents.

    Updates params: batch counters and best losses; for --start-batch also the epoch to continue
    (`start_epoch`) and the batches of it already done (`batches_in_epoch`).
    """
    filename = resume_checkpoint_path(params)
    if filename is None:
        return None
    logging.info(f"Resuming from {filename}")
    header = load_safely(filename, mmap=True)
    check_token_table(header, tokenizer, str(filename), "point --lang-dir at the token set the checkpoint was "
                      "trained with (see its log-train-* 'Options' line)")
    differences = _config_differences(header["model_config"], model_config) if "model_config" in header else ""
    try:
        saved = load_checkpoint(
            filename, model, model_avg=model_avg, optimizer=optimizer, scheduler=scheduler, scaler=scaler
        )
    except RuntimeError as e:
        raise ValueError(
            f"{filename} does not fit the model built from these options: pass the model options it was trained "
            f"with ({differences or f'see the Options line of {params.exp_dir}/log/log-train-*'}). "
            f"Details: {str(e)[:400]}"
        ) from None
    model.load_adaptive_state(own_rank_state(saved, rank, world_size).get("adaptive_module_state", {}))
    for key in ("batch_idx_train", "best_train_loss", "best_valid_loss", "best_train_epoch", "best_valid_epoch"):
        if key in saved:
            params[key] = saved[key]
    if params.start_batch != 0:
        params.start_epoch = saved["cur_epoch"]
        params.batches_in_epoch = saved.get("batches_in_epoch", 0)
    else:
        params.batches_in_epoch = 0
    return saved


def own_rank_state(saved: Dict[str, Any], rank: int, world_size: int) -> Dict[str, Any]:
    """This rank's `rng_state` and `adaptive_module_state` in a checkpoint.

    A DDP run saves every rank's (`rank_states`); a checkpoint of a single process, or of another
    number of ranks, gives every rank rank 0's, as it always did.
    """
    per_rank = saved.get("rank_states")
    if per_rank is not None and len(per_rank) == world_size:
        return per_rank[rank]
    if per_rank is not None:
        logging.warning(f"The checkpoint has the states of {len(per_rank)} ranks, this run has {world_size}: every "
                        f"rank starts from rank 0's random generators")
    return saved


def load_init_encoder(model: nn.Module, path: Path) -> int:
    """Copy `encoder_embed.*` and `encoder.*` from a checkpoint (icefall's or ours) into `model`.

    Returns:
      The number of tensors copied. Every other parameter keeps its value.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--init-encoder {path}: no such file")
    state = load_safely(path)
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
