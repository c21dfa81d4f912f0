"""Batched beam searches over CIF vectors, LM shallow fusion and n-best LM rescoring.

- `modified_beam_search` (cif_transducer): icefall's modified beam search with the CIF vectors
  as frames, hypotheses with the same token sequence merged by log-add; at most one symbol per
  frame as in icefall, or up to `max_sym_per_frame` as greedy search allows.
- `ce_beam_search` (cif_ce_ar / cif_ce_nar): label-synchronous beam, one token per CIF vector.
  The AR decoder is re-run per step with its cache reordered; the NAR decoder's positions are
  independent, so its beam is over per-position log-probs and only an LM makes it differ from
  greedy search.
- `lm` + `lm_scale` turn either into shallow fusion: each token's score gets
  `lm_scale * log p_LM(token | history)` before the top-k, and the final scores get the LM's
  `</s>` term.
- `rescore_nbest`: adds `scale * log p_LM(sentence)` to the n-best of any beam search.

The LM scores the text a hypothesis stands for. Ids that are not text (blank, `<sos/eos>`:
never training targets, but a CE decoder can emit them and `Tokenizer.decode` drops them) do
not advance the LM, so it never sees a sentence end in the middle of a hypothesis, and they
are scored with the lowest LM log-prob of their row: skipping a token must not look cheaper
to the LM than saying one (the LM's usual bias towards deletions).

Beams are dense tensors, (N, K) scores and (N, K, L) tokens padded with -1, so every step
works on the whole batch; empty beam slots hold a score of -inf. The only Python loop is over
steps (CIF vectors). An LM is any object with the state API of `icefall_cif.lm`.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Tuple

import torch
import torch.nn as nn

from icefall_cif.lm import select_lm_state, where_lm_state

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One search result: token ids and total log-score (acoustic + fused LM terms)."""

    tokens: List[int]
    score: float


NBest = List[Hypothesis]


