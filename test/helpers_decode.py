"""Shared helpers of the decoding tests: tiny CIF models overfit to a few utterances.

The searches start from `encoder_out`, so the helpers skip the Zipformer: they train the CIF
predictor, the CTC head and the decoder of a tiny model on fixed random "encoder frames",
which takes seconds instead of minutes and still gives models whose every decoding method
must return the references.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.model_contract import weighted_loss

VOCAB_SIZE = 10  # <blk>=0, <sos/eos>=1, <unk>=2, text tokens 3..9
REFERENCES: List[List[int]] = [[3, 4, 5, 6], [7, 8, 9], [4, 6, 8, 3, 5]]
NUM_FRAMES = [20, 16, 22]  # encoder frames (25 Hz); CIF sees half of them


def tiny_config(decoder_type: str, vocab_size: int = VOCAB_SIZE, **overrides):
    """A ModelConfig small enough to overfit in a few seconds on a CPU (`overrides`: other fields)."""
    from model import ModelConfig

    return ModelConfig(
        vocab_size=vocab_size,
        blank_id=0,
        feature_dim=80,
        encoder_config="tiny",
        encoder_dim="32,32,32,32",
        feedforward_dim="64,64,64,64",
        encoder_unmasked_dim="32,32,32,32",
        decoder_type=decoder_type,
        decoder_dim=32,
        joiner_dim=32,
        context_size=2,
        ce_decoder_dim=32,
        ce_decoder_layers=1,
        ce_decoder_heads=2,
        ce_decoder_dropout=0.0,
        cif_hidden_dim=32,
        **overrides,
    )


def build_tiny_model(decoder_type: str, vocab_size: int = VOCAB_SIZE, **overrides) -> nn.Module:
    """An untrained tiny CifAsrModel (eval mode)."""
    from model import get_model

    return get_model(tiny_config(decoder_type, vocab_size, **overrides)).eval()


def make_encoder_out(num_frames: List[int], dim: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fixed random (N, max(num_frames), dim) frames, zero-padded, and their (N,) lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(num_frames), max(num_frames), dim, generator=g)
    lens = torch.tensor(num_frames, dtype=torch.int64)
    x = x * (torch.arange(x.size(1)).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(2)
    return x, lens


def decoder_losses(
    model: nn.Module, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, refs: List[List[int]],
    config: Optional[LossConfig] = None,
) -> torch.Tensor:
    """CTC + quantity + decoder loss of the model on given encoder frames (N, T', C), lens (N,),
    weighted as the training loop weights them (`config`, default: no warm-up)."""
    from model import pad_token_ids

    y = pad_token_ids(refs, model.blank_id, encoder_out.device)
    y_lens = torch.tensor([len(r) for r in refs], dtype=torch.int64)
    config = config or LossConfig(warm_step=0)
    ctc_log_probs = model.ctc_log_probs(encoder_out)
    cif_out = model.forward_cif(encoder_out, encoder_out_lens, target_lengths=y_lens, targets=y,
                                ctc_log_probs=ctc_log_probs)
    losses = {
        "ctc_loss": model.forward_ctc(ctc_log_probs, encoder_out_lens, y, y_lens),
        "quantity_loss": cif_out.quantity_loss,
        **model.head.loss(cif_out, encoder_out, encoder_out_lens, y, y_lens, config),
    }
    return weighted_loss(model, losses, config, batch_idx_train=0)


@dataclass
class OverfitModel:
    model: nn.Module
    encoder_out: torch.Tensor  # (N, T', C)
    encoder_out_lens: torch.Tensor  # (N,)
    refs: List[List[int]]


def overfit_tiny_model(
    decoder_type: str, steps: int = 100, lr: float = 1e-2, seed: int = 0, config: Optional[LossConfig] = None,
    **overrides,
) -> OverfitModel:
    """A tiny model (ModelConfig fields `overrides`) trained on REFERENCES (with the loss settings
    `config`) until it fits them (eval mode)."""
    torch.manual_seed(seed)
    model = build_tiny_model(decoder_type, **overrides).train()
    encoder_out, lens = make_encoder_out(NUM_FRAMES, model.encoder_dim, seed)
    trainable = [p for name, p in model.named_parameters() if not name.startswith(("encoder.", "encoder_embed."))]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    for _ in range(steps):
        loss = decoder_losses(model, encoder_out, lens, REFERENCES, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return OverfitModel(model.eval(), encoder_out, lens, REFERENCES)


_CACHE: Dict[str, OverfitModel] = {}


def cached_overfit_model(decoder_type: str) -> OverfitModel:
    """`overfit_tiny_model` once per decoder type and test session."""
    if decoder_type not in _CACHE:
        _CACHE[decoder_type] = overfit_tiny_model(decoder_type)
    return _CACHE[decoder_type]


class FixedCifModel(nn.Module):
    """A `CifModel` whose CIF layer returns fixed vectors, so that a head's searches are tested
    on their own (with garbage at padded positions if the caller puts it there).

    It fulfils the contract (`check_model` passes): the encoder is the identity on the frames it
    is given, the CTC head is uniform, and there is no training (`forward` raises).
    """

    def __init__(self, head, cif: torch.Tensor, cif_lens, fire_frames=None, cif_downsample_factor: int = 1):
        """
        Args:
          head: a DecoderHead.
          cif: (N, U, C) vectors; cif_lens: (N,) counts (a tensor or a list).
          fire_frames: (N, U) CIF-rate frame of each vector, -1 at padding; default u.
        """
        super().__init__()
        self.head = head
        self.blank_id, self.vocab_size = head.blank_id, head.vocab_size
        self.cif_downsample_factor = cif_downsample_factor
        self.cif, self.cif_lens = cif, torch.as_tensor(cif_lens)
        N, U = cif.shape[:2]
        if fire_frames is None:
            fire_frames = torch.arange(U).expand(N, U)
        self.fire_frames = fire_frames.masked_fill(torch.arange(U) >= self.cif_lens.unsqueeze(1), -1)

    def forward(self, x, x_lens, y, loss_config):
        raise NotImplementedError("FixedCifModel is for search tests: it has no training losses")

    def forward_encoder(self, x: torch.Tensor, x_lens: torch.Tensor):
        return x, x_lens

    def forward_cif(self, encoder_out, encoder_out_lens, target_lengths=None) -> CifPredictorOutput:
        N, U = self.cif.shape[:2]
        return CifPredictorOutput(self.cif, self.cif_lens, torch.zeros(N, U), self.fire_frames, None)

    def ctc_log_probs(self, encoder_out: torch.Tensor) -> torch.Tensor:
        N, T = encoder_out.shape[:2]
        return torch.full((N, T, self.vocab_size), -math.log(self.vocab_size))

    @property
    def scores_hypotheses(self) -> bool:
        # getattr: tests swap in heads that are not DecoderHeads to see check_model refuse them.
        return getattr(self.head, "scores_any_length", False)

    def hypothesis_log_probs(self, encoder_out, encoder_out_lens, y_padded, y_lens, utt_index) -> torch.Tensor:
        """The head's score on the fixed vectors (a transducer's)."""
        return self.head.sequence_log_probs(self.cif[utt_index], self.cif_lens[utt_index], y_padded, y_lens)

    def num_output_frames(self, num_frames: torch.Tensor) -> torch.Tensor:
        return num_frames

    def set_batch_count(self, batch_count: float) -> None:
        """Nothing here is scheduled."""

    def adaptive_state(self) -> Dict:
        return {}

    def load_adaptive_state(self, state: Dict) -> None:
        """Nothing to restore."""
