"""Pruned RNN-T loss (Kuang et al., 2022) with k2's API, in pure PyTorch.

The public functions keep the names, argument names, defaults, shapes and reductions of
`k2/python/k2/rnnt_loss.py` and `k2/python/k2/mutual_information.py`, so that recipe code
calls them exactly as icefall calls k2. When k2 is importable every function delegates to it
(k2's CUDA/C++ recursion is faster); otherwise, or when `USE_K2` is False / the environment
has `ICEFALL_CIF_PURE_RNNT=1`, the pure-PyTorch implementation below runs.

Conventions (as in k2), with B the batch size, T the number of frames, S the number of
symbols (U in the model code; docs/transducer.md) and C the vocabulary size:

- `rnnt_type` chooses the lattice topology:
  "regular": emitting a symbol keeps the frame; only the termination (blank) symbol advances
  it, so any number of symbols may go on one frame.
  "modified": every emission advances the frame, a symbol or a blank, so at most one symbol
  per frame (needs T_b >= U_b).
  "constrained": the modified lattice, but emitting symbol s on frame t also pays the blank of
  the next context (s+1 symbols) on that same frame.
- `px`: log-prob of the symbol arcs, of shape (B, S, T+1) for "regular" and (B, S, T)
  otherwise. Regular: px[b, s, t] is the arc (s, t) -> (s+1, t); column T (and column
  `boundary[b, 3]`) is -inf because no symbol can be emitted on the one-past-the-last frame.
  Modified/constrained: px[b, s, t] is the arc (s, t) -> (s+1, t+1).
- `py` (B, S+1, T): log-prob of the arc (s, t) -> (s, t+1), i.e. the termination (blank)
  symbol after s symbols on frame t.
- `boundary` (B, 4) int64 rows `[s_begin, t_begin, s_end, t_end]`, usually `[0, 0, U_b, T_b]`;
  None means `[0, 0, S, T]` for every row.
- The per-sequence score is the forward score p[b, s_end, t_end] of
      p[b, s_begin, t_begin] = 0
      regular:  p[b, s, t] = logaddexp(p[b, s-1, t] + px[b, s-1, t], p[b, s, t-1] + py[b, s, t-1])
      modified: p[b, s, t] = logaddexp(p[b, s-1, t-1] + px[b, s-1, t-1], p[b, s, t-1] + py[b, s, t-1])
  the loss is its negation.
- `delay_penalty` > 0 adds delay_penalty * ((T_b - 1) / 2 - t) to px[b, :, t] (k2 issue
  955): earlier symbols score higher, which counters the drift towards late emission that
  time masking and streaming encoders cause; centring on the middle frame keeps the loss
  value of a uniformly spread alignment where it was.
- `use_hat_loss` (pruned loss only) reads the joiner output as a Hybrid Autoregressive
  Transducer (Variani et al., 2020): blank is a Bernoulli on logit 0, the other symbols a
  softmax over logits 1..C-1 scaled by P(not blank); it needs termination_symbol = 0.

In both topologies every arc leads from one "step" of the lattice to the next (regular:
the anti-diagonal d = s + t; modified: the frame t), so the recursion runs as one vectorized
update per step. Gradients are not taken through that loop: a second forward pass over the
reversed lattice gives the backward scores, and from both the exact arc occupation
probabilities, which are d(score)/d(px) and d(score)/d(py). That keeps memory at a few
lattice-sized tensors and gives `return_grad` for free.
"""
import logging
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

try:  # optional accelerator with the same API
    import k2
except ImportError:
    k2 = None

#: Delegate to k2 when it is installed. Tests (or users) set this to False, or export
#: ICEFALL_CIF_PURE_RNNT=1 before import, to force the pure-PyTorch path.
USE_K2: bool = os.environ.get("ICEFALL_CIF_PURE_RNNT", "0") != "1"

_REDUCTIONS = ("none", "mean", "sum")
_RNNT_TYPES = ("regular", "modified", "constrained")
_NEG_INF = float("-inf")


def _k2_active() -> bool:
    return USE_K2 and k2 is not None


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply k2's reductions to per-sequence losses (B,): "mean" averages over sequences."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction should be one of {_REDUCTIONS}, got {reduction!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction should be one of {_REDUCTIONS}, got {reduction!r}")


def _check_rnnt_type(rnnt_type: str) -> None:
    if rnnt_type not in _RNNT_TYPES:
        raise ValueError(f"rnnt_type should be one of {_RNNT_TYPES}, got {rnnt_type!r}")


def _check_delay_penalty(delay_penalty: float) -> None:
    # k2 silently ignores a negative value; here it is an error rather than a no-op.
    if not delay_penalty >= 0.0:
        raise ValueError(f"delay_penalty must be >= 0 (0 disables it), got {delay_penalty}")


def _check_loss_options(reduction: str, rnnt_type: str, delay_penalty: float) -> None:
    _check_reduction(reduction)
    _check_rnnt_type(rnnt_type)
    _check_delay_penalty(delay_penalty)


def _full_boundary(B: int, S: int, T: int, device: torch.device) -> Tensor:
    boundary = torch.zeros(B, 4, dtype=torch.int64, device=device)
    boundary[:, 2] = S
    boundary[:, 3] = T
    return boundary


def _check_boundary(boundary: Tensor, B: int, S: int, T: int) -> None:
    if boundary.dtype != torch.int64 or boundary.shape != (B, 4):
        raise ValueError(
            f"boundary must be an int64 tensor of shape (B, 4) = ({B}, 4) with rows "
            f"[s_begin, t_begin, s_end, t_end], got {boundary.dtype} {tuple(boundary.shape)}"
        )
    s_begin, t_begin, s_end, t_end = boundary.unbind(1)
    bad = (s_begin < 0) | (s_begin > s_end) | (s_end > S) | (t_begin < 0) | (t_begin > t_end)
    bad = bad | (t_end > T)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"boundary row {row} = {boundary[row].tolist()} violates "
            f"0 <= s_begin <= s_end <= S={S} and 0 <= t_begin <= t_end <= T={T}; "
            f"pass [0, 0, num_symbols, num_frames] for each sequence"
        )


