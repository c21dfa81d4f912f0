"""CTC-anchored CIF segments: one token vector per CTC spike, pooled with the CIF weights.

Integrate-and-fire decides from the weights alone where one token's frames end and the next
one's begin. On the demo models those boundaries miss: with the weights scaled to the reference
length, 30% of the test-clean tokens have their CTC spike outside the frames of their own CIF
vector, and a linear probe recovers the token from 39% of the CIF vectors against 84% of the
spike frames (RESULTS.md, tools/cif_probe.py). Here the model's CTC head supplies the
boundaries instead: token u owns the stretch of encoder time between the midpoints to its
neighbouring spikes, and its vector is the CIF-weighted mean of the CIF frames over that
stretch. The weight predictor still shapes each vector; it no longer decides the count.

With spike centres c_u = s_u + 1/2 (encoder frames), boundaries m_0 = 0, m_u = (c_u + c_{u+1}) / 2,
m_U = d * T_i (d encoder frames per CIF frame), and o_{u,t} the fraction of CIF frame t's time
[d t, d t + d) inside [m_{u-1}, m_u):

    v_u = sum_t alpha_t o_{u,t} h_t / sum_t alpha_t o_{u,t}

Training anchors the reference tokens with the CTC head's forced alignment
(:func:`icefall_cif.alignment.ctc_forced_align`), decoding anchors the tokens of the CTC head's
greedy path (:func:`ctc_greedy_spikes`), so both see vectors made the same way.

    >>> import torch
    >>> h = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    >>> out = pool_segments(h, torch.ones(1, 4), torch.tensor([4]), torch.tensor([[1, 6]]), torch.tensor([2]), 2)
    >>> out.cif.squeeze(-1), out.fire_frames
    (tensor([[1.5000, 3.5000]]), tensor([[0, 3]]))
"""
import torch

from icefall_cif.cif import CifOutput