# ---------------------------------------------------------------------- beam helpers
def init_beam(
    batch_size: int, beam_size: int, max_len: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An empty hypothesis in slot 0 of each utterance, slots 1.. unused.

    Returns:
      scores (N, K) (0 in slot 0, -inf elsewhere), tokens (N, K, max_len) all -1,
      lens (N, K) zeros.
    """
    scores = torch.full((batch_size, beam_size), NEG_INF, device=device, dtype=dtype)
    scores[:, 0] = 0.0
    tokens = torch.full((batch_size, beam_size, max_len), -1, dtype=torch.int64, device=device)
    lens = torch.zeros(batch_size, beam_size, dtype=torch.int64, device=device)
    return scores, tokens, lens


def last_tokens(tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """(N, K) last token of each hypothesis, -1 when empty; tokens (N, K, L), lens (N, K)."""
    if tokens.size(2) == 0:
        return torch.full_like(lens, -1)
    last = tokens.gather(2, (lens - 1).clamp(min=0).unsqueeze(2)).squeeze(2)
    return torch.where(lens > 0, last, torch.full_like(last, -1))


def one_token_extensions(tokens: torch.Tensor, lens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Which hypotheses are another one plus one token.

    Args:
      tokens: (N, K, L) padded with -1; lens: (N, K); valid: (N, K) bool (live slots).
    Returns:
      (N, K, K) bool M with M[n, a, b] True iff hyp a == hyp b + [last token of a].
    """
    prefix = tokens.scatter(2, (lens - 1).clamp(min=0).unsqueeze(2), -1)
    same = (prefix.unsqueeze(2) == tokens.unsqueeze(1)).all(dim=3)
    return same & (lens > 0).unsqueeze(2) & valid.unsqueeze(2) & valid.unsqueeze(1)


def merge_extensions(
    stay: torch.Tensor, extend: torch.Tensor, matches: torch.Tensor, last: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-add the extension b + [c] into the hypothesis a that already equals it.

    Args:
      stay: (N, K) scores of keeping each hypothesis' token sequence unchanged.
      extend: (N, K, V) scores of appending token v to hypothesis k.
      matches: (N, K, K) from `one_token_extensions`.
      last: (N, K) last token of each hypothesis (-1 when empty).
    Returns:
      stay with the matching extension scores log-added, and extend with those entries
      set to -inf (they now live in `stay`), so that every candidate is a distinct sequence.
    """
    N, K, _ = extend.shape
    index = last.clamp(min=0).unsqueeze(1).expand(N, K, K)  # [n, b, a] = last[n, a]
    from_b = extend.gather(2, index).transpose(1, 2)  # [n, a, b] = extend[n, b, last[n, a]]
    from_b = from_b.masked_fill(~matches, NEG_INF)
    stay = torch.logaddexp(stay, torch.logsumexp(from_b, dim=2))
    # Several a can share a last token, so count hits rather than scatter booleans.
    hits = torch.zeros(extend.shape, dtype=torch.int64, device=extend.device)
    hits.scatter_add_(2, index, matches.transpose(1, 2).to(torch.int64))
    return stay, extend.masked_fill(hits > 0, NEG_INF)


def reorder(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Rows of (N, K, ...) `x` picked by (N, K') parent slot indices -> (N, K', ...)."""
    index = parent.view(*parent.shape, *([1] * (x.dim() - 2))).expand(*parent.shape, *x.shape[2:])
    return x.gather(1, index)


def append_tokens(
    tokens: torch.Tensor, lens: torch.Tensor, new: torch.Tensor, emit: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Append (N, K) `new` to the hypotheses where (N, K) bool `emit` is True."""
    position = lens.clamp(max=tokens.size(2) - 1).unsqueeze(2)
    current = tokens.gather(2, position).squeeze(2)
    tokens = tokens.scatter(2, position, torch.where(emit, new, current).unsqueeze(2))
    return tokens, lens + emit.to(lens.dtype)


def beam_to_nbest(scores: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor) -> List[NBest]:
    """Live hypotheses of each utterance, best first; scores (N, K), tokens (N, K, L), lens (N, K)."""
    order = scores.argsort(dim=1, descending=True)
    scores, tokens, lens = reorder(scores, order), reorder(tokens, order), reorder(lens, order)
    out = []
    for s_row, t_row, l_row in zip(scores.tolist(), tokens.tolist(), lens.tolist()):
        out.append([Hypothesis(t[:n], s) for s, t, n in zip(s_row, t_row, l_row) if s != NEG_INF])
    return out


def best_hyps(nbest: List[NBest]) -> List[List[int]]:
    """The first (best) hypothesis of each n-best list."""
    return [hyps[0].tokens if hyps else [] for hyps in nbest]


def _score_dtype(x: torch.Tensor) -> torch.dtype:
    """Scores add up over many steps: float32 at least, float64 for a float64 model."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_beam_size(beam_size: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")


def _flat_parent_index(parent: torch.Tensor, num_slots: Optional[int] = None) -> torch.Tensor:
    """(N, K) parent slots -> (N*K,) row indices into (N*M, ...) per-hypothesis tensors, where
    M = `num_slots` is the number of slots the parents are drawn from (default K)."""
    N, K = parent.shape
    M = K if num_slots is None else num_slots
    return (torch.arange(N, device=parent.device).unsqueeze(1) * M + parent).view(-1)


def _text_tokens(vocab_size: int, blank_id: int, lm, device: torch.device) -> torch.Tensor:
    """(V,) bool, False at the ids that are not text: blank and the LM's <sos/eos>."""
    mask = torch.ones(vocab_size, dtype=torch.bool, device=device)
    mask[blank_id] = False
    mask[lm.sos_id] = False
    mask[lm.eos_id] = False
    return mask


def _lm_term(lm_log_probs: torch.Tensor, is_text: torch.Tensor) -> torch.Tensor:
    """(..., V) LM log-probs with the non-text ids set to the row's lowest log-prob."""
    return torch.where(is_text, lm_log_probs, lm_log_probs.min(dim=-1, keepdim=True).values)


def _advance_lm(lm, lm_state, parents: torch.Tensor, new_token: torch.Tensor, advances: torch.Tensor):
    """LM states of the new beam: each parent's state, advanced by `new_token` where `advances`.

    Args:
      parents: (B*K,) flat index of each new hypothesis' parent.
      new_token: (B, K) token each new hypothesis appended; advances: (B, K) bool, False where
        it appended nothing or a non-text id (blank, <sos/eos>), which the LM never sees.
    """
    kept = select_lm_state(lm_state, parents)
    advanced = lm.advance(kept, new_token.view(-1))
    return where_lm_state(advances.view(-1), advanced, kept)


def _lm_eos_scores(lm, lm_state, scores: torch.Tensor, lm_scale: float) -> torch.Tensor:
    """Add lm_scale * log p_LM(</s> | hypothesis) to (N, K) scores."""
    return scores + lm_scale * lm_state[0][:, lm.eos_id].view_as(scores)


# ---------------------------------------------------------------------- transducer
@dataclass
class _Beam:
    """K hypotheses per utterance of the transducer search.

    scores (N, K), -inf in empty slots; tokens (N, K, L) padded with -1; lens (N, K);
    context (N, K, context_size) the decoder's input; lm_state rows (N*K, ...) or None.
    """

    scores: torch.Tensor
    tokens: torch.Tensor
    lens: torch.Tensor
    context: torch.Tensor
    lm_state: Optional[tuple]


def _pick(beam: _Beam, parent: torch.Tensor) -> _Beam:
    """The hypotheses in (N, K') slots `parent` of `beam`, scores unchanged."""
    lm_state = None
    if beam.lm_state is not None:
        lm_state = select_lm_state(beam.lm_state, _flat_parent_index(parent, beam.scores.size(1)))
    return _Beam(
        reorder(beam.scores, parent), reorder(beam.tokens, parent), reorder(beam.lens, parent),
        reorder(beam.context, parent), lm_state,
    )


def _concat(a: _Beam, b: _Beam) -> _Beam:
    """The slots of `a` then those of `b`, per utterance: (N, Ka + Kb)."""
    lm_state = None
    if a.lm_state is not None:
        N = a.scores.size(0)
        lm_state = tuple(
            torch.cat([x.view(N, -1, *x.shape[1:]), y.view(N, -1, *y.shape[1:])], dim=1).flatten(0, 1)
            for x, y in zip(a.lm_state, b.lm_state)
        )
    return _Beam(
        torch.cat([a.scores, b.scores], dim=1), torch.cat([a.tokens, b.tokens], dim=1),
        torch.cat([a.lens, b.lens], dim=1), torch.cat([a.context, b.context], dim=1), lm_state,
    )


def _best_distinct(a: _Beam, b: _Beam, K: int) -> _Beam:
    """The K best distinct token sequences of `a` and `b`, equal sequences merged by log-add."""
    both = _concat(a, b)
    valid = both.scores > NEG_INF
    same = (both.tokens.unsqueeze(2) == both.tokens.unsqueeze(1)).all(dim=3)
    same = same & valid.unsqueeze(2) & valid.unsqueeze(1)  # (N, M, M)
    merged = torch.logsumexp(both.scores.unsqueeze(1).masked_fill(~same, NEG_INF), dim=2)
    # Only the first slot of each sequence keeps it (the lower triangle finds earlier copies).
    first = ~torch.tril(same, diagonal=-1).any(dim=2)
    both.scores = torch.where(valid & first, merged, torch.full_like(merged, NEG_INF))
    top_scores, parent = both.scores.topk(K, dim=1)
    best = _pick(both, parent)
    best.scores = top_scores
    return best


def _where(mask: torch.Tensor, a: _Beam, b: _Beam) -> _Beam:
    """Per utterance, `a` where (N,) bool `mask` is True, else `b`."""
    lm_state = None
    if a.lm_state is not None:
        K = a.scores.size(1)
        lm_state = where_lm_state(mask.repeat_interleave(K), a.lm_state, b.lm_state)
    m2, m3 = mask.view(-1, 1), mask.view(-1, 1, 1)
    return _Beam(
        torch.where(m2, a.scores, b.scores), torch.where(m3, a.tokens, b.tokens),
        torch.where(m2, a.lens, b.lens), torch.where(m3, a.context, b.context), lm_state,
    )


@torch.no_grad()
def modified_beam_search(
    decoder: nn.Module,
    joiner: nn.Module,
    cif: torch.Tensor,
    cif_lens: torch.Tensor,
    vocab_size: int,
    beam_size: int = 4,
    lm=None,
    lm_scale: float = 0.0,
    max_sym_per_frame: int = 1,
) -> List[NBest]:
    """Modified beam search of the CIF transducer, optionally with LM shallow fusion.

    At each CIF vector every hypothesis is extended by blank or by one token; the
    candidates are scored with the joiner's log-softmax (+ `lm_scale` * LM log-prob for
    tokens), identical token sequences (h + blank and h' + token with h' + token == h) are
    merged by log-add, and the best `beam_size` distinct sequences are kept. Unlike icefall,
    which merges after its top-k and may keep fewer, the merge happens before the top-k.

    With `max_sym_per_frame` S > 1 a hypothesis may emit up to S tokens from one CIF vector,
    as greedy search does. CIF fires about once per token, so a vector often has to carry two
    when the CIF layer fired too few times; with S = 1 those tokens are lost. Each vector is
    then searched in up to S rounds: blank finishes a hypothesis for this vector, a token
    keeps it open for another round (the best K open ones go on), and in round S every
    extension finishes. The finished ones are merged by token sequence and the best K kept;
    an open hypothesis already below the K-th finished score is dropped, since scores only
    fall (exact without an LM, whose `</s>` term comes at the end).

    Args:
      decoder: the prediction network (`blank_id`, `context_size`, called on (N, context_size)
        token ids with need_pad=False as in icefall's stateless decoder).
      joiner: `encoder_proj`, `decoder_proj` and a call with project_input=False giving logits.
      cif: (N, U, C) CIF vectors (the transducer's frames); cif_lens (N,).
      vocab_size: number of tokens, blank included.
      beam_size: K.
      lm: optional LM (`icefall_cif.lm` state API) for shallow fusion.
      lm_scale: its weight.
      max_sym_per_frame: S, the most tokens one CIF vector may emit (icefall's search: 1).
    Returns:
      per utterance, its final hypotheses best first.
    """
    _check_beam_size(beam_size)
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    blank, context_size = decoder.blank_id, decoder.context_size
    N, U, _ = cif.shape
    K = beam_size
    device = cif.device

    scores, tokens, lens = init_beam(N, K, U * max_sym_per_frame, device, _score_dtype(cif))
    # As in greedy search: the first prediction sees [no token] * (context_size - 1) + [blank].
    context = torch.full((N, K, context_size), -1, dtype=torch.int64, device=device)
    context[:, :, -1] = blank
    beam = _Beam(scores, tokens, lens, context, None)
    enc = joiner.encoder_proj(cif)  # (N, U, J)
    if lm is not None:
        beam.lm_state = lm.init_state(N * K, device)
        is_text = _text_tokens(vocab_size, blank, lm, device)

    def extension_scores(hyps: _Beam, t: int) -> torch.Tensor:
        """(N, K, V) score of each hypothesis followed by each symbol at CIF vector t."""
        dec = joiner.decoder_proj(decoder(hyps.context.view(N * K, context_size), need_pad=False))
        logits = joiner(enc[:, t].unsqueeze(1), dec.view(N, K, -1), project_input=False)
        cand = hyps.scores.unsqueeze(2) + logits.log_softmax(dim=-1)
        if lm is not None:
            lm_term = _lm_term(hyps.lm_state[0].view(N, K, -1).to(cand.dtype), is_text)
            # Blank is no emission: it is not scored by the LM at all.
            lm_term[:, :, blank] = 0.0
            cand = cand + lm_scale * lm_term
        return cand

    def extend(hyps: _Beam, cand: torch.Tensor) -> _Beam:
        """The best K of the (N, K, V) candidates; a blank candidate keeps its sequence."""
        V = cand.size(2)
        top_scores, top_index = cand.view(N, K * V).topk(K, dim=1)
        parent, new_token = top_index // V, top_index % V
        emit = (new_token != blank) & (top_scores > NEG_INF)
        tokens, lens = append_tokens(reorder(hyps.tokens, parent), reorder(hyps.lens, parent), new_token, emit)
        kept_context = reorder(hyps.context, parent)
        shifted = torch.cat([kept_context[:, :, 1:], new_token.unsqueeze(2)], dim=2)
        context = torch.where(emit.unsqueeze(2), shifted, kept_context)
        lm_state = None
        if lm is not None:
            lm_state = _advance_lm(lm, hyps.lm_state, _flat_parent_index(parent), new_token, emit & is_text[new_token])
        return _Beam(top_scores, tokens, lens, context, lm_state)

    for t in range(U):
        open_hyps, finished = beam, None
        for round_ in range(max_sym_per_frame):
            cand = extension_scores(open_hyps, t)
            last_round = round_ == max_sym_per_frame - 1
            if last_round:
                valid = open_hyps.scores > NEG_INF
                matches = one_token_extensions(open_hyps.tokens, open_hyps.lens, valid)
                last = last_tokens(open_hyps.tokens, open_hyps.lens)
                stay, cand = merge_extensions(cand[:, :, blank], cand, matches, last)
                cand[:, :, blank] = stay
                done = extend(open_hyps, cand)
            else:
                done = _Beam(cand[:, :, blank].clone(), open_hyps.tokens, open_hyps.lens, open_hyps.context,
                             open_hyps.lm_state)
            finished = done if finished is None else _best_distinct(finished, done, K)
            if last_round:
                break
            cand[:, :, blank] = NEG_INF
            open_hyps = extend(open_hyps, cand)
            kth_finished = finished.scores.topk(K, dim=1).values[:, -1:]
            open_hyps.scores = open_hyps.scores.masked_fill(open_hyps.scores < kth_finished, NEG_INF)
            if not bool((open_hyps.scores > NEG_INF).any()):
                break
        # Utterances past their last CIF vector keep their beam as it is.
        beam = _where(t < cif_lens, finished, beam)

    scores = beam.scores
    if lm is not None:
        scores = _lm_eos_scores(lm, beam.lm_state, scores, lm_scale)
    return beam_to_nbest(scores, beam.tokens, beam.lens)


# ---------------------------------------------------------------------- CE decoders
class LabelSyncScorer(Protocol):
    """The per-step scores of a CE decoder for :func:`ce_beam_search` (one per CE head).

    The beam has N utterances of K slots; the scorer keeps whatever decoder state the slots
    need (the AR decoder's cache and previous tokens) and follows the beam's choices.
    """

    def log_probs(self, u: int) -> torch.Tensor:
        """(N, K, V) log-probs of token u for each beam slot."""

    def select(self, parent: torch.Tensor, tokens: torch.Tensor) -> None:
        """Slot k now continues slot `parent` (flat index n * K + p, shape (N * K,)) with
        `tokens` (N, K) as token u."""


@torch.no_grad()
def ce_beam_search(
    scorer: LabelSyncScorer,
    cif: torch.Tensor,
    cif_lens: torch.Tensor,
    blank_id: int,
    vocab_size: int,
    beam_size: int = 4,
    lm=None,
    lm_scale: float = 0.0,
) -> List[NBest]:
    """Label-synchronous beam search of a CE decoder, optionally with LM fusion.

    One token per CIF vector, so every hypothesis of an utterance has exactly its CIF length:
    there is no end-of-sentence decision for length normalisation to correct, and the search
    ranks by the summed log-probs.

    Args:
      scorer: the head's per-step scores for a beam of `beam_size` slots.
      cif: (N, U, C) CIF vectors (their shape, device and dtype size the beam); cif_lens (N,).
      blank_id: the id an utterance past its last vector keeps its beam with.
      vocab_size: number of tokens, blank included.
      beam_size: K.
      lm: optional LM (`icefall_cif.lm` state API) for shallow fusion.
      lm_scale: its weight.
    Returns:
      per utterance, its final hypotheses best first.
    """
    _check_beam_size(beam_size)
    N, U, _ = cif.shape
    K = beam_size
    device = cif.device
    scores, tokens, lens = init_beam(N, K, U, device, _score_dtype(cif))
    if lm is not None:
        lm_state = lm.init_state(N * K, device)
        is_text = _text_tokens(vocab_size, blank_id, lm, device)

    for u in range(U):
        active = (u < cif_lens).view(N, 1)
        cand = scores.unsqueeze(2) + scorer.log_probs(u)
        if lm is not None:
            cand = cand + lm_scale * _lm_term(lm_state[0].view(N, K, -1).to(cand.dtype), is_text)
        # Utterances with fewer CIF vectors are complete: keep their beam unchanged.
        frozen = torch.full_like(cand, NEG_INF)
        frozen[:, :, blank_id] = scores
        cand = torch.where(active.unsqueeze(2), cand, frozen)

        V = cand.size(2)
        top_scores, top_index = cand.view(N, K * V).topk(K, dim=1)
        parent, new_token = top_index // V, top_index % V
        emit = active & (top_scores > NEG_INF)

        scores = top_scores
        tokens, lens = append_tokens(reorder(tokens, parent), reorder(lens, parent), new_token, emit)
        flat = _flat_parent_index(parent)
        scorer.select(flat, new_token)
        if lm is not None:
            lm_state = _advance_lm(lm, lm_state, flat, new_token, emit & is_text[new_token])

    if lm is not None:
        scores = _lm_eos_scores(lm, lm_state, scores, lm_scale)
    return beam_to_nbest(scores, tokens, lens)


# ---------------------------------------------------------------------- n-best rescoring
@torch.no_grad()
def lm_hypothesis_scores(lm, seqs: List[List[int]], blank_id: int, device: torch.device) -> torch.Tensor:
    """LM log-probs of hypotheses, `</s>` included, by the fusion rules of this module.

    For hypotheses made of text ids only this equals `lm.score_sequences(seqs)`.

    Args:
      lm: an `icefall_cif.lm` LM.
      seqs: B token-id lists.
      blank_id: the model's blank (not text).
    Returns:
      (B,) natural log-probs.
    """
    B = len(seqs)
    width = max((len(s) for s in seqs), default=0)
    padded = torch.full((B, width), -1, dtype=torch.int64)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
    padded = padded.to(device)
    state = lm.init_state(B, device)
    is_text = _text_tokens(state[0].size(1), blank_id, lm, device)
    total = torch.zeros(B, device=device)
    for j in range(width):
        tok = padded[:, j]
        present = tok >= 0
        term = _lm_term(state[0].float(), is_text).gather(1, tok.clamp(min=0).unsqueeze(1)).squeeze(1)
        total = total + torch.where(present, term, torch.zeros_like(term))
        state = where_lm_state(present & is_text[tok.clamp(min=0)], lm.advance(state, tok.clamp(min=0)), state)
    return total + state[0][:, lm.eos_id].float()


@torch.no_grad()
def rerank_nbest(
    nbest: List[NBest], num_paths: int, totals: Callable[[List[Hypothesis], List[int]], List[float]]
) -> List[List[int]]:
    """Pick, per utterance, the best of its top `num_paths` hypotheses by a new score.

    Args:
      nbest: per utterance, hypotheses best first (from any beam search).
      num_paths: how many hypotheses per utterance to rerank (`--num-paths`).
      totals: given every kept hypothesis (flattened, utterance by utterance) and the index of
        its utterance, one new score per hypothesis; called once, on the whole batch.
    Returns:
      the chosen token ids per utterance ([] for an utterance without hypotheses).
    """
    if num_paths < 1:
        raise ValueError(f"num_paths must be >= 1, got {num_paths}")
    kept = [hyps[:num_paths] for hyps in nbest]
    flat = [h for hyps in kept for h in hyps]
    if not flat:
        return [[] for _ in nbest]
    scores = totals(flat, [i for i, hyps in enumerate(kept) for _ in hyps])
    out, start = [], 0
    for hyps in kept:
        own = scores[start : start + len(hyps)]
        start += len(hyps)
        out.append(hyps[max(range(len(hyps)), key=own.__getitem__)].tokens if hyps else [])
    return out


def rescore_nbest(
    nbest: List[NBest], lm, scale: float, num_paths: int, blank_id: int = 0
) -> List[List[int]]:
    """Pick, per utterance, the best of its top `num_paths` hypotheses by score + scale * LM.

    Args:
      nbest: per utterance, hypotheses best first (from any beam search).
      lm: an `icefall_cif.lm` LM.
      scale: LM weight (`--nbest-scale`).
      num_paths: how many hypotheses per utterance to rescore (`--num-paths`).
      blank_id: the model's blank.
    Returns:
      the chosen token ids per utterance.
    """

    def totals(flat: List[Hypothesis], utt_index: List[int]) -> List[float]:
        device = lm.init_state(1)[0].device
        lm_scores = lm_hypothesis_scores(lm, [h.tokens for h in flat], blank_id, device).tolist()
        return [h.score + scale * s for h, s in zip(flat, lm_scores)]

    return rerank_nbest(nbest, num_paths, totals)
