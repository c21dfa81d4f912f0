"""`export-onnx.py`: the averaged model of a training run as ONNX files (docs/deployment.md).

    ./zipformer_cif/export-onnx.py --exp-dir zipformer_cif/exp --epoch 30 --avg 9 --use-averaged-model 1 \
      --tokens data/lang_bpe_500/tokens.txt --int8 1

One layout per decoder type, suffix `epoch-N-avg-K` (or `iter-I-avg-K`):

- cif_transducer, icefall's offline Zipformer transducer layout, which sherpa-onnx decodes
  (`OfflineRecognizer.from_transducer`):
    encoder-<suffix>.onnx  x (N, T, 80) float, x_lens (N,) int64
                           -> encoder_out (N, U * S, joiner_dim), encoder_out_lens (N,) int64
                           (Zipformer, CIF, joiner encoder projection; S = --max-sym-per-frame)
    decoder-<suffix>.onnx  y (N, context_size) int64 -> decoder_out (N, joiner_dim)
    joiner-<suffix>.onnx   encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit (N, V)
- cif_ce_nar, sherpa-onnx's zipformer2_ctc layout (`OfflineRecognizer.from_zipformer_ctc`):
    model-<suffix>.onnx    x, x_lens -> log_probs (N, 2U, V), log_probs_len (N,) int64
                           (row 2u: the log-softmax of token u; row 2u + 1: blank with certainty)
- cif_ce_ar, for onnx_pretrained.py (sherpa-onnx has no layout for it):
    encoder-<suffix>.onnx  x, x_lens -> cif (N, U, C), cif_lens (N,) int64, fire_frames (N, U) int64
    decoder-<suffix>.onnx  cif_u (N, C), prev_token (N,) int64, cache (L, N, u, D)
                           -> logits (N, V), new_cache (L, N, u + 1, D)

The graphs are traced from `substitute_for_onnx(model)`, which computes the same with cheaper
onnxruntime kernels (docs/deployment.md, "Export-only substitutions"). `--int8 1` also writes
`*.int8.onnx`, dynamically quantised (int8 weights of MatMul).
"""
import argparse
import copy
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from icefall_cif.cif_dense import dense_integrate_and_fire
from icefall_cif.decode.loop import add_model_selection_arguments, model_config_for_decoding, select_model_weights
from icefall_cif.export import inference_model
from icefall_cif.recipe import Recipe
from icefall_cif.tokenizer import Tokenizer, check_token_table, read_tokens_txt
from icefall_cif.utils import AttributeDict

#: icefall exports with opset 13; 14 is the first with scaled_dot_product_attention, which the
#: CE decoders' nn.MultiheadAttention calls.
OPSET = 14
#: Value of the encoder's `version` metadata; onnx_pretrained.py refuses other versions.
LAYOUT_VERSION = "1"
SUPPORTED_DECODER_TYPES = ("cif_transducer", "cif_ce_ar", "cif_ce_nar")


class CifFrontEnd(nn.Module):
    """Zipformer, extra downsampling, weight predictor and dense CIF, as in inference.

    The shared first part of every encoder graph; `forward_cif` of the model with
    `dense_integrate_and_fire` in place of `integrate_and_fire` (with `cif_segmentation`
    "ctc", `forward_cif` itself).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        predictor = model.cif_predictor
        self.threshold = predictor.threshold
        self.tail_threshold = predictor.tail_threshold

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
          x: (N, T, 80) fbank, padded with any value; x_lens: (N,) int64 valid frames, max = T.
        Returns:
          encoder_out (N, T', C) @25 Hz, encoder_out_lens (N,), cif (N, U, C), cif_lens (N,),
          fire_frames (N, U) at the CIF frame rate (-1 at padding), and for a CE head with a
          CTC prior its `token_prior` (N, U, V) times the head's prior_scale (None otherwise).
        """
        encoder_out, encoder_out_lens = self.model.forward_encoder(x, x_lens)
        if self.model.cif_segmentation == "ctc":
            # The CTC-cut path of forward_cif is dense tensor algebra already: it traces as it is.
            cif = self.model.forward_cif(encoder_out, encoder_out_lens)
            prior = None if cif.token_prior is None else self.model.head.prior_scale * cif.token_prior
        else:
            h, h_lens = self.model.downsample_for_cif(encoder_out, encoder_out_lens)
            side_input = self.model.predictor_side_input(encoder_out, encoder_out_lens)
            alpha = self.model.cif_predictor.compute_weights(h, h_lens, side_input)
            cif = dense_integrate_and_fire(h, alpha, h_lens, self.threshold, self.tail_threshold)
            prior = None
        return encoder_out, encoder_out_lens, cif.cif, cif.cif_lens, cif.fire_frames, prior


