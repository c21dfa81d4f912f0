"""`cif_ce_ar`: an autoregressive CE decoder over the CIF vectors (CIF-HieraDist style).

Step u sees CIF vector u and token u-1 (ce_decoder.ArCeDecoder); one token per vector, so
the number of CIF vectors fixes the output length and there is no end-of-sentence token.
With `--ce-ctc-prior-scale s` the logits of step u are the decoder's plus s x the CTC head's
log-probs at vector u's spike (`token_prior`): the decoder learns what to change in the CTC
head's token given the tokens before it.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from ce_decoder import ArCeDecoder, CeHead

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.decode.beam_search import ce_beam_search
from icefall_cif.decode.greedy import vector_index


class ArBeamScorer:
    """`LabelSyncScorer` of the AR decoder: re-runs one step per position with its cache,
    reordered to follow the beam."""

    def __init__(self, head: "ArCeHead", cif: torch.Tensor, beam_size: int, blank_id: int,
                 token_prior: Optional[torch.Tensor] = None):
        self.head = head
        self.ce_decoder = head.ce_decoder
        self.cif = cif
        self.token_prior = token_prior
        self.beam_size = beam_size
        self.prev = torch.full((cif.size(0) * beam_size,), blank_id, dtype=torch.int64, device=cif.device)
        self.cache: Optional[List[torch.Tensor]] = None

    def log_probs(self, u: int) -> torch.Tensor:
        step_input = self.cif[:, u].repeat_interleave(self.beam_size, dim=0)
        logits, self.cache = self.ce_decoder.forward_step(step_input, self.prev, self.cache)
        prior = None if self.token_prior is None else self.token_prior[:, u].repeat_interleave(self.beam_size, dim=0)
        return self.head.with_prior(logits, prior).log_softmax(dim=-1).view(self.cif.size(0), self.beam_size, -1)

    def select(self, parent: torch.Tensor, tokens: torch.Tensor) -> None:
        self.cache = [c.index_select(0, parent) for c in self.cache]
        self.prev = tokens.reshape(-1)


class ArCeHead(CeHead):
    """Causal Transformer over CIF vectors and previous tokens; label-smoothed CE.

    Submodule (checkpoint keys under `head.`): `ce_decoder`.
    """

    name = "cif_ce_ar"

    def __init__(self, ce_decoder: ArCeDecoder, prior_scale: float = 0.0):
        super().__init__()
        self.ce_decoder = ce_decoder
        self.prior_scale = prior_scale
        self.blank_id = ce_decoder.blank_id
        self.vocab_size = ce_decoder.vocab_size

    @staticmethod
    def build_networks(config, cif_dim: int) -> Dict[str, nn.Module]:
        """The decoder of the recipe's ModelConfig (ce_decoder_dim/layers/heads/dropout)."""
        decoder = ArCeDecoder(
            cif_dim=cif_dim,
            vocab_size=config.vocab_size,
            d_model=config.ce_decoder_dim,
            num_layers=config.ce_decoder_layers,
            num_heads=config.ce_decoder_heads,
            dropout=config.ce_decoder_dropout,
            blank_id=config.blank_id,
        )
        return {"ce_decoder": decoder}

    @classmethod
    def from_networks(cls, config, cif_dim: int, networks: Dict[str, nn.Module]) -> "ArCeHead":
        return cls(networks["ce_decoder"], config.ce_ctc_prior_scale)

    def teacher_forced_states(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> torch.Tensor:
        """(N, U, d_model) final states of all positions in one pass, token u-1 fed at position u."""
        # Slicing (not y[:, :-1]) keeps U = 0 valid.
        prev = F.pad(y_padded, (1, 0), value=self.blank_id)[:, : y_padded.size(1)]
        return self.ce_decoder.hidden_states(cif_out.cif, cif_out.cif_lens, prev)

    def greedy_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        max_sym_per_frame: int,
        token_prior: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token per CIF vector, feeding back the argmax (of the logits with the prior, if any)."""
        N, U, _ = cif.shape
        prev = torch.full((N,), self.blank_id, dtype=torch.int64, device=cif.device)
        cache = None
        out = []
        for u in range(U):
            logits, cache = self.ce_decoder.forward_step(cif[:, u], prev, cache)
            prev = self.with_prior(logits, None if token_prior is None else token_prior[:, u]).argmax(dim=-1)
            out.append(prev)
        tokens = torch.stack(out, dim=1) if out else prev.new_zeros(N, 0)
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
        scorer = ArBeamScorer(self, cif, beam_size, self.blank_id, token_prior)
        return ce_beam_search(
            scorer, cif, cif_lens, self.blank_id, self.vocab_size, beam_size=beam_size, lm=lm, lm_scale=lm_scale
        )
