"""Joint CIF + CTC decoding: one head's n-best rescored with the other head's log-likelihood.

- `joint_beam_search`: the decoder head's beam search (`--beam-size`, `--max-sym-per-frame`), its
  n-best rescored as  beam score + ctc_weight * log p_CTC(y). With `--ctc-weight 0` it is the
  plain beam search.
- `cif_rescoring` (wenet's attention rescoring for CIF): the CTC head's prefix-beam n-best
  rescored as  log p_CIF(y) + ctc_weight * log p_CTC(y) (`CifModel.hypothesis_log_probs`): for
  the transducer p_CIF sums every alignment of y over the CIF vectors at inference; a CE head
  over CTC-cut vectors scores each y on vectors cut at its own forced alignment. A CE head over
  integrate-and-fire vectors has one fixed set of vectors for every hypothesis and one token per
  vector, so it does not offer the method.

Hypotheses are scored in one batch per utterance batch. The names do not start with `ctc_`:
only methods that use the CTC head alone do.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F

from icefall_cif.decode.beam_search import Hypothesis, NBest, rerank_nbest
from icefall_cif.model_contract import CifModel
from icefall_cif.utils import pad_token_ids


def _expand(x: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    return x.index_select(0, torch.as_tensor(index, dtype=torch.int64, device=x.device))


def _padded(seqs: List[List[int]], pad: int, device: torch.device):
    """(H, max len) padded ids and their (H,) lengths."""
    return pad_token_ids(seqs, pad, device), torch.tensor([len(s) for s in seqs], dtype=torch.int64, device=device)


def ctc_log_likelihoods(
    model: CifModel, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, seqs: List[List[int]],
    utt_index: Sequence[int],
) -> torch.Tensor:
    """(H,) log p_CTC(seqs[h] | utterance utt_index[h]), -inf where no CTC path exists."""
    log_probs = _expand(model.ctc_log_probs(encoder_out), utt_index)
    log_probs = log_probs.to(torch.promote_types(log_probs.dtype, torch.float32))
    lens = _expand(encoder_out_lens, utt_index)
    y, y_lens = _padded(seqs, model.blank_id, encoder_out.device)
    valid = torch.arange(y.size(1), device=y.device) < y_lens.unsqueeze(1)
    nll = F.ctc_loss(
        log_probs.permute(1, 0, 2), y[valid].cpu(), lens.cpu(), y_lens.cpu(),
        blank=model.blank_id, reduction="none", zero_infinity=False,
    )
    return -nll.to(torch.float64)


def cif_log_likelihoods(
    model: CifModel, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, seqs: List[List[int]],
    utt_index: Sequence[int],
) -> torch.Tensor:
    """(H,) log p_CIF(seqs[h] | utterance utt_index[h]) (`CifModel.hypothesis_log_probs`)."""
    y, y_lens = _padded(seqs, model.blank_id, encoder_out.device)
    index = torch.as_tensor(utt_index, dtype=torch.int64, device=y.device)
    return model.hypothesis_log_probs(encoder_out, encoder_out_lens, y, y_lens, index).to(torch.float64)


def rescore_with_ctc(
    model: CifModel, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, nbest: List[NBest],
    ctc_weight: float, num_paths: int,
) -> List[List[int]]:
    """`joint_beam_search`'s choice: per utterance, the best of the top `num_paths` hypotheses by
    beam score + ctc_weight * log p_CTC (ctc_weight 0: the beam's own best)."""

    def totals(flat: List[Hypothesis], utt_index: List[int]) -> List[float]:
        if ctc_weight == 0:
            return [h.score for h in flat]
        ctc = ctc_log_likelihoods(model, encoder_out, encoder_out_lens, [h.tokens for h in flat], utt_index)
        return [h.score + ctc_weight * c for h, c in zip(flat, ctc.tolist())]

    return rerank_nbest(nbest, num_paths, totals)


def add_ctc_scores(
    model: CifModel, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, nbest: List[NBest],
    ctc_weight: float,
) -> List[NBest]:
    """Every hypothesis' score plus ctc_weight * log p_CTC(its tokens), each n-best re-sorted
    (the mask-predict beams' final ranking; ctc_weight 0 leaves them as they are)."""
    if ctc_weight == 0:
        return nbest
    flat = [h for hyps in nbest for h in hyps]
    if not flat:
        return nbest
    utt_index = [i for i, hyps in enumerate(nbest) for _ in hyps]
    ctc = ctc_log_likelihoods(model, encoder_out, encoder_out_lens, [h.tokens for h in flat], utt_index).tolist()
    rescored: List[NBest] = [[] for _ in nbest]
    for i, h, c in zip(utt_index, flat, ctc):
        rescored[i].append(Hypothesis(h.tokens, h.score + ctc_weight * c))
    return [sorted(hyps, key=lambda h: h.score, reverse=True) for hyps in rescored]


def rescore_with_cif(
    model: CifModel, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, ctc_nbest: List[NBest],
    ctc_weight: float, num_paths: int,
) -> List[List[int]]:
    """`cif_rescoring`'s choice: per utterance, the best of the top `num_paths` CTC prefix-beam
    hypotheses by log p_CIF + ctc_weight * (their CTC prefix score)."""

    def totals(flat: List[Hypothesis], utt_index: List[int]) -> List[float]:
        cif = cif_log_likelihoods(model, encoder_out, encoder_out_lens, [h.tokens for h in flat], utt_index)
        return [c + ctc_weight * h.score for h, c in zip(flat, cif.tolist())]

    return rerank_nbest(ctc_nbest, num_paths, totals)
