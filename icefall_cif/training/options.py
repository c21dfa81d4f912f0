"""The options of a recipe's train.py: training (icefall's names and defaults), model
architecture (the recipe's config dataclass), losses (:class:`icefall_cif.config.LossConfig`)
and data (:class:`icefall_cif.datamodule.AsrDataModule`)."""
import argparse
from pathlib import Path
from typing import List

import torch

from icefall_cif.config import LossConfig, add_config_arguments
from icefall_cif.datamodule import AsrDataModule
from icefall_cif.dist import is_torchrun
from icefall_cif.recipe import Recipe
from icefall_cif.utils import AttributeDict, str2bool


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
                   help="'debug' also logs (and records) the cut ids of every batch (per rank under DDP).")
    g.add_argument("--max-bad-batches", type=int, default=20,
                   help="Stop after this many consecutive batches with inf/NaN loss.")
    g.add_argument("--valid-decode", type=str2bool, default=True,
                   help="Greedy-decode the validation set each epoch and log its WER/CER.")
    g.add_argument("--init-encoder", type=Path, default=None,
                   help="Initialise encoder_embed.* and encoder.* from an icefall zipformer checkpoint "
                        "(a fresh run only; ignored when resuming).")
    g.add_argument("--min-duration", type=float, default=1.0, help="Drop training cuts shorter than this (s).")
    g.add_argument("--max-cut-duration", type=float, default=20.0, help="Drop training cuts longer than this (s).")
    g.add_argument("--kd-teacher-checkpoint", type=Path, default=None,
                   help="A trained model of this repository (export.py's pretrained.pt, or a training checkpoint) "
                        "to transfer knowledge from with --kd-frame-scale / --kd-seq-scale; frozen, in eval mode, "
                        "run on the fly on each batch (icefall_cif/kd.py).")
    g.add_argument("--num-threads", type=int, default=1,
                   help="PyTorch intra-op threads per process (icefall uses 1); 0 = the CPU cores of this machine "
                        "divided by the processes on it. More threads only pay off on otherwise idle cores: on a "
                        "busy machine OpenMP's spinning threads made training 15x slower (bench/bench_train.py).")


def get_parser(recipe: Recipe, description: str = "") -> argparse.ArgumentParser:
    """All options of a recipe's train.py: training, model, losses, data."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, recipe.default_lang_dir)
    add_config_arguments(parser, recipe.model_config, "Model")
    add_config_arguments(parser, LossConfig, "Losses (training only)")
    AsrDataModule.add_arguments(parser)
    parser.set_defaults(corpus=recipe.name)
    return parser


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


def distillation_problems(params: AttributeDict) -> List[str]:
    """What is wrong with the distillation options (--acd-*, --lrd-*, --plm-manifest)."""
    problems = []
    distills = params.acd_loss_scale > 0 or params.lrd_loss_scale > 0
    if distills and params.get("plm_manifest") is None:
        problems.append(
            f"--acd-loss-scale {params.acd_loss_scale} / --lrd-loss-scale {params.lrd_loss_scale} need teacher "
            f"features: pass --plm-manifest, the cuts written by local/extract_plm_feats.py (prepare.sh stage 7 "
            f"with --plm-dir)"
        )
    if params.get("plm_manifest") is not None and params.concatenate_cuts:
        problems.append("--plm-manifest cannot be combined with --concatenate-cuts 1: the teacher vectors belong to "
                        "single cuts")
    if distills and not params.cif_scale_weights:
        problems.append("--acd-loss-scale / --lrd-loss-scale need one CIF vector per token: drop --cif-scale-weights 0")
    if params.acd_loss_scale < 0 or params.lrd_loss_scale < 0:
        problems.append("--acd-loss-scale and --lrd-loss-scale must be >= 0 (0 = off)")
    if params.acd_num_negatives < 0:
        problems.append(f"--acd-num-negatives must be >= 0 (0 = every token of the batch), got "
                        f"{params.acd_num_negatives}")
    if params.acd_temperature <= 0:
        problems.append(f"--acd-temperature must be positive, got {params.acd_temperature}")
    return problems


def knowledge_transfer_problems(params: AttributeDict) -> List[str]:
    """What is wrong with the knowledge-transfer options (--kd-*)."""
    problems = []
    transfers = params.kd_frame_scale > 0 or params.kd_seq_scale > 0
    if transfers and params.get("kd_teacher_checkpoint") is None:
        problems.append(f"--kd-frame-scale {params.kd_frame_scale} / --kd-seq-scale {params.kd_seq_scale} need a "
                        f"teacher: pass --kd-teacher-checkpoint (export.py's pretrained.pt of a trained model)")
    if params.get("kd_teacher_checkpoint") is not None and not transfers:
        problems.append("--kd-teacher-checkpoint is given but --kd-frame-scale and --kd-seq-scale are 0: set one of "
                        "them, or drop the teacher")
    if params.kd_seq_scale > 0 and (params.lrd_loss_scale > 0 or params.acd_loss_scale > 0):
        problems.append("--kd-seq-scale cannot be combined with HieraDist's --acd-loss-scale / --lrd-loss-scale: "
                        "use one kind of teacher")
    if params.kd_seq_scale > 0 and not params.cif_scale_weights:
        problems.append("--kd-seq-scale needs one CIF vector per token: drop --cif-scale-weights 0")
    if params.kd_nbest < 0 or (params.kd_nbest > 0 and params.kd_seq_scale <= 0):
        problems.append(f"--kd-nbest {params.kd_nbest}: must be >= 0, and > 0 needs --kd-seq-scale > 0 (its weight)")
    return problems


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
    problems += distillation_problems(params)
    problems += knowledge_transfer_problems(params)
    if problems:
        raise ValueError("Invalid training options:\n  " + "\n  ".join(problems))
