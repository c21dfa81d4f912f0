"""`mask_ctc`: Mask-CTC (Higuchi et al., 2020) over the model's CTC head.

The CTC head's greedy output is the first guess; its unsure tokens are re-predicted by a
conditional masked LM (`CmlmDecoder`): a non-causal Transformer over token embeddings, with a
`<mask>` embedding where a token is hidden, cross-attending to the encoder frames (N, T', C).

Training (:meth:`MaskCtcHead.loss`): each reference hides m positions drawn at random, m uniform in
1..U (:func:`sample_cmlm_mask`), and "cmlm_loss" sums the label-smoothed CE over the hidden
positions only (:func:`cmlm_loss`). The CTC head is trained by the model's "ctc_loss". The model
still builds and runs the CIF layer (its quantity loss trains it); this head does not read the
CIF vectors, so its outputs have the CTC greedy output's length.

Decoding (icefall_cif.decode.mask_predict): the tokens whose confidence (their CTC posterior,
maximised over the frames their run of argmax frames covers) is below `--mask-threshold` are
hidden and filled in at most `--mask-iterations` rounds, greedily (`mask_ctc_greedy`;
`greedy_search` is it) or with a beam (`mask_ctc_beam_search`). The
CMLM never picks blank: a hidden position stands for a token of the CTC output.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from ce_decoder import _DecoderLayer, _key_padding_mask, masked_cross_entropy, sinusoidal_positions

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.decode.beam_search import NBest
from icefall_cif.decode.greedy import CtcGreedyTokens, ctc_greedy_tokens
from icefall_cif.decode.mask_predict import (
    MASK,
    MaskPredictOptions,
    Predict,
    mask_predict_greedy,
    mask_predict_search,
    mask_unsure,
)
from icefall_cif.model_contract import DecoderHead
from icefall_cif.utils import make_pad_mask


class CmlmDecoder(nn.Module):
    """Conditional masked LM: token embeddings (`<mask>` at hidden positions) plus sinusoidal
    positions, pre-norm Transformer layers with cross-attention to the encoder frames."""

    def __init__(
        self,
        vocab_size: int,
        memory_dim: int,
        d_model: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
    ):
        """
        Args:
          vocab_size: number of output tokens; the embedding has one more row, `<mask>` (id vocab_size).
          memory_dim: width of the encoder frames it cross-attends to.
          d_model: Transformer width; the feed-forward width is 4 * d_model.
          num_layers, num_heads, dropout: Transformer shape and regularisation.
        """
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"--ce-decoder-dim ({d_model}) must be divisible by --ce-decoder-heads ({num_heads})")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.mask_id = vocab_size
        self.embedding = nn.Embedding(vocab_size + 1, d_model)
        self.memory_proj = nn.Linear(memory_dim, d_model)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            _DecoderLayer(d_model, num_heads, 4 * d_model, dropout, cross=True) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.output_linear = nn.Linear(d_model, vocab_size)

    def forward(
        self, tokens: torch.Tensor, lens: torch.Tensor, memory: torch.Tensor, memory_lens: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
          tokens: (N, L) int64 ids, MASK (-1) at hidden positions; lens (N,) valid positions.
          memory: (N, T, C_mem) encoder frames; memory_lens (N,).
        Returns:
          (N, L, vocab_size) logits; rows at l >= lens are padding.
        """
        x = self.embedding(torch.where(tokens == MASK, torch.full_like(tokens, self.mask_id), tokens))
        x = self.input_dropout(x + sinusoidal_positions(x.size(1), self.d_model, 0, x.device).to(x.dtype))
        mem = self.memory_proj(memory)
        self_kpm = _key_padding_mask(lens, x.size(1))
        mem_kpm = _key_padding_mask(memory_lens, mem.size(1))
        for layer in self.layers:
            x = layer(x, x, key_padding_mask=self_kpm, memory=mem, memory_key_padding_mask=mem_kpm)
        return self.output_linear(self.final_norm(x))


