"""The CIF speech recognizer: Zipformer encoder -> CIF -> token decoder, plus a CTC head.

    fbank (N, T, 80) @100 Hz
      -> Conv2dSubsampling (N, (T-7)//2, C0) @50 Hz
      -> Zipformer2 (N, T', C) @25 Hz               -- CTC head (auxiliary loss, ctc decoding)
      -> SimpleDownsample x`cif_downsample` (N, T'', C) @12.5 Hz
      -> CifPredictor: alpha (N, T''), one vector per token (N, U, C)  -- quantity loss
      -> one of
         cif_transducer: stateless prediction network + joiner over the CIF vectors, pruned
                         RNN-T loss with the CIF vectors as the time axis (blank allowed);
         cif_ce_ar:      causal Transformer, step u sees CIF vector u and token u-1; CE;
         cif_ce_nar:     bidirectional Transformer over the CIF vectors with cross-attention
                         to the encoder frames; CE.

`add_model_arguments` and `get_model` are what train.py, decode.py and the export scripts use.
"""
import argparse
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from ce_decoder import ArCeDecoder, NarCeDecoder
from decoder import Decoder
from encoder_configs import build_encoder, get_encoder_config, to_int_tuple
from joiner import Joiner
from scaling import ScaledLinear
from zipformer import SimpleDownsample

from icefall_cif.cif import CifPredictor, CifPredictorOutput
from icefall_cif.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss_pruned,
    rnnt_loss_smoothed,
)
from icefall_cif.utils import AttributeDict, make_pad_mask

DECODER_TYPES = ("cif_transducer", "cif_ce_ar", "cif_ce_nar")

# icefall's individual Zipformer options (zipformer/train.py), by Zipformer2 argument name.
ENCODER_OPTIONS: Dict[str, str] = {
    "num_encoder_layers": 'Layers per encoder stack, e.g. "2,2,3,4,3,2".',
    "downsampling_factor": 'Downsampling factor of each stack, e.g. "1,2,4,8,4,2".',
    "feedforward_dim": 'Feed-forward dim per stack, e.g. "512,768,1024,1536,1024,768".',
    "num_heads": 'Attention heads per stack (one int or one per stack), e.g. "4,4,4,8,4,4".',
    "encoder_dim": 'Embedding dim per stack, e.g. "192,256,384,512,384,256".',
    "encoder_unmasked_dim": 'Dims never masked in training, per stack, e.g. "192,192,256,256,256,192".',
    "cnn_module_kernel": 'Convolution kernel per stack, e.g. "31,31,15,15,15,31".',
    "query_head_dim": 'Query/key dim per head (one int or one per stack), e.g. "32".',
    "value_head_dim": 'Value dim per head (one int or one per stack), e.g. "12".',
    "pos_head_dim": 'Positional-encoding dim per head (one int or one per stack), e.g. "4".',
    "pos_dim": 'Positional-encoding embedding dim (one int), e.g. "48".',
}


def pad_token_ids(y: List[List[int]], pad_value: int, device: torch.device) -> torch.Tensor:
    """Right-pad ragged token ids to (N, max(len)) int64 (width 0 if every list is empty)."""
    width = max((len(seq) for seq in y), default=0)
    out = torch.full((len(y), width), pad_value, dtype=torch.int64)
    for i, seq in enumerate(y):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out.to(device)


def transducer_loss_scales(
    batch_idx_train: int, warm_step: int, simple_loss_scale: float
) -> Tuple[float, float]:
    """icefall's warm-up of the (simple, pruned) loss weights.

    The simple loss goes from 1.0 to `simple_loss_scale` and the pruned loss from 0.1 to 1.0,
    linearly over the first `warm_step` batches: the pruning ranges come from the simple loss,
    so it leads until it is good enough to prune with.
    """
    if warm_step <= 0 or batch_idx_train >= warm_step:
        return simple_loss_scale, 1.0
    frac = batch_idx_train / warm_step
    return 1.0 - frac * (1.0 - simple_loss_scale), 0.1 + 0.9 * frac


