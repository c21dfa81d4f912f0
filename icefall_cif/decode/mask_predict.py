"""Mask-predict: re-predict the unsure tokens of a first guess, a few at a time.

The searches of the `mask_ctc` head (a first guess from CTC greedy search, a conditional masked
LM as predictor; Higuchi et al., 2020) and cif_ce_nar's `nar_mask_predict` / `nar_beam_search`
(a first guess from one parallel pass, the same decoder given the sure tokens as predictor).

A first guess gives tokens (N, L) and a confidence per token; :func:`mask_unsure` hides those below
`threshold` (:data:`MASK`). A `predict` callable sees the tokens with the hidden ones masked and
returns log-probs at every position. Rounds fill the hidden positions, the most confident first,
each round re-running `predict` with the fillings so far given.

Schedule (ESPnet's Mask-CTC): an utterance with M hidden positions is filled in R = min(iterations,
M) rounds of ceil(M / R) positions each, the last round taking what is left. Example: M = 5,
iterations 2 -> rounds fill 3 and 2 positions; M = 5, iterations 10 -> 5 rounds of 1.

- :func:`mask_predict_greedy`: each round fills the k hidden positions whose best log-prob is
  highest with their argmax.
- :func:`mask_predict_beam`: B = beam_size hypotheses per utterance, each scored by the summed
  log-probs of its fillings so far. In a round each hypothesis picks its k most confident hidden
  positions as greedy search does and proposes its B best joint fillings of them, the positions
  taken as independent given the round's input (one `predict` pass): the top B over the product of
  the positions' candidate lists, which merging the positions one at a time and keeping the B best
  partial fillings after each computes exactly. Of the B x B proposals of an utterance, identical
  sequences (reached by filling the same tokens in another order) keep only their best score, and
  the B best survive. With B = 1 it is greedy search.

Every hypothesis of an utterance has the same number of hidden positions left at every round, so
the rounds of a batch run in lockstep; the only Python loops are over rounds (and, in the beam,
over the k positions of a round).
"""
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

from icefall_cif.decode.beam_search import NEG_INF, Hypothesis, NBest, beam_to_nbest

#: The token value of a hidden position (what `predict` must treat as `<mask>`).
MASK = -1
DEFAULT_THRESHOLD = 0.999
DEFAULT_ITERATIONS = 10

#: (N, K, L) int64 tokens, MASK where hidden (any value past an utterance's length) ->
#: (N, K, L, V) log-probs; K is 1 in greedy search and the beam size in beam search.
Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskPredictOptions:
    """The settings of a mask-predict search (decode.py's options of the same names).

    Attributes:
      threshold: `--mask-threshold`, in [0, 1]; tokens with a lower confidence are re-predicted
        (0: none is).
      iterations: `--mask-iterations` >= 1, the most rounds (predictor passes) per utterance.
      beam_size: `--beam-size` >= 1 (beam search only).
    """

    threshold: float = DEFAULT_THRESHOLD
    iterations: int = DEFAULT_ITERATIONS
    beam_size: int = 4


