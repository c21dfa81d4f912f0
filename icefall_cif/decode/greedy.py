"""Batched greedy search for the CIF model's decoders, and CTC greedy search.

Every search runs on the whole batch at once; the only Python loops are over CIF steps (and
symbols per step for the transducer). Token timestamps come from the CIF fire frames.

`greedy_search` needs only the model contract (`icefall_cif.model_contract.CifModel`): it runs
the CIF layer and hands the vectors to the model's decoder head. `transducer_greedy_search` is
the transducer head's search, given its prediction network and joiner.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn


@dataclass
class GreedyResult:
    """Greedy hypotheses with token timestamps.

    Attributes:
      hyps: N token-id lists.
      timestamps: N lists, the encoder-output frame (25 Hz, the frame rate of
        `encoder_out`) at which each token's CIF vector fired (heads that read the CTC head's
        output: the token's first CTC frame); same lengths as `hyps`.
      cif_lens: (N,) number of CIF vectors of each utterance.
    """

    hyps: List[List[int]]
    timestamps: List[List[int]]
    cif_lens: torch.Tensor


def _ragged(values: torch.Tensor, keep: torch.Tensor) -> List[List[int]]:
    """Rows of (N, L) `values` where (N, L) bool `keep` is True, as N lists."""
    counts = keep.sum(dim=1).tolist()
    flat = values[keep].tolist()
    out, start = [], 0
    for c in counts:
        out.append(flat[start : start + c])
        start += c
    return out


def ctc_greedy_search(
    ctc_log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int = 0
) -> List[List[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks.

    Args:
      ctc_log_probs: (N, T, V) log-probs (or any scores with the same argmax).
      lens: (N,) valid frames of each utterance.
      blank_id: the CTC blank.
    Returns:
      N token-id lists.
    """
    if ctc_log_probs.ndim != 3 or lens.shape != ctc_log_probs.shape[:1]:
        raise ValueError(
            f"expected ctc_log_probs (N, T, V) and lens (N,), got {tuple(ctc_log_probs.shape)} "
            f"and {tuple(lens.shape)}"
        )
    best = ctc_log_probs.argmax(dim=-1)  # (N, T)
    prev = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    valid = torch.arange(best.size(1), device=best.device) < lens.to(best.device).unsqueeze(1)
    keep = valid & (best != blank_id) & (best != prev)
    return _ragged(best, keep)


@dataclass
class CtcGreedyTokens:
    """CTC greedy search's tokens with what Mask-CTC needs of them, padded (N, L).

    Attributes:
      tokens: (N, L) ids, `blank_id` past each utterance's length; lens: (N,) tokens per utterance.
      confidence: (N, L) each token's posterior maximised over the frames its run of argmax frames
        covers (ESPnet's Mask-CTC confidence), 0 at padding.
      frames: (N, L) the first frame of each token's run (encoder frames), -1 at padding.
    """

    tokens: torch.Tensor
    lens: torch.Tensor
    confidence: torch.Tensor
    frames: torch.Tensor


def ctc_greedy_tokens(ctc_log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int = 0) -> CtcGreedyTokens:
    """:func:`ctc_greedy_search` as padded tensors, with each token's confidence and first frame.

    Args:
      ctc_log_probs: (N, T, V) log-probs; lens: (N,) valid frames; blank_id: the CTC blank.

    Example: per-frame argmax [a a <b> a b b] with posteriors [.6 .9 .8 .7 .5 .4] -> tokens
    [a a b], confidence [.9 .7 .5], frames [0 3 4].
    """
    if ctc_log_probs.ndim != 3 or lens.shape != ctc_log_probs.shape[:1]:
        raise ValueError(
            f"expected ctc_log_probs (N, T, V) and lens (N,), got {tuple(ctc_log_probs.shape)} "
            f"and {tuple(lens.shape)}"
        )
    N, T, _ = ctc_log_probs.shape
    best_log_prob, best = ctc_log_probs.max(dim=-1)  # (N, T)
    prev = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    valid = torch.arange(T, device=best.device) < lens.to(best.device).unsqueeze(1)
    in_token = valid & (best != blank_id)
    starts = in_token & (best != prev)
    token_lens = starts.sum(dim=1)
    L = int(token_lens.max()) if N > 0 else 0
    # A non-blank frame either starts a run or continues the run of the frame before it.
    run = starts.cumsum(dim=1) - 1  # (N, T): index of the token each frame belongs to
    rows = torch.arange(N, device=best.device).unsqueeze(1).expand(N, T)
    tokens = torch.full((N, L), blank_id, dtype=torch.int64, device=best.device)
    frames = torch.full((N, L), -1, dtype=torch.int64, device=best.device)
    tokens[rows[starts], run[starts]] = best[starts]
    frames[rows[starts], run[starts]] = torch.arange(T, device=best.device).expand(N, T)[starts]
    confidence = torch.zeros(N * L, dtype=best_log_prob.dtype, device=best.device)
    confidence.scatter_reduce_(0, (rows * L + run)[in_token], best_log_prob[in_token].exp(), reduce="amax")
    return CtcGreedyTokens(tokens, token_lens, confidence.view(N, L), frames)