class TransducerEncoder(nn.Module):
    """encoder.onnx of cif_transducer: the CIF vectors through the joiner's encoder projection,
    each repeated `max_sym_per_frame` times.

    sherpa-onnx emits at most one symbol per encoder frame and moves to the next frame after a
    blank; with S copies of a vector its greedy search is ours with up to S symbols per vector
    (a blank on a copy repeats on the following copies, the decoder state being unchanged).
    """

    def __init__(self, model: nn.Module, max_sym_per_frame: int):
        super().__init__()
        self.front_end = CifFrontEnd(model)
        self.encoder_proj = model.head.joiner.encoder_proj
        self.max_sym_per_frame = max_sym_per_frame

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, 80), (N,) -> encoder_out (N, U * S, joiner_dim), encoder_out_lens (N,) = cif_lens * S."""
        _, _, cif, cif_lens, _, _ = self.front_end(x, x_lens)
        proj = self.encoder_proj(cif)  # (N, U, J)
        N, U, J = proj.shape
        S = self.max_sym_per_frame
        repeated = proj.unsqueeze(2).expand(N, U, S, J).reshape(N, U * S, J)
        return repeated, cif_lens * S


class TransducerDecoder(nn.Module):
    """decoder.onnx: the stateless prediction network and the joiner's decoder projection."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.head.decoder
        self.decoder_proj = model.head.joiner.decoder_proj

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (N, context_size) int64, -1 = no token yet -> (N, joiner_dim)."""
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class TransducerJoiner(nn.Module):
    """joiner.onnx: both inputs already projected."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.joiner = model.head.joiner

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        """(N, joiner_dim), (N, joiner_dim) -> logit (N, V)."""
        return self.joiner(encoder_out, decoder_out, project_input=False)


class ArEncoder(nn.Module):
    """encoder.onnx of cif_ce_ar: the CIF vectors and their fire frames (and with a CTC prior,
    `--ce-ctc-prior-scale`, the scaled prior as a fourth output, `token_prior`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.front_end = CifFrontEnd(model)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(N, T, 80), (N,) -> cif (N, U, C), cif_lens (N,), fire_frames (N, U)[, token_prior (N, U, V)]."""
        _, _, cif, cif_lens, fire_frames, prior = self.front_end(x, x_lens)
        return (cif, cif_lens, fire_frames) if prior is None else (cif, cif_lens, fire_frames, prior)


class ArDecoderStep(nn.Module):
    """decoder.onnx of cif_ce_ar: `ArCeDecoder.forward_step` with its cache as one tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # A step's self-attention attends from the new position to the cached ones plus itself:
        # key and value are one tensor, as in the NAR decoder's cross-attention.
        self.ce_decoder = copy.deepcopy(model.head.ce_decoder)
        for layer in self.ce_decoder.layers:
            layer.self_attn = _DistinctKeyValue(layer.self_attn)

    def forward(
        self, cif_u: torch.Tensor, prev_token: torch.Tensor, cache: torch.Tensor,
        prior_u: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
          cif_u: (N, C) CIF vector u; prev_token: (N,) int64 token u-1 (blank at u = 0);
          cache: (L, N, u, D) the layer inputs of steps < u ((L, N, 0, D) at u = 0);
          prior_u: (N, V) row u of the encoder's `token_prior`, for a model with a CTC prior.
        Returns:
          logits (N, V) of token u (the prior added) and the cache (L, N, u + 1, D).
        """
        logits, new_cache = self.ce_decoder.forward_step(cif_u, prev_token, list(cache.unbind(0)))
        if prior_u is not None:
            logits = logits + prior_u
        return logits, torch.stack(new_cache, dim=0)


class _DistinctKeyValue(nn.Module):
    """nn.MultiheadAttention called with value as a tensor distinct from key.

    With key and value the same tensor (cross-attention to the encoder frames), torch projects
    them together and then unflattens the result, and the traced graph keeps the number of
    frames of the example input as a constant; separate projections trace with dynamic shapes.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs):
        """(N, Q, D), (N, S, D), (N, S, D) -> nn.MultiheadAttention's outputs."""
        return self.attention(query, key, value.clone(), **kwargs)