def ctc_greedy_spikes(log_probs: torch.Tensor, log_prob_lens: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """The first frame of each token of the CTC greedy path (argmax, repeats merged, blanks dropped).

    Args:
      log_probs: (N, T, V) CTC log-probabilities.
      log_prob_lens: (N,) valid frames.
      blank: the blank id.
    Returns:
      (N, U) int64 frames, U = the most tokens of any utterance, -1 at padding; the number of
      tokens of utterance i is (row i >= 0).sum().
    """
    if log_probs.ndim != 3 or log_prob_lens.shape != log_probs.shape[:1]:
        raise ValueError(f"expected log_probs (N, T, V) and log_prob_lens (N,), got {tuple(log_probs.shape)} "
                         f"and {tuple(log_prob_lens.shape)}")
    N, T, _ = log_probs.shape
    best = log_probs.argmax(dim=-1)  # (N, T)
    valid = torch.arange(T, device=best.device).unsqueeze(0) < log_prob_lens.to(best.device).unsqueeze(1)
    previous = torch.nn.functional.pad(best[:, :-1], (1, 0), value=blank)
    starts = valid & (best != blank) & (best != previous)
    if N == 0:
        return torch.zeros(0, 0, dtype=torch.int64, device=best.device)
    # Dense, so that the ONNX export traces it with a dynamic number of tokens: token k starts
    # at the first frame where k tokens have started, i.e. after the frames where fewer have.
    started = torch.cumsum(starts.to(torch.int64), dim=1)  # (N, T)
    counts = started[:, -1]
    k = torch.arange(1, counts.max() + 1, device=best.device).view(1, -1, 1)  # (1, U, 1)
    first = (started.unsqueeze(1) < k).to(torch.int64).sum(dim=2)  # (N, U)
    return torch.where(k.squeeze(2) <= counts.unsqueeze(1), first, torch.full_like(first, -1))


def fill_missing_spikes(spikes: torch.Tensor, num_tokens: torch.Tensor, encoder_lens: torch.Tensor) -> torch.Tensor:
    """Evenly spaced anchors (token u at frame floor((u + 1/2) T / U)) for the utterances whose
    forced alignment failed (any of its first num_tokens spikes is -1); others unchanged.

    Args:
      spikes: (N, U) from ctc_forced_align.
      num_tokens: (N,) tokens of each utterance.
      encoder_lens: (N,) encoder frames.
    Returns:
      (N, U) int64, -1 only at padding.
    """
    U = spikes.size(1)
    slot = torch.arange(U, device=spikes.device).unsqueeze(0)
    wanted = slot < num_tokens.unsqueeze(1)
    failed = ((spikes < 0) & wanted).any(dim=1, keepdim=True)
    even = ((slot + 0.5) * encoder_lens.unsqueeze(1) / num_tokens.clamp(min=1).unsqueeze(1)).floor().long()
    even = torch.minimum(even, (encoder_lens.unsqueeze(1) - 1).clamp(min=0))
    return torch.where(failed & wanted, even, torch.where(wanted, spikes, torch.full_like(spikes, -1)))


def pool_segments(
    h: torch.Tensor,
    alpha: torch.Tensor,
    h_lens: torch.Tensor,
    spikes: torch.Tensor,
    num_tokens: torch.Tensor,
    frames_per_step: int,
) -> CifOutput:
    """One vector per anchored token: the CIF-weighted mean of the CIF frames of its segment.

    Args:
      h: (N, T, C) CIF-rate frames.
      alpha: (N, T) CIF weights, > 0 on valid frames.
      h_lens: (N,) valid CIF frames.
      spikes: (N, U) encoder frame (d per CIF frame) of each token's spike, non-decreasing, -1 at padding.
      num_tokens: (N,) tokens of each utterance (the first num_tokens spikes are valid).
      frames_per_step: d, encoder frames per CIF frame.
    Returns:
      CifOutput: cif (N, U, C), cif_lens = num_tokens, fire_frames (N, U) = the CIF frame of
      each spike (-1 at padding), the token time stamps.
    """
    if h.ndim != 3 or alpha.shape != h.shape[:2] or spikes.ndim != 2 or spikes.size(0) != h.size(0):
        raise ValueError(f"expected h (N, T, C), alpha (N, T), spikes (N, U); got {tuple(h.shape)}, "
                         f"{tuple(alpha.shape)}, {tuple(spikes.shape)}")
    N, T, _ = h.shape
    U = spikes.size(1)
    device = h.device
    work = torch.promote_types(h.dtype, torch.float32)
    num_tokens = num_tokens.to(device=device, dtype=torch.int64)
    d = float(frames_per_step)
    slot = torch.arange(U, device=device).unsqueeze(0)
    valid = slot < num_tokens.unsqueeze(1)  # (N, U)
    centres = spikes.to(work) + 0.5
    end = (d * h_lens.to(device=device, dtype=work)).unsqueeze(1)
    midpoints = torch.cat([(centres[:, :-1] + centres[:, 1:]) / 2, end], dim=1)
    # The last token's segment (and every padding slot's, empty) ends with the utterance.
    upper = torch.where(slot >= (num_tokens - 1).unsqueeze(1), end, midpoints)
    lower = torch.cat([torch.zeros(N, 1, dtype=work, device=device), upper[:, :-1]], dim=1)
    step_start = d * torch.arange(T, device=device, dtype=work)  # (T,)
    overlap = (torch.minimum(upper.unsqueeze(2), step_start + d) - torch.maximum(lower.unsqueeze(2), step_start))
    overlap = overlap.clamp(min=0.0) / d  # (N, U, T)
    weights = overlap * alpha.to(work).unsqueeze(1) * valid.unsqueeze(2)
    total = weights.sum(dim=2, keepdim=True)
    cif = torch.bmm(weights / total.clamp(min=1e-8), h.to(work)).to(h.dtype)
    fire_frames = torch.where(valid, torch.div(spikes, frames_per_step, rounding_mode="floor"),
                              torch.full_like(spikes, -1))
    return CifOutput(cif=cif, cif_lens=num_tokens, fire_frames=fire_frames)


def spike_log_probs(log_probs: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """The CTC head's log-probs at each token's spike frame: the prior a CE head adds to its logits
    (`--ce-ctc-prior-scale`).

    Args:
      log_probs: (N, T', V) CTC log-probs.
      spikes: (N, U) encoder frames, -1 at padding (:func:`ctc_greedy_spikes`, or the forced
        alignment of the reference in training).
    Returns:
      (N, U, V), detached, 0 at padding.

    >>> lp = torch.log(torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))
    >>> spike_log_probs(lp, torch.tensor([[1, -1]])).exp()
    tensor([[[0.2000, 0.8000],
             [1.0000, 1.0000]]])
    """
    if log_probs.ndim != 3 or spikes.ndim != 2 or spikes.size(0) != log_probs.size(0):
        raise ValueError(f"expected log_probs (N, T', V) and spikes (N, U), got {tuple(log_probs.shape)} "
                         f"and {tuple(spikes.shape)}")
    index = spikes.clamp(min=0).unsqueeze(2).expand(-1, -1, log_probs.size(2))
    prior = log_probs.detach().gather(1, index)
    return prior.masked_fill((spikes < 0).unsqueeze(2), 0.0)