def mask_unsure(tokens: torch.Tensor, lens: torch.Tensor, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, L) tokens with MASK at the valid positions whose (N, L) confidence is below `threshold`."""
    valid = torch.arange(tokens.size(1), device=tokens.device) < lens.to(tokens.device).unsqueeze(1)
    return tokens.masked_fill(valid & (confidence < threshold), MASK)


def _hidden(tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """(N, K, L) bool: MASK at a valid position; tokens (N, K, L), lens (N,)."""
    valid = torch.arange(tokens.size(2), device=tokens.device) < lens.to(tokens.device).view(-1, 1, 1)
    return (tokens == MASK) & valid


def _round_size(hidden: torch.Tensor, iterations: int) -> torch.Tensor:
    """(N,) positions each round fills, ceil(M / min(iterations, M)) for M hidden ((N, L) bool)."""
    if iterations < 1:
        raise ValueError(f"--mask-iterations must be >= 1, got {iterations}")
    m = hidden.sum(dim=1)
    return torch.where(m > 0, (m + iterations - 1) // iterations, m)


def _most_confident(best: torch.Tensor, hidden: torch.Tensor, k_max: int) -> torch.Tensor:
    """(N, K, k_max) positions of the k_max hidden positions with the highest best log-prob,
    most confident first (then any other positions); best and hidden (N, K, L)."""
    return best.masked_fill(~hidden, NEG_INF).argsort(dim=2, descending=True, stable=True)[:, :, :k_max]


def _check(tokens: torch.Tensor, lens: torch.Tensor) -> None:
    if tokens.ndim != 2 or lens.shape != tokens.shape[:1]:
        raise ValueError(f"expected tokens (N, L) and lens (N,), got {tuple(tokens.shape)} and {tuple(lens.shape)}")


@torch.no_grad()
def mask_predict_greedy(
    predict: Predict, tokens: torch.Tensor, lens: torch.Tensor, iterations: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fill the hidden positions greedily (see the module docstring).

    Args:
      predict: the predictor (:data:`Predict`), called with K = 1.
      tokens: (N, L) first guess, MASK at the hidden positions; lens (N,) valid positions.
      iterations: the most rounds per utterance.
    Returns:
      tokens (N, L) with every hidden position filled, and (N,) the summed log-probs of the fillings.
    """
    _check(tokens, lens)
    tokens = tokens.unsqueeze(1).clone()
    hidden = _hidden(tokens, lens)
    step = _round_size(hidden[:, 0], iterations)
    scores = torch.zeros(tokens.size(0), 1, dtype=torch.float64, device=tokens.device)
    while bool(hidden.any()):
        log_probs = predict(tokens)
        best, best_ids = log_probs.max(dim=-1)  # (N, 1, L)
        k = torch.minimum(step, hidden[:, 0].sum(dim=1))  # (N,)
        pos = _most_confident(best, hidden, int(k.max()))
        take = torch.arange(pos.size(2), device=pos.device) < k.view(-1, 1, 1)
        tokens = tokens.scatter(2, pos, torch.where(take, best_ids.gather(2, pos), tokens.gather(2, pos)))
        scores += torch.where(take, best.gather(2, pos), torch.zeros_like(best[:, :, :1])).sum(dim=2).double()
        hidden = hidden.scatter(2, pos, hidden.gather(2, pos) & ~take)
    return tokens[:, 0], scores[:, 0]


