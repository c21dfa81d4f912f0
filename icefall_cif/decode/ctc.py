"""CTC decoding of the encoder's CTC head: prefix beam search (greedy search is in greedy.py).

The prefix beam search keeps, per prefix, the log-probability of all alignments of the frames
so far that collapse to it, split by whether they end in blank (p_b) or in the prefix's last
token (p_nb). Frame t with log-probs lp extends prefix g (last token l) as

    g      <- (p_b + p_nb) * lp[blank]    (into p_b)
    g      <- p_nb * lp[l]                (repeat of l, into p_nb)
    g + c  <- (p_b + p_nb) * lp[c]        for c != l, c != blank (into p_nb)
    g + l  <- p_b * lp[l]                 (a repeated token needs a blank in between)

in the probability domain. Extensions that produce a prefix already in the beam are summed
into it, and the best `beam_size` prefixes by p_b + p_nb survive. With a beam holding every
prefix this is the exact sum over alignments.
"""
from typing import List

import torch

from icefall_cif.decode.beam_search import (
    NEG_INF,
    NBest,
    append_tokens,
    beam_to_nbest,
    init_beam,
    last_tokens,
    merge_extensions,
    one_token_extensions,
    reorder,
)
from icefall_cif.decode.greedy import ctc_greedy_search

__all__ = ["ctc_greedy_search", "ctc_prefix_beam_search"]


@torch.no_grad()
def ctc_prefix_beam_search(
    ctc_log_probs: torch.Tensor, lens: torch.Tensor, beam_size: int = 4, blank_id: int = 0
) -> List[NBest]:
    """Batched CTC prefix beam search.

    Args:
      ctc_log_probs: (N, T, V) log-probs (e.g. `model.ctc_log_probs(encoder_out)`).
      lens: (N,) valid frames of each utterance.
      beam_size: K, prefixes kept after each frame.
      blank_id: the CTC blank.
    Returns:
      per utterance, its final prefixes best first, each with log(p_b + p_nb).
    """
    if ctc_log_probs.ndim != 3 or lens.shape != ctc_log_probs.shape[:1]:
        raise ValueError(
            f"expected ctc_log_probs (N, T, V) and lens (N,), got {tuple(ctc_log_probs.shape)} "
            f"and {tuple(lens.shape)}"
        )
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    N, T, V = ctc_log_probs.shape
    K = beam_size
    device = ctc_log_probs.device
    lens = lens.to(device)
    # float16/bfloat16 head outputs are summed over many frames: accumulate in float32 at least.
    log_probs = ctc_log_probs.to(torch.promote_types(ctc_log_probs.dtype, torch.float32))

    p_nb, tokens, prefix_lens = init_beam(N, K, T, device, log_probs.dtype)
    p_b, p_nb = p_nb, torch.full_like(p_nb, NEG_INF)  # the empty prefix: all-blank, probability 1
    is_blank = torch.zeros(V, dtype=torch.bool, device=device)
    is_blank[blank_id] = True

    for t in range(T):
        active = (t < lens).view(N, 1)
        lp = log_probs[:, t].unsqueeze(1)  # (N, 1, V)
        total = torch.logaddexp(p_b, p_nb)
        last = last_tokens(tokens, prefix_lens)
        lp_last = lp.squeeze(1).gather(1, last.clamp(min=0))  # (N, K)

        stay_b = total + lp[:, :, blank_id]
        stay_nb = torch.where(last >= 0, p_nb + lp_last, torch.full_like(p_nb, NEG_INF))
        is_last = torch.arange(V, device=device).view(1, 1, V) == last.unsqueeze(2)
        extend = torch.where(is_last, p_b.unsqueeze(2), total.unsqueeze(2)) + lp
        extend = extend.masked_fill(is_blank, NEG_INF)

        matches = one_token_extensions(tokens, prefix_lens, total > NEG_INF)
        stay_nb, extend = merge_extensions(stay_nb, extend, matches, last)
        # Frames past an utterance's end change nothing.
        stay_b = torch.where(active, stay_b, p_b)
        stay_nb = torch.where(active, stay_nb, p_nb)
        extend = extend.masked_fill(~active.unsqueeze(2), NEG_INF)

        cand = torch.cat([torch.logaddexp(stay_b, stay_nb), extend.view(N, K * V)], dim=1)
        top_scores, top_index = cand.topk(K, dim=1)
        is_extension = top_index >= K
        parent = torch.where(is_extension, (top_index - K) // V, top_index)
        new_token = torch.where(is_extension, (top_index - K) % V, torch.full_like(top_index, -1))

        p_b = torch.where(is_extension, torch.full_like(top_scores, NEG_INF), stay_b.gather(1, parent))
        p_nb = torch.where(is_extension, top_scores, stay_nb.gather(1, parent))
        tokens, prefix_lens = append_tokens(
            reorder(tokens, parent), reorder(prefix_lens, parent), new_token, is_extension & (top_scores > NEG_INF)
        )

    return beam_to_nbest(torch.logaddexp(p_b, p_nb), tokens, prefix_lens)
