"""The CIF speech recognizer: Zipformer encoder -> CIF -> decoder head, plus a CTC head.

    fbank (N, T, 80) @100 Hz
      -> Conv2dSubsampling (N, (T-7)//2, C0) @50 Hz
      -> Zipformer2 (N, T', C) @25 Hz               -- CTC head (auxiliary loss, ctc decoding)
      -> SimpleDownsample x`cif_downsample` (N, T'', C) @12.5 Hz
      -> CifPredictor: alpha (N, T''), one vector per token (N, U, C)  -- quantity loss
      -> the decoder head of `--decoder-type` (one file each, registered in HEADS):
         cif_transducer (transducer_head.py): stateless prediction network + joiner over the
                         CIF vectors, pruned RNN-T loss with the CIF vectors as the time axis;
         cif_ce_ar (ce_ar_head.py):   causal Transformer, step u sees CIF vector u and token u-1;
         cif_ce_nar (ce_nar_head.py): bidirectional Transformer over the CIF vectors with
                         cross-attention to the encoder frames;
         mask_ctc (mask_ctc_head.py): Mask-CTC, the CTC head's greedy output with its unsure
                         tokens re-predicted by a conditional masked LM cross-attending to the
                         encoder frames (the CIF layer is still trained, but not read).

`CifAsrModel` fulfils `icefall_cif.model_contract.CifModel`, the only view the shared loops
have of it. `ModelConfig` is the architecture (saved in every checkpoint, so decode.py
rebuilds the model without options); `get_model(config)` builds it. A new decoder type is
one head file plus one line in HEADS.

With HieraDist distillation on (train.py --acd-loss-scale / --lrd-loss-scale, icefall_cif/distill.py)
the model also holds the training-only projections `distill` (DistillProjections), built last
so that every other module draws the same initial weights as without them. Their dims are the
training-only ModelConfig fields `acd_teacher_dim`/`lrd_teacher_dim`, which train.py sets from
the teacher manifest: decode.py rebuilds and loads them (and never calls them), export.py and
export-onnx.py build the model with the dims reset to 0 and drop the `distill.*` weights.
"""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from ce_ar_head import ArCeHead
from ce_nar_head import NarCeHead
from encoder_configs import ENCODER_CONFIGS, build_encoder, get_encoder_config, to_int_tuple
from mask_ctc_head import MaskCtcHead
from scaling import set_batch_count
from transducer_head import TransducerHead
from zipformer import SimpleDownsample

from icefall_cif.alignment import cif_alignment_loss, ctc_forced_align
from icefall_cif.cif import CifOutput, CifPredictor, CifPredictorOutput, fit_to_target_lengths, quantity_loss
from icefall_cif.config import LossConfig
from icefall_cif.distill import DistillProjections, TeacherFeatures, acd_loss, lrd_loss
from icefall_cif.kd import KdTargets, frame_kd_loss, token_kd_loss
from icefall_cif.model_contract import DecoderHead
from icefall_cif.segments import ctc_greedy_spikes, fill_missing_spikes, pool_segments, spike_log_probs
from icefall_cif.utils import make_pad_mask, pad_token_ids

# The decoder types. Besides the DecoderHead methods, a head class provides
# `build_networks(config, cif_dim) -> {name: module}` and `from_networks(config, cif_dim, networks)`
# (see get_model for why they are two steps); its options are ModelConfig fields.
HEADS: Dict[str, Type[DecoderHead]] = {
    TransducerHead.name: TransducerHead,
    ArCeHead.name: ArCeHead,
    NarCeHead.name: NarCeHead,
    MaskCtcHead.name: MaskCtcHead,
}

# Checkpoint key prefixes of the decoder modules before they moved into `head`.
_PRE_HEAD_PREFIXES = ("decoder.", "joiner.", "simple_am_proj.", "simple_lm_proj.", "ce_decoder.")


def _encoder_option(help_text: str) -> Any:
    return field(default=None, metadata={"help": help_text + " Unset: from --encoder-config.", "encoder": True})


