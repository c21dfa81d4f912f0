"""Zipformer2 encoder (Yao et al., "Zipformer: A faster and better encoder for ASR", ICLR 2024).

Parameter names, shapes and registration order follow icefall's
`egs/librispeech/ASR/zipformer/zipformer.py`, so icefall checkpoints load with
`load_state_dict(..., strict=True)` and give the same outputs in eval mode.

Layout of this file (top-down, the paper's boxes):
  Zipformer2                    stacks at several frame rates, output downsampling
  Zipformer2Encoder             one stack of layers sharing a relative positional encoding
  DownsampledZipformer2Encoder  a stack run at 1/ds of the input frame rate
  SimpleDownsample / SimpleUpsample / BypassModule
  Zipformer2EncoderLayer        FF, NonlinAttention, SelfAttention, Conv, FF, ... , BiasNorm
  CompactRelPositionalEncoding, RelPositionMultiheadAttentionWeights, SelfAttention,
  NonlinAttention, FeedforwardModule, ConvolutionModule

Tensors are time-major inside the encoder: (T, N, C).
"""
import copy
import math
import random
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    ChunkCausalDepthwiseConv1d,
    Dropout2,
    FloatLike,
    ScaledLinear,
    ScheduledFloat,
    Whiten,
    convert_num_channels,
    is_exporting,
    limit_param_value,
    penalize_abs_values_gt,
    softmax,
)

IntOrTuple = Union[int, Sequence[int]]


def _whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


