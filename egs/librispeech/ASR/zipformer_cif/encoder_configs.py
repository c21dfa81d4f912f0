"""Named Zipformer2 encoder configurations and a builder for (Conv2dSubsampling, Zipformer2).

`small`, `medium` and `large` are icefall's LibriSpeech zipformer configurations (`medium`
is the default of icefall's `zipformer/train.py`), so icefall checkpoints of those sizes
load into `build_encoder(name)`. `tiny` is for CPU demos and tests.

A config is a dict of `Zipformer2` keyword arguments plus `encoder_embed_dim` (the
Conv2dSubsampling output dim, which must equal `encoder_dim[0]`) and, optionally,
`encoder_embed_channels` (its three Conv2d layers' channels; icefall's 8, 32, 128 if absent).
"""
import copy
from typing import Any, Dict, Mapping, Tuple, Union

from scaling import ScheduledFloat
from subsampling import Conv2dSubsampling
from zipformer import Zipformer2

# Shared by icefall's small/medium/large (its train.py defaults).
_ICEFALL_COMMON: Dict[str, Any] = dict(
    output_downsampling_factor=2,
    downsampling_factor=(1, 2, 4, 8, 4, 2),
    query_head_dim=(32,),
    pos_head_dim=(4,),
    value_head_dim=(12,),
    num_heads=(4, 4, 4, 8, 4, 4),
    cnn_module_kernel=(31, 31, 15, 15, 15, 31),
    pos_dim=48,
    warmup_batches=4000.0,
    causal=False,
    chunk_size=(16, 32, 64, -1),
    left_context_frames=(64, 128, 256, -1),
    # Our addition (icefall behaves as False): an utterance's outputs do not depend on the
    # batch it is in. Same parameters either way.
    mask_padding=True,
)

ENCODER_CONFIGS: Dict[str, Dict[str, Any]] = {
    # 2.1 M parameters (0.38 M of them in the Conv2dSubsampling front end), for CPU demos and
    # tests. Four stacks at 50, 25, 12.5 and 25 Hz, one layer each.
    "tiny": dict(
        output_downsampling_factor=2,
        downsampling_factor=(1, 2, 4, 2),
        num_encoder_layers=(1, 1, 1, 1),
        encoder_dim=(96, 128, 128, 128),
        feedforward_dim=(256, 384, 384, 384),
        encoder_unmasked_dim=(96, 96, 96, 96),
        query_head_dim=(16,),
        pos_head_dim=(4,),
        value_head_dim=(12,),
        num_heads=(4,),
        cnn_module_kernel=(15, 15, 7, 15),
        pos_dim=32,
        warmup_batches=1000.0,
        causal=False,
        chunk_size=(16, 32, -1),
        left_context_frames=(64, 128, -1),
        mask_padding=True,
        encoder_embed_dim=96,
    ),
    "small": dict(
        _ICEFALL_COMMON,
        num_encoder_layers=(2, 2, 2, 2, 2, 2),
        encoder_dim=(192, 256, 256, 256, 256, 256),
        feedforward_dim=(512, 768, 768, 768, 768, 768),
        encoder_unmasked_dim=(192, 192, 192, 192, 192, 192),
        encoder_embed_dim=192,
    ),
    "medium": dict(
        _ICEFALL_COMMON,
        num_encoder_layers=(2, 2, 3, 4, 3, 2),
        encoder_dim=(192, 256, 384, 512, 384, 256),
        feedforward_dim=(512, 768, 1024, 1536, 1024, 768),
        encoder_unmasked_dim=(192, 192, 256, 256, 256, 192),
        encoder_embed_dim=192,
    ),
    "large": dict(
        _ICEFALL_COMMON,
        num_encoder_layers=(2, 2, 4, 5, 4, 2),
        encoder_dim=(192, 256, 512, 768, 512, 256),
        feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
        encoder_unmasked_dim=(192, 192, 256, 320, 256, 192),
        encoder_embed_dim=192,
    ),
}


def get_encoder_config(name: str) -> Dict[str, Any]:
    """A fresh copy of the named config: Zipformer2 kwargs plus `encoder_embed_dim`.

    name: one of "tiny", "small", "medium", "large".
    """
    if name not in ENCODER_CONFIGS:
        raise ValueError(f"Unknown encoder config '{name}'; choose one of {sorted(ENCODER_CONFIGS)}")
    return copy.deepcopy(ENCODER_CONFIGS[name])


def to_int_tuple(value: Union[str, int, Tuple[int, ...]]) -> Tuple[int, ...]:
    """'2,2,3,4' (icefall's command-line style), 7 or (1, 2) -> a tuple of ints."""
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(","))
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def build_encoder(
    config: Union[str, Mapping[str, Any]], feature_dim: int = 80
) -> Tuple[Conv2dSubsampling, Zipformer2]:
    """Build the front end and the encoder of a config (a name or a config dict).

    Dropout follows icefall's train.py: 0.3 -> 0.1 over 20k batches, in both modules.

    Returns:
      (Conv2dSubsampling(feature_dim -> encoder_embed_dim),  # (N, T, F) -> (N, (T-7)//2, C0)
       Zipformer2(**config))                                  # (T', N, C0) -> (T'', N, max dim)
    """
    cfg = dict(get_encoder_config(config) if isinstance(config, str) else config)
    encoder_dim = to_int_tuple(cfg["encoder_dim"])
    embed_dim = int(cfg.pop("encoder_embed_dim", encoder_dim[0]))
    embed_channels = to_int_tuple(cfg.pop("encoder_embed_channels", (8, 32, 128)))
    if len(embed_channels) != 3:
        raise ValueError(f"encoder_embed_channels needs one channel count per Conv2d layer (3), got {embed_channels}")
    if embed_dim != encoder_dim[0]:
        raise ValueError(
            f"encoder_embed_dim ({embed_dim}) must equal the first stack's encoder_dim ({encoder_dim[0]})"
        )
    embed = Conv2dSubsampling(
        in_channels=feature_dim,
        out_channels=embed_dim,
        layer1_channels=embed_channels[0],
        layer2_channels=embed_channels[1],
        layer3_channels=embed_channels[2],
        dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)),
        mask_padding=bool(cfg.get("mask_padding", False)),
    )
    cfg.setdefault("dropout", ScheduledFloat((0.0, 0.3), (20000.0, 0.1)))
    return embed, Zipformer2(**cfg)
