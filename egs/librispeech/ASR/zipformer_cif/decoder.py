"""Stateless prediction network of the CIF transducer.

It follows the stateless decoder of Ghodsi et al. ("RNN-transducer with stateless prediction
network", ICASSP 2020) as icefall uses it: an embedding of the previous `context_size` tokens
mixed by a grouped Conv1d, with no recurrence. Parameter names (`embedding`, `conv`) match
icefall's `Decoder`, so icefall checkpoints load into it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from scaling import Balancer


class Decoder(nn.Module):
    """Embedding + Conv1d over the last `context_size` tokens.

    Negative token ids stand for "no token yet" (the left context of the first prediction
    during search) and map to an all-zero embedding, which is what the left zero-padding
    of training produces.
    """

    def __init__(
        self,
        vocab_size: int,
        decoder_dim: int,
        blank_id: int,
        context_size: int,
    ):
        """
        Args:
          vocab_size: number of output tokens, blank included.
          decoder_dim: embedding and output dimension; a multiple of 4 when
            `context_size > 1` (the Conv1d uses groups of 4 channels).
          blank_id: id of blank, also the start-of-sequence symbol.
          context_size: how many previous tokens the prediction sees (1 = bigram).
        """
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        if context_size > 1 and decoder_dim % 4 != 0:
            raise ValueError(
                f"decoder_dim must be a multiple of 4 when context_size > 1 "
                f"(the Conv1d mixes groups of 4 channels); got {decoder_dim}"
            )
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.context_size = context_size

        self.embedding = nn.Embedding(num_embeddings=vocab_size, embedding_dim=decoder_dim)
        # Keeps the embedding magnitude from drifting, which would interact badly with
        # checkpoint averaging (icefall's reason for the same balancer).
        self.balancer = Balancer(
            decoder_dim,
            channel_dim=-1,
            min_positive=0.0,
            max_positive=1.0,
            min_abs=0.5,
            max_abs=1.0,
            prob=0.05,
        )
        if context_size > 1:
            self.conv = nn.Conv1d(
                in_channels=decoder_dim,
                out_channels=decoder_dim,
                kernel_size=context_size,
                padding=0,
                groups=decoder_dim // 4,
                bias=False,
            )
            self.balancer2 = Balancer(
                decoder_dim,
                channel_dim=-1,
                min_positive=0.0,
                max_positive=1.0,
                min_abs=0.5,
                max_abs=1.0,
                prob=0.05,
            )
        else:
            # Identity keeps the attributes present for TorchScript when there is no context.
            self.conv = nn.Identity()
            self.balancer2 = nn.Identity()

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """
        Args:
          y: (N, U) token ids; negative ids mean "no token" (zero embedding).
          need_pad: True in training: left-pad so that output u sees tokens
            y[u-context_size+1 .. u]. False in search, where `y` holds exactly
            `context_size` tokens and one output is wanted.
        Returns:
          (N, U, decoder_dim) with need_pad, else (N, 1, decoder_dim).
        """
        y = y.to(torch.int64)
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        emb = self.balancer(emb)
        if self.context_size == 1:
            return emb

        emb = emb.permute(0, 2, 1)  # (N, C, U)
        if need_pad:
            emb = F.pad(emb, pad=(self.context_size - 1, 0))
        elif emb.size(-1) != self.context_size:
            raise ValueError(
                f"With need_pad=False the decoder expects exactly context_size="
                f"{self.context_size} tokens per row, got {emb.size(-1)}"
            )
        out = F.relu(self.conv(emb)).permute(0, 2, 1)
        return self.balancer2(out)
