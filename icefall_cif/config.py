"""Configuration as dataclasses: one source for the command-line options, the checkpoints and
the model that is built from them.

A config class is a plain `@dataclass` whose fields carry their help text (and, where needed,
`choices`) in `metadata`. :func:`add_config_arguments` turns the fields into argparse options
(`decoder_dim` -> `--decoder-dim`), :func:`config_from_options` picks them back out of parsed
options, and :func:`config_to_dict` / :func:`config_from_dict` are what a checkpoint stores.

Example::

    >>> @dataclass
    ... class Demo:
    ...     decoder_dim: int = field(default=512, metadata={"help": "Prediction network dim."})
    >>> parser = argparse.ArgumentParser()
    >>> add_config_arguments(parser, Demo)
    >>> config_from_options(Demo, vars(parser.parse_args(["--decoder-dim", "32"])))
    Demo(decoder_dim=32)

:class:`LossConfig` lives here because the training loop owns the loss weighting; the model
architecture's config belongs to the recipe that defines the model.
"""
import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Type, TypeVar, get_type_hints

from icefall_cif.utils import str2bool

C = TypeVar("C")


def option_name(field_name: str) -> str:
    """`decoder_dim` -> `--decoder-dim`."""
    return "--" + field_name.replace("_", "-")


def _argparse_type(annotation: Any):
    """The callable argparse converts a field's value with (Optional[X] -> X, bool -> str2bool)."""
    args = getattr(annotation, "__args__", None)
    if args and type(None) in args:
        annotation = next(a for a in args if a is not type(None))
    if annotation is bool:
        return str2bool
    return annotation


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: Type[Any],
    title: Optional[str] = None,
    defaults_unset: bool = False,
) -> None:
    """Add one option per field of the dataclass `cls`.

    Args:
      parser: the parser (an argument group is added when `title` is given).
      cls: the dataclass; each field's `metadata["help"]` is its help text and
        `metadata["choices"]`, if present, restricts its values.
      title: heading of the option group in `--help`.
      defaults_unset: every option defaults to None instead of the field's default, so that
        a caller can tell the options a user gave (decode.py: the options given must agree
        with the checkpoint's).
    """
    target = parser.add_argument_group(title) if title else parser
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        default = None if defaults_unset else f.default
        shown = f.default if f.default is not None else "unset"
        target.add_argument(
            option_name(f.name),
            type=_argparse_type(hints[f.name]),
            default=default,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata.get('help', '')} Default: {shown}.",
        )


def config_fields(cls: Type[Any]) -> Dict[str, dataclasses.Field]:
    """{field name: Field} of a config dataclass."""
    return {f.name: f for f in dataclasses.fields(cls)}


def config_from_options(cls: Type[C], options: Mapping[str, Any]) -> C:
    """Build `cls` from the entries of `options` that are its fields (None means "not given").

    Other entries (training or data options) are ignored; fields missing from `options` or
    None there take their defaults.
    """
    given = {name: options[name] for name in config_fields(cls) if options.get(name) is not None}
    return cls(**given)


