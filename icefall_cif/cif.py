"""Continuous integrate-and-fire (CIF): weight predictor, vectorized integrate-and-fire, quantity loss.

CIF (Dong & Xu, ICASSP 2020) turns encoder frames h (N, T, C) and non-negative weights
alpha (N, T) into one vector per token (N, U, C). The semantics follow docs/cif.md
exactly; in short, with c_t = alpha_1 + ... + alpha_t and threshold beta:

  - n_t = floor(c_t + 1 - beta) tokens have fired after frame t;
  - token k receives from frame t the weight a_{k,t} = F_k(t) - F_k(t-1), where
    F_k(t) = k if n_t >= k, k - 1 if n_t < k - 1, and c_t otherwise;
  - after the last valid frame, the remainder r = c_T - n_T fires one more token with vector
    (sum_t a_{n_T+1,t} h_t) / r when tail handling is on and r > tail_threshold.

This equals the classic frame-by-frame loop (fire when acc + alpha_t >= beta, leftover measured
from 1) whenever alpha_t < 1, and additionally fires several tokens in one frame when alpha_t >= 1.

Memory: no (N, U, T) matrix. Frame t feeds tokens n_{t-1} + 1 ... n_t + 1 only, so token k
takes weights from (1) the frames with n_{t-1} == k - 1, which are consecutive, and (2) the
single frame where token k - 1 fired. One weighted embedding_bag (one bag per token) sums
them without materializing weighted frames: extra memory is O(N (T + U)) besides the
(N, U, C) output, whatever the number of fires per frame. There is no Python loop over frames
or utterances.
"""
from typing import Dict, NamedTuple, Optional

import torch
import torch.nn as nn


class CifOutput(NamedTuple):
    """Result of :func:`integrate_and_fire`.

    Attributes:
      cif: (N, U, C) one vector per fired token, zero-padded; U = cif_lens.max().
      cif_lens: (N,) int64 number of tokens of each utterance.
      fire_frames: (N, U) int64 index of the frame at which each token fired (the last valid
        frame for a tail token); -1 at padding. Non-decreasing along U: token timestamps.
    """

    cif: torch.Tensor
    cif_lens: torch.Tensor
    fire_frames: torch.Tensor


class CifPredictorOutput(NamedTuple):
    """Result of :meth:`CifPredictor.forward`.

    Attributes:
      cif: (N, U, C) token vectors, zero-padded. With targets, U = target_lengths.max() and
        utterance i has exactly target_lengths[i] vectors.
      cif_lens: (N,) int64 number of token vectors of each utterance (== target_lengths when given).
      alpha: (N, T) float32 unscaled weights in (0, 1), exactly 0 at padded frames.
      fire_frames: (N, U) int64 frame index of each token, -1 at padding (see :class:`CifOutput`).
      quantity_loss: scalar, sum over the batch of |sum_t alpha_t - U| (unscaled alpha);
        None when no targets were given.
      token_prior: (N, U, V) the CTC head's log-probs at each vector's spike frame (detached,
        0 at padding), for a CE head with `--ce-ctc-prior-scale` (CIF cut at the CTC spikes);
        None otherwise.
    """

    cif: torch.Tensor
    cif_lens: torch.Tensor
    alpha: torch.Tensor
    fire_frames: torch.Tensor
    quantity_loss: Optional[torch.Tensor]
    token_prior: Optional[torch.Tensor] = None

    def head_inputs(self) -> Dict[str, torch.Tensor]:
        """The keyword arguments the head's searches take besides the vectors: `token_prior` when set."""
        return {} if self.token_prior is None else {"token_prior": self.token_prior}


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    # c_t reaches ~U (hundreds), where float32 keeps only ~1e-5 absolute precision; float64
    # makes the per-frame weights exact to ~1e-12. MPS has no float64, so it falls back.
    return torch.float32 if device.type == "mps" else torch.float64