def _joint_fillings(
    log_probs: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, beam_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each hypothesis' best `beam_size` joint fillings of its chosen positions.

    Args:
      log_probs: (N, K, L, V); pos: (N, K, k_max) the chosen positions; k: (N,) how many of them
        count (the rest are not filled this round).
    Returns:
      scores (N, K, P) of the fillings (summed log-probs, best first) and their tokens
      (N, K, P, k_max), P = min(beam_size, V ** k_max).
    """
    N, K, _, V = log_probs.shape
    partial = log_probs.new_zeros(N, K, 1)
    chosen = torch.zeros(N, K, 1, 0, dtype=torch.int64, device=log_probs.device)
    for j in range(pos.size(2)):
        at_j = log_probs.gather(2, pos[:, :, j].view(N, K, 1, 1).expand(N, K, 1, V)).squeeze(2)  # (N, K, V)
        top, top_ids = at_j.topk(min(beam_size, V), dim=2)
        # A position this utterance does not fill: one candidate, adding nothing.
        skip = torch.full_like(top, NEG_INF)
        skip[:, :, 0] = 0.0
        top = torch.where((j < k).view(N, 1, 1), top, skip)
        cand = (partial.unsqueeze(3) + top.unsqueeze(2)).view(N, K, -1)  # (N, K, P' * C)
        partial, index = cand.topk(min(beam_size, cand.size(2)), dim=2)
        parent, which = index // top.size(2), index % top.size(2)
        chosen = torch.cat(
            [chosen.gather(2, parent.unsqueeze(3).expand(-1, -1, -1, j)), top_ids.gather(2, which).unsqueeze(3)], dim=3
        )
    return partial, chosen


def _drop_duplicates(scores: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    """(N, C) scores with -inf at every candidate whose (N, C, L) sequence a better (or equally
    good, earlier) candidate of its utterance also has."""
    C = scores.size(1)
    same = (seqs.unsqueeze(2) == seqs.unsqueeze(1)).all(dim=3)  # (N, C, C): [n, c, d]
    index = torch.arange(C, device=scores.device)
    better = (scores.unsqueeze(1) > scores.unsqueeze(2)) | (
        (scores.unsqueeze(1) == scores.unsqueeze(2)) & (index.view(1, 1, C) < index.view(1, C, 1))
    )  # [n, c, d]: candidate d beats candidate c
    return scores.masked_fill((same & better).any(dim=2), NEG_INF)


@torch.no_grad()
def mask_predict_beam(
    predict: Predict, tokens: torch.Tensor, lens: torch.Tensor, iterations: int, beam_size: int
) -> List[NBest]:
    """Fill the hidden positions with a beam of partial fillings (see the module docstring).

    Args:
      predict: the predictor (:data:`Predict`), called with K = beam_size.
      tokens: (N, L) first guess, MASK at the hidden positions; lens (N,) valid positions.
      iterations: the most rounds per utterance.
      beam_size: B.
    Returns:
      per utterance, its completed hypotheses best first, scored by the summed log-probs of their
      fillings (one hypothesis of score 0 when nothing was hidden).
    """
    _check(tokens, lens)
    if beam_size < 1:
        raise ValueError(f"--beam-size must be >= 1, got {beam_size}")
    N, L = tokens.shape
    B = beam_size
    beams = tokens.unsqueeze(1).expand(N, B, L).clone()
    scores = torch.full((N, B), NEG_INF, dtype=torch.float64, device=tokens.device)
    scores[:, 0] = 0.0
    hidden = _hidden(beams, lens)
    step = _round_size(hidden[:, 0], iterations)
    while bool(hidden.any()):
        log_probs = predict(beams)  # (N, B, L, V)
        k = torch.minimum(step, hidden[:, 0].sum(dim=1))
        pos = _most_confident(log_probs.max(dim=-1).values, hidden, int(k.max()))  # (N, B, k_max)
        filling_scores, fillings = _joint_fillings(log_probs, pos, k, B)  # (N, B, P), (N, B, P, k_max)
        P = fillings.size(2)
        take = (torch.arange(pos.size(2), device=pos.device) < k.view(N, 1, 1)).unsqueeze(2)  # (N, 1, 1, k_max)
        pos_p = pos.unsqueeze(2).expand(N, B, P, -1)
        current = beams.unsqueeze(2).expand(N, B, P, L)
        seqs = current.scatter(3, pos_p, torch.where(take, fillings, current.gather(3, pos_p))).reshape(N, B * P, L)
        left = hidden.unsqueeze(2).expand(N, B, P, L)
        left = left.scatter(3, pos_p, left.gather(3, pos_p) & ~take).reshape(N, B * P, L)
        total = (scores.unsqueeze(2) + filling_scores.double()).view(N, B * P)
        total = _drop_duplicates(total, seqs)
        scores, index = total.topk(B, dim=1)  # B * P >= B proposals, the dead ones at -inf
        beams = seqs.gather(1, index.unsqueeze(2).expand(N, B, L))
        hidden = left.gather(1, index.unsqueeze(2).expand(N, B, L))
    return beam_to_nbest(scores, beams, lens.to(beams.device).view(N, 1).expand(N, B))


def greedy_nbest(tokens: torch.Tensor, lens: torch.Tensor, scores: torch.Tensor) -> List[NBest]:
    """:func:`mask_predict_greedy`'s (N, L) tokens, (N,) lens and (N,) scores as one-hypothesis n-bests."""
    return [[Hypothesis(t[:n], s)] for t, n, s in zip(tokens.tolist(), lens.tolist(), scores.tolist())]


def mask_predict_search(
    predict: Predict, tokens: torch.Tensor, lens: torch.Tensor, options: MaskPredictOptions, beam: bool
) -> List[NBest]:
    """:func:`mask_predict_beam` (beam=True) or :func:`mask_predict_greedy` as n-best lists."""
    if beam:
        return mask_predict_beam(predict, tokens, lens, options.iterations, options.beam_size)
    filled, scores = mask_predict_greedy(predict, tokens, lens, options.iterations)
    return greedy_nbest(filled, lens, scores)


def check_options(options: MaskPredictOptions) -> MaskPredictOptions:
    """`options`, or a ValueError naming the decode.py option whose value is out of range."""
    if not 0.0 <= options.threshold <= 1.0:  # NaN fails too
        raise ValueError(f"--mask-threshold must be in [0, 1] (a posterior; 0 re-predicts nothing), "
                         f"got {options.threshold}")
    if options.iterations < 1:
        raise ValueError(f"--mask-iterations must be >= 1 (rounds of re-prediction), got {options.iterations}")
    if options.beam_size < 1:
        raise ValueError(f"--beam-size must be >= 1, got {options.beam_size}")
    return options