class NarCtcModel(nn.Module):
    """model.onnx of cif_ce_nar in sherpa-onnx's zipformer2_ctc layout.

    CTC greedy search takes the argmax of each row, merges repeats and drops blanks. Row 2u
    holds token u's log-probs and row 2u + 1 a certain blank, so the search returns exactly the
    per-position argmax of the NAR decoder, repeated tokens included.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.front_end = CifFrontEnd(model)
        self.ce_decoder = copy.deepcopy(model.head.ce_decoder)
        for layer in self.ce_decoder.layers:
            layer.src_attn = _DistinctKeyValue(layer.src_attn)
        self.blank_id = model.blank_id

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, 80), (N,) -> log_probs (N, 2U, V), log_probs_len (N,) = 2 cif_lens."""
        encoder_out, encoder_out_lens, cif, cif_lens, _, prior = self.front_end(x, x_lens)
        U = cif.size(1)
        # One extra padding vector, masked for every utterance, so that attention has a position
        # even when nothing fired (U = 0); it is dropped again after the decoder.
        padded = nn.functional.pad(cif, (0, 0, 0, 1))
        logits = self.ce_decoder(padded, cif_lens, encoder_out, encoder_out_lens)[:, :U]
        if prior is not None:
            logits = logits + prior
        log_probs = logits.log_softmax(dim=-1)
        N, _, V = log_probs.shape
        # log 0 as a large finite number: -inf rows would turn into NaN after int8 quantisation.
        blank_row = torch.full_like(log_probs, -1.0e4)
        blank_row[..., self.blank_id] = 0.0
        interleaved = torch.stack([log_probs, blank_row], dim=2).reshape(N, 2 * U, V)
        return interleaved, cif_lens * 2


# ---------------------------------------------------------------------------------------------
# Export-only substitutions: the same function as the eval-mode model, in fewer or cheaper ONNX
# ops for onnxruntime's CPU kernels (BENCHMARKS.md, "ONNX export and runtimes"). The recipe's
# modules (scaling.py, subsampling.py, zipformer.py) are matched by class name: this package
# does not import recipe modules.
# ---------------------------------------------------------------------------------------------

#: Swoosh(x) = softplus(x - offset) - SLOPE x - constant, scaling.py's SwooshL and SwooshR
#: (test_onnx_export.py checks these against scaling.swoosh_forward).
SWOOSH_OFFSET = {"SwooshL": 4.0, "SwooshR": 1.0}
SWOOSH_CONSTANT = {"SwooshL": 0.035, "SwooshR": 0.313261687}
SWOOSH_SLOPE = 0.08
#: softplus(z) = log(1 + exp(z)) is computed from exp(min(z, 20)), which cannot overflow; above
#: 20 softplus(z) - z < 2.1e-9, so max(z, .) is exact in float32 there.
_SOFTPLUS_CLAMP = 20.0


class OnnxSwoosh(nn.Module):
    """Swoosh as 7 elementwise ONNX ops (Min, Exp, Add, Log, Max, Mul, Sub) instead of 11.

    With z = x - offset: swoosh(x) = softplus(z) - SLOPE z - (constant + SLOPE offset).
    `substitute_for_onnx` folds the offset into the bias of the layer before and the constant
    into the bias of the layer after, where that is exact; what is not folded is applied here.

    Args:
      offset: subtracted from the input first (0: folded into the previous layer).
      constant: subtracted from the output last (0: folded into the next layer).
    Shapes: any -> same.
    """

    def __init__(self, offset: float, constant: float):
        super().__init__()
        self.offset = offset
        self.constant = constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x - self.offset if self.offset else x
        softplus = torch.maximum(z, torch.log(1.0 + torch.exp(torch.clamp(z, max=_SOFTPLUS_CLAMP))))
        y = softplus - SWOOSH_SLOPE * z
        return y - self.constant if self.constant else y


def swoosh_output_constant(name: str) -> float:
    """The constant of swoosh(x) written in z = x - offset: softplus(z) - SLOPE z - this."""
    return SWOOSH_CONSTANT[name] + SWOOSH_SLOPE * SWOOSH_OFFSET[name]


class OnnxSwooshLinear(nn.Module):
    """scaling.ActivationDropoutAndLinear in eval mode: linear(swoosh(x)); (..., in) -> (..., out)."""

    def __init__(self, swoosh: OnnxSwoosh, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        super().__init__()
        self.swoosh = swoosh
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.swoosh(x), self.weight, self.bias)


