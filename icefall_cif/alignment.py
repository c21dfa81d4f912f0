"""CTC forced alignment, and the loss that uses it to tell CIF *where* to fire.

The quantity loss fixes how many times CIF fires, not where: a CIF vector can straddle two
tokens or hold half of one, and the decoder over it then emits blank (transducer) or the wrong
token (CE). The model's own CTC head knows where the tokens are: its Viterbi alignment against
the reference puts each token's spike on a frame. :func:`cif_alignment_loss` asks the CIF
accumulation to be half-way through token u at the first frame of u's spike, so that the spike
frame is integrated into vector u, and token u fires between its own spike and the next one.

    >>> import torch
    >>> lp = torch.log_softmax(torch.tensor([[[0., 5, 0], [5, 0, 0], [0, 0, 5], [5, 0, 0]]]), -1)
    >>> ctc_forced_align(lp, torch.tensor([4]), torch.tensor([[1, 2]]), torch.tensor([2]))
    tensor([[0, 2]])
"""
import torch
import torch.nn as nn


def ctc_forced_align(
    log_probs: torch.Tensor,
    log_prob_lens: torch.Tensor,
    targets: torch.Tensor,
    target_lens: torch.Tensor,
    blank: int = 0,
) -> torch.Tensor:
    """The first frame of each token on the best (Viterbi) CTC path.

    Batched over utterances, one loop step per frame (no Python loop over utterances or
    states). Ties between equally good predecessors go to the one with the lowest state
    index shift (stay, then advance by one, then skip a blank).

    Args:
      log_probs: (N, T, V) CTC log-probabilities (no gradient is taken).
      log_prob_lens: (N,) valid frames of each utterance.
      targets: (N, U) token ids, padded with anything (blank at padding is fine).
      target_lens: (N,) number of tokens of each utterance.
      blank: the blank id.
    Returns:
      (N, U) int64: frame index of each token's first frame on the path; -1 at padding and
      for every token of an utterance that has no CTC path (more tokens plus repeats than
      frames).
    """
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be (N, T, V), got shape {tuple(log_probs.shape)}")
    N, T, _ = log_probs.shape
    if targets.ndim != 2 or targets.size(0) != N:
        raise ValueError(f"targets must be (N={N}, U), got shape {tuple(targets.shape)}")
    if log_prob_lens.shape != (N,) or target_lens.shape != (N,):
        raise ValueError(
            f"log_prob_lens and target_lens must be (N,) = ({N},), got {tuple(log_prob_lens.shape)} "
            f"and {tuple(target_lens.shape)}"
        )
    device = log_probs.device
    U = targets.size(1)
    token_frames = torch.full((N, U), -1, dtype=torch.int64, device=device)
    if N == 0 or U == 0 or T == 0:
        return token_frames
    log_prob_lens = log_prob_lens.to(device=device, dtype=torch.int64)
    target_lens = target_lens.to(device=device, dtype=torch.int64)
    targets = targets.to(device=device, dtype=torch.int64)

    with torch.no_grad():
        S = 2 * U + 1
        state = torch.arange(S, device=device)
        ext = torch.full((N, S), blank, dtype=torch.int64, device=device)
        ext[:, 1::2] = targets
        valid_state = state.unsqueeze(0) < (2 * target_lens + 1).unsqueeze(1)  # (N, S)
        # A skip from s - 2 to s is allowed into a token that differs from the token before it.
        can_skip = torch.zeros(N, S, dtype=torch.bool, device=device)
        can_skip[:, 3::2] = targets[:, 1:] != targets[:, :-1]
        emit = log_probs.detach().double().gather(2, ext.unsqueeze(1).expand(N, T, S))  # (N, T, S)
        neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)

        score = torch.full((N, S), float("-inf"), dtype=torch.float64, device=device)
        score[:, 0] = emit[:, 0, 0]
        score[:, 1] = emit[:, 0, 1]
        score = torch.where(valid_state, score, neg_inf)
        # Back-pointers: how far back (0, 1 or 2 states) the best predecessor of (t, s) is.
        back = torch.zeros(N, T, S, dtype=torch.int8, device=device)
        for t in range(1, T):
            from_prev = nn.functional.pad(score[:, :-1], (1, 0), value=float("-inf"))
            from_skip = nn.functional.pad(score[:, :-2], (2, 0), value=float("-inf"))
            from_skip = torch.where(can_skip, from_skip, neg_inf)
            best, shift = torch.stack([score, from_prev, from_skip]).max(dim=0)
            new_score = torch.where(valid_state, best + emit[:, t], neg_inf)
            active = (t < log_prob_lens).unsqueeze(1)  # frames after the end leave the path as is
            score = torch.where(active, new_score, score)
            back[:, t] = torch.where(active, shift, torch.zeros_like(shift)).to(torch.int8)

        last_blank = (2 * target_lens).clamp(max=S - 1)
        last_token = (2 * target_lens - 1).clamp(min=0)
        end_scores = torch.stack([score.gather(1, last_blank[:, None]), score.gather(1, last_token[:, None])], 1)
        best_end, which = end_scores.squeeze(2).max(dim=1)
        feasible = torch.isfinite(best_end) & (target_lens > 0) & (log_prob_lens > 0)
        current = torch.where(which == 0, last_blank, last_token)  # (N,)

        path = torch.empty(N, T, dtype=torch.int64, device=device)
        for t in range(T - 1, -1, -1):
            path[:, t] = current
            current = current - back[:, t].gather(1, current[:, None]).squeeze(1).long()

        frame = torch.arange(T, device=device).expand(N, T)
        on_token = (path % 2 == 1) & (frame < log_prob_lens.unsqueeze(1))
        token_of_frame = torch.where(on_token, (path - 1) // 2, torch.full_like(path, U))
        first = torch.full((N, U + 1), T, dtype=torch.int64, device=device)
        first.scatter_reduce_(1, token_of_frame, frame.contiguous(), reduce="amin")
        first = first[:, :U]
        keep = feasible.unsqueeze(1) & (torch.arange(U, device=device) < target_lens.unsqueeze(1))
        token_frames = torch.where(keep & (first < T), first, token_frames)
    return token_frames


def cif_alignment_loss(alpha: torch.Tensor, token_frames: torch.Tensor) -> torch.Tensor:
    """sum over tokens u of |(c_{f_u} - c_{f_{u-1}}) - 1|, with c_{f_0} := -1/2.

    c_t = alpha_1 + ... + alpha_t and f_u is token u's frame. The terms ask for one token's
    weight between consecutive spikes, and half a token's up to the first: together
    c_{f_u} = u - 1/2, so each spike sits in the middle of the weight that forms its own
    vector (CIF fires token u when c_t reaches u), not on a boundary shared with a neighbour.
    Written per segment rather than as |c_{f_u} - (u - 1/2)|, one misplaced fire costs two
    terms instead of every later one, and a frame's gradient comes from its own segment only.

    Args:
      alpha: (N, T) unscaled CIF weights, zero at padding.
      token_frames: (N, U) frame of each token at the rate of `alpha` (e.g. the CTC frame
        from :func:`ctc_forced_align` divided by the CIF downsampling factor), non-decreasing
        along U; -1 where there is none (padding, or an utterance without a CTC path): those
        tokens do not count.
    Returns:
      scalar, summed over the tokens of the batch (normalize it like the CE loss, per token).
    """
    if alpha.ndim != 2 or token_frames.ndim != 2 or token_frames.size(0) != alpha.size(0):
        raise ValueError(
            f"alpha must be (N, T) and token_frames (N, U); got {tuple(alpha.shape)} and "
            f"{tuple(token_frames.shape)}"
        )
    if token_frames.size(1) == 0 or alpha.size(1) == 0:
        return alpha.sum() * 0.0
    c = torch.cumsum(alpha.to(torch.promote_types(alpha.dtype, torch.float32)), dim=1)
    known = token_frames >= 0
    c_at = c.gather(1, token_frames.clamp(min=0, max=alpha.size(1) - 1))  # (N, U)
    c_before = nn.functional.pad(c_at[:, :-1], (1, 0), value=-0.5)
    error = (c_at - c_before - 1.0).abs()
    return torch.where(known, error, torch.zeros_like(error)).sum()
