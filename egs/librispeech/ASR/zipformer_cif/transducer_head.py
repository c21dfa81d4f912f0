"""`cif_transducer`: a pruned RNN-T over the CIF vectors (they are the transducer's frames).

A stateless prediction network (decoder.py) and a joiner (joiner.py) as in icefall's pruned
transducer; the "trivial joiner" projections `simple_am_proj`/`simple_lm_proj` give the simple
loss whose gradients choose the pruning ranges. Blank is allowed on every vector, and a vector
may emit several tokens in search (CIF can fire fewer times than there are tokens).
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from ce_decoder import token_cross_entropy
from decoder import Decoder
from joiner import Joiner
from scaling import ScaledLinear

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.decode.beam_search import modified_beam_search
from icefall_cif.decode.greedy import transducer_greedy_search
from icefall_cif.model_contract import DecoderHead
from icefall_cif.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_smoothed,
)


def transducer_loss_scales(batch_idx_train: int, warm_step: int, simple_loss_scale: float) -> Tuple[float, float]:
    """icefall's warm-up of the (simple, pruned) loss weights.

    The simple loss goes from 1.0 to `simple_loss_scale` and the pruned loss from 0.1 to 1.0,
    linearly over the first `warm_step` batches: the pruning ranges come from the simple loss,
    so it leads until it is good enough to prune with.
    """
    if warm_step <= 0 or batch_idx_train >= warm_step:
        return simple_loss_scale, 1.0
    frac = batch_idx_train / warm_step
    return 1.0 - frac * (1.0 - simple_loss_scale), 0.1 + 0.9 * frac


class TransducerHead(DecoderHead):
    """Prediction network + joiner over CIF vectors, trained with the pruned RNN-T loss.

    Submodules (checkpoint keys under `head.`): `decoder`, `joiner`, `simple_am_proj`,
    `simple_lm_proj`, named as in icefall's AsrModel.

    Its token states (:meth:`loss_and_token_states`, what LRD regresses) are the joiner's hidden
    activation at (CIF vector u, prediction after tokens < u): the lattice diagonal that the
    one-vector-one-token training alignment of CIF emits token u from, and the state that
    enters the vocabulary projection there (width joiner_dim).
    """

    name = "cif_transducer"
    beam_methods = ("modified_beam_search", "modified_beam_search_lm_shallow_fusion")
    loss_names = ("simple_loss", "pruned_loss", "token_ce_loss")
    scores_any_length = True

    def __init__(self, decoder: Decoder, joiner: Joiner, cif_dim: int, vocab_size: int):
        """
        Args:
          decoder: the prediction network (its blank_id is the head's).
          joiner: combines CIF vectors (cif_dim) and decoder outputs into vocab_size logits.
          cif_dim: dimension C of the CIF vectors.
          vocab_size: number of tokens, blank included.
        """
        super().__init__()
        self.decoder = decoder
        self.joiner = joiner
        self.blank_id = decoder.blank_id
        self.vocab_size = vocab_size
        decoder_dim = decoder.embedding.embedding_dim
        self.simple_am_proj = ScaledLinear(cif_dim, vocab_size, initial_scale=0.25)
        self.simple_lm_proj = ScaledLinear(decoder_dim, vocab_size, initial_scale=0.25)
        self.token_state_dim = joiner.output_linear.in_features

    @staticmethod
    def build_networks(config, cif_dim: int) -> Dict[str, nn.Module]:
        """The prediction network and joiner of the recipe's ModelConfig (decoder_dim, joiner_dim,
        context_size)."""
        return {
            "decoder": Decoder(config.vocab_size, config.decoder_dim, config.blank_id, config.context_size),
            "joiner": Joiner(cif_dim, config.decoder_dim, config.joiner_dim, config.vocab_size),
        }

    @classmethod
    def from_networks(cls, config, cif_dim: int, networks: Dict[str, nn.Module]) -> "TransducerHead":
        return cls(networks["decoder"], networks["joiner"], cif_dim, config.vocab_size)

    def loss(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Dict[str, torch.Tensor]:
        """Simple and pruned RNN-T losses (summed) with the CIF vectors as frames."""
        return self._losses(cif_out, y_padded, y_lens, config)[0]

    def loss_and_token_states(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """The losses, and (N, U, joiner_dim) joiner activations at (CIF vector u, prediction after
        tokens < u); needs exactly U CIF vectors (training's scaled weights)."""
        losses, decoder_out = self._losses(cif_out, y_padded, y_lens, config)
        cif = cif_out.cif
        if cif.size(1) != y_padded.size(1):
            raise ValueError(f"token states need one CIF vector per token, got {cif.size(1)} vectors for "
                             f"{y_padded.size(1)} tokens")
        return losses, self.joiner.hidden(cif, decoder_out[:, : cif.size(1)])

    def _losses(
        self, cif_out: CifPredictorOutput, y_padded: torch.Tensor, y_lens: torch.Tensor, config: LossConfig
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """The loss terms and the prediction network's output (N, U+1, decoder_dim)."""
        cif, cif_lens = cif_out.cif, cif_out.cif_lens
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
                lm_only_scale=config.lm_scale,
                am_only_scale=config.am_scale,
                boundary=boundary,
                rnnt_type=config.rnnt_type,
                reduction="sum",
                return_grad=True,
            )
        ranges = get_rnnt_prune_ranges(
            px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=config.prune_range
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
                rnnt_type=config.rnnt_type,
                reduction="sum",
            )
        losses = {"simple_loss": simple_loss, "pruned_loss": pruned_loss}
        if config.transducer_ce_scale > 0:
            losses["token_ce_loss"] = self.token_ce_loss(cif, decoder_out, y_padded, y_lens, config.label_smoothing)
        return losses, decoder_out

    def token_ce_loss(
        self,
        cif: torch.Tensor,
        decoder_out: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        label_smoothing: float,
    ) -> torch.Tensor:
        """Label-smoothed CE of token u from the joiner at (CIF vector u, prediction after u-1
        tokens), summed over tokens: the lattice's diagonal, CIF-T's one-vector-one-token view.

        In training CIF fires exactly U times, so vector u and token u correspond; the RNN-T loss
        alone also rewards alignments that put token u on another vector and blank on this one.

        Args:
          cif: (N, U, C) CIF vectors; decoder_out: (N, U+1, D) prediction network output of the
            blank-prefixed targets; y_padded: (N, U), y_lens: (N,).
        """
        logits = self.joiner(cif, decoder_out[:, : cif.size(1)])  # (N, U, V)
        return token_cross_entropy(logits, y_padded, y_lens, label_smoothing)

    def token_logits(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """(N, U, V) joiner logits at (CIF vector u, prediction after tokens < u): the lattice's
        diagonal, blank included (knowledge transfer renormalises it away); needs U CIF vectors."""
        cif = cif_out.cif
        if cif.size(1) != y_padded.size(1):
            raise ValueError(f"token logits need one CIF vector per token, got {cif.size(1)} vectors for "
                             f"{y_padded.size(1)} tokens")
        decoder_out = self.decoder(F.pad(y_padded, (1, 0), value=self.blank_id))
        return self.joiner(cif, decoder_out[:, : cif.size(1)])

    def sequence_log_probs(
        self, cif: torch.Tensor, cif_lens: torch.Tensor, y_padded: torch.Tensor, y_lens: torch.Tensor
    ) -> torch.Tensor:
        """(N,) log p(y | CIF vectors): the full (unpruned) RNN-T lattice, every alignment summed."""
        decoder_out = self.decoder(F.pad(y_padded, (1, 0), value=self.blank_id))  # (N, U+1, D)
        logits = self.joiner(cif.unsqueeze(2), decoder_out.unsqueeze(1))  # (N, T, U+1, V)
        boundary = torch.zeros(cif.size(0), 4, dtype=torch.int64, device=cif.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = cif_lens
        with torch.autocast(device_type=cif.device.type, enabled=False):
            # float32 at least (scores add up over the lattice); float64 stays float64.
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            return -rnnt_loss(logits, y_padded, self.blank_id, boundary=boundary, reduction="none")

    @staticmethod
    def loss_weights(config: LossConfig, batch_idx_train: int) -> Dict[str, float]:
        simple, pruned = transducer_loss_scales(batch_idx_train, config.warm_step, config.simple_loss_scale)
        weights = {"simple_loss": simple, "pruned_loss": pruned}
        if config.transducer_ce_scale > 0:
            weights["token_ce_loss"] = config.transducer_ce_scale
        return weights

    def greedy_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        max_sym_per_frame: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return transducer_greedy_search(self.decoder, self.joiner, cif, cif_lens, max_sym_per_frame)

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
    ) -> List[List[Any]]:
        return modified_beam_search(
            self.decoder, self.joiner, cif, cif_lens, self.vocab_size,
            beam_size=beam_size, lm=lm, lm_scale=lm_scale, max_sym_per_frame=max_sym_per_frame,
        )
