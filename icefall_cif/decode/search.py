"""`decode_batch`: one entry point from `--decoding-method` to token ids, for the decode loop.

The methods a model offers come from its decoder head (`icefall_cif.model_contract.decoding_methods`):

| method | offered by |
| --- | --- |
| greedy_search | every head (mask_ctc: its mask_ctc_greedy) |
| the head's `beam_methods` (e.g. modified_beam_search, beam_search) and their `_lm_shallow_fusion` forms | the head |
| joint_beam_search (the head's beam n-best + `ctc_weight` x CTC log-likelihood) | heads with beam methods (not mask_ctc) |
| cif_rescoring (the CTC prefix-beam n-best rescored by the CIF decoder, see rescoring.py) | cif_transducer; cif_ce_ar and cif_ce_nar with `--cif-segmentation ctc` |
| ctc_greedy_search, ctc_prefix_beam_search | every model (the CTC head) |
| the head's `mask_predict_methods` (mask_ctc_greedy, mask_ctc_beam_search; nar_mask_predict, nar_beam_search) | mask_ctc; cif_ce_nar |

A mask-predict search (`mask_predict.py`) re-predicts the tokens of a first guess whose confidence is
below `params.mask_threshold`, in at most `params.mask_iterations` rounds (by default the head's
`mask_predict_defaults`); its beam form (a name
with `beam_search`, `params.beam_size` hypotheses) ranks its final n-best by score +
`params.ctc_weight` x log p_CTC(y).

With `params.nbest_scale > 0` the n-best of a beam method (`params.num_paths` of them) is
rescored with the LM: score + nbest_scale * log p_LM(sentence).
"""
from typing import List, Optional

import torch

from icefall_cif.decode.beam_search import NBest, best_hyps, rescore_nbest
from icefall_cif.decode.ctc import ctc_prefix_beam_search
from icefall_cif.decode.greedy import ctc_greedy_search, greedy_search
from icefall_cif.decode.mask_predict import MaskPredictOptions, check_options
from icefall_cif.decode.rescoring import add_ctc_scores, rescore_with_cif, rescore_with_ctc
from icefall_cif.model_contract import CIF_RESCORING_METHOD, JOINT_BEAM_METHOD, CifModel, decoding_methods
from icefall_cif.utils import AttributeDict

DEFAULTS = dict(beam_size=4, lm_scale=0.3, nbest_scale=0.0, num_paths=4, max_sym_per_frame=3, ctc_weight=0.5)
JOINT_METHODS = (JOINT_BEAM_METHOD, CIF_RESCORING_METHOD)


def search_options(params: AttributeDict, head) -> AttributeDict:
    """The search options of `params`, a missing or None one taking its default: DEFAULTS, and
    the head's `mask_predict_defaults` for mask_threshold and mask_iterations."""
    defaults = dict(DEFAULTS, mask_threshold=head.mask_predict_defaults.threshold,
                    mask_iterations=head.mask_predict_defaults.iterations)
    return AttributeDict({k: v if params.get(k) is None else params[k] for k, v in defaults.items()})


def is_beam_method(method: str) -> bool:
    """Whether a method keeps an n-best (so that n-best LM rescoring applies)."""
    return "beam_search" in method and method not in JOINT_METHODS


@torch.no_grad()
def beam_search(
    model: CifModel,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam_size: int = 4,
    lm=None,
    lm_scale: float = 0.0,
    max_sym_per_frame: int = 1,
) -> List[NBest]:
    """The model's head's beam search over its CIF vectors (with LM fusion when `lm` is given).

    Args:
      model: a `CifModel` in eval mode.
      encoder_out: (N, T', C) from `model.forward_encoder`; encoder_out_lens (N,).
      beam_size, lm, lm_scale: the beam width K and the fused LM with its weight.
      max_sym_per_frame: most tokens per CIF vector (heads with one token per vector ignore
        it); 1 is icefall's modified beam search, decode.py passes its --max-sym-per-frame.
    Returns:
      per utterance, its hypotheses best first.
    """
    cif_out = model.forward_cif(encoder_out, encoder_out_lens)
    return model.head.beam_search(
        cif_out.cif, cif_out.cif_lens, encoder_out, encoder_out_lens, beam_size, lm, lm_scale, max_sym_per_frame,
        **cif_out.head_inputs(),
    )