def _check_lattice(boundary: Optional[Tensor], B: int, S: int, T: int, rnnt_type: str) -> None:
    """Validate boundary and, for the one-symbol-per-frame topologies, that T_b >= U_b."""
    if boundary is not None:
        _check_boundary(boundary, B, S, T)
    if rnnt_type == "regular":
        return
    if boundary is None:
        num_symbols, num_frames = torch.tensor([S]), torch.tensor([T])
    else:
        num_symbols, num_frames = boundary[:, 2] - boundary[:, 0], boundary[:, 3] - boundary[:, 1]
    if bool((num_frames < num_symbols).any()):
        raise ValueError(
            f"rnnt_type={rnnt_type!r} emits at most one symbol per frame, so it needs "
            f"num_frames >= num_symbols; got frames {num_frames.tolist()} for symbols "
            f"{num_symbols.tolist()} (boundary columns 3 and 2)"
        )


def _check_symbols(symbols: Tensor, B: int, S: int, C: int) -> None:
    if symbols.dtype != torch.int64 or symbols.shape != (B, S):
        raise ValueError(
            f"symbols must be an int64 tensor of shape (B, S) = ({B}, {S}), "
            f"got {symbols.dtype} {tuple(symbols.shape)}"
        )
    if symbols.numel() > 0 and bool(((symbols < 0) | (symbols >= C)).any()):
        raise ValueError(f"symbols must lie in [0, {C}); pad with the blank id, not -1")


def _check_termination_symbol(termination_symbol: int, C: int) -> None:
    if not 0 <= termination_symbol < C:
        raise ValueError(f"termination_symbol={termination_symbol} is not in [0, C={C})")


def _check_px_py(px: Tensor, py: Tensor, what: str = "px and py") -> Tuple[int, int, int]:
    """Returns (B, S, T) of a valid pair px (B, S, T+1) or (B, S, T), py (B, S+1, T)."""
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"{what} must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = py.shape[2]
    if T1 not in (T, T + 1) or py.shape != (B, S + 1, T):
        raise ValueError(
            f"expected {what} of shapes (B, S, T+1) (regular) or (B, S, T) (modified/constrained) "
            f"and (B, S+1, T), got {tuple(px.shape)} and {tuple(py.shape)}"
        )
    if px.dtype != py.dtype:
        raise ValueError(f"{what} must have the same dtype, got {px.dtype} and {py.dtype}")
    return B, S, T


# --------------------------------------------------------------------------------------
# The mutual-information recursion
# --------------------------------------------------------------------------------------


def _gather_grid(x: Tensor, rows: Tensor, cols: Tensor, valid: Tensor) -> Tensor:
    """Read x[b, rows, cols] for index grids, -inf where `valid` is False.

    Args:
      x: (B, R, K).
      rows, cols, valid: broadcastable to a common shape (B, *grid).
    Returns:
      (B, *grid).
    """
    B, R, K = x.shape
    rows, cols, valid = torch.broadcast_tensors(rows, cols, valid)
    if R * K == 0:  # e.g. px of a batch without symbols
        return torch.full(rows.shape, _NEG_INF, dtype=x.dtype, device=x.device)
    valid = valid & (rows >= 0) & (rows < R) & (cols >= 0) & (cols < K)
    flat = rows.clamp(0, R - 1) * K + cols.clamp(0, K - 1)
    out = x.reshape(B, R * K).gather(1, flat.reshape(B, -1)).reshape(rows.shape)
    return out.masked_fill(~valid, _NEG_INF)


def _forward_scores(x_in: Tensor, y: Tensor) -> Tensor:
    """Forward scores of lattices that all start at (0, 0), stored by step.

    Args:
      x_in: (D, B, S+1); x_in[d, b, s] is the score of the symbol arc that leaves step d at
        symbol s-1 and enters step d+1 at symbol s; -inf for s = 0.
      y: (D, B, S+1); y[d, b, s] is the score of the blank arc that leaves step d at symbol s
        and enters step d+1 at symbol s.
    Returns:
      (D, B, S+2): entry [d, b, s+1] is the forward score of symbol s at step d; column 0 is
      an always -inf sentinel that stands for s = -1.
    """
    D, B, S1 = y.shape
    alpha = torch.full((D, B, S1 + 1), _NEG_INF, dtype=y.dtype, device=y.device)
    alpha[0, :, 1] = 0.0
    for d in range(1, D):
        prev = alpha[d - 1]
        torch.logaddexp(prev[:, :-1] + x_in[d - 1], prev[:, 1:] + y[d - 1], out=alpha[d, :, 1:])
    return alpha


