"""Integrate-and-fire as dense tensor algebra, for ONNX export.

`icefall_cif.cif.integrate_and_fire` is memory-lean (searchsorted plus a weighted
embedding_bag) but uses ops that ONNX lacks or exports poorly, and it reads the output size
back to the host. This module computes the same fires with cumsum, floor, comparisons and one
batched matrix product, so a traced graph keeps a dynamic batch size, number of frames and
number of tokens. Semantics (docs/cif.md), with c_t = alpha_1 + ... + alpha_t and threshold beta:

  - n_t = floor(c_t + 1 - beta) tokens have fired after frame t;
  - token k gets weight a_{k,t} = G_k(t) - G_k(t-1) from frame t, where G_k(t) is 1 if
    n_t >= k, c_t - (k - 1) if n_t == k - 1 and 0 otherwise (G_k = F_k - (k - 1) of cif.md);
  - with tail handling, the partial token k = n_T + 1 is kept, divided by r = c_T - n_T,
    when r > tail_threshold.

The (N, U, T) weight matrix is materialized: at the CIF frame rate (12.5 Hz) a 30 s utterance
has T ~ 375 and U ~ 100, a few hundred kB. The cumulative sum and the weights are computed in
float64, as `integrate_and_fire` does, so that both fire at exactly the same frames; the
matrix product runs in float32.
"""
from typing import Optional

import torch
import torch.nn as nn

from icefall_cif.cif import CifOutput


def dense_integrate_and_fire(
    h: torch.Tensor,
    alpha: torch.Tensor,
    h_lens: torch.Tensor,
    threshold: float = 0.99,
    tail_threshold: Optional[float] = None,
) -> CifOutput:
    """Integrate-and-fire with the fires of `integrate_and_fire`, from traceable dense ops.

    No input validation (a traced graph cannot raise): give what `integrate_and_fire` accepts,
    non-negative finite alpha at valid frames and 0 <= h_lens <= T.

    Args:
      h: (N, T, C) encoder output (float32 or wider); its values at padded frames must be finite
        (they are multiplied by zero weights).
      alpha: (N, T) non-negative weights; ignored at padded frames (t >= h_lens).
      h_lens: (N,) int64 valid frames of each utterance.
      threshold: firing threshold beta in (0, 1].
      tail_threshold: None disables tail handling; otherwise a remainder above it fires a last
        token normalized by the remainder.
    Returns:
      CifOutput(cif (N, U, C) zero-padded in h's dtype, cif_lens (N,) int64,
      fire_frames (N, U) int64 with -1 at padding), U = cif_lens.max() (0 if nothing fired).
    """
    N, T, _ = h.shape
    valid = torch.arange(T, device=h.device).unsqueeze(0) < h_lens.unsqueeze(1)  # (N, T)
    alpha = torch.where(valid, alpha.to(torch.float64), torch.zeros((), dtype=torch.float64, device=h.device))
    c = nn.functional.pad(torch.cumsum(alpha, dim=1), (1, 0))  # (N, T + 1), c_0 = 0
    n = torch.floor(c + (1.0 - threshold)).to(torch.int64)  # (N, T + 1)
    num_fired = n[:, -1]
    remainder = c[:, -1] - num_fired.to(torch.float64)
    if tail_threshold is None:
        tail = torch.zeros_like(num_fired, dtype=torch.bool)
    else:
        tail = remainder > tail_threshold
    cif_lens = num_fired + tail.to(torch.int64)

    # Token numbers 1..U; U stays a tensor so the traced graph keeps it dynamic.
    k = torch.arange(1, cif_lens.max() + 1, device=h.device).view(1, -1, 1)  # (1, U, 1)
    n3, c3 = n.unsqueeze(1), c.unsqueeze(1)  # (N, 1, T + 1)
    partial = torch.where(n3 == k - 1, c3 - (k - 1).to(torch.float64), torch.zeros((), dtype=torch.float64, device=h.device))
    g = torch.where(n3 >= k, torch.ones((), dtype=torch.float64, device=h.device), partial)  # (N, U, T + 1)
    weights = g[:, :, 1:] - g[:, :, :-1]  # (N, U, T)

    k2 = k.squeeze(2)  # (1, U)
    fired = k2 <= num_fired.unsqueeze(1)  # (N, U)
    is_tail = (k2 == num_fired.unsqueeze(1) + 1) & tail.unsqueeze(1)
    # Dividing by r only where it is used keeps r = 0 (a silent utterance) from making inf * 0.
    safe_remainder = torch.where(tail, remainder, torch.ones_like(remainder)).unsqueeze(1)
    scale = torch.where(fired, torch.ones_like(weights[:, :, 0]), is_tail.to(torch.float64) / safe_remainder)
    weights = (weights * scale.unsqueeze(2)).to(torch.promote_types(h.dtype, torch.float32))
    cif = torch.matmul(weights, h.to(weights.dtype)).to(h.dtype)

    # Token k fires at the first frame with n_t >= k: the number of frames before it.
    first_frame = (n[:, 1:].unsqueeze(1) < k).to(torch.int64).sum(dim=2)  # (N, U)
    last_frame = (h_lens - 1).unsqueeze(1).expand_as(first_frame)
    fire_frames = torch.where(
        fired, first_frame, torch.where(is_tail, last_frame, torch.full_like(first_frame, -1))
    )
    return CifOutput(cif=cif, cif_lens=cif_lens, fire_frames=fire_frames)