class Zipformer2(nn.Module):
    """Zipformer2 encoder: a series of stacks, each at its own frame rate.

    Every "int or tuple" argument is either one value for all stacks or one value per
    stack; `len(downsampling_factor)` is the number of stacks.

    Args:
      output_downsampling_factor: the final downsampling of the concatenated output (icefall
        uses 2: 50 Hz after Conv2dSubsampling -> 25 Hz).
      downsampling_factor: per stack, its frame-rate reduction relative to the input.
      encoder_dim: per stack, its embedding dim; between stacks the dim is truncated or
        zero-padded. The output has max(encoder_dim) channels, each taken from the latest
        stack that has it.
      num_encoder_layers: layers per stack.
      encoder_unmasked_dim: per stack, dims never dropped by the training-time feature mask
        (on 12.5% of utterances the dims above it are zeroed; on more, the top half of them).
      query_head_dim, pos_head_dim, value_head_dim, num_heads: attention sizes per stack.
      feedforward_dim: hidden dim of the middle feed-forward module (the first uses 3/4 of
        it, the last 5/4).
      cnn_module_kernel: depthwise convolution width per stack (odd).
      pos_dim: dim of the relative positional encoding before its per-head projection.
      dropout: dropout rate or schedule (default: 0.3 -> 0.1 over 20k batches).
      warmup_batches: batches over which the stacks start contributing, one after another
        (through the layer-skip schedules of their bypass modules).
      causal: chunk-causal convolutions and attention masks for streaming-capable training.
      chunk_size, left_context_frames: choices (in input frames) drawn per batch when causal;
        -1 = full context.
      mask_padding: if True, padded frames are replaced by each utterance's last valid frame
        before every downsampling, which is what a batch of one does, so an utterance's
        outputs do not depend on the batch it is in. icefall (False) lets padding leak into
        the last downsampled frame of shorter utterances, and from there through attention
        into all of their frames. Parameters are identical either way.

    Shapes: forward((T, N, encoder_dim[0]), (N,), (N, T)) ->
      ((ceil(T / output_downsampling_factor), N, max(encoder_dim)), (N,)).
    """

    def __init__(
        self,
        output_downsampling_factor: int = 2,
        downsampling_factor: Tuple[int, ...] = (2, 4),
        encoder_dim: IntOrTuple = 384,
        num_encoder_layers: IntOrTuple = 4,
        encoder_unmasked_dim: IntOrTuple = 256,
        query_head_dim: IntOrTuple = 24,
        pos_head_dim: IntOrTuple = 4,
        value_head_dim: IntOrTuple = 12,
        num_heads: IntOrTuple = 8,
        feedforward_dim: IntOrTuple = 1536,
        cnn_module_kernel: IntOrTuple = 31,
        pos_dim: int = 192,
        dropout: Optional[FloatLike] = None,
        warmup_batches: float = 4000.0,
        causal: bool = False,
        chunk_size: Sequence[int] = (-1,),
        left_context_frames: Sequence[int] = (-1,),
        mask_padding: bool = False,
    ) -> None:
        super().__init__()
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        downsampling_factor = tuple(downsampling_factor)
        num_stacks = len(downsampling_factor)

        def per_stack(name: str, value: IntOrTuple) -> Tuple[int, ...]:
            values = (value,) if isinstance(value, int) else tuple(value)
            if len(values) == 1:
                values = values * num_stacks
            if len(values) != num_stacks:
                raise ValueError(
                    f"Zipformer2: {name} has {len(values)} values but there are {num_stacks} stacks "
                    f"(downsampling_factor={downsampling_factor}); give one value or one per stack"
                )
            return values

        self.output_downsampling_factor = output_downsampling_factor
        self.downsampling_factor = downsampling_factor
        self.encoder_dim = encoder_dim = per_stack("encoder_dim", encoder_dim)
        self.encoder_unmasked_dim = encoder_unmasked_dim = per_stack("encoder_unmasked_dim", encoder_unmasked_dim)
        self.num_encoder_layers = num_encoder_layers = per_stack("num_encoder_layers", num_encoder_layers)
        self.query_head_dim = query_head_dim = per_stack("query_head_dim", query_head_dim)
        self.value_head_dim = value_head_dim = per_stack("value_head_dim", value_head_dim)
        pos_head_dim = per_stack("pos_head_dim", pos_head_dim)
        self.num_heads = num_heads = per_stack("num_heads", num_heads)
        feedforward_dim = per_stack("feedforward_dim", feedforward_dim)
        self.cnn_module_kernel = cnn_module_kernel = per_stack("cnn_module_kernel", cnn_module_kernel)
        self.causal = causal
        self.chunk_size = list(chunk_size)
        self.left_context_frames = list(left_context_frames)
        self.mask_padding = mask_padding

        for u, d in zip(encoder_unmasked_dim, encoder_dim):
            if u > d:
                raise ValueError(f"Zipformer2: encoder_unmasked_dim {encoder_unmasked_dim} exceeds encoder_dim {encoder_dim}")

        encoders = []
        for i in range(num_stacks):
            layer = Zipformer2EncoderLayer(
                embed_dim=encoder_dim[i],
                pos_dim=pos_dim,
                num_heads=num_heads[i],
                query_head_dim=query_head_dim[i],
                pos_head_dim=pos_head_dim[i],
                value_head_dim=value_head_dim[i],
                feedforward_dim=feedforward_dim[i],
                dropout=dropout,
                cnn_module_kernel=cnn_module_kernel[i],
                causal=causal,
            )
            # Stack i warms up during [i+1, i+2] / (num_stacks+1) of warmup_batches, after the
            # front end has had a head start.
            encoder: nn.Module = Zipformer2Encoder(
                layer,
                num_encoder_layers[i],
                pos_dim=pos_dim,
                dropout=dropout,
                warmup_begin=warmup_batches * (i + 1) / (num_stacks + 1),
                warmup_end=warmup_batches * (i + 2) / (num_stacks + 1),
                final_layerdrop_rate=0.035 * (downsampling_factor[i] ** 0.5),
            )
            if downsampling_factor[i] != 1:
                encoder = DownsampledZipformer2Encoder(
                    encoder,
                    dim=encoder_dim[i],
                    downsample=downsampling_factor[i],
                    dropout=dropout,
                    causal=causal,
                    mask_padding=mask_padding,
                )
            encoders.append(encoder)
        self.encoders = nn.ModuleList(encoders)

        self.downsample_output = SimpleDownsample(
            max(encoder_dim), downsample=output_downsampling_factor, dropout=dropout, causal=causal
        )

    def forward(
        self, x: Tensor, x_lens: Tensor, src_key_padding_mask: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
          x: (T, N, encoder_dim[0]) input embeddings.
          x_lens: (N,) valid frames per utterance.
          src_key_padding_mask: (N, T), True at padding; None if nothing is padded.
        Returns:
          (T', N, max(encoder_dim)) with T' = ceil(T / output_downsampling_factor), and the
          (N,) output lengths ceil(x_lens / output_downsampling_factor).
        """
        feature_masks = self._feature_masks(x)
        chunk_size, left_context_chunks = self._chunk_info()
        attn_mask = None if is_exporting() else self._attn_mask(x, chunk_size, left_context_chunks)

        outputs = []
        for i, module in enumerate(self.encoders):
            x = convert_num_channels(x, self.encoder_dim[i])
            # A downsampled stack subsamples the mask itself, after pooling.
            mask = src_key_padding_mask
            if mask is not None and isinstance(module, Zipformer2Encoder):
                mask = mask[..., :: self.downsampling_factor[i]]
            x = module(
                x,
                chunk_size=chunk_size,
                feature_mask=feature_masks[i],
                attn_mask=attn_mask,
                src_key_padding_mask=mask,
            )
            outputs.append(x)

        x = self._full_dim_output(outputs)
        x = self.downsample_output(x, src_key_padding_mask if self.mask_padding else None)
        ds = self.output_downsampling_factor
        return x, (x_lens + ds - 1) // ds

    def _feature_masks(self, x: Tensor) -> List[Union[float, Tensor]]:
        """Per stack, 1.0 (eval) or a (1, N, encoder_dim[i]) mask that zeroes the dims above
        encoder_unmasked_dim on random utterances (training), consistent across stacks."""
        num_stacks = len(self.encoder_dim)
        if not self.training or is_exporting():
            return [1.0] * num_stacks
        _, batch_size, channels = x.shape
        if channels != self.encoder_dim[0]:
            raise ValueError(f"Zipformer2 expects {self.encoder_dim[0]} input channels, got {channels}")
        drop_prob = 0.125
        keep1 = (torch.rand(1, batch_size, 1, device=x.device) > drop_prob).to(x.dtype)
        # the upper half of the maskable dims is dropped about twice as often
        keep2 = keep1 * (torch.rand(1, batch_size, 1, device=x.device) > drop_prob).to(x.dtype)
        masks: List[Union[float, Tensor]] = []
        for dim, unmasked in zip(self.encoder_dim, self.encoder_unmasked_dim):
            mask = torch.ones(1, batch_size, dim, dtype=x.dtype, device=x.device)
            middle = unmasked + (dim - unmasked) // 2
            mask[:, :, unmasked:middle] *= keep1
            mask[:, :, middle:] *= keep2
            masks.append(mask)
        return masks

    def _chunk_info(self) -> Tuple[int, int]:
        """(chunk_size, left_context_chunks) for this batch; (-1, -1) = full context."""
        if not self.causal:
            return -1, -1
        if is_exporting():
            chunk_size = self.chunk_size[0]
        else:
            chunk_size = random.choice(self.chunk_size)
        if chunk_size == -1:
            return -1, -1
        left_frames = self.left_context_frames[0] if is_exporting() else random.choice(self.left_context_frames)
        if left_frames < 0:
            return chunk_size, -1  # unlimited left context
        return chunk_size, max(left_frames // chunk_size, 1)

    def _attn_mask(self, x: Tensor, chunk_size: int, left_context_chunks: int) -> Optional[Tensor]:
        """(T, T) bool mask, True where target frame t may not see source frame s: s in a
        later chunk, or more than left_context_chunks chunks back. None without chunking."""
        if chunk_size <= 0:
            return None
        if any(chunk_size % d != 0 for d in self.downsampling_factor):
            raise ValueError(f"chunk_size {chunk_size} must be divisible by every downsampling factor {self.downsampling_factor}")
        if left_context_chunks >= 0:
            for kernel, ds in zip(self.cnn_module_kernel, self.downsampling_factor):
                if chunk_size * left_context_chunks < (kernel // 2) * ds:
                    raise ValueError(
                        f"left context of {chunk_size * left_context_chunks} frames is shorter than the "
                        f"convolution's reach ({kernel // 2} frames at downsampling {ds}); raise left_context_frames"
                    )
        else:
            left_context_chunks = 1000000
        chunk = torch.div(torch.arange(x.shape[0], device=x.device), chunk_size, rounding_mode="floor")
        src, tgt = chunk[None, :], chunk[:, None]
        return (src > tgt) | (src < tgt - left_context_chunks)

    def _full_dim_output(self, outputs: List[Tensor]) -> Tensor:
        """Concatenate, for each output dim, the latest stack output that has it."""
        pieces = [outputs[-1]]
        cur_dim = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur_dim:
                pieces.append(outputs[i][..., cur_dim:d])
                cur_dim = d
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


# ---------------------------------------------------------------------------------------------
# Stacks
# ---------------------------------------------------------------------------------------------


class Zipformer2Encoder(nn.Module):
    """A stack of `num_layers` copies of `encoder_layer` (identical at initialisation) that
    share one relative positional encoding.

    Layer i's bypass skips the whole layer on random utterances with a probability that falls
    from initial_layerdrop_rate to final_layerdrop_rate during its slice of
    [warmup_begin, warmup_end] (in batches), so deeper layers start contributing later.
    """

    def __init__(
        self,
        encoder_layer: nn.Module,
        num_layers: int,
        pos_dim: int,
        dropout: FloatLike,
        warmup_begin: float,
        warmup_end: float,
        initial_layerdrop_rate: float = 0.5,
        final_layerdrop_rate: float = 0.05,
    ) -> None:
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15, length_factor=1.0)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        if not 0 <= warmup_begin <= warmup_end:
            raise ValueError(f"need 0 <= warmup_begin <= warmup_end, got {warmup_begin}, {warmup_end}")
        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * delta
            layer.bypass.skip_rate = ScheduledFloat(
                (begin, initial_layerdrop_rate), (begin + delta, final_layerdrop_rate), default=0.0
            )

    def forward(
        self,
        src: Tensor,
        chunk_size: int = -1,
        feature_mask: Union[Tensor, float] = 1.0,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
          src: (T, N, C).
          chunk_size: frames per chunk for causal convolutions; -1 = no chunking.
          feature_mask: 1.0 or a tensor broadcasting with src, applied after every layer.
          attn_mask: (T, T) or (N, T, T) bool, True = masked; or None.
          src_key_padding_mask: (N, T) bool, True at padding; or None.
        Returns: (T, N, C).
        """
        pos_emb = self.encoder_pos(src)
        apply_mask = not isinstance(feature_mask, float) or feature_mask != 1.0
        output = src * feature_mask if apply_mask else src
        for layer in self.layers:
            output = layer(
                output, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask
            )
            if apply_mask:
                output = output * feature_mask
        return output


class DownsampledZipformer2Encoder(nn.Module):
    """A Zipformer2Encoder run at 1/downsample of the input frame rate: learned pooling,
    the stack, upsampling by repetition, and a learned bypass with the input.

    Unlike the inner stack, it takes the padding mask at its own (input) frame rate.
    """

    def __init__(
        self,
        encoder: Zipformer2Encoder,
        dim: int,
        downsample: int,
        dropout: FloatLike,
        causal: bool,
        mask_padding: bool = False,
    ):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout, causal)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim, straight_through_rate=0)
        self.mask_padding = mask_padding

    def forward(
        self,
        src: Tensor,
        chunk_size: int = -1,
        feature_mask: Union[Tensor, float] = 1.0,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """src: (T, N, C); masks at src's frame rate (see Zipformer2Encoder). Returns (T, N, C)."""
        ds = self.downsample_factor
        src_orig = src
        src = self.downsample(src, src_key_padding_mask if self.mask_padding else None)
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        if src_key_padding_mask is not None:
            src_key_padding_mask = src_key_padding_mask[..., ::ds]
        src = self.encoder(
            src,
            chunk_size=chunk_size // ds,
            feature_mask=feature_mask,
            attn_mask=attn_mask,
            src_key_padding_mask=src_key_padding_mask,
        )
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src)