def _scores_and_occupation(
    px: Tensor, py: Tensor, boundary: Tensor, need_occupation: bool
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """The recursion's total scores and (optionally) the arc occupation probabilities.

    Args:
      px: (B, S, T+1) (regular) or (B, S, T) (modified), py: (B, S+1, T),
      boundary: (B, 4) (validated).
    Returns:
      scores (B,); px_occ shaped as px and py_occ (B, S+1, T), or None when not needed.
      Occupations are 0 for sequences whose score is -inf (no complete path).
    """
    B, S, T1 = px.shape
    T = py.shape[2]
    # m = 1 where a symbol arc also advances the frame (modified); the step of node (s, t)
    # relative to the lattice's start is then t, otherwise s + t.
    m = int(T1 == T)
    device = px.device
    sb, tb, se, te = (boundary[:, i].reshape(B, 1, 1) for i in range(4))
    num_s, num_t = se - sb, te - tb  # (B, 1, 1)
    final = (1 - m) * num_s + num_t  # each lattice's last step
    D = int(final.max()) + 1 if B > 0 else 1
    d = torch.arange(D, device=device).reshape(1, D, 1)
    s = torch.arange(S + 1, device=device).reshape(1, 1, S + 1)

    # Relative frames at which the arcs leaving step d start: the symbol arc into symbol s
    # leaves symbol s-1, the blank arc leaves s. Arcs that start or end outside the box
    # [s_begin, s_end] x [t_begin, t_end] are -inf, so every lattice ends at its own corner.
    q_x = d - (1 - m) * (s - 1)
    q_y = d - (1 - m) * s
    x_ok = (s >= 1) & (s <= num_s) & (q_x >= 0) & (q_x + m <= num_t)
    y_ok = (s <= num_s) & (q_y >= 0) & (q_y < num_t)
    x_in = _gather_grid(px, sb + s - 1, tb + q_x, x_ok)
    y = _gather_grid(py, sb + s, tb + q_y, y_ok)
    alpha = _forward_scores(x_in.transpose(0, 1).contiguous(), y.transpose(0, 1).contiguous())

    batch = torch.arange(B, device=device)
    scores = alpha[final.reshape(B), batch, num_s.reshape(B) + 1]
    if not need_occupation:
        return scores, None, None

    # Backward scores are forward scores of the reversed lattice, whose node (r, q) is the
    # original (s_end - r, t_end - q); its arcs are the same ones, read from the other end.
    xr_in = _gather_grid(px, se - s, te - q_x - m, x_ok)
    yr = _gather_grid(py, se - s, te - q_y - 1, y_ok)
    alpha_rev = _forward_scores(xr_in.transpose(0, 1).contiguous(), yr.transpose(0, 1).contiguous())

    # Back to (B, S+1, T+1) lattice layout.
    s_grid = torch.arange(S + 1, device=device).reshape(1, S + 1, 1)
    t_grid = torch.arange(T + 1, device=device).reshape(1, 1, T + 1)
    rel_s, rel_t = s_grid - sb, t_grid - tb
    fwd = _gather_grid(alpha.transpose(0, 1), rel_t + (1 - m) * rel_s, rel_s + 1, (rel_s >= 0) & (rel_t >= 0))
    rev_s, rev_t = se - s_grid, te - t_grid
    bwd = _gather_grid(alpha_rev.transpose(0, 1), rev_t + (1 - m) * rev_s, rev_s + 1, (rev_s >= 0) & (rev_t >= 0))

    finite = torch.isfinite(scores).reshape(B, 1, 1)
    total = torch.where(finite, scores.reshape(B, 1, 1), 0.0)
    px_occ = torch.where(finite, (fwd[:, :S, :T1] + px + bwd[:, 1:, m : m + T1] - total).exp(), 0.0)
    py_occ = torch.where(finite, (fwd[:, :, :T] + py + bwd[:, :, 1:] - total).exp(), 0.0)
    return scores, px_occ, py_occ


class _AttachOccupation(torch.autograd.Function):
    """Returns precomputed scores whose gradient w.r.t. (px, py) is the given occupation."""

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, scores: Tensor, px_occ: Tensor, py_occ: Tensor) -> Tensor:
        ctx.save_for_backward(px_occ, py_occ)
        return scores.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        px_occ, py_occ = ctx.saved_tensors
        g = grad.reshape(-1, 1, 1)
        return px_occ * g, py_occ * g, None, None, None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Optional[Tensor] = None,
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """Total log-score of all monotonic paths through a (S+1) x (T+1) lattice.

    The topology follows px's shape: (B, S, T+1) is the regular recursion
    p[s, t] = logaddexp(p[s-1, t] + px[s-1, t], p[s, t-1] + py[s, t-1]); (B, S, T) the
    modified one p[s, t] = logaddexp(p[s-1, t-1] + px[s-1, t-1], p[s, t-1] + py[s, t-1]).

    Args:
      px: (B, S, T+1) or (B, S, T) scores of the symbol arcs.
      py: (B, S+1, T) scores of the arcs (s, t) -> (s, t+1), same dtype as px.
      boundary: None or (B, 4) int64 rows [s_begin, t_begin, s_end, t_end]; the recursion
        starts at p[s_begin, t_begin] = 0 and the score is p[s_end, t_end].
      return_grad: also return d(scores.sum())/d(px) and d(scores.sum())/d(py), which are the
        occupation probabilities of the arcs (what k2 returns).
    Returns:
      scores (B,); with return_grad, (scores, (px_grad, py_grad)) with px_grad shaped as px and
      py_grad (B, S+1, T), not part of the autograd graph.
    """
    if _k2_active():
        return k2.mutual_information_recursion(px=px, py=py, boundary=boundary, return_grad=return_grad)
    B, S, T = _check_px_py(px, py)
    if boundary is None:
        boundary = _full_boundary(B, S, T, px.device)
    else:
        _check_boundary(boundary, B, S, T)

    track = torch.is_grad_enabled() and (px.requires_grad or py.requires_grad)
    with torch.no_grad():
        scores, px_occ, py_occ = _scores_and_occupation(
            px.detach(), py.detach(), boundary, need_occupation=track or return_grad
        )
    if track:
        scores = _AttachOccupation.apply(px, py, scores, px_occ, py_occ)
    return (scores, (px_occ, py_occ)) if return_grad else scores


def joint_mutual_information_recursion(
    px: Sequence[Tensor],
    py: Sequence[Tensor],
    boundary: Optional[Tensor] = None,
) -> Tensor:
    """The recursion on px_sum = sum(px), py_sum = sum(py), with its score split per term.

    Term i's part is the occupation-weighted sum of px[i] and py[i] over the arcs; those
    parts add up to the expected path score, which lies below the total log-score by the
    entropy of the alignment, and that gap is added to term 0 so that the parts sum to the
    total. The gradient of any sum of the parts w.r.t. each px[i] / py[i] is the arc
    occupation of the summed lattice, the same as mutual_information_recursion's.

    Args:
      px: N tensors of one shape, (B, S, T+1) or (B, S, T) (see mutual_information_recursion).
      py: N tensors of shape (B, S+1, T).
      boundary: None or (B, 4) int64 rows [s_begin, t_begin, s_end, t_end].
    Returns:
      (N, B); its sum over dim 0 is the total log-score of each sequence.
    """
    if _k2_active():
        return k2.joint_mutual_information_recursion(px=px, py=py, boundary=boundary)
    if len(px) == 0 or len(px) != len(py):
        raise ValueError(f"px and py must be equally long non-empty sequences, got {len(px)} and {len(py)}")
    for x, y in zip(px, py):
        if x.shape != px[0].shape or y.shape != py[0].shape:
            raise ValueError("all tensors of px (and all of py) must have the same shape")
    px_tot, py_tot = torch.stack(list(px)).sum(0), torch.stack(list(py)).sum(0)
    B, S, T = _check_px_py(px_tot, py_tot)
    if boundary is None:
        boundary = _full_boundary(B, S, T, px_tot.device)
    else:
        _check_boundary(boundary, B, S, T)
    with torch.no_grad():
        scores, px_occ, py_occ = _scores_and_occupation(px_tot, py_tot, boundary, need_occupation=True)

    def weighted(terms: Sequence[Tensor], occ: Tensor) -> Tensor:
        # Arcs without occupation are dropped: 0 * -inf would be nan.
        return torch.stack([torch.where(occ > 0, x, 0.0).mul(occ).sum(dim=(1, 2)) for x in terms])

    parts = weighted(px, px_occ) + weighted(py, py_occ)  # (N, B)
    gap = scores - parts.detach().sum(0)
    return torch.cat([(parts[0] + gap).unsqueeze(0), parts[1:]])