def transducer_greedy_search(
    decoder: nn.Module, joiner: nn.Module, cif: torch.Tensor, cif_lens: torch.Tensor, max_sym_per_frame: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """icefall's frame-wise greedy search with the CIF vectors as frames.

    Each frame emits up to `max_sym_per_frame` symbols; a frame ends at the first blank.

    Args:
      decoder: the stateless prediction network (`blank_id`, `context_size`; called on
        (N, context_size) ids with need_pad=False).
      joiner: `encoder_proj`, `decoder_proj`, and a call with project_input=False.
      cif: (N, U', C) CIF vectors; cif_lens (N,).
    Returns:
      tokens (N, U' * max_sym_per_frame) and their CIF frame index (same shape), with
      the blank id / -1 where nothing was emitted.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    blank, context_size = decoder.blank_id, decoder.context_size
    N, U, _ = cif.shape
    device = cif.device

    # The first prediction sees [no token] * (context_size - 1) + [blank], as in training
    # where the blank-prefixed targets are left-padded with zero embeddings.
    context = torch.full((N, context_size), -1, dtype=torch.int64, device=device)
    context[:, -1] = blank
    decoder_out = joiner.decoder_proj(decoder(context, need_pad=False)).squeeze(1)  # (N, J)
    enc = joiner.encoder_proj(cif)  # (N, U', J)

    tokens = torch.full((N, U * max_sym_per_frame), blank, dtype=torch.int64, device=device)
    frames = torch.full_like(tokens, -1)
    for t in range(U):
        active = t < cif_lens  # (N,)
        for s in range(max_sym_per_frame):
            if not bool(active.any()):
                break
            logits = joiner(enc[:, t], decoder_out, project_input=False)  # (N, V)
            best = logits.argmax(dim=-1)
            emitted = active & (best != blank)
            if not bool(emitted.any()):
                break
            slot = t * max_sym_per_frame + s
            tokens[:, slot] = torch.where(emitted, best, tokens[:, slot])
            frames[:, slot] = torch.where(emitted, torch.full_like(best, t), frames[:, slot])
            new_context = torch.cat([context[:, 1:], best.unsqueeze(1)], dim=1)
            context = torch.where(emitted.unsqueeze(1), new_context, context)
            new_out = joiner.decoder_proj(decoder(context, need_pad=False)).squeeze(1)
            decoder_out = torch.where(emitted.unsqueeze(1), new_out, decoder_out)
            active = emitted
    return tokens, frames


def vector_index(cif_lens: torch.Tensor, num_vectors: int) -> torch.Tensor:
    """(N, num_vectors): u at the valid CIF vectors, -1 past cif_lens (heads that emit one token
    per vector return this as the vector each token came from)."""
    slots = torch.arange(num_vectors, device=cif_lens.device).unsqueeze(0)
    return torch.where(slots < cif_lens.unsqueeze(1), slots, torch.full_like(slots, -1))


@torch.no_grad()
def greedy_search(
    model: nn.Module,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    max_sym_per_frame: int = 3,
    return_timestamps: bool = False,
):
    """Batched greedy search with the model's decoder head.

    The transducer head emits up to `max_sym_per_frame` symbols per CIF vector (blank ends a
    vector); the CE heads one token per vector (AR: the argmax fed back as the next input;
    NAR: the argmax of one parallel pass); the mask_ctc head refines the CTC greedy output (it
    reads the CTC head's log-probs: `DecoderHead.reads_ctc`).

    Args:
      model: a `CifModel` (in eval mode for deterministic results).
      encoder_out: (N, T', C) from `model.forward_encoder`.
      encoder_out_lens: (N,) valid frames.
      max_sym_per_frame: transducer only. icefall uses 1 over 25 Hz frames, but a CIF
        vector is about one token and the transducer is free to emit a token on an earlier
        vector than its own; with 1 those tokens are lost (seen when overfitting: 5/8 vs 8/8
        utterances right with 1 vs 2-4), hence 3.
      return_timestamps: return a GreedyResult (hyps, per-token encoder frame, cif_lens)
        instead of the bare hyps.
    Returns:
      N token-id lists, or a GreedyResult.
    """
    if encoder_out.ndim != 3 or encoder_out_lens.shape != encoder_out.shape[:1]:
        raise ValueError(
            f"expected encoder_out (N, T, C) and encoder_out_lens (N,), got "
            f"{tuple(encoder_out.shape)} and {tuple(encoder_out_lens.shape)}"
        )
    cif_out = model.forward_cif(encoder_out, encoder_out_lens)
    cif, cif_lens, fire_frames = cif_out.cif, cif_out.cif_lens, cif_out.fire_frames
    head = model.head
    ctc = {"ctc_log_probs": model.ctc_log_probs(encoder_out)} if head.reads_ctc else {}
    tokens, index = head.greedy_search(cif, cif_lens, encoder_out, encoder_out_lens, max_sym_per_frame, **ctc,
                                       **cif_out.head_inputs())
    keep = index >= 0
    hyps = _ragged(tokens, keep)
    if not return_timestamps:
        return hyps
    if head.reads_ctc:  # the index is already an encoder frame
        token_frames = index
    elif cif.size(1) > 0:
        # Fire frames count CIF-rate frames; frame k of the CIF rate starts at encoder frame k*d.
        token_frames = fire_frames.gather(1, index.clamp(min=0)) * model.cif_downsample_factor
    else:
        token_frames = index
    return GreedyResult(hyps=hyps, timestamps=_ragged(token_frames, keep), cif_lens=cif_lens)
