"""Joiner of the CIF transducer: combines a CIF vector with a prediction-network output.

Parameter names (`encoder_proj`, `decoder_proj`, `output_linear`) match icefall's `Joiner`.
"""
import torch
import torch.nn as nn
from scaling import ScaledLinear


class Joiner(nn.Module):
    """logits = output_linear(hidden), hidden = tanh(encoder_proj(enc) + decoder_proj(dec))."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        """
        Args:
          encoder_dim: dimension of the CIF vectors.
          decoder_dim: dimension of the prediction network's output.
          joiner_dim: dimension both are projected to before they are added.
          vocab_size: number of output tokens, blank included.
        """
        super().__init__()
        self.encoder_proj = ScaledLinear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = ScaledLinear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(
        self,
        encoder_out: torch.Tensor,
        decoder_out: torch.Tensor,
        project_input: bool = True,
    ) -> torch.Tensor:
        """
        Args:
          encoder_out: (N, T, s_range, C_enc), or any shape (..., C_enc) that broadcasts
            against `decoder_out`; already projected (..., joiner_dim) if not `project_input`.
          decoder_out: (N, T, s_range, C_dec), same rules.
          project_input: apply `encoder_proj`/`decoder_proj` here. Search and the pruned
            loss project once, before gathering, and pass False.
        Returns:
          (N, T, s_range, vocab_size) unnormalized logits (the broadcast shape in general).
        """
        return self.output_linear(self.hidden(encoder_out, decoder_out, project_input))

    def hidden(
        self,
        encoder_out: torch.Tensor,
        decoder_out: torch.Tensor,
        project_input: bool = True,
    ) -> torch.Tensor:
        """The activation that enters `output_linear`: (..., joiner_dim), arguments as :meth:`forward`."""
        if encoder_out.ndim != decoder_out.ndim:
            raise ValueError(
                f"encoder_out and decoder_out must have the same number of dims, got "
                f"{tuple(encoder_out.shape)} and {tuple(decoder_out.shape)}"
            )
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return torch.tanh(logit)