def config_to_dict(config: Any) -> Dict[str, Any]:
    """Plain dict of a config (what checkpoints store)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: Type[C], saved: Mapping[str, Any], what: str) -> C:
    """Rebuild `cls` from :func:`config_to_dict`'s output.

    Fields added to `cls` after the dict was saved take their defaults; an entry that is not a
    field (a config from newer code) is an error naming it and `what` (e.g. the checkpoint).
    """
    unknown = sorted(set(saved) - set(config_fields(cls)))
    if unknown:
        raise ValueError(
            f"{what} has model settings this code does not know: {unknown}. It was saved by a newer "
            f"version of the recipe; decode it with that version."
        )
    return cls(**dict(saved))


def inference_config(config: C) -> C:
    """`config` with every field marked `"training_only": True` in its metadata back at its
    default: the architecture an exported model is built with (no distillation projections)."""
    reset = {f.name: f.default for f in dataclasses.fields(config) if f.metadata.get("training_only")}
    return dataclasses.replace(config, **reset)


@dataclass
class LossConfig:
    """Training-only settings of the losses: what to optimise, not what the model is.

    The model returns its losses unweighted; the training loop weights them (with each
    decoder head's warm-up schedule) in `compute_loss`.
    """

    ctc_loss_scale: float = field(default=0.5, metadata={"help": "Weight of the CTC loss."})
    quantity_loss_scale: float = field(default=1.0, metadata={"help": "Weight of the CIF quantity loss."})
    cif_align_loss_scale: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the CIF alignment loss: the CIF accumulation at each token's CTC spike "
            "(Viterbi alignment of the CTC head) should be half-way through that token; 0 = off."
        },
    )
    cif_scale_weights: bool = field(
        default=True,
        metadata={
            "help": "Scale the CIF weights to fire exactly U times in training, as the CIF papers do (the CE "
            "heads need one vector per token). 0: train on the fires inference makes (tail included), "
            "so a transducer learns to read the merged and split vectors it meets when decoding."
        },
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the CE loss."})
    ce_prior_free_scale: float = field(
        default=0.0,
        metadata={
            "help": "With --ce-ctc-prior-scale: add this times the CE of the decoder's logits without the CTC prior "
            "to ce_loss, so that the decoder (and through it the encoder) also learns to classify alone; 0 = off."
        },
    )
    glancing_ratio: float = field(
        default=0.0,
        metadata={
            "help": "cif_ce_nar: Paraformer's glancing sampler; ratio x (wrong tokens of a first pass) positions "
            "get the reference token's embedding instead of their CIF vector (FunASR's Paraformer uses 0.75); "
            "0 = off."
        },
    )
    prune_range: int = field(
        default=5, metadata={"help": "Symbols kept per CIF vector by the pruned RNN-T loss."}
    )
    lm_scale: float = field(default=0.25, metadata={"help": "LM-only smoothing of the simple RNN-T loss."})
    am_scale: float = field(default=0.0, metadata={"help": "AM-only smoothing of the simple RNN-T loss."})
    simple_loss_scale: float = field(
        default=0.5, metadata={"help": "Weight of the simple RNN-T loss after warm-up (it starts at 1.0)."}
    )
    transducer_ce_scale: float = field(
        default=0.0,
        metadata={
            "help": "cif_transducer: weight of a per-token CE of the joiner at (CIF vector u, tokens before u), "
            "as CIF-T aligns one vector to one token; 0 = off."
        },
    )
    rnnt_type: str = field(
        default="regular",
        metadata={
            "help": "cif_transducer: k2's lattice topology of the RNN-T losses (regular: any number of tokens "
            "per CIF vector; modified: at most one, which with exactly U vectors leaves one path, the diagonal).",
            "choices": ("regular", "modified", "constrained"),
        },
    )
    warm_step: int = field(
        default=2000,
        metadata={
            "help": "Batches over which the simple/pruned RNN-T loss weights move from (1.0, 0.1) to "
            "(--simple-loss-scale, 1.0)."
        },
    )
    acd_loss_scale: float = field(
        default=0.0,
        metadata={
            "help": "Weight of HieraDist's acoustic contrastive distillation: the CIF vectors (through a "
            "training-only Linear to the teacher's dim) against the teacher vectors of --plm-manifest; "
            "HieraDist uses 1.0; 0 = off (docs/distillation.md)."
        },
    )
    acd_num_negatives: int = field(
        default=700,
        metadata={
            "help": "ACD negatives drawn from the batch's tokens (int(0.8 N) when the batch has N <= this many "
            "tokens); 0 = every token of the batch."
        },
    )
    acd_temperature: float = field(default=0.02, metadata={"help": "ACD: logits are cosine / this."})
    lrd_loss_scale: float = field(
        default=0.0,
        metadata={
            "help": "Weight of HieraDist's linguistic regression distillation: the decoder state entering the "
            "vocabulary projection (cif_transducer: the joiner's hidden activation at CIF vector u and the "
            "prediction after u-1 tokens), through a training-only Linear, MSE-summed against the teacher "
            "vectors; HieraDist uses 0.01; 0 = off."
        },
    )

    kd_frame_scale: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the frame-level knowledge transfer from --kd-teacher-checkpoint: KL from the "
            "teacher's CTC posteriors to the student's at every encoder frame (icefall_cif/kd.py); 0 = off."
        },
    )
    kd_seq_scale: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the sequence-level knowledge transfer from --kd-teacher-checkpoint: KL from the "
            "teacher decoder's token posteriors on the reference (teacher-forced) to the student decoder's at "
            "the same positions, over the non-blank tokens; 0 = off."
        },
    )
    kd_nbest: int = field(
        default=0,
        metadata={
            "help": "With --kd-seq-scale: also train the student's decoder on the teacher's K best beam hypotheses "
            "of each utterance (beam K, run on the fly), their loss averaged and weighted by --kd-seq-scale; 0 = off."
        },
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of both knowledge-transfer losses (the KL is scaled by its square)."}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.glancing_ratio <= 1.0:
            raise ValueError(f"--glancing-ratio must be in [0, 1] (a share of the wrong tokens), got {self.glancing_ratio}")
        if self.kd_temperature <= 0:
            raise ValueError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        if self.kd_nbest < 0 or (self.kd_nbest > 0 and self.kd_seq_scale <= 0):
            raise ValueError(f"--kd-nbest must be >= 0 and needs --kd-seq-scale > 0 (its weight), got --kd-nbest "
                             f"{self.kd_nbest}, --kd-seq-scale {self.kd_seq_scale}")
        if self.ce_prior_free_scale < 0:
            raise ValueError(f"--ce-prior-free-scale must be >= 0, got {self.ce_prior_free_scale}")
        if self.kd_frame_scale < 0 or self.kd_seq_scale < 0:
            raise ValueError(f"--kd-frame-scale and --kd-seq-scale must be >= 0, got {self.kd_frame_scale} and "
                             f"{self.kd_seq_scale}")

    @property
    def transfers_knowledge(self) -> bool:
        """Whether a knowledge-transfer loss is on (training then needs --kd-teacher-checkpoint)."""
        return self.kd_frame_scale > 0 or self.kd_seq_scale > 0

    @property
    def distills(self) -> bool:
        """Whether a distillation loss is on (the batches then need teacher features)."""
        return self.acd_loss_scale > 0 or self.lrd_loss_scale > 0