class CifAsrModel(nn.Module):
    """Zipformer + CIF + {transducer, AR CE, NAR CE} decoder, with CTC and quantity losses.

    Submodules (checkpoint keys): `encoder_embed`, `encoder` (as icefall), `cif_downsample`
    (None when `cif_downsample_factor` is 1), `cif_predictor`, `ctc_output`, and either
    `decoder`, `joiner`, `simple_am_proj`, `simple_lm_proj` (cif_transducer) or `ce_decoder`.
    """

    def __init__(
        self,
        encoder_embed: nn.Module,
        encoder: nn.Module,
        encoder_dim: int,
        cif_predictor: CifPredictor,
        vocab_size: int,
        decoder_type: str,
        blank_id: int = 0,
        cif_downsample: int = 2,
        decoder: Optional[Decoder] = None,
        joiner: Optional[Joiner] = None,
        ce_decoder: Optional[nn.Module] = None,
        ctc_loss_scale: float = 0.5,
        quantity_loss_scale: float = 1.0,
        label_smoothing: float = 0.1,
        prune_range: int = 5,
        lm_scale: float = 0.25,
        am_scale: float = 0.0,
        simple_loss_scale: float = 0.5,
        warm_step: int = 2000,
    ):
        """
        Args:
          encoder_embed: Conv2dSubsampling, (N, T, F) -> (N, (T-7)//2, C0).
          encoder: Zipformer2, (T, N, C0) -> (T', N, encoder_dim).
          encoder_dim: output dimension of `encoder` (= CIF vector dimension).
          cif_predictor: weight predictor + integrate-and-fire on encoder_dim frames.
          vocab_size: number of tokens, blank included.
          decoder_type: one of DECODER_TYPES.
          blank_id: blank (CTC, transducer) and start symbol (AR decoder).
          cif_downsample: extra downsampling of the encoder output before CIF (1 = none).
          decoder, joiner: prediction network and joiner (cif_transducer only).
          ce_decoder: ArCeDecoder (cif_ce_ar) or NarCeDecoder (cif_ce_nar).
          ctc_loss_scale, quantity_loss_scale: weights of the auxiliary losses.
          label_smoothing: of the CE loss.
          prune_range, lm_scale, am_scale, simple_loss_scale, warm_step: pruned RNN-T
            options as in icefall (cif_transducer only).
        """
        super().__init__()
        if decoder_type not in DECODER_TYPES:
            raise ValueError(f"decoder_type must be one of {DECODER_TYPES}, got '{decoder_type}'")
        if cif_downsample < 1:
            raise ValueError(f"cif_downsample must be >= 1 (1 = no extra downsampling), got {cif_downsample}")
        is_transducer = decoder_type == "cif_transducer"
        if is_transducer != (decoder is not None and joiner is not None) or is_transducer == (
            ce_decoder is not None
        ):
            raise ValueError(
                f"decoder_type '{decoder_type}' needs "
                + ("`decoder` and `joiner`" if is_transducer else "`ce_decoder`")
                + " and none of the other decoder modules"
            )
        self.decoder_type = decoder_type
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.encoder_dim = encoder_dim

        self.encoder_embed = encoder_embed
        self.encoder = encoder
        self.cif_downsample_factor = cif_downsample
        # The same learned weighted-sum downsampling Zipformer uses between its stacks; the
        # zero dropout/non-causal arguments match Zipformer2's own output downsampling.
        self.cif_downsample = (
            SimpleDownsample(encoder_dim, cif_downsample, dropout=0.0, causal=False)
            if cif_downsample > 1
            else None
        )
        self.cif_predictor = cif_predictor
        self.ctc_output = nn.Sequential(
            nn.Dropout(p=0.1),
            nn.Linear(encoder_dim, vocab_size),
            nn.LogSoftmax(dim=-1),
        )
        self.ctc_loss_scale = ctc_loss_scale
        self.quantity_loss_scale = quantity_loss_scale
        self.label_smoothing = label_smoothing

        if is_transducer:
            if decoder.blank_id != blank_id:
                raise ValueError(f"decoder.blank_id={decoder.blank_id} differs from blank_id={blank_id}")
            self.decoder = decoder
            self.joiner = joiner
            decoder_dim = decoder.embedding.embedding_dim
            # Projections of the "trivial joiner" whose loss gives the pruning ranges.
            self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_scale=0.25)
            self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size, initial_scale=0.25)
            self.prune_range = prune_range
            self.lm_scale = lm_scale
            self.am_scale = am_scale
            self.simple_loss_scale = simple_loss_scale
            self.warm_step = warm_step
        else:
            self.ce_decoder = ce_decoder

    # ------------------------------------------------------------------ encoder and CIF
    def forward_encoder(
        self, x: torch.Tensor, x_lens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Zipformer encoder.

        Args:
          x: (N, T, F) fbank features @100 Hz.
          x_lens: (N,) valid frames of each utterance.
        Returns:
          encoder_out (N, T', encoder_dim) @25 Hz and encoder_out_lens (N,).
        """
        x, x_lens = self.encoder_embed(x, x_lens)
        src_key_padding_mask = make_pad_mask(x_lens, x.size(1))
        encoder_out, encoder_out_lens = self.encoder(x.permute(1, 0, 2), x_lens, src_key_padding_mask)
        encoder_out = encoder_out.permute(1, 0, 2)
        if not bool((encoder_out_lens > 0).all()):
            raise ValueError(
                f"Some utterances are too short for the encoder (input frames {x_lens.tolist()} "
                f"-> {encoder_out_lens.tolist()}); filter out inputs shorter than ~0.1 s"
            )
        return encoder_out, encoder_out_lens

    def downsample_for_cif(
        self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The extra `cif_downsample_factor` x downsampling in front of the CIF predictor.

        Args:
          encoder_out: (N, T', C).
          encoder_out_lens: (N,).
        Returns:
          (N, ceil(T'/d), C) and lengths ceil(lens/d), d = cif_downsample_factor.
        """
        if self.cif_downsample is None:
            return encoder_out, encoder_out_lens
        d = self.cif_downsample_factor
        # With the padding mask, SimpleDownsample completes a shorter utterance's last group
        # with its own last valid frame rather than with padding, so the result does not
        # depend on the batch the utterance is in.
        padding_mask = make_pad_mask(encoder_out_lens, encoder_out.size(1))
        x = self.cif_downsample(encoder_out.permute(1, 0, 2), padding_mask).permute(1, 0, 2)
        return x, (encoder_out_lens + d - 1) // d

    def forward_cif(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        target_lengths: Optional[torch.Tensor] = None,
    ) -> CifPredictorOutput:
        """Extra downsampling + CIF.

        Args:
          encoder_out: (N, T', C) from `forward_encoder`.
          encoder_out_lens: (N,).
          target_lengths: (N,) token counts in training (weights scaled to fire exactly U_i
            times); None at inference (raw weights, tail handling).
        Returns:
          CifPredictorOutput with cif (N, U, C), cif_lens (N,), alpha (N, T''),
          fire_frames (N, U) (frame index at the CIF rate, T'' = ceil(T'/cif_downsample_factor);
          -1 at padding) and quantity_loss (None without targets).
        """
        h, h_lens = self.downsample_for_cif(encoder_out, encoder_out_lens)
        return self.cif_predictor(h, h_lens, target_lengths)

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """(N, T', C) encoder output -> (N, T', vocab_size) CTC log-probs."""
        return self.ctc_output(encoder_out)

    # ------------------------------------------------------------------ losses
    def forward_ctc(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """CTC loss summed over the batch; y_padded (N, U), y_lens (N,)."""
        log_probs = self.ctc_log_probs(encoder_out)
        valid = make_pad_mask(y_lens, y_padded.size(1)).logical_not()
        return F.ctc_loss(
            log_probs=log_probs.permute(1, 0, 2).float(),
            targets=y_padded[valid].cpu(),
            input_lengths=encoder_out_lens.cpu(),
            target_lengths=y_lens.cpu(),
            blank=self.blank_id,
            reduction="sum",
            # An utterance with more tokens than frames has no CTC path; its inf would wipe out
            # the whole batch, while its CIF and decoder losses are still meaningful.
            zero_infinity=True,
        )

    def forward_transducer(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Simple and pruned RNN-T losses (summed) with the CIF vectors as frames.

        Args:
          cif: (N, U', C) CIF vectors (U' = U in training).
          cif_lens: (N,) valid vectors.
          y_padded: (N, U) targets, padded with blank.
          y_lens: (N,) target lengths.
        Returns:
          (simple_loss, pruned_loss).
        """
        blank = self.blank_id
        sos_y = F.pad(y_padded, (1, 0), value=blank)  # (N, U+1)
        decoder_out = self.decoder(sos_y)  # (N, U+1, decoder_dim)
        boundary = torch.zeros(cif.size(0), 4, dtype=torch.int64, device=cif.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = cif_lens

        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(cif)
        with torch.autocast(device_type=cif.device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
                lm=lm.float(),
                am=am.float(),
                symbols=y_padded,
                termination_symbol=blank,
                lm_only_scale=self.lm_scale,
                am_only_scale=self.am_scale,
                boundary=boundary,
                reduction="sum",
                return_grad=True,
            )
        ranges = get_rnnt_prune_ranges(
            px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=self.prune_range
        )
        # Projecting before the gather is cheaper than projecting (N, T, s_range, C) pairs.
        am_pruned, lm_pruned = do_rnnt_pruning(
            am=self.joiner.encoder_proj(cif),
            lm=self.joiner.decoder_proj(decoder_out),
            ranges=ranges,
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)
        with torch.autocast(device_type=cif.device.type, enabled=False):
            pruned_loss = rnnt_loss_pruned(
                logits=logits.float(),
                symbols=y_padded,
                ranges=ranges,
                termination_symbol=blank,
                boundary=boundary,
                reduction="sum",
            )
        return simple_loss, pruned_loss

    def forward_ce(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """Label-smoothed CE of the AR or NAR decoder, summed over tokens.

        Args:
          cif: (N, U, C) CIF vectors, exactly y_lens[i] valid ones per utterance.
          cif_lens: (N,).
          encoder_out: (N, T', C) frames for the NAR decoder's cross-attention.
          encoder_out_lens: (N,).
          y_padded: (N, U) targets padded with blank; y_lens (N,).
        """
        logits = self.ce_decoder_logits(cif, cif_lens, encoder_out, encoder_out_lens, y_padded)
        targets = y_padded.masked_fill(make_pad_mask(y_lens, y_padded.size(1)), -100)
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )

    def ce_decoder_logits(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(N, U, vocab_size) logits of the CE decoder for all CIF vectors in one call.

        The AR decoder needs the previous tokens `y_padded` (N, U) (teacher forcing); the
        NAR decoder ignores them and cross-attends to `encoder_out` (N, T', C).
        """
        if self.decoder_type == "cif_ce_ar":
            if y_padded is None:
                raise ValueError("the AR decoder needs y_padded for a parallel pass; use forward_step to decode")
            # Token u-1 at position u, blank first; slicing (not y[:, :-1]) keeps U = 0 valid.
            prev = F.pad(y_padded, (1, 0), value=self.blank_id)[:, : y_padded.size(1)]
            return self.ce_decoder(cif, cif_lens, prev)
        return self.ce_decoder(cif, cif_lens, encoder_out, encoder_out_lens)

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: List[List[int]],
        batch_idx_train: int = 0,
    ) -> Dict[str, torch.Tensor]:
        """Training / validation losses.

        Args:
          x: (N, T, F) fbank features.
          x_lens: (N,) valid frames.
          y: N token-id lists (no blank, no sos/eos).
          batch_idx_train: global batch index, for the transducer loss warm-up.
        Returns:
          scalar tensors summed over the batch: "ctc_loss", "quantity_loss", then "ce_loss"
          (CE decoders) or "simple_loss" and "pruned_loss" (cif_transducer), and "loss", the
          weighted total to back-propagate.
        """
        if x.ndim != 3 or x_lens.shape != (x.size(0),) or len(y) != x.size(0):
            raise ValueError(
                f"expected x (N, T, F), x_lens (N,) and N token lists; got x {tuple(x.shape)}, "
                f"x_lens {tuple(x_lens.shape)}, {len(y)} token lists"
            )
        encoder_out, encoder_out_lens = self.forward_encoder(x, x_lens)
        device = encoder_out.device
        y_padded = pad_token_ids(y, self.blank_id, device)
        y_lens = torch.tensor([len(seq) for seq in y], dtype=torch.int64, device=device)

        ctc_loss = self.forward_ctc(encoder_out, encoder_out_lens, y_padded, y_lens)
        cif_out = self.forward_cif(encoder_out, encoder_out_lens, target_lengths=y_lens)
        losses = {"ctc_loss": ctc_loss, "quantity_loss": cif_out.quantity_loss}
        loss = self.ctc_loss_scale * ctc_loss + self.quantity_loss_scale * cif_out.quantity_loss

        if self.decoder_type == "cif_transducer":
            simple_loss, pruned_loss = self.forward_transducer(
                cif_out.cif, cif_out.cif_lens, y_padded, y_lens
            )
            simple_scale, pruned_scale = transducer_loss_scales(
                batch_idx_train, self.warm_step, self.simple_loss_scale
            )
            losses["simple_loss"] = simple_loss
            losses["pruned_loss"] = pruned_loss
            loss = loss + simple_scale * simple_loss + pruned_scale * pruned_loss
        else:
            ce_loss = self.forward_ce(
                cif_out.cif, cif_out.cif_lens, encoder_out, encoder_out_lens, y_padded, y_lens
            )
            losses["ce_loss"] = ce_loss
            loss = loss + ce_loss
        losses["loss"] = loss
        return losses


# ---------------------------------------------------------------------- options and factory
def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """All model options. Encoder options left unset come from `--encoder-config`."""
    parser.add_argument(
        "--encoder-config",
        type=str,
        default="medium",
        help="Named Zipformer size (tiny, small, medium, large); the individual encoder "
        "options below override single fields of it.",
    )
    for name, help_text in ENCODER_OPTIONS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=str,
            default=None,
            help=help_text + " Default: from --encoder-config.",
        )
    parser.add_argument(
        "--decoder-type",
        type=str,
        default="cif_transducer",
        choices=DECODER_TYPES,
        help="Decoder over the CIF vectors: pruned-RNN-T transducer, autoregressive CE "
        "Transformer, or non-autoregressive CE Transformer.",
    )
    parser.add_argument(
        "--cif-downsample",
        type=int,
        default=2,
        help="Extra downsampling of the 25 Hz encoder output before CIF (2 -> 12.5 Hz, the "
        "rate the CIF papers recommend; 1 = none).",
    )
    parser.add_argument(
        "--cif-weight-type",
        type=str,
        default="conv",
        choices=CifPredictor.WEIGHT_TYPES,
        help="CIF weight predictor.",
    )
    parser.add_argument("--cif-conv-width", type=int, default=3, help="Kernel of the conv weight predictor.")
    parser.add_argument("--cif-hidden-dim", type=int, default=256, help="Hidden channels of the weight predictor.")
    parser.add_argument("--cif-dropout", type=float, default=0.1, help="Dropout of the conv weight predictor.")
    parser.add_argument("--cif-threshold", type=float, default=0.99, help="CIF firing threshold beta.")
    parser.add_argument(
        "--tail-threshold",
        type=float,
        default=0.5,
        help="At inference a last token fires if the leftover weight exceeds this; <0 disables.",
    )
    parser.add_argument("--decoder-dim", type=int, default=512, help="Prediction network dimension.")
    parser.add_argument("--joiner-dim", type=int, default=512, help="Joiner dimension.")
    parser.add_argument(
        "--context-size", type=int, default=2, help="Previous tokens the prediction network sees (1 = bigram)."
    )
    parser.add_argument(
        "--prune-range", type=int, default=5, help="Symbols kept per CIF frame by the pruned RNN-T loss."
    )
    parser.add_argument(
        "--lm-scale", type=float, default=0.25, help="LM-only smoothing of the simple RNN-T loss."
    )
    parser.add_argument(
        "--am-scale", type=float, default=0.0, help="AM-only smoothing of the simple RNN-T loss."
    )
    parser.add_argument(
        "--simple-loss-scale",
        type=float,
        default=0.5,
        help="Weight of the simple RNN-T loss after warm-up (it starts at 1.0).",
    )
    parser.add_argument(
        "--warm-step",
        type=int,
        default=2000,
        help="Batches over which the simple/pruned loss weights move from (1.0, 0.1) to "
        "(--simple-loss-scale, 1.0).",
    )
    parser.add_argument("--ce-decoder-dim", type=int, default=256, help="Width of the CE Transformer decoder.")
    parser.add_argument("--ce-decoder-layers", type=int, default=2, help="Layers of the CE decoder.")
    parser.add_argument("--ce-decoder-heads", type=int, default=4, help="Attention heads of the CE decoder.")
    parser.add_argument("--ce-decoder-dropout", type=float, default=0.1, help="Dropout of the CE decoder.")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="Label smoothing of the CE loss.")
    parser.add_argument("--ctc-loss-scale", type=float, default=0.5, help="Weight of the CTC loss.")
    parser.add_argument("--quantity-loss-scale", type=float, default=1.0, help="Weight of the CIF quantity loss.")


def get_model_defaults() -> AttributeDict:
    """The defaults of every option of `add_model_arguments`."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return AttributeDict(vars(parser.parse_args([])))


def encoder_config_from_params(params: AttributeDict) -> Dict:
    """`--encoder-config`'s named config with the individually given options applied."""
    config = get_encoder_config(params.encoder_config)
    for name in ENCODER_OPTIONS:
        value = params.get(name)
        if value is None:
            continue
        config[name] = int(value) if name == "pos_dim" else to_int_tuple(value)
        if name == "encoder_dim":
            # The front end feeds the first stack, so its width follows encoder_dim[0].
            config["encoder_embed_dim"] = config[name][0]
    return config


def get_model(params: AttributeDict) -> CifAsrModel:
    """Build the model from options.

    Args:
      params: the options of `add_model_arguments` (missing ones take their defaults) plus
        `vocab_size`, `blank_id` and `feature_dim` (80).
    """
    for key in ("vocab_size", "blank_id", "feature_dim"):
        if key not in params:
            raise ValueError(f"params lacks '{key}'; set it from the lang dir / feature config before get_model")
    params = AttributeDict({**get_model_defaults(), **params})

    encoder_config = encoder_config_from_params(params)
    encoder_embed, encoder = build_encoder(encoder_config, feature_dim=params.feature_dim)
    encoder_dim = max(encoder.encoder_dim)  # Zipformer2's output width

    tail = params.tail_threshold if params.tail_threshold >= 0 else None
    cif_predictor = CifPredictor(
        input_dim=encoder_dim,
        weight_type=params.cif_weight_type,
        conv_width=params.cif_conv_width,
        hidden_dim=params.cif_hidden_dim,
        dropout=params.cif_dropout,
        threshold=params.cif_threshold,
        tail_threshold=tail,
    )
    decoder = joiner = ce_decoder = None
    if params.decoder_type == "cif_transducer":
        decoder = Decoder(params.vocab_size, params.decoder_dim, params.blank_id, params.context_size)
        joiner = Joiner(encoder_dim, params.decoder_dim, params.joiner_dim, params.vocab_size)
    elif params.decoder_type == "cif_ce_ar":
        ce_decoder = ArCeDecoder(
            cif_dim=encoder_dim,
            vocab_size=params.vocab_size,
            d_model=params.ce_decoder_dim,
            num_layers=params.ce_decoder_layers,
            num_heads=params.ce_decoder_heads,
            dropout=params.ce_decoder_dropout,
            blank_id=params.blank_id,
        )
    elif params.decoder_type == "cif_ce_nar":
        ce_decoder = NarCeDecoder(
            cif_dim=encoder_dim,
            memory_dim=encoder_dim,
            vocab_size=params.vocab_size,
            d_model=params.ce_decoder_dim,
            num_layers=params.ce_decoder_layers,
            num_heads=params.ce_decoder_heads,
            dropout=params.ce_decoder_dropout,
        )
    else:
        raise ValueError(f"--decoder-type must be one of {DECODER_TYPES}, got '{params.decoder_type}'")

    return CifAsrModel(
        encoder_embed=encoder_embed,
        encoder=encoder,
        encoder_dim=encoder_dim,
        cif_predictor=cif_predictor,
        vocab_size=params.vocab_size,
        decoder_type=params.decoder_type,
        blank_id=params.blank_id,
        cif_downsample=params.cif_downsample,
        decoder=decoder,
        joiner=joiner,
        ce_decoder=ce_decoder,
        ctc_loss_scale=params.ctc_loss_scale,
        quantity_loss_scale=params.quantity_loss_scale,
        label_smoothing=params.label_smoothing,
        prune_range=params.prune_range,
        lm_scale=params.lm_scale,
        am_scale=params.am_scale,
        simple_loss_scale=params.simple_loss_scale,
        warm_step=params.warm_step,
    )