def _fold_offset_into(layer: nn.Module, offset: float) -> None:
    """Make `layer` (Linear/Conv with a bias) output x - offset instead of x."""
    if getattr(layer, "bias", None) is None:
        raise ValueError(f"cannot fold the Swoosh offset into {type(layer).__name__} without a bias")
    with torch.no_grad():
        layer.bias -= offset


def _can_absorb_input_constant(layer: nn.Module) -> bool:
    """Whether adding a constant to every input element of `layer` changes only its output by a
    bias: Linear, or a convolution without padding (zero padding would not be shifted)."""
    if isinstance(layer, nn.Linear):
        return layer.bias is not None
    if isinstance(layer, nn.modules.conv._ConvNd):
        padding = layer.padding
        return layer.bias is not None and (padding == "valid" or all(p == 0 for p in padding))
    return False


def _absorb_input_constant(layer: nn.Module, constant: float) -> None:
    """Make `layer` give the same outputs for inputs `constant` larger: b -= constant * sum(W)
    over everything but the output channel."""
    with torch.no_grad():
        weight = layer.weight
        layer.bias -= constant * weight.sum(dim=tuple(range(1, weight.dim())))


def _swoosh_name(module: nn.Module) -> Optional[str]:
    name = type(module).__name__
    return name if name in SWOOSH_OFFSET else None


def _substitute_conv_stack(stack: nn.Sequential) -> None:
    """Conv2dSubsampling.conv: Conv, (identities in eval), Swoosh, Conv, ..., Swoosh. Each offset
    goes into the preceding Conv's bias, each constant into the next Conv's bias when it has no
    padding (the last one, before the zero-padded ConvNeXt, keeps its constant)."""
    layers = list(stack)
    weighted = [i for i, m in enumerate(layers) if isinstance(m, nn.modules.conv._ConvNd)]
    for i, module in enumerate(layers):
        name = _swoosh_name(module)
        if name is None:
            continue
        before = [j for j in weighted if j < i]
        after = [j for j in weighted if j > i]
        offset = SWOOSH_OFFSET[name]
        if before:
            _fold_offset_into(layers[before[-1]], offset)
            offset = 0.0
        constant = swoosh_output_constant(name)
        if after and _can_absorb_input_constant(layers[after[0]]):
            _absorb_input_constant(layers[after[0]], constant)
            constant = 0.0
        stack[i] = OnnxSwoosh(offset, constant)


class ChannelsLastConvEmbed(nn.Module):
    """subsampling.Conv2dSubsampling in eval mode, its ConvNeXt's 1x1 convolutions as Linear
    layers over a channels-last (N, T, F, C) map.

    onnxruntime runs convolutions in a blocked layout (NCHWc) and reorders to NCHW for every
    other op; the ConvNeXt's 1x1 convolutions around the Swoosh of its 384-channel hidden layer
    cost two such reorders, and the (N, C, T, F) -> (N, T, C * F) flattening a transpose. As
    MatMuls over channels-last pixels neither is needed; the output Linear's weight columns are
    permuted from (C, F) to (F, C) order to match the flattening. The training-only parts
    (Whiten, Balancer, dropout, layer drop) are identities in eval and left out.

    The pointwise part (1x1 conv, Swoosh, 1x1 conv) runs on `TIME_SLICES` slices of the frames
    in turn (slices may be empty for short inputs).

    Shapes: (N, T, F_in), (N,) -> (N, (T - 7) // 2, out_channels), (N,) as Conv2dSubsampling.
    """

    #: Slices of the time axis for the pointwise part: a fixed number, since a traced graph
    #: cannot loop over a dynamic one. 4 to 16 slices took 0.957-0.965 of the unsliced encoder
    #: graph's time on 4 s utterances (BENCHMARKS.md).
    TIME_SLICES = 16

    def __init__(self, embed: nn.Module):
        super().__init__()
        self.conv = embed.conv
        self.mask_padding = embed.mask_padding
        convnext = embed.convnext
        self.depthwise_conv = convnext.depthwise_conv
        self.pointwise1 = _linear_from_1x1_conv(convnext.pointwise_conv1)
        self.activation = convnext.activation
        self.pointwise2 = _linear_from_1x1_conv(convnext.pointwise_conv2)
        out = embed.out
        channels, width = embed.layer3_channels, embed.out_width
        self.out = nn.Linear(out.in_features, out.out_features)
        with torch.no_grad():
            self.out.weight.copy_(out.weight.reshape(-1, channels, width).transpose(1, 2).reshape(out.weight.shape))
            self.out.bias.copy_(out.bias)
        self.out_norm = embed.out_norm

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out_lens = (x_lens - 7) // 2
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F)
        if self.mask_padding:
            t = torch.arange(x.shape[2], device=x.device)
            x = x * (t[None, :] < out_lens[:, None]).to(x.dtype)[:, None, :, None]
        y = self.depthwise_conv(x).permute(0, 2, 3, 1)  # (N, T', F, C)
        # The hidden layer is 3 C channels wide (5 MB for 4 s of audio) and its Swoosh makes 7
        # passes over it; one time slice after another, it stays in the core's L2 cache.
        num_frames = y.shape[1]
        slices = [y[:, (i * num_frames) // self.TIME_SLICES:((i + 1) * num_frames) // self.TIME_SLICES]
                  for i in range(self.TIME_SLICES)]
        y = torch.cat([self.pointwise2(self.activation(self.pointwise1(s))) for s in slices], dim=1)
        x = x.permute(0, 2, 3, 1) + y
        n, t, f, c = x.shape
        return self.out_norm(self.out(x.reshape(n, t, f * c))), out_lens


def _linear_from_1x1_conv(conv: nn.Conv2d) -> nn.Linear:
    linear = nn.Linear(conv.in_channels, conv.out_channels)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(conv.out_channels, conv.in_channels))
        linear.bias.copy_(conv.bias)
    return linear