def sample_cmlm_mask(y_lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """Mask-CTC's training mask: per utterance m ~ uniform{1..U} of its U positions, at random.

    Args:
      y_lens: (N,) reference lengths U; max_len: width L >= max U.
    Returns:
      (N, L) bool, True at the hidden positions (none at padding, none where U = 0).
    """
    valid = ~make_pad_mask(y_lens, max_len)[:, :max_len]
    num = (torch.rand(y_lens.shape, device=y_lens.device) * y_lens).long() + 1
    # A random order of each row's valid positions (padding sorts last); the first `num` are hidden.
    keys = torch.rand(valid.shape, device=y_lens.device).masked_fill(~valid, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < num.unsqueeze(1)) & valid


def cmlm_loss(
    decoder: CmlmDecoder,
    y_padded: torch.Tensor,
    y_lens: torch.Tensor,
    hidden: torch.Tensor,
    memory: torch.Tensor,
    memory_lens: torch.Tensor,
    label_smoothing: float,
) -> torch.Tensor:
    """Label-smoothed CE of the CMLM at the hidden positions, summed over them.

    Args:
      y_padded: (N, U) references (any value at padding); y_lens: (N,).
      hidden: (N, U) bool, the positions given as `<mask>` (and scored).
      memory: (N, T, C) encoder frames; memory_lens: (N,).
    """
    logits = decoder(y_padded.masked_fill(hidden, MASK), y_lens, memory, memory_lens)
    return masked_cross_entropy(logits, y_padded, hidden, label_smoothing)


class MaskCtcHead(DecoderHead):
    """The CMLM of Mask-CTC; the first guess comes from the model's CTC head (:attr:`reads_ctc`).

    Submodule (checkpoint keys under `head.`): `cmlm`.
    """

    name = "mask_ctc"
    # Its beam is a mask-predict search; the beam methods over CIF vectors (and joint_beam_search,
    # which rescores them) do not apply.
    beam_methods = ()
    mask_predict_methods = ("mask_ctc_greedy", "mask_ctc_beam_search")
    # Threshold 0.3: the best of 0.1-0.999 on dev-clean for the beam (LibriSpeech RESULTS.md, issue 17).
    mask_predict_defaults = MaskPredictOptions(threshold=0.3)
    greedy_mask_predict_method = "mask_ctc_greedy"
    loss_names = ("cmlm_loss",)
    reads_ctc = True

    def __init__(self, cmlm: CmlmDecoder, blank_id: int):
        super().__init__()
        self.cmlm = cmlm
        self.blank_id = blank_id
        self.vocab_size = cmlm.vocab_size
        self.token_state_dim = cmlm.d_model

    @staticmethod
    def build_networks(config, cif_dim: int) -> Dict[str, nn.Module]:
        """The CMLM of the recipe's ModelConfig (the ce_decoder_* sizes); it cross-attends to
        encoder frames of width cif_dim."""
        cmlm = CmlmDecoder(
            vocab_size=config.vocab_size,
            memory_dim=cif_dim,
            d_model=config.ce_decoder_dim,
            num_layers=config.ce_decoder_layers,
            num_heads=config.ce_decoder_heads,
            dropout=config.ce_decoder_dropout,
        )
        return {"cmlm": cmlm}

    @classmethod
    def from_networks(cls, config, cif_dim: int, networks: Dict[str, nn.Module]) -> "MaskCtcHead":
        return cls(networks["cmlm"], config.blank_id)

    def loss(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Dict[str, torch.Tensor]:
        """{"cmlm_loss"}: the CMLM's CE at a random mask of each reference (`cif_out` is not read)."""
        return self.loss_and_token_logits(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, config)[0]

    def loss_and_token_logits(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The loss, the CMLM's (N, U, V) logits of that pass and its (N, U) hidden positions, the
        only ones it predicted (a knowledge-transfer student learns the teacher's posteriors there)."""
        hidden = sample_cmlm_mask(y_lens, y_padded.size(1))
        logits = self.cmlm(y_padded.masked_fill(hidden, MASK), y_lens, encoder_out, encoder_out_lens)
        return {"cmlm_loss": masked_cross_entropy(logits, y_padded, hidden, config.label_smoothing)}, logits, hidden

    @staticmethod
    def loss_weights(config: LossConfig, batch_idx_train: int) -> Dict[str, float]:
        return {"cmlm_loss": 1.0}

    def _predictor(self, lens: torch.Tensor, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor) -> Predict:
        """The CMLM as a mask-predict `predict`: (N, K, L) tokens -> (N, K, L, V) log-probs."""

        def predict(tokens: torch.Tensor) -> torch.Tensor:
            N, K, L = tokens.shape
            logits = self.cmlm(
                tokens.reshape(N * K, L),
                lens.repeat_interleave(K),
                encoder_out.repeat_interleave(K, dim=0),
                encoder_out_lens.repeat_interleave(K),
            )
            logits[..., self.blank_id] = float("-inf")
            return logits.log_softmax(dim=-1).view(N, K, L, -1)

        return predict

    def _first_guess(
        self, ctc_log_probs: Optional[torch.Tensor], encoder_out_lens: torch.Tensor, threshold: float
    ) -> Tuple[CtcGreedyTokens, torch.Tensor]:
        """The CTC greedy output and its (N, L) tokens with MASK at the unsure ones."""
        if ctc_log_probs is None:
            raise ValueError("the mask_ctc head decodes from the CTC head's output: pass ctc_log_probs "
                             "(model.ctc_log_probs(encoder_out); the head's reads_ctc is True)")
        first = ctc_greedy_tokens(ctc_log_probs, encoder_out_lens, self.blank_id)
        return first, mask_unsure(first.tokens, first.lens, first.confidence, threshold)

    def greedy_search(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        max_sym_per_frame: int,
        ctc_log_probs: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`mask_ctc_greedy` with the head's default options; returns tokens (N, L) and each token's
        first CTC frame (N, L), -1 at padding. The CIF vectors and `max_sym_per_frame` are not read."""
        options = self.mask_predict_defaults
        first, masked = self._first_guess(ctc_log_probs, encoder_out_lens, options.threshold)
        tokens, _ = mask_predict_greedy(
            self._predictor(first.lens, encoder_out, encoder_out_lens), masked, first.lens, options.iterations
        )
        return tokens, first.frames

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
        raise NotImplementedError(
            "the mask_ctc head has no beam search over CIF vectors: use --decoding-method mask_ctc_beam_search"
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
    ) -> List[NBest]:
        """`mask_ctc_greedy` / `mask_ctc_beam_search` over the CTC greedy output (CIF vectors unread)."""
        if method not in self.mask_predict_methods:
            raise ValueError(f"the mask_ctc head has no search {method}; it has {list(self.mask_predict_methods)}")
        first, masked = self._first_guess(ctc_log_probs, encoder_out_lens, options.threshold)
        predict = self._predictor(first.lens, encoder_out, encoder_out_lens)
        return mask_predict_search(predict, masked, first.lens, options, beam=method == "mask_ctc_beam_search")