@dataclass
class ModelConfig:
    """The model architecture: every option that changes which model is built.

    `vocab_size`, `blank_id` and `feature_dim` come from the lang dir and the features, not
    from options. `tail_threshold` only affects inference, so decode.py may override it.
    """

    encoder_config: str = field(
        default="medium",
        metadata={
            "help": "Named Zipformer size; the individual encoder options below override single fields of it.",
            "choices": tuple(ENCODER_CONFIGS),
        },
    )
    # icefall's individual Zipformer options (zipformer/train.py), by Zipformer2 argument name.
    num_encoder_layers: Optional[str] = _encoder_option('Layers per encoder stack, e.g. "2,2,3,4,3,2".')
    downsampling_factor: Optional[str] = _encoder_option('Downsampling factor of each stack, e.g. "1,2,4,8,4,2".')
    feedforward_dim: Optional[str] = _encoder_option('Feed-forward dim per stack, e.g. "512,768,1024,1536,1024,768".')
    num_heads: Optional[str] = _encoder_option('Attention heads per stack (one int or one per stack), e.g. "4,4,4,8,4,4".')
    encoder_dim: Optional[str] = _encoder_option('Embedding dim per stack, e.g. "192,256,384,512,384,256".')
    encoder_unmasked_dim: Optional[str] = _encoder_option('Dims never masked in training, per stack, e.g. "192,192,256,256,256,192".')
    cnn_module_kernel: Optional[str] = _encoder_option('Convolution kernel per stack, e.g. "31,31,15,15,15,31".')
    query_head_dim: Optional[str] = _encoder_option('Query/key dim per head (one int or one per stack), e.g. "32".')
    value_head_dim: Optional[str] = _encoder_option('Value dim per head (one int or one per stack), e.g. "12".')
    pos_head_dim: Optional[str] = _encoder_option('Positional-encoding dim per head (one int or one per stack), e.g. "4".')
    pos_dim: Optional[str] = _encoder_option('Positional-encoding embedding dim (one int), e.g. "48".')
    encoder_embed_channels: Optional[str] = _encoder_option(
        'Channels of the Conv2dSubsampling front end\'s three Conv2d layers (the ConvNeXt block is as wide as '
        'the third), e.g. "8,32,128" (icefall\'s, every named config); a narrower front end is what makes a '
        'small model decode faster, since it runs at 50 Hz on every filterbank bin.')
    decoder_type: str = field(
        default="cif_transducer",
        metadata={"help": "Decoder head over the CIF vectors.", "choices": tuple(HEADS)},
    )
    cif_downsample: int = field(
        default=2,
        metadata={"help": "Extra downsampling of the 25 Hz encoder output before CIF (2 -> 12.5 Hz, the rate "
                          "the CIF papers recommend; 1 = none)."},
    )
    cif_weight_type: str = field(
        default="conv", metadata={"help": "CIF weight predictor.", "choices": CifPredictor.WEIGHT_TYPES}
    )
    cif_conv_width: int = field(default=3, metadata={"help": "Kernel of the conv weight predictor."})
    cif_hidden_dim: int = field(default=256, metadata={"help": "Hidden channels of the weight predictor."})
    cif_dropout: float = field(default=0.1, metadata={"help": "Dropout of the conv weight predictor."})
    cif_ctc_input: bool = field(
        default=False,
        metadata={"help": "Give the weight predictor the CTC head's non-blank probability (summed over "
                          "each CIF frame's encoder frames, no gradient into the CTC head) as an extra input."},
    )
    cif_segmentation: str = field(
        default="fire",
        metadata={"help": "Where one token's CIF vector ends and the next begins: 'fire' (integrate-and-fire "
                          "on the predicted weights) or 'ctc' (one vector per CTC spike, between the midpoints "
                          "to the neighbouring spikes, pooled with the weights: the forced alignment of the "
                          "reference in training, the CTC greedy path at decoding; icefall_cif/segments.py).",
                  "choices": ("fire", "ctc")},
    )
    cif_threshold: float = field(default=0.99, metadata={"help": "CIF firing threshold beta."})
    tail_threshold: float = field(
        default=0.5,
        metadata={"help": "At inference a last token fires if the leftover weight exceeds this; <0 disables.",
                  "inference": True},
    )
    decoder_dim: int = field(default=512, metadata={"help": "Prediction network dimension (cif_transducer)."})
    joiner_dim: int = field(default=512, metadata={"help": "Joiner dimension (cif_transducer)."})
    context_size: int = field(
        default=2, metadata={"help": "Previous tokens the prediction network sees (1 = bigram)."}
    )
    ce_decoder_dim: int = field(default=256, metadata={"help": "Width of the CE Transformer decoder (and of mask_ctc's CMLM)."})
    ce_decoder_layers: int = field(default=2, metadata={"help": "Layers of the CE decoder (and of the CMLM)."})
    ce_decoder_heads: int = field(default=4, metadata={"help": "Attention heads of the CE decoder (and of the CMLM)."})
    ce_decoder_dropout: float = field(default=0.1, metadata={"help": "Dropout of the CE decoder (and of the CMLM)."})
    ce_ctc_prior_scale: float = field(
        default=0.0,
        metadata={"help": "cif_ce_ar / cif_ce_nar with --cif-segmentation ctc: add this times the CTC head's "
                          "log-probs at each vector's spike frame (no gradient into the CTC head) to the decoder's "
                          "logits, in training and decoding, so that the decoder learns a correction of the CTC "
                          "head's token rather than the token itself; 0 = off."},
    )
    vocab_size: Optional[int] = field(default=None, metadata={"internal": True})
    blank_id: int = field(default=0, metadata={"internal": True})
    feature_dim: int = field(default=80, metadata={"internal": True})
    # Set by train.py from the teacher manifest (D) when --acd-loss-scale / --lrd-loss-scale > 0;
    # "training_only": the exports build the model with the default (no projection).
    acd_teacher_dim: int = field(default=0, metadata={"internal": True, "training_only": True})
    lrd_teacher_dim: int = field(default=0, metadata={"internal": True, "training_only": True})


