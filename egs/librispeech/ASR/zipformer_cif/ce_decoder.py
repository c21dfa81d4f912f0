"""Cross-entropy decoders over CIF vectors: one output token per fired vector.

- `ArCeDecoder` (CIF-HieraDist style): a causal Transformer whose input at step u is CIF
  vector u concatenated with the embedding of token u-1 (blank as the start symbol). There
  is no end-of-sentence token: the number of CIF vectors fixes the output length.
- `NarCeDecoder` (Paraformer style): a bidirectional Transformer over all CIF vectors with
  cross-attention to the encoder frames, predicting every token in one pass.

Both use pre-norm layers, so a step of `ArCeDecoder.forward_step` can cache the inputs of
each layer and reproduce the parallel forward exactly.
"""
import math
from abc import abstractmethod
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig
from icefall_cif.model_contract import DecoderHead
from icefall_cif.utils import make_pad_mask


def sinusoidal_positions(length: int, dim: int, offset: int = 0, device=None) -> torch.Tensor:
    """Transformer sine/cosine position table.

    Args:
      length: number of positions.
      dim: embedding dimension (even).
      offset: index of the first position.
    Returns:
      (length, dim) float32 tensor.
    """
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


def _key_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N, max_len) bool, True at padding; never masks every key of a row.

    A row with length 0 (an utterance that fired no token) would otherwise turn the
    attention softmax into NaN, and NaN values leak through `0 * NaN` into later layers.
    Its outputs are all padding, so letting it see position 0 is harmless.
    """
    return make_pad_mask(lengths.clamp(min=1), max_len)[:, :max_len]


class _DecoderLayer(nn.Module):
    """Pre-norm Transformer layer: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float, cross: bool):
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        if cross:
            self.norm_src = nn.LayerNorm(d_model)
            self.src_attn = nn.MultiheadAttention(
                d_model, num_heads, dropout=dropout, batch_first=True
            )
        else:
            self.norm_src = None
            self.src_attn = None
        self.norm_ff = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, ff_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ff_dim, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
          x: (N, Q, D) the positions to compute.
          keys: (N, K, D) the layer inputs the self-attention attends to (x itself in a
            parallel pass; cached inputs plus x in a step).
          attn_mask: (Q, K) bool, True where attention is forbidden.
          key_padding_mask: (N, K) bool, True at padded keys.
          memory: (N, S, D) encoder frames for cross-attention.
          memory_key_padding_mask: (N, S) bool, True at padded frames.
        Returns:
          (N, Q, D).
        """
        q = self.norm_self(x)
        kv = q if keys is x else self.norm_self(keys)
        attn, _ = self.self_attn(
            q, kv, kv, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False
        )
        x = x + self.dropout(attn)
        if self.src_attn is not None:
            q = self.norm_src(x)
            attn, _ = self.src_attn(
                q, memory, memory, key_padding_mask=memory_key_padding_mask, need_weights=False
            )
            x = x + self.dropout(attn)
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class ArCeDecoder(nn.Module):
    """Autoregressive CE decoder: step u sees CIF vectors <= u and tokens < u."""

    def __init__(
        self,
        cif_dim: int,
        vocab_size: int,
        d_model: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
        blank_id: int = 0,
    ):
        """
        Args:
          cif_dim: dimension C of the CIF vectors.
          vocab_size: number of output tokens (blank included; it is never a target but
            serves as the start symbol).
          d_model: Transformer width; the feed-forward width is 4 * d_model.
          num_layers, num_heads, dropout: Transformer shape and regularisation.
          blank_id: the start symbol fed as "token -1".
        """
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.input_proj = nn.Linear(cif_dim + d_model, d_model)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            _DecoderLayer(d_model, num_heads, 4 * d_model, dropout, cross=False)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.output_linear = nn.Linear(d_model, vocab_size)

    def _embed(self, cif: torch.Tensor, prev_tokens: torch.Tensor, offset: int) -> torch.Tensor:
        """(N, U, C), (N, U) -> (N, U, d_model) layer-0 input at positions offset.."""
        x = self.input_proj(torch.cat([cif, self.embedding(prev_tokens)], dim=-1))
        pos = sinusoidal_positions(x.size(1), self.d_model, offset, x.device).to(x.dtype)
        return self.input_dropout(x + pos)

    def forward(
        self, cif: torch.Tensor, cif_lens: torch.Tensor, prev_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced parallel pass.

        Args:
          cif: (N, U, C) CIF vectors.
          cif_lens: (N,) valid vectors per utterance. Unused by the computation (the causal
            mask already keeps padded steps from influencing valid ones); kept so all
            decoders share one calling convention.
          prev_tokens: (N, U) int64, token u-1 at position u (`blank_id` at u = 0).
        Returns:
          (N, U, vocab_size) logits.
        """
        return self.output_linear(self.hidden_states(cif, cif_lens, prev_tokens))

    def hidden_states(
        self, cif: torch.Tensor, cif_lens: torch.Tensor, prev_tokens: torch.Tensor
    ) -> torch.Tensor:
        """(N, U, d_model): the final (normed) hidden states of :meth:`forward`, before `output_linear`."""
        del cif_lens
        x = self._embed(cif, prev_tokens, 0)
        u = x.size(1)
        causal = torch.ones(u, u, dtype=torch.bool, device=x.device).triu(1)
        for layer in self.layers:
            x = layer(x, x, attn_mask=causal)
        return self.final_norm(x)

    def forward_step(
        self,
        cif_u: torch.Tensor,
        prev_token: torch.Tensor,
        cache: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One decoding step for every row at the same position u.

        Args:
          cif_u: (N, C) CIF vector u.
          prev_token: (N,) int64 token u-1 (`blank_id` at u = 0).
          cache: None at u = 0, else the cache returned by the previous step: one
            (N, u, d_model) tensor per layer holding that layer's inputs at steps < u.
            Beam search reorders it with `[c.index_select(0, idx) for c in cache]`.
        Returns:
          logits (N, vocab_size) for token u, and the cache extended to (N, u+1, d_model).
        """
        step = 0 if cache is None else cache[0].size(1)
        x = self._embed(cif_u.unsqueeze(1), prev_token.unsqueeze(1), step)
        new_cache = []
        for i, layer in enumerate(self.layers):
            keys = x if cache is None else torch.cat([cache[i], x], dim=1)
            new_cache.append(keys)
            x = layer(x, keys)
        return self.output_linear(self.final_norm(x[:, 0])), new_cache


class NarCeDecoder(nn.Module):
    """Non-autoregressive CE decoder: all CIF vectors at once, cross-attending to frames."""

    def __init__(
        self,
        cif_dim: int,
        memory_dim: int,
        vocab_size: int,
        d_model: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.1,
    ):
        """
        Args:
          cif_dim: dimension C of the CIF vectors.
          memory_dim: dimension of the encoder frames it cross-attends to.
          vocab_size: number of output tokens.
          d_model: Transformer width; the feed-forward width is 4 * d_model.
          num_layers, num_heads, dropout: Transformer shape and regularisation.
        """
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.input_proj = nn.Linear(cif_dim, d_model)
        self.memory_proj = nn.Linear(memory_dim, d_model)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            _DecoderLayer(d_model, num_heads, 4 * d_model, dropout, cross=True)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.output_linear = nn.Linear(d_model, vocab_size)
        # Drawn from a copy of the RNG: every module of the model gets the same initial weights
        # as before this embedding existed (seeded runs stay comparable with earlier results).
        with torch.random.fork_rng(devices=[]):
            self.token_embedding = nn.Embedding(vocab_size, cif_dim)

    def forward(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        memory: torch.Tensor,
        memory_lens: torch.Tensor,
        known_tokens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
          cif: (N, U, C) CIF vectors.
          cif_lens: (N,) valid vectors per utterance.
          memory: (N, T, C_mem) encoder frames.
          memory_lens: (N,) valid frames per utterance.
          known_tokens: optional (N, U) int64, a token id where the token is given and -1 where
            it is not: a given token's embedding replaces its CIF vector (the glancing
            sampler's input in training, the confident positions in a mask-predict search).
        Returns:
          (N, U, vocab_size) logits; rows at u >= cif_lens are padding.

        Example::

            logits = decoder(cif, cif_lens, enc, enc_lens)            # one parallel pass
            known = logits.argmax(-1).masked_fill(unsure, -1)         # keep the confident tokens
            logits = decoder(cif, cif_lens, enc, enc_lens, known)     # re-predict the rest
        """
        return self.output_linear(self.hidden_states(cif, cif_lens, memory, memory_lens, known_tokens))

    def hidden_states(
        self,
        cif: torch.Tensor,
        cif_lens: torch.Tensor,
        memory: torch.Tensor,
        memory_lens: torch.Tensor,
        known_tokens: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """(N, U, d_model): the final (normed) hidden states of :meth:`forward`, before `output_linear`."""
        if known_tokens is not None:
            if known_tokens.shape != cif.shape[:2]:
                raise ValueError(f"known_tokens must be (N, U) = {tuple(cif.shape[:2])}, got {tuple(known_tokens.shape)}")
            given = (known_tokens >= 0).unsqueeze(-1)
            cif = torch.where(given, self.token_embedding(known_tokens.clamp(min=0)).to(cif.dtype), cif)
        x = self.input_proj(cif)
        x = self.input_dropout(
            x + sinusoidal_positions(x.size(1), self.d_model, 0, x.device).to(x.dtype)
        )
        mem = self.memory_proj(memory)
        self_kpm = _key_padding_mask(cif_lens, x.size(1))
        mem_kpm = _key_padding_mask(memory_lens, mem.size(1))
        for layer in self.layers:
            x = layer(
                x, x, key_padding_mask=self_kpm, memory=mem, memory_key_padding_mask=mem_kpm
            )
        return self.final_norm(x)


class CeHead(DecoderHead):
    """What the CE heads share: one token per CIF vector, trained with label-smoothed CE.

    Subclasses set `ce_decoder` (a decoder with `output_linear` and `d_model`) and give
    :meth:`teacher_forced_states`; the logits, the loss and its weight follow from them. The
    token states (what LRD regresses) are the decoder's final hidden states, which enter
    `output_linear`.
    """

    beam_methods = ("beam_search", "beam_search_lm_shallow_fusion")
    loss_names = ("ce_loss",)
    #: Whether `--ce-ctc-prior-scale` applies: the searches then take `token_prior` (N, U, V),
    #: the CTC log-probs at the vectors' spikes (`CifPredictorOutput.token_prior`).
    takes_token_prior: ClassVar[bool] = True
    scores_aligned_tokens = True
    #: The weight of that prior in the logits (0: none; set from the config by the subclasses).
    prior_scale: float = 0.0

    @property
    def token_state_dim(self) -> int:
        return self.ce_decoder.d_model

    def with_prior(self, logits: torch.Tensor, token_prior: Optional[torch.Tensor]) -> torch.Tensor:
        """logits (..., V) + prior_scale x token_prior (same shape): the logits of a head with a
        CTC prior. A head with one refuses to decode without it rather than quietly ignore it."""
        if self.prior_scale == 0:
            return logits
        if token_prior is None:
            raise ValueError(f"this {self.name} model adds the CTC head's log-probs at the spikes to its logits "
                             f"(--ce-ctc-prior-scale {self.prior_scale}): pass token_prior, the "
                             f"CifPredictorOutput.token_prior of model.forward_cif (cif_out.head_inputs())")
        return logits + self.prior_scale * token_prior.to(logits.dtype)

    @abstractmethod
    def teacher_forced_states(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> torch.Tensor:
        """(N, U, d_model) final decoder states of every target position in one pass (the one
        the loss is computed on: with the glancing sampler on, cif_ce_nar's second pass)."""

    def loss(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Dict[str, torch.Tensor]:
        return self.loss_and_token_states(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, config)[0]

    def loss_and_token_states(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """The CE loss and the (N, U, d_model) decoder states its logits were projected from."""
        losses, states, _ = self._training_pass(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, config)
        return losses, states

    def token_logits(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """(N, U, V) logits of every target position, teacher-forced, without glancing."""
        states = self.teacher_forced_states(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, LossConfig())
        return self.with_prior(self.ce_decoder.output_linear(states), cif_out.token_prior)

    def aligned_log_probs(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
    ) -> torch.Tensor:
        """(N,) sum of the teacher-forced log-probs of y (the prior included, as in decoding)."""
        logits = self.token_logits(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens)
        log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=-1)
        picked = log_probs.gather(2, y_padded.unsqueeze(2)).squeeze(2)  # (N, U)
        return picked.masked_fill(make_pad_mask(y_lens, y_padded.size(1)), 0.0).sum(dim=1)

    def loss_and_token_logits(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The CE loss, the (N, U, V) logits it was computed from, and the (N, U) valid positions."""
        losses, _, logits = self._training_pass(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, config)
        return losses, logits, ~make_pad_mask(y_lens, y_padded.size(1))

    def _training_pass(
        self,
        cif_out: CifPredictorOutput,
        encoder_out: torch.Tensor,
        encoder_out_lens: torch.Tensor,
        y_padded: torch.Tensor,
        y_lens: torch.Tensor,
        config: LossConfig,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """{"ce_loss"}, the (N, U, d_model) states and the (N, U, V) logits of one teacher-forced pass.

        With a CTC prior and `config.ce_prior_free_scale` = lambda, ce_loss is CE(logits + prior) +
        lambda CE(logits): one term, so that everything that reads "the head's loss" (--kd-nbest)
        sees the whole of it."""
        states = self.teacher_forced_states(cif_out, encoder_out, encoder_out_lens, y_padded, y_lens, config)
        raw = self.ce_decoder.output_linear(states)
        logits = self.with_prior(raw, cif_out.token_prior)
        loss = token_cross_entropy(logits, y_padded, y_lens, config.label_smoothing)
        if config.ce_prior_free_scale > 0:
            if self.prior_scale == 0:
                raise ValueError("--ce-prior-free-scale weighs the CE loss without the CTC prior; this model has no "
                                 "prior (--ce-ctc-prior-scale 0)")
            loss = loss + config.ce_prior_free_scale * token_cross_entropy(raw, y_padded, y_lens, config.label_smoothing)
        return {"ce_loss": loss}, states, logits

    @staticmethod
    def loss_weights(config: LossConfig, batch_idx_train: int) -> Dict[str, float]:
        return {"ce_loss": 1.0}


def token_cross_entropy(
    logits: torch.Tensor, y_padded: torch.Tensor, y_lens: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Label-smoothed CE of one prediction per token, summed over the valid tokens.

    Args:
      logits: (N, U, V); y_padded: (N, U) targets (any value at padding); y_lens: (N,).
    """
    return masked_cross_entropy(logits, y_padded, ~make_pad_mask(y_lens, y_padded.size(1)), label_smoothing)


def masked_cross_entropy(
    logits: torch.Tensor, y_padded: torch.Tensor, positions: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Label-smoothed CE of (N, U, V) logits against (N, U) targets, summed over the (N, U) bool
    `positions` (the valid tokens, or Mask-CTC's masked ones)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        y_padded.masked_fill(~positions, -100).reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