# --------------------------------------------------------------------------------------
# From network outputs to (px, py)
# --------------------------------------------------------------------------------------
# The builders below return px of shape (B, S, T) (symbol s read on frame t) and py
# (B, S+1, T); _finish_px then shapes px for the topology.


def _finish_px(px: Tensor, py: Tensor, boundary: Optional[Tensor], rnnt_type: str) -> Tensor:
    """px (B, S, T) -> the px that mutual_information_recursion takes for rnnt_type.

    Regular: (B, S, T+1) with -inf on column T and on column boundary[b, 3], since no symbol
    may be emitted on the one-past-the-last frame. Constrained: px[b, s, t] + py[b, s+1, t],
    the forced blank of the next context on the same frame. Modified: px unchanged.
    """
    if rnnt_type == "constrained":
        return px + py[:, 1:]
    if rnnt_type == "modified":
        return px
    B, S, T = px.shape
    px = torch.cat([px, px.new_full((B, S, 1), _NEG_INF)], dim=2)
    if boundary is None:
        return px
    t = torch.arange(T + 1, device=px.device).reshape(1, 1, T + 1)
    return px.masked_fill(t == boundary[:, 3].reshape(B, 1, 1), _NEG_INF)


def _add_delay_penalty(px: Tensor, py: Tensor, boundary: Optional[Tensor], delay_penalty: float) -> Tensor:
    """px + delay_penalty * ((T_b - 1) / 2 - t) on every column t of px (see the module doc)."""
    if delay_penalty == 0.0:
        return px
    B, _, T1 = px.shape
    if boundary is None:
        num_frames = torch.full((B,), py.shape[2], dtype=px.dtype, device=px.device)
    else:
        num_frames = boundary[:, 3].to(px.dtype)
    t = torch.arange(T1, dtype=px.dtype, device=px.device)
    return px + delay_penalty * ((num_frames.reshape(B, 1, 1) - 1) / 2 - t.reshape(1, 1, T1))


def _check_am_lm(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int) -> Tuple[int, int, int, int]:
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(
            f"expected lm (B, S+1, C) and am (B, T, C), got lm {tuple(lm.shape)} and am {tuple(am.shape)}"
        )
    B, T, C = am.shape
    S = lm.shape[1] - 1
    _check_symbols(symbols, B, S, C)
    _check_termination_symbol(termination_symbol, C)
    return B, S, T, C


def _simple_logprobs(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int) -> Tuple[Tensor, Tensor]:
    """px (B, S, T), py (B, S+1, T) for the joiner logits[b, t, s] = am[b, t] + lm[b, s].

    The normalizer log sum_c exp(am[b, t, c] + lm[b, s, c]) factorises into a (B, S+1, C) x
    (B, C, T) matrix product of exponentials, so no (B, T, S+1, C) tensor is built.
    """
    B, T, _ = am.shape
    S = lm.shape[1] - 1
    # The maxima only keep exp() in range; detaching them changes neither value nor gradient.
    am_max = am.detach().amax(dim=2, keepdim=True)  # (B, T, 1)
    lm_max = lm.detach().amax(dim=2, keepdim=True)  # (B, S+1, 1)
    products = torch.matmul((lm - lm_max).exp(), (am - am_max).exp().transpose(1, 2))
    normalizers = (products + torch.finfo(am.dtype).tiny).log() + lm_max + am_max.transpose(1, 2)

    px_am = am.gather(2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)  # (B, S, T)
    px_lm = lm[:, :S].gather(2, symbols.unsqueeze(2))  # (B, S, 1)
    px = px_am + px_lm - normalizers[:, :S]
    py = am[:, :, termination_symbol].unsqueeze(1) + lm[:, :, termination_symbol].unsqueeze(2) - normalizers
    return px, py


def _smoothed_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float,
    am_only_scale: float,
) -> Tuple[Tensor, Tensor]:
    """px (B, S, T), py (B, S+1, T) of k2's smoothed simple loss.

    Each arc score interpolates three log-probs of the same token:
    (1 - lm_only_scale - am_only_scale) * log softmax(am[t] + lm[s])
    + lm_only_scale * log softmax(lm[s])
    + am_only_scale * log(softmax(am[t] + log unigram)), where unigram is the average of
    softmax(lm[b, s]) over every b and s of the batch (an LM that ignores the history).
    """
    B, T, _ = am.shape
    px, py = _simple_logprobs(lm, am, symbols, termination_symbol)
    tiny = torch.finfo(am.dtype).tiny

    lm_logprobs = lm.log_softmax(dim=2)  # (B, S+1, C), only C-sized per position
    unigram = lm_logprobs.exp().mean(dim=(0, 1)) + tiny  # (C,)
    am_max = am.detach().amax(dim=2, keepdim=True)
    # log sum_c unigram[c] exp(am[b, t, c]): the AM-only normalizer, (B, T)
    am_only_norm = (torch.matmul((am - am_max).exp(), unigram) + tiny).log() + am_max.squeeze(2)
    log_unigram = unigram.log()

    S = symbols.shape[1]
    px_am_only = (
        am.gather(2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)
        + log_unigram[symbols].unsqueeze(2)
        - am_only_norm.unsqueeze(1)
    )  # (B, S, T)
    px_lm_only = lm_logprobs[:, :S].gather(2, symbols.unsqueeze(2))  # (B, S, 1)
    py_am_only = am[:, :, termination_symbol] + log_unigram[termination_symbol] - am_only_norm  # (B, T)
    py_lm_only = lm_logprobs[:, :, termination_symbol].unsqueeze(2)  # (B, S+1, 1)

    combined_scale = 1.0 - lm_only_scale - am_only_scale
    px = combined_scale * px + lm_only_scale * px_lm_only + am_only_scale * px_am_only
    py = combined_scale * py + lm_only_scale * py_lm_only + am_only_scale * py_am_only.unsqueeze(1)
    return px, py