class SimpleDownsample(nn.Module):
    """Downsampling by a learned softmax-weighted sum of each `downsample` adjacent frames.

    The sequence is right-padded to a multiple of `downsample` by repeating its last frame.

    Args:
      channels: C (the module only has `downsample` parameters, whatever C is).
      downsample: the factor.
      dropout, causal: unused; kept so that icefall's call sites work unchanged.
    """

    def __init__(self, channels: int, downsample: int, dropout: FloatLike, causal: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.downsample = downsample

    def forward(self, src: Tensor, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
          src: (T, N, C).
          src_key_padding_mask: optional (N, T), True at padding. When given, padded frames
            are first replaced by their utterance's last valid frame, so each utterance is
            pooled exactly as it would be alone.
        Returns: ((T + downsample - 1) // downsample, N, C).
        """
        seq_len, batch_size, channels = src.shape
        ds = self.downsample
        if src_key_padding_mask is not None:
            src = _repeat_last_valid_frame(src, src_key_padding_mask)
        d_seq_len = (seq_len + ds - 1) // ds
        # Right-pad to d_seq_len * ds frames by repeating the last one. Indexing rather than a
        # conditional concatenation keeps exported graphs valid whether or not padding is needed.
        index = torch.arange(d_seq_len * ds, device=src.device).clamp_(max=seq_len - 1)
        src = src[index].reshape(d_seq_len, ds, batch_size, channels)
        weights = self.bias.softmax(dim=0).to(src.dtype).reshape(1, ds, 1, 1)
        return (src * weights).sum(dim=1)


def _repeat_last_valid_frame(x: Tensor, padding_mask: Tensor) -> Tensor:
    """x: (T, N, C), padding_mask: (N, T) True at padding (a suffix of each row).
    Returns x with every padded frame replaced by its utterance's last valid frame."""
    batch_size = x.shape[1]
    last = ((~padding_mask).sum(dim=1) - 1).clamp(min=0)
    last_frame = x[last, torch.arange(batch_size, device=x.device)]  # (N, C)
    return torch.where(padding_mask.t().unsqueeze(-1), last_frame.unsqueeze(0), x)


class SimpleUpsample(nn.Module):
    """Upsampling by repeating each frame `upsample` times: (T, N, C) -> (T * upsample, N, C)."""

    def __init__(self, num_channels: int, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        seq_len, batch_size, channels = src.shape
        src = src.unsqueeze(1).expand(seq_len, self.upsample, batch_size, channels)
        return src.reshape(seq_len * self.upsample, batch_size, channels)


class BypassModule(nn.Module):
    """out = src_orig + (src - src_orig) * bypass_scale, with a learned per-channel scale.

    In training the scale is kept within [scale_min, scale_max] (scale_min starts at 0.9 so
    that early on every module must learn something), whole utterances skip the module
    (scale 0) with probability `skip_rate`, and use scale 1 with probability
    `straight_through_rate`.
    """

    def __init__(
        self,
        embed_dim: int,
        skip_rate: FloatLike = 0.0,
        straight_through_rate: FloatLike = 0.0,
        scale_min: Optional[FloatLike] = None,
        scale_max: FloatLike = 1.0,
    ):
        super().__init__()
        if scale_min is None:
            scale_min = ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0)
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = copy.deepcopy(skip_rate)
        self.straight_through_rate = copy.deepcopy(straight_through_rate)
        self.scale_min = copy.deepcopy(scale_min)
        self.scale_max = copy.deepcopy(scale_max)

    def _bypass_scale(self, batch_size: int) -> Tensor:
        """(C,) in eval; (C,) or (N, C) in training."""
        if not self.training or is_exporting():
            return self.bypass_scale
        scale = limit_param_value(self.bypass_scale, min=float(self.scale_min), max=float(self.scale_max))
        skip_rate = float(self.skip_rate)
        if skip_rate != 0.0:
            scale = scale * (torch.rand((batch_size, 1), device=scale.device) > skip_rate)
        straight_through_rate = float(self.straight_through_rate)
        if straight_through_rate != 0.0:
            through = torch.rand((batch_size, 1), device=scale.device) < straight_through_rate
            scale = torch.maximum(scale, through.to(scale.dtype))
        return scale

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        """src_orig, src: (T, N, C) -> (T, N, C)."""
        return src_orig + (src - src_orig) * self._bypass_scale(src.shape[1])


# ---------------------------------------------------------------------------------------------
# Layer
# ---------------------------------------------------------------------------------------------


class Zipformer2EncoderLayer(nn.Module):
    """One Zipformer block:

        x -> +FF1 -> +NonlinAttention -> +SelfAttention1 -> +Conv1 -> +FF2 -> bypass_mid
          -> +SelfAttention2 -> +Conv2 -> +FF3 -> BiasNorm -> bypass (with the block input)

    One set of attention weights (from RelPositionMultiheadAttentionWeights) is shared by the
    NonlinAttention (first head only) and both SelfAttention modules.

    The *_skip_rate schedules drop a module's output for whole utterances in training;
    const_attention_rate sometimes replaces NonlinAttention's weights by uniform averaging.
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        dropout: FloatLike = 0.1,
        cnn_module_kernel: int = 31,
        causal: bool = False,
        attention_skip_rate: Optional[FloatLike] = None,
        conv_skip_rate: Optional[FloatLike] = None,
        const_attention_rate: Optional[FloatLike] = None,
        ff2_skip_rate: Optional[FloatLike] = None,
        ff3_skip_rate: Optional[FloatLike] = None,
        bypass_skip_rate: Optional[FloatLike] = None,
    ) -> None:
        super().__init__()
        if attention_skip_rate is None:
            attention_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        if conv_skip_rate is None:
            conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        if const_attention_rate is None:
            const_attention_rate = ScheduledFloat((0.0, 0.25), (4000.0, 0.025), default=0)
        if ff2_skip_rate is None:
            ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        if ff3_skip_rate is None:
            ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        if bypass_skip_rate is None:
            bypass_skip_rate = ScheduledFloat((0.0, 0.5), (4000.0, 0.02), default=0)
        self.embed_dim = embed_dim

        # Registration order matches icefall (parameter order matters for optimizer states).
        self.bypass = BypassModule(embed_dim, skip_rate=bypass_skip_rate, straight_through_rate=0)
        self.bypass_mid = BypassModule(embed_dim, straight_through_rate=0)
        self.attention_skip_rate = copy.deepcopy(attention_skip_rate)
        self.conv_skip_rate = copy.deepcopy(conv_skip_rate)
        self.ff2_skip_rate = copy.deepcopy(ff2_skip_rate)
        self.ff3_skip_rate = copy.deepcopy(ff3_skip_rate)
        self.const_attention_rate = copy.deepcopy(const_attention_rate)

        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim=pos_dim, num_heads=num_heads, query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim, dropout=0.0,
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused: icefall keeps this parameter in its checkpoints, so it stays for strict loading.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)

        self.balancer1 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.2, max_abs=4.0
        )
        # for the NonlinAttention output; low prob out of concern for memory
        self.balancer_na = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)), prob=0.05,
        )
        # keep FF2/FF3 outputs from staying too small (a rare problem, fixed slowly)
        self.balancer_ff2 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.1), default=0.0), max_abs=2.0, prob=0.05,
        )
        self.balancer_ff3 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.2), default=0.0), max_abs=4.0, prob=0.05,
        )
        self.whiten = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(4.0, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.balancer2 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.1, max_abs=4.0
        )

    def _rate(self, schedule: FloatLike) -> float:
        return float(schedule) if self.training and not is_exporting() else 0.0

    def _utterance_mask(self, x: Tensor, drop_rate: float) -> Optional[Tensor]:
        """(N, 1) mask, 0 for utterances that skip a module; None when nothing is skipped."""
        if drop_rate == 0.0:
            return None
        return (torch.rand(x.shape[1], 1, device=x.device) > drop_rate).to(x.dtype)

    @staticmethod
    def _masked(x: Tensor, mask: Optional[Tensor]) -> Tensor:
        return x if mask is None else x * mask

    def forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        chunk_size: int = -1,
        attn_mask: Optional[Tensor] = None,
        src_key_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
          src: (T, N, C).
          pos_emb: (1, 2T - 1, pos_dim) relative positional encoding.
          chunk_size: frames per chunk for causal convolutions; -1 = no chunking.
          attn_mask: (T, T) or (N, T, T) bool, True = masked; or None.
          src_key_padding_mask: (N, T) bool, True at padding; or None.
        Returns: (T, N, C).
        """
        src_orig = src
        # (num_heads, N, T, T)
        attn_weights = self.self_attn_weights(
            src, pos_emb=pos_emb, attn_mask=attn_mask, key_padding_mask=src_key_padding_mask
        )
        src = src + self.feed_forward1(src)

        attn_skip = self._utterance_mask(src, self._rate(self.attention_skip_rate))
        na_weights = attn_weights[0:1]
        if self.training and not is_exporting() and random.random() < float(self.const_attention_rate):
            # Uniform weights over the visible frames push NonlinAttention towards an
            # averaging-over-time operation (masked weights are exactly 0).
            visible = (na_weights > 0.0).to(na_weights.dtype)
            na_weights = visible / visible.sum(dim=-1, keepdim=True)
        na = self.balancer_na(self.nonlin_attention(src, na_weights))
        src = src + self._masked(na, attn_skip)
        src = src + self._masked(self.self_attn1(src, attn_weights), attn_skip)

        conv_skip = self._utterance_mask(src, self._rate(self.conv_skip_rate))
        conv = self.conv_module1(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = src + self._masked(conv, conv_skip)
        ff2_skip = self._utterance_mask(src, self._rate(self.ff2_skip_rate))
        src = src + self._masked(self.balancer_ff2(self.feed_forward2(src)), ff2_skip)

        src = self.bypass_mid(src_orig, src)

        src = src + self._masked(self.self_attn2(src, attn_weights), attn_skip)
        conv_skip = self._utterance_mask(src, self._rate(self.conv_skip_rate))
        conv = self.conv_module2(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = src + self._masked(conv, conv_skip)
        ff3_skip = self._utterance_mask(src, self._rate(self.ff3_skip_rate))
        src = src + self._masked(self.balancer_ff3(self.feed_forward3(src)), ff3_skip)

        src = self.norm(self.balancer1(src))
        src = self.bypass(src_orig, src)
        return self.whiten(self.balancer2(src))


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional encoding that resolves small offsets finely and large ones coarsely.

    An offset x is compressed logarithmically (slope 1 at 0), mapped to (-pi/2, pi/2) by atan,
    and encoded by cos/sin at integer frequencies 1..embed_dim/2; the last dim is a constant 1
    (a bias for the projection).

    Args:
      embed_dim: even encoding dim.
      dropout_rate: dropout on the encoding in training.
      max_len: initial size of the cached table (grown on demand; a traced model keeps this
        size, so it bounds the input length of exported models).
      length_factor: >= 1; larger values give less weight to small offsets.
    """

    def __init__(self, embed_dim: int, dropout_rate: FloatLike, max_len: int = 2000, length_factor: float = 1.0):
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"CompactRelPositionalEncoding needs an even embed_dim, got {embed_dim}")
        if length_factor < 1.0:
            raise ValueError(f"length_factor must be >= 1.0, got {length_factor}")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout = Dropout2(dropout_rate)
        self.pe = self._table(max_len, torch.device("cpu"))

    def _table(self, max_len: int, device: torch.device) -> Tensor:
        """(2 * max_len - 1, embed_dim) encodings of offsets -(max_len - 1) .. max_len - 1."""
        x = torch.arange(-(max_len - 1), max_len, device=device).to(torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=device)
        compression_length = self.embed_dim ** 0.5
        x_compressed = (
            compression_length * x.sign() * ((x.abs() + compression_length).log() - math.log(compression_length))
        )
        # length_factor 1: the Fourier basis separates neighbouring offsets near 0 exactly
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        x_atan = (x_compressed / length_scale).atan()
        pe = torch.zeros(x.shape[0], self.embed_dim, device=device)
        pe[:, 0::2] = (x_atan * freqs).cos()
        pe[:, 1::2] = (x_atan * freqs).sin()
        pe[:, -1] = 1.0
        return pe

    def forward(self, x: Tensor) -> Tensor:
        """x: (T, N, *) -> (1, 2T - 1, embed_dim), row k for offset k - (T - 1)."""
        seq_len = x.shape[0]
        if self.pe.shape[0] < 2 * seq_len - 1:
            self.pe = self._table(seq_len, x.device)
        if self.pe.device != x.device:
            self.pe = self.pe.to(x.device)  # the cache stays float32
        center = self.pe.shape[0] // 2
        pos_emb = self.pe[center - seq_len + 1 : center + seq_len].to(x.dtype).unsqueeze(0)
        return self.dropout(pos_emb)


def _rel_to_abs(pos_scores: Tensor) -> Tensor:
    """(H, N, T, 2T - 1) scores indexed by relative offset -> (H, N, T, T) indexed by source
    frame: out[..., i, j] = pos_scores[..., i, (T - 1) + j - i] (offset j - i)."""
    num_heads, batch_size, seq_len, n = pos_scores.shape
    if is_exporting():
        rows = torch.arange(seq_len - 1, -1, -1, device=pos_scores.device).unsqueeze(-1)
        index = (rows + torch.arange(seq_len, device=pos_scores.device)).expand(num_heads, batch_size, seq_len, seq_len)
        return torch.gather(pos_scores, dim=-1, index=index)
    pos_scores = pos_scores.contiguous()
    s0, s1, s2, s3 = pos_scores.stride()
    # stepping one row (i + 1) moves one offset left: stride s2 - s3
    return pos_scores.as_strided(
        (num_heads, batch_size, seq_len, seq_len), (s0, s1, s2 - s3, s3), storage_offset=s3 * (seq_len - 1)
    )


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Multi-head attention weights with relative positional scores (Transformer-XL style).

    score[h, n, i, j] = q_i . k_j + p_i . P_h(pe(j - i)), softmax over j. The query/key scale
    (head_dim^-0.5) lives in in_proj's initialisation; this assumes the ScaledAdam optimizer.

    Args:
      embed_dim: input dim C.
      pos_dim: positional encoding dim.
      num_heads: H.
      query_head_dim: per-head query (and key) dim.
      pos_head_dim: per-head dim of the positional query and projection.
      dropout: dropout on the weights.
      pos_emb_skip_rate: probability (schedule) of omitting the positional scores in training.

    Shapes: forward((T, N, C), (1, 2T - 1, pos_dim)) -> (H, N, T, T).
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        dropout: float = 0.0,
        pos_emb_skip_rate: Optional[FloatLike] = None,
    ) -> None:
        super().__init__()
        if pos_emb_skip_rate is None:
            pos_emb_skip_rate = ScheduledFloat((0.0, 0.5), (4000.0, 0.0))
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = copy.deepcopy(pos_emb_skip_rate)
        self.name: Optional[str] = None

        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = ScaledLinear(embed_dim, in_proj_dim, bias=True, initial_scale=query_head_dim ** -0.25)
        self.whiten_keys = Whiten(
            num_groups=num_heads, whitening_limit=_whitening_schedule(3.0), prob=(0.025, 0.25), grad_scale=0.025
        )
        # The weights do not depend on a constant added to the keys, but Adam-style updates can
        # still drift one; a rare, gentle balancer keeps the key means near zero.
        self.balance_keys = Balancer(
            query_head_dim * num_heads, channel_dim=-1, min_positive=0.4, max_positive=0.6,
            min_abs=0.0, max_abs=100.0, prob=0.025,
        )
        self.linear_pos = ScaledLinear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    def forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
          x: (T, N, C).
          pos_emb: (1, 2T - 1, pos_dim).
          key_padding_mask: (N, T) bool, True = padding (never attended to).
          attn_mask: (T, T) or (N, T, T) bool, True = masked, as (target, source).
        Returns: (H, N, T, T) attention weights, as (head, batch, target, source).
        """
        x = self.in_proj(x)
        seq_len, batch_size, _ = x.shape
        num_heads, query_head_dim, pos_head_dim = self.num_heads, self.query_head_dim, self.pos_head_dim
        query_dim = query_head_dim * num_heads
        q = x[..., :query_dim]
        k = self.whiten_keys(self.balance_keys(x[..., query_dim : 2 * query_dim]))
        p = x[..., 2 * query_dim :]

        q = q.reshape(seq_len, batch_size, num_heads, query_head_dim).permute(2, 1, 0, 3)  # (H, N, T, d)
        k = k.reshape(seq_len, batch_size, num_heads, query_head_dim).permute(2, 1, 3, 0)  # (H, N, d, T)
        p = p.reshape(seq_len, batch_size, num_heads, pos_head_dim).permute(2, 1, 0, 3)  # (H, N, T, dp)
        scores = torch.matmul(q, k)

        if not self.training or is_exporting() or random.random() >= float(self.pos_emb_skip_rate):
            pos = self.linear_pos(pos_emb)
            pos = pos.reshape(-1, 2 * seq_len - 1, num_heads, pos_head_dim).permute(2, 0, 3, 1)  # (H, 1, dp, 2T-1)
            scores = scores + _rel_to_abs(torch.matmul(p, pos))

        if self.training and not is_exporting() and random.random() < 0.1:
            # Fail-safe against implausibly large scores, far outside their normal range.
            scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04)

        # -1000 (not -inf) avoids NaN for fully masked rows, and exp(-1000) is exactly 0, which
        # the const-attention trick in the layer relies on.
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, -1000.0)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch_size, seq_len):
                raise ValueError(
                    f"key_padding_mask must be (N, T) = {(batch_size, seq_len)}, got {tuple(key_padding_mask.shape)}"
                )
            scores = scores.masked_fill(key_padding_mask.to(torch.bool).unsqueeze(1), -1000.0)

        weights = softmax(scores, dim=-1)
        if self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout, training=self.training)
        return weights


class SelfAttention(nn.Module):
    """Attention with precomputed weights: out = out_proj(weights @ in_proj(x)) per head.

    Shapes: forward((T, N, C), (H, N, T, T)) -> (T, N, C).
    """

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = ScaledLinear(num_heads * value_head_dim, embed_dim, bias=True, initial_scale=0.05)
        self.whiten = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(7.5, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01
        )

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        seq_len, batch_size, _ = x.shape
        num_heads = attn_weights.shape[0]
        x = self.in_proj(x)
        x = x.reshape(seq_len, batch_size, num_heads, -1).permute(2, 1, 0, 3)  # (H, N, T, dv)
        x = torch.matmul(attn_weights, x)
        x = x.permute(2, 1, 0, 3).reshape(seq_len, batch_size, -1)
        return self.whiten(self.out_proj(x))


class NonlinAttention(nn.Module):
    """Like the convolution module, but mixing over time with attention weights instead of a
    convolution: out = out_proj((weights @ (x * tanh(s))) * y), with (s, x, y) = in_proj(input).

    Shapes: forward((T, N, C), (H', N, T, T)) -> (T, N, C); hidden_channels divisible by H'.
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3, bias=True)
        # Well-trained instances show |s| around 3 before the tanh; a large min_abs keeps
        # poorly-trained ones from sitting in its linear region.
        self.balancer = Balancer(
            hidden_channels, channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5, max_abs=5.0,
        )
        self.out_proj = ScaledLinear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(num_groups=1, whitening_limit=_whitening_schedule(5.0), prob=(0.025, 0.25), grad_scale=0.01)
        self.whiten2 = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(5.0, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01
        )

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        seq_len, batch_size, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=2)
        x = self.whiten1(x) * torch.tanh(self.balancer(s))
        num_heads = attn_weights.shape[0]
        x = x.reshape(seq_len, batch_size, num_heads, -1).permute(2, 1, 0, 3)  # (H', N, T, d)
        x = torch.matmul(attn_weights, x)
        x = x.permute(2, 1, 0, 3).reshape(seq_len, batch_size, -1)
        return self.whiten2(self.out_proj(x * y))


# ---------------------------------------------------------------------------------------------
# Feed-forward and convolution
# ---------------------------------------------------------------------------------------------


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (mask shared over time) -> Linear.

    Shapes: (T, N, C) -> (T, N, C).
    """

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(
            feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim, embed_dim, activation="SwooshL", dropout_p=dropout,
            dropout_shared_dim=0, bias=True, initial_scale=0.1,
        )
        self.out_whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.hidden_balancer(self.in_proj(x))
        return self.out_whiten(self.out_proj(x))


class ConvolutionModule(nn.Module):
    """Linear -> GLU (sigmoid gate) -> depthwise conv over time -> SwooshR -> Linear.

    Padded frames are zeroed before the depthwise convolution, as zero padding would be for
    an utterance alone. With causal=True the convolution is chunk-causal
    (ChunkCausalDepthwiseConv1d).

    Shapes: (T, N, C) -> (T, N, C).
    """

    def __init__(self, channels: int, kernel_size: int, causal: bool) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvolutionModule needs an odd kernel_size, got {kernel_size}")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        # Some layers' gate inputs drift to RMS 50-100, giving peaky sigmoid derivatives that
        # stall learning; max_abs keeps them in a learnable range.
        self.balancer1 = Balancer(
            channels, channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)), max_positive=1.0, min_abs=1.5,
            max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0),
        )
        self.sigmoid = nn.Sigmoid()
        self.depthwise_conv = (
            ChunkCausalDepthwiseConv1d(channels=channels, kernel_size=kernel_size)
            if causal
            else nn.Conv1d(channels, channels, groups=channels, kernel_size=kernel_size, padding=kernel_size // 2)
        )
        self.balancer2 = Balancer(
            channels, channel_dim=1,
            min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)), max_positive=1.0,
            min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)), max_abs=10.0,
        )
        self.whiten = Whiten(num_groups=1, whitening_limit=_whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01)
        self.out_proj = ActivationDropoutAndLinear(
            channels, channels, activation="SwooshR", dropout_p=0.0, initial_scale=0.05
        )

    def forward(self, x: Tensor, src_key_padding_mask: Optional[Tensor] = None, chunk_size: int = -1) -> Tensor:
        """
        Args:
          x: (T, N, C).
          src_key_padding_mask: (N, T) bool, True at padding; or None.
          chunk_size: frames per chunk (causal only); -1 = no chunking.
        Returns: (T, N, C).
        """
        x, s = self.in_proj(x).chunk(2, dim=2)
        x = x * self.sigmoid(self.balancer1(s))
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.to(torch.bool).t().unsqueeze(-1), 0.0)

        if chunk_size >= 0 and not self.causal and not is_exporting():
            raise ValueError("ConvolutionModule: chunk_size needs a model built with causal=True")
        if self.causal:
            x = self.depthwise_conv(x.permute(1, 2, 0), chunk_size=chunk_size)
        elif x.device.type == "cpu":
            x = _depthwise_conv_channels_last(x, self.depthwise_conv)
        else:
            x = self.depthwise_conv(x.permute(1, 2, 0))
        x = self.balancer2(x).permute(2, 0, 1)  # (N, C, T) -> (T, N, C)
        return self.out_proj(self.whiten(x))


def _depthwise_conv_channels_last(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """`conv` (depthwise, same padding) over time of x (T, N, C), returned as (N, C, T).

    On CPU, the same convolution as a conv2d on (N, C, 1, T) in channels-last memory layout
    is 3-8x faster than Conv1d on the (N, C, T) permutation (oneDNN's depthwise kernels are
    vectorised over channels), forward and backward, with identical results.
    """
    x = x.transpose(0, 1).contiguous().permute(0, 2, 1).unsqueeze(2)  # (N, C, 1, T), channels-last
    y = F.conv2d(
        x, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups
    )
    return y.squeeze(2)