@torch.no_grad()
def mask_predict(
    model: CifModel, method: str, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, opts: AttributeDict
) -> List[NBest]:
    """The head's mask-predict search `method` (one of its `mask_predict_methods`); a beam's
    n-best re-ranked by score + ctc_weight * log p_CTC.

    Args:
      encoder_out: (N, T', C); encoder_out_lens (N,).
      opts: mask_threshold, mask_iterations, beam_size, ctc_weight.
    """
    options = check_options(MaskPredictOptions(opts.mask_threshold, opts.mask_iterations, opts.beam_size))
    cif_out = model.forward_cif(encoder_out, encoder_out_lens)
    ctc = {"ctc_log_probs": model.ctc_log_probs(encoder_out)} if model.head.reads_ctc else {}
    nbest = model.head.mask_predict_search(
        method, cif_out.cif, cif_out.cif_lens, encoder_out, encoder_out_lens, options, **ctc, **cif_out.head_inputs()
    )
    if "beam_search" in method:
        nbest = add_ctc_scores(model, encoder_out, encoder_out_lens, nbest, opts.ctc_weight)
    return nbest


@torch.no_grad()
def decode_batch(
    method: str,
    model: CifModel,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    params: AttributeDict,
    lm: Optional[object] = None,
) -> List[List[int]]:
    """Decode one batch with a named method.

    Args:
      method: `--decoding-method`, one of `decoding_methods(model)` (see the module table).
      model: a `CifModel` in eval mode.
      encoder_out: (N, T', C) from `model.forward_encoder`.
      encoder_out_lens: (N,) valid frames.
      params: options; reads beam_size, lm_scale, nbest_scale, num_paths, max_sym_per_frame,
        ctc_weight, mask_threshold, mask_iterations (missing or None ones take their defaults,
        `search_options`); the blank id is the model's.
      lm: an `icefall_cif.lm` LM; needed by *_lm_shallow_fusion and by nbest_scale > 0.
    Returns:
      N token-id lists.
    """
    offered = decoding_methods(model)
    if method not in offered:
        raise ValueError(
            f"--decoding-method {method} is not offered by decoder type '{model.head.name}'; use one of {offered}"
        )
    opts = search_options(params, model.head)
    rescore = opts.nbest_scale > 0
    if rescore and not is_beam_method(method):
        raise ValueError(
            f"--nbest-scale {opts.nbest_scale} rescores a beam's n-best, but {method} keeps one "
            f"hypothesis; use one of {[m for m in offered if is_beam_method(m)]} or --nbest-scale 0"
        )
    fusion = method.endswith("_lm_shallow_fusion")
    if (fusion or rescore) and lm is None:
        raise ValueError(
            f"--decoding-method {method}" + (f" with --nbest-scale {opts.nbest_scale}" if rescore else "")
            + " needs an LM: pass --lm-type and --lm-path (train one with local/train_lm.py)"
        )

    if method == "greedy_search" and model.head.greedy_mask_predict_method is not None:
        method = model.head.greedy_mask_predict_method
    if method == "greedy_search":
        return greedy_search(model, encoder_out, encoder_out_lens, max_sym_per_frame=opts.max_sym_per_frame)
    if method == "ctc_greedy_search":
        return ctc_greedy_search(model.ctc_log_probs(encoder_out), encoder_out_lens, model.blank_id)

    if method == CIF_RESCORING_METHOD:
        ctc_nbest = ctc_prefix_beam_search(
            model.ctc_log_probs(encoder_out), encoder_out_lens, opts.beam_size, model.blank_id
        )
        return rescore_with_cif(model, encoder_out, encoder_out_lens, ctc_nbest, opts.ctc_weight, opts.num_paths)
    if method == JOINT_BEAM_METHOD:
        nbest = beam_search(
            model, encoder_out, encoder_out_lens, beam_size=opts.beam_size, max_sym_per_frame=opts.max_sym_per_frame
        )
        return rescore_with_ctc(model, encoder_out, encoder_out_lens, nbest, opts.ctc_weight, opts.num_paths)

    if method == "ctc_prefix_beam_search":
        nbest = ctc_prefix_beam_search(
            model.ctc_log_probs(encoder_out), encoder_out_lens, opts.beam_size, model.blank_id
        )
    elif method in model.head.mask_predict_methods:
        nbest = mask_predict(model, method, encoder_out, encoder_out_lens, opts)
    else:
        nbest = beam_search(
            model, encoder_out, encoder_out_lens, beam_size=opts.beam_size, lm=lm if fusion else None,
            lm_scale=opts.lm_scale, max_sym_per_frame=opts.max_sym_per_frame,
        )
    if rescore:
        return rescore_nbest(nbest, lm, opts.nbest_scale, opts.num_paths, model.blank_id)
    return best_hyps(nbest)