class _JointLogProbs(torch.autograd.Function):
    """Log-softmax of joiner logits read at two token ids per position, memory-lean.

    Autograd through logsumexp + gather + select would build three (..., C) gradients;
    this backward builds one: softmax * -(g_sym + g_term), plus g_sym / g_term at their ids.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, sym_ids: Tensor, termination_symbol: int) -> Tuple[Tensor, Tensor]:
        normalizers = torch.logsumexp(logits, dim=-1)
        sym_logp = logits.gather(-1, sym_ids.unsqueeze(-1)).squeeze(-1) - normalizers
        term_logp = logits[..., termination_symbol] - normalizers
        ctx.save_for_backward(logits, normalizers, sym_ids)
        ctx.termination_symbol = termination_symbol
        return sym_logp, term_logp

    @staticmethod
    @once_differentiable
    def backward(ctx, g_sym: Optional[Tensor], g_term: Optional[Tensor]):
        logits, normalizers, sym_ids = ctx.saved_tensors
        if g_sym is None:
            g_sym = torch.zeros_like(normalizers)
        if g_term is None:
            g_term = torch.zeros_like(normalizers)
        grad = (logits - normalizers.unsqueeze(-1)).exp_()
        grad.mul_(-(g_sym + g_term).unsqueeze(-1))
        grad.scatter_add_(-1, sym_ids.unsqueeze(-1), g_sym.unsqueeze(-1))
        grad[..., ctx.termination_symbol] += g_term
        return grad, None, None


def _hat_logprobs(logits: Tensor, sym_ids: Tensor) -> Tuple[Tensor, Tensor]:
    """HAT log-probs of sym_ids and of blank (id 0) from logits (..., C); each (...)."""
    blank_logit = logits[..., 0]
    sym_logp = (
        logits.gather(-1, sym_ids.unsqueeze(-1)).squeeze(-1)
        - torch.logsumexp(logits[..., 1:], dim=-1)
        + F.logsigmoid(-blank_logit)  # log P(not blank)
    )
    return sym_logp, F.logsigmoid(blank_logit)


def _check_joint(logits: Tensor, symbols: Tensor, termination_symbol: int) -> Tuple[int, int, int, int]:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, S+1, C), got {tuple(logits.shape)}")
    B, T, S1, C = logits.shape
    _check_symbols(symbols, B, S1 - 1, C)
    _check_termination_symbol(termination_symbol, C)
    return B, S1 - 1, T, C


def _joint_logprobs(logits: Tensor, symbols: Tensor, termination_symbol: int) -> Tuple[Tensor, Tensor]:
    """px (B, S, T) and py (B, S+1, T) from full joiner logits (B, T, S+1, C)."""
    B, T, S1, _ = logits.shape
    # Position S has no next symbol; the termination id is a harmless filler there.
    sym_ids = torch.cat([symbols, symbols.new_full((B, 1), termination_symbol)], dim=1)
    sym_logp, term_logp = _JointLogProbs.apply(logits, sym_ids.unsqueeze(1).expand(B, T, S1), termination_symbol)
    return sym_logp[:, :, : S1 - 1].transpose(1, 2), term_logp.transpose(1, 2)


def _check_ranges(ranges: Tensor, B: int, T: int, S: int) -> int:
    if ranges.dtype != torch.int64 or ranges.ndim != 3 or ranges.shape[:2] != (B, T):
        raise ValueError(
            f"ranges must be an int64 tensor (B, T, s_range) with B={B}, T={T}, "
            f"got {ranges.dtype} {tuple(ranges.shape)}; use get_rnnt_prune_ranges()"
        )
    s_range = ranges.shape[2]
    if not 1 <= s_range <= S + 1:
        raise ValueError(f"s_range={s_range} must be in [1, S+1={S + 1}]")
    if ranges.numel() > 0:
        start = ranges[:, :, :1]
        consecutive = bool((ranges == start + torch.arange(s_range, device=ranges.device)).all())
        if not consecutive or bool((start < 0).any()) or bool((start + s_range - 1 > S).any()):
            raise ValueError(
                f"each ranges[b, t] must be [r, r+1, ..., r+s_range-1] with 0 <= r <= S+1-s_range "
                f"(S={S}), as get_rnnt_prune_ranges() returns"
            )
    return s_range


def _check_pruned(
    logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int
) -> Tuple[int, int, int, int]:
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, s_range, C), got {tuple(logits.shape)}")
    B, T, R, C = logits.shape
    if symbols.ndim != 2:
        raise ValueError(f"symbols must be (B, S), got {tuple(symbols.shape)}")
    S = symbols.shape[1]
    _check_symbols(symbols, B, S, C)
    _check_termination_symbol(termination_symbol, C)
    if _check_ranges(ranges, B, T, S) != R:
        raise ValueError(f"ranges {tuple(ranges.shape)} and logits {tuple(logits.shape)} disagree on s_range")
    return B, S, T, C


def _pruned_logprobs(
    logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int, use_hat_loss: bool
) -> Tuple[Tensor, Tensor]:
    """px (B, S, T) and py (B, S+1, T) from pruned logits (B, T, s_range, C); -inf off range."""
    B, T, R, _ = logits.shape
    S = symbols.shape[1]
    sym_all = torch.cat([symbols, symbols.new_full((B, 1), termination_symbol)], dim=1)  # (B, S+1)
    sym_ids = sym_all.gather(1, ranges.reshape(B, T * R)).reshape(B, T, R)
    if use_hat_loss:
        sym_logp, term_logp = _hat_logprobs(logits, sym_ids)
    else:
        sym_logp, term_logp = _JointLogProbs.apply(logits, sym_ids, termination_symbol)  # (B, T, R) each

    lattice = logits.new_full((B, T, S + 1), _NEG_INF)
    px = lattice.scatter(2, ranges, sym_logp)[:, :, :S].transpose(1, 2)  # (B, S, T)
    py = lattice.scatter(2, ranges, term_logp).transpose(1, 2)  # (B, S+1, T)
    return px, py


# --------------------------------------------------------------------------------------
# Public API (k2's names and arguments)
# --------------------------------------------------------------------------------------

def get_rnnt_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    rnnt_type: str = "regular",
    boundary: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """(px, py) of the trivial joiner logits = am + lm, for mutual_information_recursion().

    Args:
      lm: (B, S+1, C) prediction-network part of the logits; lm[b, s] follows s symbols.
      am: (B, T, C) encoder part of the logits.
      symbols: (B, S) int64 targets.
      termination_symbol: the blank id.
      rnnt_type: "regular" | "modified" | "constrained" (see the module docstring).
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
    Returns:
      px (B, S, T+1) for "regular", else (B, S, T); py (B, S+1, T).
    """
    if _k2_active():
        return k2.get_rnnt_logprobs(
            lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
            rnnt_type=rnnt_type, boundary=boundary,
        )
    _check_rnnt_type(rnnt_type)
    B, S, T, _ = _check_am_lm(lm, am, symbols, termination_symbol)
    _check_lattice(boundary, B, S, T, rnnt_type)
    px, py = _simple_logprobs(lm, am, symbols, termination_symbol)
    return _finish_px(px, py, boundary, rnnt_type), py


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """(px, py) of the simple joiner with arc log-probs smoothed towards LM-only and AM-only.

    Each arc's log-prob is (1 - lm_only_scale - am_only_scale) * combined
    + lm_only_scale * LM-only + am_only_scale * AM-only (with a batch-average unigram LM).

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      lm_only_scale, am_only_scale: interpolation weights of the LM-only / AM-only parts.
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
      rnnt_type: "regular" | "modified" | "constrained".
    Returns:
      px (B, S, T+1) for "regular", else (B, S, T); py (B, S+1, T).
    """
    if _k2_active():
        return k2.get_rnnt_logprobs_smoothed(
            lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
            lm_only_scale=lm_only_scale, am_only_scale=am_only_scale, boundary=boundary, rnnt_type=rnnt_type,
        )
    _check_rnnt_type(rnnt_type)
    B, S, T, _ = _check_am_lm(lm, am, symbols, termination_symbol)
    _check_lattice(boundary, B, S, T, rnnt_type)
    px, py = _smoothed_logprobs(lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale)
    return _finish_px(px, py, boundary, rnnt_type), py


def get_rnnt_logprobs_joint(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    rnnt_type: str = "regular",
    boundary: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """(px, py) from the full joiner output, for mutual_information_recursion().

    Args:
      logits: (B, T, S+1, C) unnormalized joiner output for every (frame, symbol position).
      symbols: (B, S) int64 targets; termination_symbol: the blank id.
      rnnt_type: "regular" | "modified" | "constrained".
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
    Returns:
      px (B, S, T+1) for "regular", else (B, S, T); py (B, S+1, T).
    """
    if _k2_active():
        return k2.get_rnnt_logprobs_joint(
            logits=logits, symbols=symbols, termination_symbol=termination_symbol,
            rnnt_type=rnnt_type, boundary=boundary,
        )
    _check_rnnt_type(rnnt_type)
    B, S, T, _ = _check_joint(logits, symbols, termination_symbol)
    _check_lattice(boundary, B, S, T, rnnt_type)
    px, py = _joint_logprobs(logits, symbols, termination_symbol)
    return _finish_px(px, py, boundary, rnnt_type), py


def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor],
    rnnt_type: str = "regular",
) -> Tuple[Tensor, Tensor]:
    """(px, py) from pruned joiner output; arcs at positions outside `ranges` are -inf.

    Args:
      logits: (B, T, s_range, C) joiner output on do_rnnt_pruning()'s pairs.
      symbols: (B, S) int64 targets.
      ranges: (B, T, s_range) int64 from get_rnnt_prune_ranges().
      termination_symbol: the blank id.
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b] (no default, as in k2).
      rnnt_type: "regular" | "modified" | "constrained".
    Returns:
      px (B, S, T+1) for "regular", else (B, S, T); py (B, S+1, T).
    """
    if _k2_active():
        return k2.get_rnnt_logprobs_pruned(
            logits=logits, symbols=symbols, ranges=ranges, termination_symbol=termination_symbol,
            boundary=boundary, rnnt_type=rnnt_type,
        )
    return _get_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type, use_hat_loss=False)


def _get_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor],
    rnnt_type: str,
    use_hat_loss: bool,
) -> Tuple[Tensor, Tensor]:
    _check_rnnt_type(rnnt_type)
    B, S, T, _ = _check_pruned(logits, symbols, ranges, termination_symbol)
    if use_hat_loss and termination_symbol != 0:
        raise ValueError(
            f"use_hat_loss=True models blank as logit 0: termination_symbol must be 0, got {termination_symbol}"
        )
    _check_lattice(boundary, B, S, T, rnnt_type)
    px, py = _pruned_logprobs(logits, symbols, ranges, termination_symbol, use_hat_loss)
    return _finish_px(px, py, boundary, rnnt_type), py


def _loss_from_logprobs(
    px: Tensor,
    py: Tensor,
    boundary: Optional[Tensor],
    delay_penalty: float,
    reduction: str,
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    px = _add_delay_penalty(px, py, boundary, delay_penalty)
    out = mutual_information_recursion(px, py, boundary, return_grad=return_grad)
    if return_grad:
        scores, grads = out
        return _reduce(-scores, reduction), grads
    return _reduce(-out, reduction)


def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """The full RNN-T loss from joiner logits.

    Args:
      logits: (B, T, S+1, C) unnormalized joiner output for every (frame, symbol position).
      symbols: (B, S) int64 target symbols, padded freely beyond each boundary.
      termination_symbol: the blank id (0 in our recipes).
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
      rnnt_type: "regular" | "modified" | "constrained" (the last two need T_b >= U_b).
      delay_penalty: >= 0; rewards early symbols (see the module docstring). 0 disables it.
      reduction: "mean" (over sequences) | "sum" | "none".
    Returns:
      (B,) negative log-likelihoods for "none", else a scalar.
    """
    _check_loss_options(reduction, rnnt_type, delay_penalty)
    if _k2_active():
        return k2.rnnt_loss(
            logits=logits, symbols=symbols, termination_symbol=termination_symbol, boundary=boundary,
            rnnt_type=rnnt_type, delay_penalty=delay_penalty, reduction=reduction,
        )
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, rnnt_type, boundary)
    return _loss_from_logprobs(px, py, boundary, delay_penalty, reduction)


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str = "mean",
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """RNN-T loss of the trivial joiner logits = am + lm, never building (B, T, S+1, C).

    Args:
      lm: (B, S+1, C) prediction-network part of the logits; lm[b, s] follows s symbols.
      am: (B, T, C) encoder part of the logits.
      symbols: (B, S) int64 targets.
      termination_symbol: the blank id.
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
      rnnt_type: "regular" | "modified" | "constrained" (the last two need T_b >= U_b).
      delay_penalty: >= 0; rewards early symbols (see the module docstring). 0 disables it.
      reduction: "mean" | "sum" | "none".
      return_grad: also return the arc occupations px_grad (shaped as px: (B, S, T+1) regular,
        (B, S, T) otherwise) and py_grad (B, S+1, T) (d(-loss_b summed)/d(px, py)), for
        get_rnnt_prune_ranges().
    Returns:
      loss, or (loss, (px_grad, py_grad)) with return_grad.
    """
    _check_loss_options(reduction, rnnt_type, delay_penalty)
    if _k2_active():
        return k2.rnnt_loss_simple(
            lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol, boundary=boundary,
            rnnt_type=rnnt_type, delay_penalty=delay_penalty, reduction=reduction, return_grad=return_grad,
        )
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)
    return _loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad)


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str = "mean",
    return_grad: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """The simple loss with its arc log-probs smoothed towards LM-only and AM-only models.

    See get_rnnt_logprobs_smoothed(); this is what icefall's pruned transducer recipes use as
    the "simple" loss.

    Args:
      lm: (B, S+1, C); am: (B, T, C); symbols: (B, S) int64; termination_symbol: blank id.
      lm_only_scale, am_only_scale: interpolation weights of the LM-only / AM-only parts.
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
      rnnt_type: "regular" | "modified" | "constrained" (the last two need T_b >= U_b).
      delay_penalty: >= 0; rewards early symbols (see the module docstring). 0 disables it.
      reduction: "mean" | "sum" | "none".
      return_grad: also return (px_grad, py_grad) occupations, shaped as px and py.
    Returns:
      loss, or (loss, (px_grad, py_grad)) with return_grad.
    """
    _check_loss_options(reduction, rnnt_type, delay_penalty)
    if _k2_active():
        return k2.rnnt_loss_smoothed(
            lm=lm, am=am, symbols=symbols, termination_symbol=termination_symbol,
            lm_only_scale=lm_only_scale, am_only_scale=am_only_scale, boundary=boundary,
            rnnt_type=rnnt_type, delay_penalty=delay_penalty, reduction=reduction, return_grad=return_grad,
        )
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary, rnnt_type
    )
    return _loss_from_logprobs(px, py, boundary, delay_penalty, reduction, return_grad)


def _reverse_cummin(x: Tensor) -> Tensor:
    """y[..., t] = min(x[..., t:]) (the largest non-decreasing sequence below x)."""
    return x.flip(-1).cummin(-1).values.flip(-1)


def _check_grads(px_grad: Tensor, py_grad: Tensor, boundary: Tensor) -> Tuple[int, int, int, bool]:
    """Returns (B, S, T, regular) of occupations shaped as rnnt_loss_simple returns them."""
    B, S, T = _check_px_py(px_grad, py_grad, what="px_grad and py_grad")
    if boundary is None:
        raise ValueError("boundary is required: pass [0, 0, U_b, T_b] for each sequence")
    regular = px_grad.shape[2] == T + 1
    # Only the shape tells the topology; "modified" stands for both one-symbol-per-frame ones.
    _check_lattice(boundary, B, S, T, "regular" if regular else "modified")
    return B, S, T, regular


def _ranges_from_starts(start: Tensor, boundary: Tensor, s_range: int, regular: bool) -> Tensor:
    """Adjust per-frame window starts (B, T) so that a complete path survives; -> ranges.

    Frames from T_b - 1 on start at max(U_b - s_range + 1, 0), so the last real frame covers
    U_b. Then r_0 = 0, r_t non-decreasing and r_{t+1} - r_t <= step, where step = s_range - 1
    symbols fit on one regular frame and 1 on a modified one.
    """
    B, T = start.shape
    U_b, T_b = boundary[:, 2], boundary[:, 3]
    t = torch.arange(T, device=start.device).reshape(1, T)
    final_start = (U_b - s_range + 1).clamp(min=0).reshape(B, 1)
    start = torch.where(t < T_b.reshape(B, 1) - 1, start, final_start)

    step = s_range - 1 if regular else 1
    start = _reverse_cummin(start)
    # Raise starts that trail a later one by more than `step` per frame, then cap each at
    # step * t (reachable from symbol 0 at frame 0). Both keep the sequence non-decreasing.
    start = -_reverse_cummin(-(start - step * t)) + step * t
    start = torch.minimum(start, step * t)
    return start.unsqueeze(2) + torch.arange(s_range, device=start.device)


def _cap_s_range(s_range: int, S: int, regular: bool) -> int:
    if s_range > S:
        logging.debug(f"get_rnnt_prune_ranges: s_range={s_range} > S={S}, keeping all {S + 1} positions")
        s_range = S + 1
    least = 2 if regular else 1  # regular: a symbol and the blank that leaves the frame
    if s_range < least:
        raise ValueError(f"s_range must be >= {least} for this topology, got {s_range}")
    return s_range


def get_rnnt_prune_ranges(
    px_grad: Tensor,
    py_grad: Tensor,
    boundary: Tensor,
    s_range: int,
) -> Tensor:
    """Choose, for every frame, the s_range consecutive symbol positions the pruned loss keeps.

    The topology is read from px_grad's shape, as in k2 (there is no rnnt_type argument):
    (B, S, T+1) regular, (B, S, T) modified/constrained.

    For frame t the window [r, r + s_range) maximises the occupation of the blank arcs inside
    it minus that of the symbol arc entering it from below (Pruned RNN-T paper, sec. 3.2). The
    starts r_t are then adjusted as in k2 so that a complete path survives pruning:
    r_0 = 0, r_t non-decreasing, r_{t+1} - r_t <= s_range - 1 (regular) or <= 1 (one symbol
    per frame), and frames from T_b - 1 on start at max(U_b - s_range + 1, 0) so the last
    real frame covers U_b.

    Regular: s_range is raised to ceil(U_b / T_b) + 1 if smaller (otherwise no path fits;
    logged). Both: lowered to S + 1 if larger (nothing to prune).

    Args:
      px_grad: (B, S, T+1) or (B, S, T) symbol-arc occupations from
        rnnt_loss_simple(return_grad=True).
      py_grad: (B, S+1, T) blank-arc occupations.
      boundary: (B, 4) int64 rows [0, 0, U_b, T_b].
      s_range: how many symbol positions to keep per frame (icefall uses 5); at least 2 for
        regular, 1 otherwise.
    Returns:
      ranges (B, T, s_range) int64, ranges[b, t] = [r_t, r_t + 1, ..., r_t + s_range - 1],
      all within [0, S].
    """
    if _k2_active():
        return k2.get_rnnt_prune_ranges(px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=s_range)
    B, S, T, regular = _check_grads(px_grad, py_grad, boundary)
    U_b, T_b = boundary[:, 2], boundary[:, 3]
    has_frames = T_b > 0  # sequences without frames have no path whatever s_range is
    if regular and bool(has_frames.any()):
        # With at most s_range - 1 symbols per frame, U_b symbols need that many frames.
        U_f, T_f = U_b[has_frames], T_b[has_frames]
        needed = int(((U_f + T_f - 1) // T_f + 1).max())
        if s_range < needed:
            logging.warning(
                f"get_rnnt_prune_ranges: s_range={s_range} cannot cover U={U_b.tolist()} symbols "
                f"in T={T_b.tolist()} frames; using s_range={needed}"
            )
            s_range = needed
    s_range = _cap_s_range(s_range, S, regular)

    num_starts = S + 2 - s_range
    blank_mass = py_grad.unfold(1, s_range, 1).sum(dim=-1)  # (B, num_starts, T)
    entering = torch.cat([px_grad.new_zeros(B, 1, T), px_grad[:, : num_starts - 1, :T]], dim=1)
    start = (blank_mass - entering).argmax(dim=1)  # (B, T)
    return _ranges_from_starts(start, boundary, s_range, regular)


def get_rnnt_prune_ranges_deprecated(
    px_grad: Tensor,
    py_grad: Tensor,
    boundary: Tensor,
    s_range: int,
) -> Tensor:
    """k2's earlier pruning rule, kept (as k2 keeps it) to compare against.

    For frame t the window [r, r + s_range) maximises the total occupation of the arcs that
    leave the nodes (s, t) it covers, symbol and blank arcs alike; the same adjustments as
    get_rnnt_prune_ranges() follow. Unlike it, s_range is not raised for long targets (only
    lowered to S + 1), so short regular lattices may lose every path.

    Args:
      px_grad: (B, S, T+1) or (B, S, T); py_grad: (B, S+1, T); boundary: (B, 4) int64;
      s_range: positions kept per frame.
    Returns:
      ranges (B, T, s_range) int64.
    """
    if _k2_active():
        return k2.get_rnnt_prune_ranges_deprecated(
            px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=s_range
        )
    _, S, T, regular = _check_grads(px_grad, py_grad, boundary)
    s_range = _cap_s_range(s_range, S, regular)
    node_mass = F.pad(px_grad[:, :, :T], (0, 0, 0, 1)) + py_grad  # (B, S+1, T); no symbol leaves S
    window_mass = node_mass.unfold(1, s_range, 1).sum(dim=-1)  # (B, S+2-s_range, T)
    return _ranges_from_starts(window_mass.argmax(dim=1), boundary, s_range, regular)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> Tuple[Tensor, Tensor]:
    """Pair each frame with the prediction-network outputs of its kept symbol positions.

    Args:
      am: (B, T, C_am) encoder output (typically already projected by the joiner).
      lm: (B, S+1, C_lm) prediction-network output.
      ranges: (B, T, s_range) int64 from get_rnnt_prune_ranges().
    Returns:
      am_pruned (B, T, s_range, C_am), an expanded view of am, and
      lm_pruned (B, T, s_range, C_lm) with lm_pruned[b, t, r] = lm[b, ranges[b, t, r]].
    """
    if _k2_active():
        return k2.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
    if am.ndim != 3 or lm.ndim != 3 or am.shape[0] != lm.shape[0]:
        raise ValueError(f"expected am (B, T, C) and lm (B, S+1, C), got {tuple(am.shape)}, {tuple(lm.shape)}")
    B, T, C_am = am.shape
    S1, C_lm = lm.shape[1], lm.shape[2]
    R = _check_ranges(ranges, B, T, S1 - 1)
    am_pruned = am.unsqueeze(2).expand(B, T, R, C_am)
    index = ranges.reshape(B, T * R, 1).expand(B, T * R, C_lm)
    lm_pruned = lm.gather(1, index).reshape(B, T, R, C_lm)
    return am_pruned, lm_pruned


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Optional[Tensor] = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str = "mean",
    use_hat_loss: bool = False,
) -> Tensor:
    """RNN-T loss over the pruned lattice: only the positions in `ranges` have arcs.

    Args:
      logits: (B, T, s_range, C) joiner output on do_rnnt_pruning()'s pairs.
      symbols: (B, S) int64 targets.
      ranges: (B, T, s_range) int64 from get_rnnt_prune_ranges().
      termination_symbol: the blank id.
      boundary: None or (B, 4) int64 rows [0, 0, U_b, T_b].
      rnnt_type: "regular" | "modified" | "constrained" (the last two need T_b >= U_b).
      delay_penalty: >= 0; rewards early symbols (see the module docstring). 0 disables it.
      reduction: "mean" | "sum" | "none".
      use_hat_loss: read logits as a HAT model (blank = sigmoid of logit 0); needs
        termination_symbol = 0.
    Returns:
      (B,) losses for "none", else a scalar. With s_range = S + 1 this is the full loss.
    """
    _check_loss_options(reduction, rnnt_type, delay_penalty)
    if _k2_active():
        return k2.rnnt_loss_pruned(
            logits=logits, symbols=symbols, ranges=ranges, termination_symbol=termination_symbol,
            boundary=boundary, rnnt_type=rnnt_type, delay_penalty=delay_penalty, reduction=reduction,
            use_hat_loss=use_hat_loss,
        )
    px, py = _get_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type, use_hat_loss)
    return _loss_from_logprobs(px, py, boundary, delay_penalty, reduction)


__all__: List[str] = [
    "USE_K2",
    "do_rnnt_pruning",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_joint",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "get_rnnt_prune_ranges_deprecated",
    "joint_mutual_information_recursion",
    "mutual_information_recursion",
    "rnnt_loss",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]
