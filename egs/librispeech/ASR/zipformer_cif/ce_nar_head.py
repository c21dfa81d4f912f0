"""`cif_ce_nar`: a non-autoregressive CE decoder over the CIF vectors (Paraformer style).

A bidirectional Transformer over all vectors with cross-attention to the encoder frames
(ce_decoder.NarCeDecoder) predicts every token in one pass; its positions are independent, so
only an LM makes its beam search differ from greedy search.

Training may use Paraformer's glancing sampler (`--glancing-ratio`, :func:`glancing_positions`):
a first pass without gradient counts the wrong tokens of each utterance, ratio x that many
positions get the reference token's embedding instead of their CIF vector, and the loss is the
CE of the second pass. The decoder thereby learns to use given tokens, which a mask-predict
search over its unsure positions relies on: `nar_mask_predict` (greedy) and `nar_beam_search`
re-predict the positions of the one-pass output whose max posterior is below `--mask-threshold`,
in at most `--mask-iterations` rounds, with the other positions' tokens given
(icefall_cif.decode.mask_predict).

With `--ce-ctc-prior-scale s` every pass's logits are the decoder's plus s x the CTC head's
log-probs at each vector's spike (`token_prior`).
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from ce_decoder import CeHead, NarCeDecoder

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.decode.beam_search import Hypothesis, NBest, ce_beam_search
from icefall_cif.decode.greedy import vector_index
from icefall_cif.decode.mask_predict import MaskPredictOptions, mask_predict_search, mask_unsure
from icefall_cif.utils import make_pad_mask


class NarBeamScorer:
    """`LabelSyncScorer` of the NAR decoder: the same per-position log-probs for every slot."""

    def __init__(self, log_probs: torch.Tensor, beam_size: int):
        """log_probs: (N, U, V) of one parallel pass."""
        self.all_log_probs = log_probs
        self.beam_size = beam_size

    def log_probs(self, u: int) -> torch.Tensor:
        lp = self.all_log_probs[:, u]
        return lp.unsqueeze(1).expand(lp.size(0), self.beam_size, -1)

    def select(self, parent: torch.Tensor, tokens: torch.Tensor) -> None:
        """Nothing to follow: the positions do not depend on earlier tokens."""


class NarCeHead(CeHead):
    """Bidirectional Transformer over CIF vectors, cross-attending to frames; label-smoothed CE.

    Submodule (checkpoint keys under `head.`): `ce_decoder`.
    """

    name = "cif_ce_nar"
    mask_predict_methods = ("nar_mask_predict", "nar_beam_search")
    # One round over the tokens below 0.9: chosen on dev-clean for the beam (LibriSpeech RESULTS.md, issue 17).
    mask_predict_defaults = MaskPredictOptions(threshold=0.9, iterations=1)

    def __init__(self, ce_decoder: NarCeDecoder, blank_id: int, prior_scale: float = 0.0):
        super().__init__()
        self.ce_decoder = ce_decoder
        self.prior_scale = prior_scale
        self.blank_id = blank_id
        self.vocab_size = ce_decoder.vocab_size

    @staticmethod
    def build_networks(config, cif_dim: int) -> Dict[str, nn.Module]:
        """The decoder of the recipe's ModelConfig; it cross-attends to frames of width cif_dim."""
        decoder = NarCeDecoder(
            cif_dim=cif_dim,
            memory_dim=cif_dim,
            vocab_size=config.vocab_size,
            d_model=config.ce_decoder_dim,
            num_layers=config.ce_decoder_layers,
            num_heads=config.ce_decoder_heads,
            dropout=config.ce_decoder_dropout,
        )
        return {"ce_decoder": decoder}

    @classmethod
    def from_networks(cls, config, cif_dim: int, networks: Dict[str, nn.Module]) -> "NarCeHead":
        return cls(networks["ce_decoder"], config.blank_id, config.ce_ctc_prior_scale)

    def teacher_forced_states(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> torch.Tensor:
        """(N, U, d_model) final states of one parallel pass; in training with
        `config.glancing_ratio` > 0, of the pass with the glanced reference tokens given."""
        decoder = self.ce_decoder
        args = (cif_out.cif, cif_out.cif_lens, encoder_out, encoder_out_lens)
        if not (self.training and config.glancing_ratio > 0):
            return decoder.hidden_states(*args)
        with torch.no_grad():
            predicted = self.with_prior(decoder(*args), cif_out.token_prior).argmax(dim=-1)
        glanced = glancing_positions(predicted, y_padded, y_lens, config.glancing_ratio)
        return decoder.hidden_states(*args, known_tokens=y_padded.masked_fill(~glanced, -1))

    def greedy_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        max_sym_per_frame: int,
        token_prior: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The argmax of one parallel pass, one token per CIF vector."""
        N, U, _ = cif.shape
        if U == 0:
            tokens = torch.zeros(N, 0, dtype=torch.int64, device=cif.device)
        else:
            logits = self.ce_decoder(cif, cif_lens, encoder_out, encoder_out_lens)
            tokens = self.with_prior(logits, token_prior).argmax(dim=-1)
        return tokens, vector_index(cif_lens, U)

    def beam_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        beam_size: int,
        lm: Optional[Any],
        lm_scale: float,
        max_sym_per_frame: int,
        token_prior: Optional[torch.Tensor] = None,
    ) -> List[List[Any]]:
        N, U, _ = cif.shape
        log_probs = (
            self.with_prior(self.ce_decoder(cif, cif_lens, encoder_out, encoder_out_lens), token_prior).log_softmax(dim=-1)
            if U > 0
            else cif.new_zeros(N, 0, self.vocab_size)
        )
        return ce_beam_search(
            NarBeamScorer(log_probs, beam_size), cif, cif_lens, self.blank_id, self.vocab_size,
            beam_size=beam_size, lm=lm, lm_scale=lm_scale,
        )

    def mask_predict_search(
        self,
        method: str,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        options: MaskPredictOptions,
        ctc_log_probs: Optional[torch.Tensor] = None,
        token_prior: Optional[torch.Tensor] = None,
    ) -> List[NBest]:
        """`nar_mask_predict` / `nar_beam_search`: one parallel pass, then its positions whose max
        posterior is below `options.threshold` re-predicted with the other tokens given
        (`known_tokens`). Nothing below it: the greedy search's tokens."""
        if method not in self.mask_predict_methods:
            raise ValueError(f"the cif_ce_nar head has no search {method}; it has {list(self.mask_predict_methods)}")
        N, U, _ = cif.shape
        if U == 0:
            return [[Hypothesis([], 0.0)] for _ in range(N)]
        logits = self.ce_decoder(cif, cif_lens, encoder_out, encoder_out_lens)
        log_probs = self.with_prior(logits, token_prior).log_softmax(dim=-1)
        best, tokens = log_probs.max(dim=-1)
        masked = mask_unsure(tokens, cif_lens, best.exp(), options.threshold)

        def predict(known: torch.Tensor) -> torch.Tensor:
            K = known.size(1)
            logits = self.ce_decoder(
                cif.repeat_interleave(K, dim=0), cif_lens.repeat_interleave(K),
                encoder_out.repeat_interleave(K, dim=0), encoder_out_lens.repeat_interleave(K),
                known_tokens=known.reshape(N * K, U),
            )
            prior = None if token_prior is None else token_prior.repeat_interleave(K, dim=0)
            return self.with_prior(logits, prior).log_softmax(dim=-1).view(N, K, U, -1)

        return mask_predict_search(predict, masked, cif_lens, options, beam=method == "nar_beam_search")


def glancing_positions(
    predicted: torch.Tensor, y_padded: torch.Tensor, y_lens: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Paraformer's glancing sampler: which positions get their reference token as input.

    Utterance i has d_i = the number of its valid positions where `predicted` is wrong; ceil(ratio
    x d_i) of its valid positions, drawn uniformly at random (wrong and right ones alike), are
    glanced. A model that is already right everywhere sees no reference token.

    Args:
      predicted: (N, U) the first pass's argmax; y_padded: (N, U) references; y_lens: (N,).
      ratio: in [0, 1].
    Returns:
      (N, U) bool, True at the glanced positions (never at padding).

    Example: predicted [[5, 7, 9, 0]], y_padded [[5, 8, 6, 0]], y_lens [3], ratio 0.5 -> d = 2,
    one of the three positions is glanced.
    """
    valid = ~make_pad_mask(y_lens, y_padded.size(1))
    wrong = ((predicted != y_padded) & valid).sum(dim=1)
    num_glanced = torch.ceil(ratio * wrong.to(torch.float64)).to(torch.int64)
    # A random order of each row's valid positions (padding sorts last); the first num_glanced win.
    keys = torch.rand(y_padded.shape, device=y_padded.device).masked_fill(~valid, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < num_glanced.unsqueeze(1)) & valid