class CifAsrModel(nn.Module):
    """Zipformer + CIF + a decoder head, with CTC and quantity losses.

    Submodules (checkpoint keys): `encoder_embed`, `encoder` (as icefall), `cif_downsample`
    (None when `cif_downsample_factor` is 1), `cif_predictor`, `ctc_output`, `head`, and the
    training-only `distill` (None unless distillation is on; see the module docstring).
    Checkpoints from before the heads (keys `decoder.*`, `joiner.*`, `simple_*_proj.*`,
    `ce_decoder.*`) load too: their keys are moved under `head.` on load.
    """

    def __init__(
        self,
        encoder_embed: nn.Module,
        encoder: nn.Module,
        encoder_dim: int,
        cif_predictor: CifPredictor,
        ctc_output: nn.Module,
        head: DecoderHead,
        cif_downsample: int = 2,
        distill: Optional[DistillProjections] = None,
        cif_segmentation: str = "fire",
    ):
        """
        Args:
          encoder_embed: Conv2dSubsampling, (N, T, F) -> (N, (T-7)//2, C0).
          encoder: Zipformer2, (T, N, C0) -> (T', N, encoder_dim).
          encoder_dim: output dimension of `encoder` (= CIF vector dimension).
          cif_predictor: weight predictor + integrate-and-fire on encoder_dim frames.
          ctc_output: the CTC head, (N, T', encoder_dim) -> (N, T', vocab_size) log-probs
            (see :func:`ctc_layer`).
          head: the decoder over the CIF vectors; its blank_id and vocab_size are the model's.
          cif_downsample: extra downsampling of the encoder output before CIF (1 = none).
          distill: the distillation projections (training only), or None.
          cif_segmentation: "fire" (integrate-and-fire) or "ctc" (segments around the CTC
            head's spikes, icefall_cif.segments).
        """
        super().__init__()
        if cif_segmentation not in ("fire", "ctc"):
            raise ValueError(f"cif_segmentation must be 'fire' or 'ctc', got '{cif_segmentation}'")
        if self._reads_token_prior(head) and cif_segmentation != "ctc":
            raise ValueError("a CTC prior on the decoder (--ce-ctc-prior-scale > 0) reads the CTC head at each "
                             "vector's spike: it needs --cif-segmentation ctc")
        if cif_downsample < 1:
            raise ValueError(f"cif_downsample must be >= 1 (1 = no extra downsampling), got {cif_downsample}")
        self.vocab_size = head.vocab_size
        self.blank_id = head.blank_id
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
        self.cif_segmentation = cif_segmentation
        self.ctc_output = ctc_output
        self.head = head
        self.distill = distill
        self._register_load_state_dict_pre_hook(_move_pre_head_keys)

    @staticmethod
    def _reads_token_prior(head: DecoderHead) -> bool:
        """Whether `forward_cif` returns the CTC log-probs at the spikes (`token_prior`): for a CE
        head with a CTC prior (`--ce-ctc-prior-scale` > 0, the head's prior_scale)."""
        return getattr(head, "prior_scale", 0.0) > 0

    @property
    def decoder_type(self) -> str:
        return self.head.name

    def num_output_frames(self, num_frames: torch.Tensor) -> torch.Tensor:
        """(N,) feature frames (100 Hz) -> (N,) CIF frames, exactly as `forward_cif` gets them.

        Conv2dSubsampling keeps (T - 7) // 2 frames, Zipformer's output downsampling
        ceil(T1 / 2), and `cif_downsample` ceil(T2 / d); works on ints too.
        """
        d = self.cif_downsample_factor
        t = ((num_frames - 7) // 2 + 1) // 2
        return (t + d - 1) // d

    def set_batch_count(self, batch_count: float) -> None:
        """Where training is, in reference batches: drives Zipformer's ScheduledFloat schedules."""
        set_batch_count(self, batch_count)

    def adaptive_state(self) -> Dict[str, Any]:
        """{module path: prob} of the Whiten modules.

        They switch their checking probability between two values in backward (as icefall's);
        it is not in `state_dict()`, and a resume that reset it would diverge from the
        uninterrupted run.
        """
        return {
            name: module.prob
            for name, module in self.named_modules()
            if isinstance(getattr(module, "prob", None), float)
        }

    def load_adaptive_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`adaptive_state` returned (module paths of pre-head checkpoints too)."""
        state = {_head_key(name): value for name, value in state.items()}
        for name, module in self.named_modules():
            if name in state:
                module.prob = state[name]

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
        targets: Optional[torch.Tensor] = None,
        ctc_log_probs: Optional[torch.Tensor] = None,
    ) -> CifPredictorOutput:
        """Extra downsampling + CIF.

        Args:
          encoder_out: (N, T', C) from `forward_encoder`.
          encoder_out_lens: (N,).
          target_lengths: (N,) token counts in training (exactly U_i vectors: the weights
            scaled to fire U_i times, or with `cif_segmentation` "ctc" the U_i reference tokens
            aligned by the CTC head); None at inference (raw weights and tail handling, or the
            CTC greedy path's tokens).
          targets: (N, U) the padded reference token ids; needed with target_lengths when
            `cif_segmentation` is "ctc", ignored otherwise.
          ctc_log_probs: (N, T', V) the CTC head's output on `encoder_out`, when the caller has
            it: with `cif_segmentation` "ctc" the spikes are read from it (detached) rather than
            from a second pass of the head, which in training would draw a new dropout mask and
            cut at spikes the CTC loss never saw. Ignored with "fire".
        Returns:
          CifPredictorOutput with cif (N, U, C), cif_lens (N,), alpha (N, T''),
          fire_frames (N, U) (frame index at the CIF rate, T'' = ceil(T'/cif_downsample_factor);
          -1 at padding) and quantity_loss (None without targets).
        """
        h, h_lens = self.downsample_for_cif(encoder_out, encoder_out_lens)
        side_input = self.predictor_side_input(encoder_out, encoder_out_lens)
        if self.cif_segmentation == "fire":
            return self.cif_predictor(h, h_lens, target_lengths, side_input)
        alpha = self.cif_predictor.compute_weights(h, h_lens, side_input)
        with torch.no_grad():
            log_probs = self.ctc_log_probs(encoder_out) if ctc_log_probs is None else ctc_log_probs.detach()
            if target_lengths is None:
                spikes = ctc_greedy_spikes(log_probs, encoder_out_lens, self.blank_id)
                num_tokens = (spikes >= 0).sum(dim=1)
            else:
                if targets is None:
                    raise ValueError("cif_segmentation 'ctc' aligns the reference tokens in training: "
                                     "pass targets (N, U) with target_lengths")
                num_tokens = target_lengths.to(encoder_out.device)
                aligned = ctc_forced_align(log_probs, encoder_out_lens, targets, num_tokens, self.blank_id)
                spikes = fill_missing_spikes(aligned, num_tokens, encoder_out_lens)
        out = pool_segments(h, alpha, h_lens, spikes, num_tokens, self.cif_downsample_factor)
        quantity = None if target_lengths is None else quantity_loss(alpha, num_tokens)
        prior = spike_log_probs(log_probs, spikes) if self._reads_token_prior(self.head) else None
        return CifPredictorOutput(out.cif, out.cif_lens, alpha, out.fire_frames, quantity, prior)

    @property
    def scores_hypotheses(self) -> bool:
        """Whether :meth:`hypothesis_log_probs` applies: a head that scores any sequence on the
        inference vectors (the transducer), or a CE head over CTC-cut vectors."""
        return self.head.scores_any_length or (self.cif_segmentation == "ctc" and self.head.scores_aligned_tokens)

    def hypothesis_log_probs(
        self,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        utt_index: torch.Tensor,
    ) -> torch.Tensor:
        """(H,) log p_CIF(y_h | utterance utt_index[h]) (cif_rescoring's score).

        The transducer sums every alignment of y over the inference vectors. A CE head over
        CTC-cut vectors scores y on vectors cut at y's own CTC forced alignment, as in training:
        one vector per token, so hypotheses of different lengths each get their own cut, and
        the scores compare as wenet's attention rescoring compares them (sums of per-token
        log-probs, no length normalisation).

        Args:
          encoder_out: (N, T', C); encoder_out_lens (N,).
          y_padded: (H, U) token ids padded with blank; y_lens (H,).
          utt_index: (H,) the utterance of each hypothesis.
        """
        if self.head.scores_any_length:
            cif_out = self.forward_cif(encoder_out, encoder_out_lens)
            return self.head.sequence_log_probs(cif_out.cif[utt_index], cif_out.cif_lens[utt_index], y_padded, y_lens)
        if not self.scores_hypotheses:
            raise ValueError(f"the {self.head.name} head scores one token per vector; it can score a hypothesis "
                             f"only on vectors cut for it, which needs --cif-segmentation ctc (this model: "
                             f"{self.cif_segmentation})")
        frames, frame_lens = encoder_out[utt_index], encoder_out_lens[utt_index]
        # The CTC head once per utterance, not once per hypothesis: its alignments only differ in y.
        ctc_log_probs = self.ctc_log_probs(encoder_out)[utt_index]
        cif_out = self.forward_cif(frames, frame_lens, target_lengths=y_lens, targets=y_padded,
                                   ctc_log_probs=ctc_log_probs)
        return self.head.aligned_log_probs(cif_out, frames, frame_lens, y_padded, y_lens)

    def forward_cif_as_decoded(
        self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, y_lens: torch.Tensor
    ) -> CifPredictorOutput:
        """CIF with the raw weights and tail handling of inference, plus the quantity loss.

        For heads that score any number of tokens on any number of vectors (the transducer):
        training then meets the vectors decoding meets, a token split over two or two tokens
        merged into one when the fire count is off. An utterance that fires nothing gets one
        zero vector, so that every utterance has a lattice.
        """
        if self.cif_segmentation != "fire":
            raise ValueError("--cif-scale-weights 0 trains on the fires of integrate-and-fire; "
                             "it cannot be combined with --cif-segmentation ctc")
        if not self.head.scores_any_length:
            raise ValueError(
                f"--cif-scale-weights 0 needs a decoder that reads any number of CIF vectors; "
                f"{self.head.name} emits exactly one token per vector"
            )
        out = self.forward_cif(encoder_out, encoder_out_lens)
        h_lens = (encoder_out_lens + self.cif_downsample_factor - 1) // self.cif_downsample_factor
        fitted = fit_to_target_lengths(CifOutput(out.cif, out.cif_lens, out.fire_frames), out.cif_lens.clamp(min=1), h_lens)
        return CifPredictorOutput(
            fitted.cif, fitted.cif_lens, out.alpha, fitted.fire_frames, quantity_loss(out.alpha, y_lens)
        )

    def predictor_side_input(self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor) -> Optional[torch.Tensor]:
        """What the weight predictor takes besides the CIF frames: None, or with
        `cif_ctc_input` the CTC spike mass (N, T'', 1) of :meth:`ctc_spike_input`."""
        return self.ctc_spike_input(encoder_out, encoder_out_lens) if self.cif_predictor.extra_dim else None

    def ctc_spike_input(self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor) -> torch.Tensor:
        """(N, T', C), (N,) -> (N, ceil(T'/d), 1): the CTC head's non-blank probability summed
        over the d encoder frames of each CIF frame (about the number of CTC spikes in it).

        Detached: the CTC head is trained by its own loss, not bent to suit the predictor.
        Padded encoder frames count 0, so the result does not depend on the batch.
        """
        with torch.no_grad():
            # 1 - exp rather than -expm1: ONNX has no expm1, and the lost precision (~1e-7 where
            # blank is nearly certain) does not matter for a feature.
            non_blank = 1.0 - self.ctc_log_probs(encoder_out)[..., self.blank_id].float().exp()  # (N, T')
            non_blank = non_blank.masked_fill(make_pad_mask(encoder_out_lens, non_blank.size(1)), 0.0)
            d = self.cif_downsample_factor
            pad = (-non_blank.size(1)) % d
            non_blank = F.pad(non_blank, (0, pad))
            return non_blank.view(non_blank.size(0), -1, d).sum(dim=2, keepdim=True)

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """(N, T', C) encoder output -> (N, T', vocab_size) CTC log-probs."""
        return self.ctc_output(encoder_out)

    # ------------------------------------------------------------------ losses
    def forward_ctc(
        self,
        log_probs: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """CTC loss summed over the batch; log_probs (N, T', V), y_padded (N, U), y_lens (N,)."""
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

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: List[List[int]],
        loss_config: LossConfig,
        teacher: Optional[TeacherFeatures] = None,
        kd: Optional[KdTargets] = None,
    ) -> Dict[str, torch.Tensor]:
        """Training / validation losses, unweighted (the training loop weights them).

        Args:
          x: (N, T, F) fbank features.
          x_lens: (N,) valid frames.
          y: N token-id lists (no blank, no sos/eos).
          loss_config: the training-only loss settings (smoothing, prune range, ...).
          teacher: the teacher vectors, feats (N, U, D) and lens (N,) = the lengths of `y`; read
            only when `loss_config` turns ACD or LRD on, and then required.
          kd: the --kd-teacher-checkpoint model's outputs on this batch (icefall_cif.kd.KdTeacher);
            read only when `loss_config` turns knowledge transfer on, and then required.
        Returns:
          scalar tensors summed over the batch: "ctc_loss", "quantity_loss", "cif_align_loss"
          when `loss_config.cif_align_loss_scale` > 0 or in eval mode, then the head's (`head.loss_names`:
          "simple_loss" and "pruned_loss", "ce_loss", or "cmlm_loss"), then "acd_loss" / "lrd_loss" when their
          scales are > 0 (sums over the valid tokens, see icefall_cif.distill), and "kd_frame_loss" /
          "kd_seq_loss" / "kd_nbest_loss" when theirs are (icefall_cif.kd).
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

        ctc_log_probs = self.ctc_log_probs(encoder_out)
        ctc_loss = self.forward_ctc(ctc_log_probs, encoder_out_lens, y_padded, y_lens)
        if loss_config.cif_scale_weights:
            cif_out = self.forward_cif(
                encoder_out, encoder_out_lens, target_lengths=y_lens, targets=y_padded, ctc_log_probs=ctc_log_probs
            )
        else:
            cif_out = self.forward_cif_as_decoded(encoder_out, encoder_out_lens, y_lens)
        losses = {"ctc_loss": ctc_loss, "quantity_loss": cif_out.quantity_loss}
        # Validation always measures it: how far the fires are from the CTC head's spikes.
        if loss_config.cif_align_loss_scale > 0 or not self.training:
            spikes = ctc_forced_align(ctc_log_probs, encoder_out_lens, y_padded, y_lens, self.blank_id)
            # CTC frames -> CIF frames (-1, "no alignment", stays negative).
            cif_frames = torch.where(spikes >= 0, spikes // self.cif_downsample_factor, spikes)
            losses["cif_align_loss"] = cif_alignment_loss(cif_out.alpha, cif_frames)
        if loss_config.transfers_knowledge:
            kd = self._check_kd(kd, encoder_out_lens, loss_config)
        if loss_config.kd_frame_scale > 0:
            losses["kd_frame_loss"] = frame_kd_loss(
                ctc_log_probs, kd.ctc_log_probs, encoder_out_lens, loss_config.kd_temperature
            )
        if loss_config.kd_nbest > 0:
            losses["kd_nbest_loss"] = self._nbest_loss(kd, y, x_lens, encoder_out, encoder_out_lens, loss_config)
        head_inputs = (cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, loss_config)
        if not loss_config.distills:
            if loss_config.kd_seq_scale > 0:
                head_losses, logits, positions = self.head.loss_and_token_logits(*head_inputs)
                losses.update(head_losses)
                losses["kd_seq_loss"] = token_kd_loss(
                    logits, kd.token_log_probs, positions, self.blank_id, loss_config.kd_temperature
                )
            else:
                losses.update(self.head.loss(*head_inputs))
            return losses
        teacher_rows = self._teacher_rows(teacher, y_lens, loss_config)  # (sum U, D)
        # Positions of the batch's valid tokens, in the same (utterance, token) order as teacher_rows.
        valid = make_pad_mask(y_lens, y_padded.size(1)).logical_not()
        if loss_config.lrd_loss_scale > 0:
            head_losses, states = self.head.loss_and_token_states(*head_inputs)
            losses.update(head_losses)
            losses["lrd_loss"] = lrd_loss(self.distill.lrd(states[valid]), teacher_rows)
        else:
            losses.update(self.head.loss(*head_inputs))
        if loss_config.acd_loss_scale > 0:
            losses["acd_loss"] = acd_loss(
                self.distill.acd(cif_out.cif[valid]), teacher_rows,
                num_negatives=loss_config.acd_num_negatives, temperature=loss_config.acd_temperature,
            )
        return losses

    def _nbest_loss(
        self,
        kd: KdTargets,
        y: List[List[int]],
        x_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        loss_config: LossConfig,
    ) -> torch.Tensor:
        """The head's loss on each of the teacher's K best hypotheses (CIF fitted to each one's
        length), averaged over the K. A hypothesis with more tokens than its utterance has CIF
        frames cannot be integrated towards; the reference stands in for it."""
        if len(self.head.loss_names) != 1:
            raise ValueError(f"--kd-nbest trains the student's decoder on the teacher's hypotheses and needs a head "
                             f"with one loss term (cif_ce_ar, cif_ce_nar, mask_ctc), not {self.head.name}")
        if len(kd.nbest) != loss_config.kd_nbest:
            raise ValueError(f"--kd-nbest {loss_config.kd_nbest} but the teacher gave {len(kd.nbest)} hypotheses")
        frames = self.num_output_frames(x_lens).tolist()
        device = encoder_out.device
        total = encoder_out.new_zeros(())
        for hyps in kd.nbest:
            targets = [h if len(h) <= f else ref for h, ref, f in zip(hyps, y, frames)]
            y_padded = pad_token_ids(targets, self.blank_id, device)
            y_lens = torch.tensor([len(t) for t in targets], dtype=torch.int64, device=device)
            cif_out = self.forward_cif(encoder_out, encoder_out_lens, target_lengths=y_lens, targets=y_padded)
            (term,) = self.head.loss(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, loss_config).values()
            total = total + term
        return total / len(kd.nbest)

    def _check_kd(self, kd: Optional[KdTargets], encoder_out_lens: torch.Tensor, loss_config: LossConfig) -> KdTargets:
        """`kd`, after checking that it holds what the options need for this batch."""
        if kd is None:
            raise ValueError("--kd-frame-scale / --kd-seq-scale > 0 need the teacher's outputs on the batch "
                             "(train.py computes them from --kd-teacher-checkpoint)")
        if kd.ctc_lens.shape != encoder_out_lens.shape or bool((kd.ctc_lens != encoder_out_lens).any()):
            raise ValueError(f"the teacher's encoder gives {kd.ctc_lens.tolist()} frames but the student's "
                             f"{encoder_out_lens.tolist()}: knowledge transfer needs encoders of the same frame rate")
        if loss_config.kd_seq_scale > 0 and kd.token_log_probs is None:
            raise ValueError("--kd-seq-scale > 0 needs the teacher's token posteriors (KdTeacher.targets with "
                             "token_level=True)")
        if loss_config.kd_seq_scale > 0 and loss_config.distills:
            raise ValueError("--kd-seq-scale cannot be combined with --acd-loss-scale / --lrd-loss-scale")
        return kd

    def _teacher_rows(
        self, teacher: Optional[TeacherFeatures], y_lens: torch.Tensor, loss_config: LossConfig
    ) -> torch.Tensor:
        """The teacher vectors of the batch's valid tokens, (sum of y_lens, D), after checking
        that the batch, the model and the options fit together."""
        if teacher is None:
            raise ValueError("--acd-loss-scale / --lrd-loss-scale > 0 need the batch's teacher features "
                             "(train on --plm-manifest, written by local/extract_plm_feats.py)")
        if not loss_config.cif_scale_weights:
            raise ValueError("--acd-loss-scale / --lrd-loss-scale need one CIF vector per token: they cannot be "
                             "combined with --cif-scale-weights 0")
        for name, scale, dim in (("acd", loss_config.acd_loss_scale, "acd_teacher_dim"),
                                 ("lrd", loss_config.lrd_loss_scale, "lrd_teacher_dim")):
            if scale > 0 and (self.distill is None or getattr(self.distill, name) is None):
                raise ValueError(f"--{name}-loss-scale > 0 but the model has no {name.upper()} projection: build it "
                                 f"with ModelConfig.{dim} = the teacher's dimension (train.py does)")
        if teacher.lens.shape != y_lens.shape or bool((teacher.lens.to(y_lens.device) != y_lens).any()):
            raise ValueError(f"teacher features have {teacher.lens.tolist()} rows but the utterances "
                             f"{y_lens.tolist()} tokens")
        valid = make_pad_mask(y_lens, teacher.feats.size(1)).logical_not()
        return teacher.feats.to(y_lens.device)[valid]


def _head_key(key: str) -> str:
    """A pre-head checkpoint's key or module path (`decoder.embedding.weight`) as it is now
    (`head.decoder.embedding.weight`); other keys unchanged."""
    return "head." + key if key.startswith(_PRE_HEAD_PREFIXES) else key


def _move_pre_head_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load-state-dict pre-hook: rename a pre-head checkpoint's decoder keys to `head.*`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        moved = prefix + _head_key(key[len(prefix):])
        if moved != key:
            state_dict[moved] = state_dict.pop(key)


# ---------------------------------------------------------------------- factory
def encoder_config_from_model_config(config: ModelConfig) -> Dict:
    """`encoder_config`'s named config with the individually given encoder options applied."""
    encoder = get_encoder_config(config.encoder_config)
    for name in ENCODER_OPTION_NAMES:
        value = getattr(config, name)
        if value is None:
            continue
        encoder[name] = int(value) if name == "pos_dim" else to_int_tuple(value)
        if name == "encoder_dim":
            # The front end feeds the first stack, so its width follows encoder_dim[0].
            encoder["encoder_embed_dim"] = encoder[name][0]
    return encoder


ENCODER_OPTION_NAMES = tuple(f.name for f in fields(ModelConfig) if f.metadata.get("encoder"))


def get_model(config: ModelConfig) -> CifAsrModel:
    """Build the model of a config (its vocab_size set from the lang dir)."""
    if config.vocab_size is None:
        raise ValueError("ModelConfig.vocab_size is unset; set it from the lang dir's token table before get_model")
    if config.decoder_type not in HEADS:
        raise ValueError(f"decoder_type must be one of {sorted(HEADS)}, got '{config.decoder_type}'")
    encoder_embed, encoder = build_encoder(encoder_config_from_model_config(config), feature_dim=config.feature_dim)
    encoder_dim = max(encoder.encoder_dim)  # Zipformer2's output width

    tail = config.tail_threshold if config.tail_threshold >= 0 else None
    cif_predictor = CifPredictor(
        input_dim=encoder_dim,
        weight_type=config.cif_weight_type,
        conv_width=config.cif_conv_width,
        hidden_dim=config.cif_hidden_dim,
        dropout=config.cif_dropout,
        threshold=config.cif_threshold,
        tail_threshold=tail,
        extra_dim=1 if config.cif_ctc_input else 0,
    )
    head_class = HEADS[config.decoder_type]
    if config.ce_ctc_prior_scale < 0:
        raise ValueError(f"--ce-ctc-prior-scale must be >= 0, got {config.ce_ctc_prior_scale}")
    if config.ce_ctc_prior_scale > 0 and not getattr(head_class, "takes_token_prior", False):
        raise ValueError(f"--ce-ctc-prior-scale adds the CTC head's log-probs to a CE decoder's logits "
                         f"(cif_ce_ar, cif_ce_nar); --decoder-type {config.decoder_type} has none")
    # Built in the order the random initialisation has always drawn in (the decoder networks,
    # the CTC layer, then the head's own layers), so that a seeded run starts from the same
    # weights as before the decoders became heads.
    networks = head_class.build_networks(config, encoder_dim)
    ctc_output = ctc_layer(encoder_dim, config.vocab_size)
    head = head_class.from_networks(config, encoder_dim, networks)
    # Last, and only when on: the other modules' initial weights do not depend on it.
    distill = None
    if config.acd_teacher_dim > 0 or config.lrd_teacher_dim > 0:
        state_dim = head.token_state_dim if config.lrd_teacher_dim > 0 else 0
        distill = DistillProjections(encoder_dim, config.acd_teacher_dim, state_dim, config.lrd_teacher_dim)
    return CifAsrModel(
        encoder_embed=encoder_embed,
        encoder=encoder,
        encoder_dim=encoder_dim,
        cif_predictor=cif_predictor,
        ctc_output=ctc_output,
        head=head,
        cif_downsample=config.cif_downsample,
        distill=distill,
        cif_segmentation=config.cif_segmentation,
    )


def ctc_layer(encoder_dim: int, vocab_size: int) -> nn.Module:
    """The CTC head: dropout, projection to the tokens, log-softmax."""
    return nn.Sequential(nn.Dropout(p=0.1), nn.Linear(encoder_dim, vocab_size), nn.LogSoftmax(dim=-1))