def _check_inputs(
    h: torch.Tensor,
    alpha: torch.Tensor,
    h_lens: torch.Tensor,
    threshold: float,
    tail_threshold: Optional[float],
) -> None:
    if h.ndim != 3:
        raise ValueError(f"h must be (N, T, C), got shape {tuple(h.shape)}")
    if alpha.shape != h.shape[:2]:
        raise ValueError(
            f"alpha must be (N, T) = {tuple(h.shape[:2])} to match h {tuple(h.shape)}, "
            f"got {tuple(alpha.shape)}"
        )
    if h_lens.shape != (h.shape[0],):
        raise ValueError(f"h_lens must be (N,) = ({h.shape[0]},), got {tuple(h_lens.shape)}")
    if h_lens.is_floating_point() or h_lens.is_complex():
        raise ValueError(f"h_lens must hold integer frame counts, got dtype {h_lens.dtype}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1] (the paper uses 0.99 or 1.0), got {threshold}")
    if tail_threshold is not None and tail_threshold < 0.0:
        raise ValueError(
            f"tail_threshold must be >= 0 (the remainder is divided by itself), got {tail_threshold}; "
            "pass None to disable tail handling"
        )


def integrate_and_fire(
    h: torch.Tensor,
    alpha: torch.Tensor,
    h_lens: torch.Tensor,
    threshold: float = 0.99,
    tail_threshold: Optional[float] = None,
) -> CifOutput:
    """Vectorized continuous integrate-and-fire.

    Args:
      h: (N, T, C) encoder output, finite (padded frames are multiplied by zero weights). Any
        floating dtype; the token vectors are summed in at least float32 and returned in h's dtype.
      alpha: (N, T) non-negative weights. Values at padded frames (t >= h_lens) are ignored,
        whatever they are (NaN included). The cumulative sum is taken in float64, so float16 /
        bfloat16 weights (autocast) do not drift over long utterances.
      h_lens: (N,) number of valid frames of each utterance, 0 <= h_lens <= T.
      threshold: firing threshold beta in (0, 1]: a token fires when the accumulated weight
        reaches beta; the leftover is measured from 1.
      tail_threshold: None disables tail handling (training). Otherwise every utterance whose
        remainder r after its last valid frame exceeds it fires one last token, normalized by r.
    Returns:
      CifOutput(cif (N, U, C), cif_lens (N,), fire_frames (N, U)).
    """
    _check_inputs(h, alpha, h_lens, threshold, tail_threshold)
    N, T, C = h.shape
    device = h.device
    acc_dtype = _accumulation_dtype(device)
    work_dtype = torch.promote_types(h.dtype, torch.float32)
    h_lens = h_lens.to(device=device, dtype=torch.int64)

    if N == 0 or T == 0:
        if (h_lens != 0).any():
            raise ValueError(f"h_lens must be 0 when T == 0, got {h_lens.tolist()}")
        return CifOutput(
            cif=h.new_zeros(N, 0, C),
            cif_lens=torch.zeros(N, dtype=torch.int64, device=device),
            fire_frames=torch.zeros(N, 0, dtype=torch.int64, device=device),
        )

    zero = torch.zeros((), dtype=acc_dtype, device=device)
    one = torch.ones((), dtype=acc_dtype, device=device)
    valid = torch.arange(T, device=device) < h_lens.unsqueeze(1)  # (N, T)
    # torch.where (not multiplication) so that NaN/inf at padded frames cannot leak into c_t
    # or into the gradient.
    alpha = torch.where(valid, alpha.to(acc_dtype), zero)
    c = nn.functional.pad(torch.cumsum(alpha, dim=1), (1, 0))  # (N, T + 1), c[:, 0] = 0
    with torch.no_grad():
        n = torch.floor(c + (1.0 - threshold)).to(torch.int64)  # (N, T + 1)
    num_fired = n[:, -1]  # (N,)
    remainder = c[:, -1] - num_fired  # (N,) r in [beta - 1, beta)
    if tail_threshold is None:
        tail = torch.zeros(N, dtype=torch.bool, device=device)
    else:
        tail = remainder.detach() > tail_threshold
    cif_lens = num_fired + tail.long()
    n_prev, n_cur = n[:, :-1], n[:, 1:]  # (N, T) tokens fired before / after frame t
    c_prev, c_cur = c[:, :-1], c[:, 1:]

    # The only host synchronization: output size and input sanity, fetched together.
    max_len, has_negative, non_finite, bad_lens = torch.stack(
        [
            cif_lens.max(),
            (alpha < 0).any().long(),
            (~torch.isfinite(c[:, -1])).any().long(),
            ((h_lens < 0) | (h_lens > T)).any().long(),
        ]
    ).tolist()
    if bad_lens:
        raise ValueError(f"h_lens must lie in [0, T={T}], got {h_lens.tolist()}")
    if non_finite:
        raise ValueError("alpha has NaN or inf at valid frames (t < h_lens); check the weight predictor")
    if has_negative:
        raise ValueError(
            f"alpha must be non-negative at valid frames, got min {alpha.min().item():.4g}; "
            "produce it with a sigmoid (or clamp it) before integrate-and-fire"
        )

    if max_len == 0:
        return CifOutput(
            cif=h.new_zeros(N, 0, C),
            cif_lens=cif_lens,
            fire_frames=torch.zeros(N, 0, dtype=torch.int64, device=device),
        )

    slot = torch.arange(max_len, device=device).unsqueeze(0)  # (1, U), token k = slot + 1
    fired = slot < num_fired.unsqueeze(1)  # (N, U)
    # Token k fires at the first frame with n_t >= k; n_t is non-decreasing, so a binary search.
    first_frame = torch.searchsorted(
        n_cur.contiguous(), (slot + 1).expand(N, max_len).contiguous()
    )  # (N, U), T for tokens that never fire
    # Slots below n_T hold fired tokens; slot n_T holds the partial token, which is kept
    # (normalized by r) only for a tail fire; later slots are padding. The factor is folded
    # into the per-frame weights, so no pass over the (N, U, C) output is needed.
    safe_remainder = torch.where(tail, remainder, one)
    is_tail = (slot == num_fired.unsqueeze(1)) & tail.unsqueeze(1)
    scale = torch.where(fired, one, torch.where(is_tail, 1.0 / safe_remainder.unsqueeze(1), zero))  # (N, U)

    # Part 1, every frame: token n_{t-1} + 1 gets a_{k,t} = F_k(t) - c_{t-1}, i.e. alpha_t, or
    # (n_{t-1} + 1) - c_{t-1} if it fires at t.
    w_first = torch.where(n_cur > n_prev, (n_prev + 1).to(acc_dtype), c_cur) - c_prev  # (N, T)
    w_first = w_first * nn.functional.pad(scale, (0, 1)).gather(1, n_prev.clamp(max=max_len))
    # Part 2, only the frame f where token k - 1 fired also feeds token k (k >= 2): weight 1 if
    # token k fires at f as well (alpha_f >= 1), else the leftover c_f - (k - 1), which may be
    # slightly negative. No other frame touches token k, so no (N, U, T) matrix is needed.
    prev_frame = first_frame[:, :-1].clamp(max=T - 1)  # (N, U - 1), frame of token k - 1
    k = (slot[:, 1:] + 1).to(acc_dtype)  # (1, U - 1)
    w_carry = torch.where(n_cur.gather(1, prev_frame) >= k, one, c_cur.gather(1, prev_frame) - (k - 1))
    w_carry = torch.where(fired[:, :-1], w_carry * scale[:, 1:], zero)  # (N, U - 1)

    # Each token is one bag of a weighted embedding_bag over the flattened frames: a fused
    # gather-weight-sum that never materializes (N, T, C) weighted frames, forward or backward.
    # Bag (n, s) lists the carry entry of token s + 1 (s >= 1), then the frames with
    # n_{t-1} == s, which are consecutive. Frames after the last fire of an utterance with
    # n_T == U join its last bag with weight 0, so every entry has a bag.
    utt = torch.arange(N, device=device).unsqueeze(1)  # (N, 1)
    entries_per_utt = T + max_len - 1
    first_slot = n_prev.clamp(max=max_len - 1)  # (N, T) bag of each frame
    # Frames in bags before s: those up to the one where token s fired (all T if it never did).
    frames_before = nn.functional.pad(first_frame[:, :-1] + 1, (1, 0)).clamp(max=T)  # (N, U)
    offsets = entries_per_utt * utt + frames_before + (slot - 1).clamp(min=0)  # (N, U) bag starts
    # Where each frame entry, then each carry entry, goes: a permutation of all entries.
    frame_positions = entries_per_utt * utt + torch.arange(T, device=device) + first_slot  # (N, T)
    positions = torch.cat([frame_positions.reshape(-1), offsets[:, 1:].reshape(-1)])
    frame_ids = torch.cat([torch.arange(N * T, device=device), (prev_frame + T * utt).reshape(-1)])
    weights = torch.cat([w_first.reshape(-1), w_carry.reshape(-1)]).to(work_dtype)
    cif = nn.functional.embedding_bag(
        torch.empty_like(frame_ids).scatter_(0, positions, frame_ids),
        h.to(work_dtype).reshape(N * T, C),
        offsets=offsets.reshape(-1),
        mode="sum",
        per_sample_weights=torch.zeros_like(weights).scatter(0, positions, weights),
    ).view(N, max_len, C).to(h.dtype)

    last_frame = (h_lens - 1).unsqueeze(1).expand_as(first_frame)
    fire_frames = torch.where(
        fired, first_frame, torch.where(is_tail, last_frame, torch.full_like(first_frame, -1))
    )
    return CifOutput(cif=cif, cif_lens=cif_lens, fire_frames=fire_frames)