def _is_conv2d_subsampling(module: nn.Module) -> bool:
    convnext = getattr(module, "convnext", None)
    return (type(module).__name__ == "Conv2dSubsampling" and type(convnext).__name__ == "ConvNeXt"
            and _swoosh_name(convnext.activation) == "SwooshL"
            and all(c.kernel_size == (1, 1) and c.groups == 1 and c.bias is not None
                    for c in (convnext.pointwise_conv1, convnext.pointwise_conv2)))


def substitute_for_onnx(model: nn.Module) -> nn.Module:
    """A copy of the eval-mode `model` that computes the same (to float32 rounding, ~1e-6) with
    cheaper ONNX graphs:

    - every Swoosh as `OnnxSwoosh`, its offset folded into the bias of the Linear / Conv before
      it and its constant into the bias of the Linear / unpadded Conv after it: in Zipformer2's
      FeedforwardModule (in_proj, out_proj) and ConvolutionModule (the non-causal depthwise
      conv, out_proj), the Conv2dSubsampling convolutions and its ConvNeXt;
    - Conv2dSubsampling as `ChannelsLastConvEmbed`.
    """
    model = copy.deepcopy(model).eval()
    embeds = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
              if _is_conv2d_subsampling(child)]
    for parent, name, embed in embeds:
        _substitute_conv_stack(embed.conv)
        convnext = embed.convnext
        _fold_offset_into(convnext.pointwise_conv1, SWOOSH_OFFSET["SwooshL"])
        _absorb_input_constant(convnext.pointwise_conv2, swoosh_output_constant("SwooshL"))
        convnext.activation = OnnxSwoosh(0.0, 0.0)
        setattr(parent, name, ChannelsLastConvEmbed(embed))
    for module in list(model.modules()):
        kind = type(module).__name__
        if kind in ("FeedforwardModule", "ConvolutionModule"):
            before = module.in_proj if kind == "FeedforwardModule" else module.depthwise_conv
            # A causal module's ChunkCausalDepthwiseConv1d is no single Conv1d (two convolutions,
            # one scaled after its bias): its Swoosh keeps the offset.
            foldable = isinstance(before, (nn.Linear, nn.Conv1d)) and before.bias is not None
            module.out_proj = _swoosh_linear(module.out_proj, before if foldable else None)
    # Any other Swoosh (none in this recipe's models today) gets the cheaper form, unfolded.
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            name = _swoosh_name(child)
            if name is not None:
                setattr(parent, child_name, OnnxSwoosh(SWOOSH_OFFSET[name], swoosh_output_constant(name)))
            elif type(child).__name__ == "ActivationDropoutAndLinear":
                setattr(parent, child_name, _swoosh_linear(child, None))
    return model


