"""Token language models for shallow fusion and n-best rescoring.

Both LMs (`NgramLm`, `RnnLm`) work over the ASR model's token ids, with `<sos/eos>` (id 1)
opening and closing every sentence, and share one duck-typed API that the searches use:

  vocab_size, sos_id, eos_id
  init_state(batch_size, device) -> state       the state after `<sos/eos>`
  advance(state, tokens (B,)) -> state          feed one token per row
  score_sequences(seqs, device) -> (B,)         whole-sentence natural log-probs, `</s>` included

A state is a tuple of tensors, each with the B hypotheses on dim 0, and `state[0]` is the
(B, V) natural-log distribution of the next token. Searches therefore reorder and mix states
with the generic `select_lm_state` / `where_lm_state` below, whatever the LM.
"""
from pathlib import Path
from typing import Tuple, Union

import torch

from icefall_cif.lm.ngram import NgramLm, estimate_kneser_ney
from icefall_cif.lm.rnn_lm import RnnLm, load_rnn_lm, save_rnn_lm, train_rnn_lm

LmState = Tuple[torch.Tensor, ...]
LM_TYPES = ("ngram", "rnn")


def select_lm_state(state: LmState, index: torch.Tensor) -> LmState:
    """Rows `index` (B',) of every tensor of `state`."""
    return tuple(t.index_select(0, index) for t in state)


def where_lm_state(mask: torch.Tensor, a: LmState, b: LmState) -> LmState:
    """Row-wise `a` where (B,) bool `mask` is True, else `b`."""
    return tuple(torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, y) for x, y in zip(a, b))


def load_lm(lm_type: str, path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """Load an LM written by `local/train_lm.py`.

    Args:
      lm_type: "ngram" (an ARPA file over token ids) or "rnn" (a `save_rnn_lm` checkpoint).
      path: the file.
      device: where the LM's outputs live.
    """
    if lm_type == "ngram":
        return NgramLm.load_arpa(path).to(device)
    if lm_type == "rnn":
        return load_rnn_lm(path, device)
    raise ValueError(f"unknown LM type '{lm_type}'; expected one of {LM_TYPES}")


__all__ = [
    "LM_TYPES",
    "LmState",
    "NgramLm",
    "RnnLm",
    "estimate_kneser_ney",
    "load_lm",
    "load_rnn_lm",
    "save_rnn_lm",
    "select_lm_state",
    "train_rnn_lm",
    "where_lm_state",
]