def scale_weights(alpha: torch.Tensor, target_lengths: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each utterance's weights to sum to its target length (training only).

    alpha' = alpha * U / (sum_t alpha_t + eps); eps keeps the division (and its gradient) finite
    when an utterance's weights are all near zero.

    Args:
      alpha: (N, T) weights, zero at padded frames.
      target_lengths: (N,) number of tokens U of each utterance.
      eps: added to the denominator.
    Returns:
      (N, T) scaled weights in float32 or wider.
    """
    if target_lengths.shape != alpha.shape[:1]:
        raise ValueError(
            f"target_lengths must be (N,) = ({alpha.shape[0]},), got {tuple(target_lengths.shape)}"
        )
    alpha = alpha.to(torch.promote_types(alpha.dtype, torch.float32))
    total = alpha.sum(dim=1, keepdim=True)
    return alpha * (target_lengths.to(alpha).unsqueeze(1) / (total + eps))


def quantity_loss(alpha: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Quantity loss sum_i |sum_t alpha_{i,t} - U_i| on the unscaled weights.

    Args:
      alpha: (N, T) weights, zero at padded frames.
      target_lengths: (N,) number of tokens U of each utterance.
    Returns:
      scalar, summed over the batch (normalize it like the other summed losses).
    """
    if target_lengths.shape != alpha.shape[:1]:
        raise ValueError(
            f"target_lengths must be (N,) = ({alpha.shape[0]},), got {tuple(target_lengths.shape)}"
        )
    total = alpha.to(torch.promote_types(alpha.dtype, torch.float32)).sum(dim=1)
    return (total - target_lengths.to(total)).abs().sum()


def fit_to_target_lengths(
    out: CifOutput, target_lengths: torch.Tensor, h_lens: torch.Tensor
) -> CifOutput:
    """Pad or truncate each utterance to exactly its target number of token vectors.

    With scaled weights the layer fires U times up to float rounding; an utterance with one
    token too many loses the extra one, and one with a token too few gets a zero vector
    (stamped at its last valid frame), so the decoder always sees U vectors.

    Args:
      out: integrate-and-fire output with cif (N, U', C), cif_lens (N,), fire_frames (N, U').
      target_lengths: (N,) desired number of tokens U.
      h_lens: (N,) number of valid frames (for the time stamp of padded-in tokens).
    Returns:
      CifOutput with cif (N, max U, C), cif_lens == target_lengths, fire_frames (N, max U).
    """
    target_lengths = target_lengths.to(device=out.cif.device, dtype=torch.int64)
    N, cur_len, _ = out.cif.shape
    max_len = int(target_lengths.max()) if N > 0 else 0
    cif, fire_frames = out.cif[:, :max_len], out.fire_frames[:, :max_len]
    if cur_len < max_len:
        cif = nn.functional.pad(cif, (0, 0, 0, max_len - cur_len))
        fire_frames = nn.functional.pad(fire_frames, (0, max_len - cur_len), value=-1)
    slot = torch.arange(max_len, device=cif.device).unsqueeze(0)
    kept = slot < torch.minimum(out.cif_lens, target_lengths).unsqueeze(1)  # (N, U)
    wanted = slot < target_lengths.unsqueeze(1)
    cif = torch.where(kept.unsqueeze(-1), cif, torch.zeros((), dtype=cif.dtype, device=cif.device))
    last_frame = (h_lens.to(fire_frames) - 1).unsqueeze(1).expand_as(fire_frames)
    fire_frames = torch.where(
        kept, fire_frames, torch.where(wanted, last_frame, torch.full_like(fire_frames, -1))
    )
    return CifOutput(cif=cif, cif_lens=target_lengths, fire_frames=fire_frames)


class CifPredictor(nn.Module):
    """CIF weight predictor followed by integrate-and-fire.

    Weight predictors (``weight_type``), as in the CIF seed implementations:
      - "conv": Conv1d(input_dim -> hidden_dim, conv_width, same padding) -> ReLU -> dropout
        -> Linear(hidden_dim -> 1) -> sigmoid;
      - "dense": Linear(input_dim -> hidden_dim) -> ReLU -> Linear(hidden_dim -> 1) -> sigmoid;
      - "linear": Linear(input_dim -> 1) -> sigmoid.

    With target lengths (training, validation loss) the weights are scaled to sum to U, fired
    without tail handling and fitted to exactly U vectors; without them (decoding) the raw
    weights are fired with tail handling.

    Args:
      input_dim: C, the encoder output dimension.
      weight_type: "conv", "dense" or "linear".
      conv_width: odd kernel size of the "conv" predictor (3 or 5 in the seed configs).
      hidden_dim: channels of the "conv" / "dense" hidden layer.
      dropout: dropout after the conv ReLU ("conv" only, as in the seed).
      threshold: firing threshold beta.
      tail_threshold: remainder above which a final token fires at inference; None disables.
      eps: added to sum(alpha) when scaling to the target length.
      extra_dim: channels of an optional side input concatenated to h before the predictor
        (e.g. the CTC head's non-blank probability); 0 = none.
    """

    WEIGHT_TYPES = ("conv", "dense", "linear")

    def __init__(
        self,
        input_dim: int,
        weight_type: str = "conv",
        conv_width: int = 3,
        hidden_dim: int = 256,
        dropout: float = 0.1,
        threshold: float = 0.99,
        tail_threshold: Optional[float] = 0.5,
        eps: float = 1e-8,
        extra_dim: int = 0,
    ) -> None:
        super().__init__()
        if weight_type not in self.WEIGHT_TYPES:
            raise ValueError(f"weight_type must be one of {self.WEIGHT_TYPES}, got '{weight_type}'")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if tail_threshold is not None and tail_threshold < 0.0:
            raise ValueError(f"tail_threshold must be >= 0 or None, got {tail_threshold}")
        self.weight_type = weight_type
        self.threshold = threshold
        self.tail_threshold = tail_threshold
        self.eps = eps
        self.extra_dim = extra_dim
        input_dim += extra_dim
        if weight_type == "conv":
            if conv_width < 1 or conv_width % 2 == 0:
                raise ValueError(
                    f"conv_width must be a positive odd number (same padding keeps T), got {conv_width}"
                )
            self.conv = nn.Conv1d(input_dim, hidden_dim, conv_width, padding=conv_width // 2)
            self.dropout = nn.Dropout(dropout)
            self.weight_proj = nn.Linear(hidden_dim, 1)
        elif weight_type == "dense":
            self.dense_proj = nn.Linear(input_dim, hidden_dim)
            self.weight_proj = nn.Linear(hidden_dim, 1)
        else:
            self.weight_proj = nn.Linear(input_dim, 1)

    def compute_weights(
        self, h: torch.Tensor, h_lens: torch.Tensor, extra: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Per-frame weights alpha.

        Args:
          h: (N, T, C) encoder output.
          h_lens: (N,) number of valid frames.
          extra: (N, T, extra_dim) side input, required iff extra_dim > 0.
        Returns:
          (N, T) float32 alpha in (0, 1), exactly 0 at padded frames.
        """
        valid = torch.arange(h.shape[1], device=h.device) < h_lens.to(h.device).unsqueeze(1)
        if (extra is None) != (self.extra_dim == 0):
            raise ValueError(
                f"this predictor takes {self.extra_dim} extra input channels, got "
                f"{'none' if extra is None else tuple(extra.shape)}"
            )
        if extra is not None:
            if extra.shape != (*h.shape[:2], self.extra_dim):
                raise ValueError(f"extra must be (N, T, {self.extra_dim}) = {(*h.shape[:2], self.extra_dim)}, "
                                 f"got {tuple(extra.shape)}")
            h = torch.cat([h, extra.to(h.dtype)], dim=-1)
        if self.weight_type == "conv":
            # Zero the padding first so the conv's receptive field at the last valid frames
            # does not depend on whatever the padded frames contain.
            x = h.masked_fill(~valid.unsqueeze(-1), 0.0).transpose(1, 2)  # (N, C, T)
            x = torch.relu(self.conv(x)).transpose(1, 2)  # (N, T, hidden)
            x = self.dropout(x)
        elif self.weight_type == "dense":
            x = torch.relu(self.dense_proj(h))
        else:
            x = h
        # sigmoid in float32: under fp16 autocast the later scaling to U needs the precision.
        alpha = torch.sigmoid(self.weight_proj(x).squeeze(-1).float())
        return alpha.masked_fill(~valid, 0.0)

    def forward(
        self,
        h: torch.Tensor,
        h_lens: torch.Tensor,
        target_lengths: Optional[torch.Tensor] = None,
        extra: Optional[torch.Tensor] = None,
    ) -> CifPredictorOutput:
        """Predict weights and integrate-and-fire.

        Args:
          h: (N, T, C) encoder output.
          h_lens: (N,) number of valid frames.
          target_lengths: (N,) number of tokens per utterance, or None at inference.
          extra: (N, T, extra_dim) side input of the weight predictor (not integrated).
        Returns:
          CifPredictorOutput(cif (N, U, C), cif_lens (N,), alpha (N, T), fire_frames (N, U),
          quantity_loss scalar or None).
        """
        alpha = self.compute_weights(h, h_lens, extra)
        if target_lengths is None:
            out = integrate_and_fire(h, alpha, h_lens, self.threshold, self.tail_threshold)
            return CifPredictorOutput(out.cif, out.cif_lens, alpha, out.fire_frames, None)
        scaled = scale_weights(alpha, target_lengths, self.eps)
        out = integrate_and_fire(h, scaled, h_lens, self.threshold, tail_threshold=None)
        out = fit_to_target_lengths(out, target_lengths, h_lens)
        return CifPredictorOutput(
            out.cif, out.cif_lens, alpha, out.fire_frames, quantity_loss(alpha, target_lengths)
        )