def _swoosh_linear(layer: nn.Module, before: Optional[nn.Module]) -> nn.Module:
    """OnnxSwooshLinear for an ActivationDropoutAndLinear `layer` (returned unchanged if it is
    something else), with the offset folded into `before` unless that is None, and the constant
    into the linear layer's bias if it has one."""
    if type(layer).__name__ != "ActivationDropoutAndLinear":
        return layer
    name = layer.activation
    offset = SWOOSH_OFFSET[name]
    if before is not None:
        _fold_offset_into(before, offset)
        offset = 0.0
    swoosh_linear = OnnxSwooshLinear(OnnxSwoosh(offset, 0.0), layer.weight, layer.bias)
    if swoosh_linear.bias is None:
        swoosh_linear.swoosh.constant = swoosh_output_constant(name)
    else:
        _absorb_input_constant(swoosh_linear, swoosh_output_constant(name))
    return swoosh_linear


def load_selected_model(args: argparse.Namespace, recipe: Recipe) -> Tuple[nn.Module, str, int]:
    """The averaged model (eval mode) named by the selection options, the file suffix
    `epoch-N-avg-K` / `iter-I-avg-K` of icefall's ONNX exports, and the feature dimension."""
    params = AttributeDict(vars(args))
    if not params.tokens.is_file():
        raise FileNotFoundError(f"--tokens {params.tokens}: no such file (prepare.sh stage 3 writes it)")
    tokenizer = Tokenizer(read_tokens_txt(params.tokens))
    state, _, trained = select_model_weights(params)
    check_token_table(trained, tokenizer, f"The model in {params.exp_dir}", "pass the --tokens it was trained with")
    config = model_config_for_decoding(recipe, params, trained, tokenizer)
    if config.decoder_type not in SUPPORTED_DECODER_TYPES:
        raise ValueError(f"The model in {params.exp_dir} has decoder type {config.decoder_type}; export-onnx.py "
                         f"has layouts for {list(SUPPORTED_DECODER_TYPES)} only: run it with decode.py, or with "
                         f"export.py and pretrained.py")
    model, config = inference_model(recipe, config, state, params)
    suffix = f"iter-{params.iter}-avg-{params.avg}" if params.iter > 0 else f"epoch-{params.epoch}-avg-{params.avg}"
    return model.eval(), suffix, config.feature_dim


def add_meta_data(filename: Path, meta_data: Dict[str, str]) -> None:
    """Write string metadata into an ONNX file (sherpa-onnx reads e.g. vocab_size from it)."""
    import onnx

    model = onnx.load(str(filename))
    del model.metadata_props[:]
    for key, value in meta_data.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(filename))


