"""`decode_batch`: one entry point from `--decoding-method` to token ids, for the decode loop.

Methods and the decoder types they apply to:

| method | decoder types |
| --- | --- |
| greedy_search | all |
| beam_search, beam_search_lm_shallow_fusion | cif_ce_ar, cif_ce_nar |
| modified_beam_search, modified_beam_search_lm_shallow_fusion | cif_transducer |
| ctc_greedy_search, ctc_prefix_beam_search | all (the CTC head) |

With `params.nbest_scale > 0` the n-best of a beam method (`params.num_paths` of them) is
rescored with the LM: score + nbest_scale * log p_LM(sentence).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from icefall_cif.decode.beam_search import best_hyps, ce_beam_search, modified_beam_search, rescore_nbest
from icefall_cif.decode.ctc import ctc_prefix_beam_search
from icefall_cif.decode.greedy import ctc_greedy_search, greedy_search
from icefall_cif.utils import AttributeDict

ALL_TYPES = ("cif_transducer", "cif_ce_ar", "cif_ce_nar")
CE_TYPES = ("cif_ce_ar", "cif_ce_nar")

METHODS: Dict[str, Tuple[str, ...]] = {
    "greedy_search": ALL_TYPES,
    "beam_search": CE_TYPES,
    "beam_search_lm_shallow_fusion": CE_TYPES,
    "modified_beam_search": ("cif_transducer",),
    "modified_beam_search_lm_shallow_fusion": ("cif_transducer",),
    "ctc_greedy_search": ALL_TYPES,
    "ctc_prefix_beam_search": ALL_TYPES,
}
BEAM_METHODS = (
    "beam_search",
    "beam_search_lm_shallow_fusion",
    "modified_beam_search",
    "modified_beam_search_lm_shallow_fusion",
    "ctc_prefix_beam_search",
)

DEFAULTS = dict(beam_size=4, lm_scale=0.3, nbest_scale=0.0, num_paths=4, max_sym_per_frame=3)


def methods_for(decoder_type: str) -> List[str]:
    """The decoding methods that apply to a decoder type."""
    return [m for m, types in METHODS.items() if decoder_type in types]


@torch.no_grad()
def decode_batch(
    method: str,
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    params: AttributeDict,
    lm: Optional[object] = None,
) -> List[List[int]]:
    """Decode one batch with a named method.

    Args:
      method: `--decoding-method` (see the module table).
      model: a CifAsrModel in eval mode.
      encoder_out: (N, T', C) from `model.forward_encoder`.
      encoder_out_lens: (N,) valid frames.
      params: options; reads beam_size, lm_scale, nbest_scale, num_paths, max_sym_per_frame
        (missing ones take DEFAULTS); the blank id is the model's.
      lm: an `icefall_cif.lm` LM; needed by *_lm_shallow_fusion and by nbest_scale > 0.
    Returns:
      N token-id lists.
    """
    decoder_type = model.decoder_type
    if method not in METHODS:
        raise ValueError(
            f"unknown --decoding-method '{method}'; for decoder type '{decoder_type}' use one of "
            f"{methods_for(decoder_type)}"
        )
    if decoder_type not in METHODS[method]:
        raise ValueError(
            f"--decoding-method {method} does not apply to decoder type '{decoder_type}' "
            f"(it needs {' or '.join(METHODS[method])}); use one of {methods_for(decoder_type)}"
        )
    opts = AttributeDict({k: params.get(k, v) for k, v in DEFAULTS.items()})
    rescore = opts.nbest_scale > 0
    if rescore and method not in BEAM_METHODS:
        raise ValueError(
            f"--nbest-scale {opts.nbest_scale} rescores a beam's n-best, but {method} keeps one "
            f"hypothesis; use one of {[m for m in BEAM_METHODS if m in methods_for(decoder_type)]} "
            "or --nbest-scale 0"
        )
    fusion = method.endswith("_lm_shallow_fusion")
    if (fusion or rescore) and lm is None:
        raise ValueError(
            f"--decoding-method {method}" + (f" with --nbest-scale {opts.nbest_scale}" if rescore else "")
            + " needs an LM: pass --lm-type and --lm-path (train one with local/train_lm.py)"
        )

    if method == "greedy_search":
        return greedy_search(model, encoder_out, encoder_out_lens, max_sym_per_frame=opts.max_sym_per_frame)
    if method == "ctc_greedy_search":
        return ctc_greedy_search(model.ctc_log_probs(encoder_out), encoder_out_lens, model.blank_id)

    if method == "ctc_prefix_beam_search":
        nbest = ctc_prefix_beam_search(
            model.ctc_log_probs(encoder_out), encoder_out_lens, opts.beam_size, model.blank_id
        )
    else:
        search_opts = dict(beam_size=opts.beam_size, lm=lm if fusion else None, lm_scale=opts.lm_scale)
        if decoder_type == "cif_transducer":
            nbest = modified_beam_search(
                model, encoder_out, encoder_out_lens, max_sym_per_frame=opts.max_sym_per_frame, **search_opts
            )
        else:
            nbest = ce_beam_search(model, encoder_out, encoder_out_lens, **search_opts)
    if rescore:
        return rescore_nbest(nbest, lm, opts.nbest_scale, opts.num_paths, model.blank_id)
    return best_hyps(nbest)