def _export(
    module: nn.Module,
    inputs: Tuple[torch.Tensor, ...],
    filename: Path,
    input_names: List[str],
    output_names: List[str],
    dynamic_axes: Dict[str, Dict[int, str]],
    meta_data: Dict[str, str],
) -> Path:
    # The TorchScript-based exporter (icefall's): the torch.export one needs onnxscript and
    # specialises the data-dependent number of CIF tokens. Its tracer warns about every
    # Python-level shape check (input validation that the graph drops); test_onnx_export.py
    # checks that the graphs generalise across batch sizes and lengths instead.
    # nn.MultiheadAttention's fused inference path (the NAR decoder's self-attention takes it)
    # has no ONNX symbolic; the unfused path computes the same.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
            torch.onnx.export(
                module, inputs, str(filename), dynamo=False, opset_version=OPSET, input_names=input_names,
                output_names=output_names, dynamic_axes=dynamic_axes,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    add_meta_data(filename, meta_data)
    logging.info(f"Wrote {filename}")
    return filename


def example_features(num_frames: Tuple[int, ...] = (300, 250), feature_dim: int = 80) -> Tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random features (x (N, T, F), x_lens (N,)) to trace with; the graphs
    do not depend on these sizes."""
    x = torch.randn(len(num_frames), max(num_frames), feature_dim)
    return x, torch.tensor(num_frames, dtype=torch.int64)


def common_meta_data(model: nn.Module) -> Dict[str, str]:
    """Metadata of every file: what onnx_pretrained.py needs to pick the layout and check it."""
    return {
        "model_author": "icefall_cif",
        "version": LAYOUT_VERSION,
        "decoder_type": model.decoder_type,
        "vocab_size": str(model.vocab_size),
        "cif_downsample": str(model.cif_downsample_factor),
        "cif_threshold": str(model.cif_predictor.threshold),
        "tail_threshold": str(model.cif_predictor.tail_threshold),
    }


def export_onnx(
    model: nn.Module, out_dir: Path, suffix: str, max_sym_per_frame: int, feature_dim: int = 80
) -> List[Path]:
    """Write the ONNX files of `model`'s layout (module docstring) into out_dir; return them.
    `model` itself is left unchanged (the graphs are traced from `substitute_for_onnx(model)`)."""
    if max_sym_per_frame < 1:
        raise ValueError(f"--max-sym-per-frame must be >= 1, got {max_sym_per_frame}")
    out_dir.mkdir(parents=True, exist_ok=True)
    x, x_lens = example_features(feature_dim=feature_dim)
    meta = common_meta_data(model)
    model = substitute_for_onnx(model)
    feats = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}}
    kind = model.decoder_type
    if kind == "cif_transducer":
        head = model.head
        joiner_dim = head.joiner.output_linear.in_features
        encoder = _export(
            TransducerEncoder(model, max_sym_per_frame), (x, x_lens), out_dir / f"encoder-{suffix}.onnx",
            ["x", "x_lens"], ["encoder_out", "encoder_out_lens"],
            {**feats, "encoder_out": {0: "N", 1: "T_out"}, "encoder_out_lens": {0: "N"}},
            {**meta, "model_type": "zipformer2", "max_sym_per_frame": str(max_sym_per_frame),
             "comment": f"CIF transducer: Zipformer + CIF + joiner encoder_proj, each CIF vector repeated "
                        f"{max_sym_per_frame} times"},
        )
        context_size = head.decoder.context_size
        y = torch.full((3, context_size), -1, dtype=torch.int64)
        y[:, -1] = torch.tensor([0, 5, 7])
        decoder = _export(
            TransducerDecoder(model), (y,), out_dir / f"decoder-{suffix}.onnx", ["y"], ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}},
            {**meta, "context_size": str(context_size)},
        )
        joiner = _export(
            TransducerJoiner(model), (torch.randn(3, joiner_dim), torch.randn(3, joiner_dim)),
            out_dir / f"joiner-{suffix}.onnx", ["encoder_out", "decoder_out"], ["logit"],
            {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
            {**meta, "joiner_dim": str(joiner_dim)},
        )
        return [encoder, decoder, joiner]
    if kind == "cif_ce_nar":
        return [_export(
            NarCtcModel(model), (x, x_lens), out_dir / f"model-{suffix}.onnx", ["x", "x_lens"],
            ["log_probs", "log_probs_len"], {**feats, "log_probs": {0: "N", 1: "T_out"}, "log_probs_len": {0: "N"}},
            {**meta, "model_type": "zipformer2_ctc",
             "comment": "CIF + NAR CE decoder; rows alternate token u and a certain blank"},
        )]
    # cif_ce_ar; a CTC prior travels from the encoder's fourth output into each decoder step.
    ce_decoder = model.head.ce_decoder
    with_prior = model.head.prior_scale > 0
    encoder = _export(
        ArEncoder(model), (x, x_lens), out_dir / f"encoder-{suffix}.onnx", ["x", "x_lens"],
        ["cif", "cif_lens", "fire_frames"] + (["token_prior"] if with_prior else []),
        {**feats, "cif": {0: "N", 1: "U"}, "cif_lens": {0: "N"}, "fire_frames": {0: "N", 1: "U"},
         **({"token_prior": {0: "N", 1: "U"}} if with_prior else {})},
        {**meta, "comment": "CIF AR CE encoder: Zipformer + CIF vectors"
                            + (" + the scaled CTC log-probs at the spikes" if with_prior else "")},
    )
    num_layers, d_model = len(ce_decoder.layers), ce_decoder.d_model
    cif_dim = model.encoder_dim
    step_inputs = (torch.randn(2, cif_dim), torch.tensor([0, 4]), torch.randn(num_layers, 2, 3, d_model))
    if with_prior:
        step_inputs += (torch.randn(2, model.vocab_size),)
    decoder = _export(
        ArDecoderStep(model), step_inputs, out_dir / f"decoder-{suffix}.onnx",
        ["cif_u", "prev_token", "cache"] + (["prior_u"] if with_prior else []),
        ["logits", "new_cache"],
        {"cif_u": {0: "N"}, "prev_token": {0: "N"}, "cache": {1: "N", 2: "u"}, "logits": {0: "N"},
         "new_cache": {1: "N", 2: "u_next"}, **({"prior_u": {0: "N"}} if with_prior else {})},
        {**meta, "num_layers": str(num_layers), "d_model": str(d_model), "blank_id": str(model.blank_id)},
    )
    return [encoder, decoder]


def _matmuls_sharing_a_weight(filename: Path) -> List[str]:
    """Names of the MatMul nodes whose weight initializer another MatMul also uses.

    The ChannelsLastConvEmbed time slices share their weights; the exporter feeds the repeated
    uses through Identity nodes, which quantize_dynamic does not see through, so it would
    quantise one slice only. They stay float, as the 1x1 Conv nodes they replace were."""
    import onnx

    graph = onnx.load(str(filename), load_external_data=False).graph
    source = {i.name: i.name for i in graph.initializer}
    for node in graph.node:  # topological order: an Identity's input is resolved before it
        if node.op_type == "Identity" and node.input[0] in source:
            source[node.output[0]] = source[node.input[0]]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in source]
    uses: Dict[str, int] = {}
    for node in matmuls:
        uses[source[node.input[1]]] = uses.get(source[node.input[1]], 0) + 1
    return [node.name for node in matmuls if uses[source[node.input[1]]] > 1]


def quantize_int8(filenames: List[Path]) -> List[Path]:
    """Dynamically quantised copies `<name>.int8.onnx` (int8 MatMul weights, as icefall's; the
    MatMuls that share a weight stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = []
    root = logging.getLogger()
    for filename in filenames:
        target = filename.with_suffix(".int8.onnx")
        # The quantiser logs every tensor it leaves in float at INFO on the root logger.
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(filename), str(target), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                             nodes_to_exclude=_matmuls_sharing_a_weight(filename))
        finally:
            root.setLevel(level)
        logging.info(f"Wrote {target}")
        out.append(target)
    return out


def get_parser(recipe: Recipe, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_selection_arguments(parser)
    parser.add_argument("--tokens", type=Path, default=Path(recipe.default_lang_dir) / "tokens.txt",
                        help="The tokens.txt the model was trained with (checked against the checkpoint).")
    parser.add_argument("--max-sym-per-frame", type=int, default=3,
                        help="cif_transducer: copies of each CIF vector in encoder.onnx, i.e. the most tokens a "
                             "vector may emit in sherpa-onnx's one-symbol-per-frame search (decode.py's option).")
    parser.add_argument("--int8", type=int, default=0, choices=[0, 1], help="Also write *.int8.onnx.")
    parser.add_argument("--output-dir", type=Path, default=None, help="Where to write; default --exp-dir.")
    return parser


def run(args: argparse.Namespace, recipe: Recipe) -> Tuple[List[Path], str]:
    """Export the selected model (and its int8 copies); return the files written and the
    decoder type."""
    model, suffix, feature_dim = load_selected_model(args, recipe)
    files = export_onnx(model, args.output_dir or args.exp_dir, suffix, args.max_sym_per_frame, feature_dim)
    if args.int8:
        files += quantize_int8(list(files))
    return files, model.decoder_type


def model_file_option(role: str) -> str:
    """onnx_pretrained.py's option for the file of `role` ("encoder", "decoder", "joiner", "model")."""
    return "--model-filename" if role == "model" else f"--{role}-model-filename"


def sherpa_command(files: List[Path], tokens: Path, decoder_type: str) -> Optional[str]:
    """The sherpa-onnx-offline command line that decodes a file with `files`, if sherpa-onnx has a
    layout for the decoder type."""
    by_role = {f.name.split("-", 1)[0]: f for f in files}
    if decoder_type == "cif_transducer":
        return (f"sherpa-onnx-offline --tokens={tokens} --encoder={by_role['encoder']} "
                f"--decoder={by_role['decoder']} --joiner={by_role['joiner']} --num-threads=1 FILE.wav")
    if decoder_type == "cif_ce_nar":
        return f"sherpa-onnx-offline --tokens={tokens} --zipformer2-ctc-model={by_role['model']} --num-threads=1 FILE.wav"
    return None


def main(recipe: Recipe, description: str = "") -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = get_parser(recipe, description).parse_args()
    try:
        files, decoder_type = run(args, recipe)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"export-onnx.py: error: {e}")
    fp32 = [f for f in files if not f.name.endswith(".int8.onnx")]
    options = " ".join(f"{model_file_option(f.name.split('-', 1)[0])} {f}" for f in fp32)
    print(f"Decode a file with onnxruntime:\n  ./zipformer_cif/onnx_pretrained.py --tokens {args.tokens} {options} FILE.wav")
    command = sherpa_command(fp32, args.tokens, decoder_type)
    if command is not None:
        print(f"with sherpa-onnx's Python package:\n  ./zipformer_cif/onnx_pretrained.py --runtime sherpa-onnx "
              f"--tokens {args.tokens} {options} FILE.wav\nor with its C++ binary:\n  {command}")
