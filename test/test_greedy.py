"""Tests for icefall_cif/decode/greedy.py: batched greedy search against naive references.

The searches run on a stand-in model (a checked CifModel) whose `forward_cif` returns fixed
CIF vectors (with garbage at the padded positions), so each decoder's search is checked on its own, against
per-utterance loops written here.
"""
from typing import List

import pytest
import torch
from ce_ar_head import ArCeHead
from ce_decoder import ArCeDecoder, NarCeDecoder
from ce_nar_head import NarCeHead
from decoder import Decoder
from helpers_decode import FixedCifModel
from joiner import Joiner
from transducer_head import TransducerHead

from icefall_cif.decode import GreedyResult, ctc_greedy_search, greedy_search
from icefall_cif.model_contract import check_model

V = 12
C = 16
BLANK = 0


def stand_in(decoder_type: str, cif: torch.Tensor, cif_lens: torch.Tensor, ds: int = 2) -> FixedCifModel:
    """A checked CifModel with fixed CIF output and a real head of `decoder_type`."""
    N, U, _ = cif.shape
    # Fire frames: a strictly increasing random-ish sequence per utterance.
    frames = torch.cumsum(torch.randint(1, 4, (N, U)), dim=1)
    if decoder_type == "cif_transducer":
        head = TransducerHead(Decoder(V, 16, BLANK, context_size=2), Joiner(C, 16, 24, V), C, V)
        with torch.no_grad():
            # Make blank about as likely as a symbol so hypotheses are neither empty
            # nor one symbol per emission step.
            head.joiner.output_linear.weight.mul_(8.0)
            head.joiner.output_linear.bias.zero_()
    elif decoder_type == "cif_ce_ar":
        head = ArCeHead(ArCeDecoder(C, V, d_model=16, num_layers=2, num_heads=2, blank_id=BLANK))
    else:
        head = NarCeHead(NarCeDecoder(C, C, V, d_model=16, num_layers=2, num_heads=2), BLANK)
    model = FixedCifModel(head, cif, cif_lens, frames, cif_downsample_factor=ds).eval()
    check_model(model)
    return model


def _ragged_cif(lens: List[int]):
    cif_lens = torch.tensor(lens)
    cif = torch.randn(len(lens), max(lens), C)
    # Padding gets large garbage: any leak into valid positions would change results.
    cif = torch.where((torch.arange(max(lens)) < cif_lens.unsqueeze(1)).unsqueeze(-1), cif, 1e3)
    return cif, cif_lens


def _encoder(n: int, t: int = 9):
    return torch.randn(n, t, C), torch.full((n,), t)


# ---------------------------------------------------------------------------- CTC
def _ctc_reference(log_probs: torch.Tensor, lens: torch.Tensor, blank: int) -> List[List[int]]:
    out = []
    for i in range(log_probs.size(0)):
        hyp, prev = [], None
        for t in range(int(lens[i])):
            k = int(log_probs[i, t].argmax())
            if k != prev and k != blank:
                hyp.append(k)
            prev = k
        out.append(hyp)
    return out


@pytest.mark.parametrize("blank", [0, 3])
def test_ctc_greedy_matches_reference(blank):
    # Peaky scores over a small vocabulary produce repeats, blanks between repeats, and
    # repeats that run into the padding.
    scores = torch.randn(5, 30, 4) * 3
    lens = torch.tensor([30, 17, 1, 0, 22])
    assert ctc_greedy_search(scores.log_softmax(-1), lens, blank) == _ctc_reference(scores, lens, blank)


def test_ctc_greedy_hand_example():
    ids = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0, 3, 3]])
    scores = torch.nn.functional.one_hot(ids, 4).float()
    assert ctc_greedy_search(scores, torch.tensor([10])) == [[1, 1, 2, 3]]
    assert ctc_greedy_search(scores, torch.tensor([8])) == [[1, 1, 2]]


def test_ctc_greedy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="ctc_log_probs"):
        ctc_greedy_search(torch.randn(2, 5), torch.tensor([5, 5]))


# ---------------------------------------------------------------------------- transducer
def _transducer_reference(model: FixedCifModel, max_sym: int):
    """Per-utterance frame-wise greedy search, written out without batching."""
    dec, joi = model.head.decoder, model.head.joiner
    hyps, frames = [], []
    for i in range(model.cif.size(0)):
        context = [-1] * (dec.context_size - 1) + [BLANK]
        hyp, hyp_frames = [], []
        for t in range(int(model.cif_lens[i])):
            for _ in range(max_sym):
                d = dec(torch.tensor([context[-dec.context_size :]]), need_pad=False)
                logits = joi(model.cif[i : i + 1, t], d[:, 0])
                k = int(logits.argmax())
                if k == BLANK:
                    break
                hyp.append(k)
                hyp_frames.append(int(model.fire_frames[i, t]) * model.cif_downsample_factor)
                context.append(k)
        hyps.append(hyp)
        frames.append(hyp_frames)
    return hyps, frames


@pytest.mark.parametrize("max_sym", [1, 3])
def test_transducer_greedy_matches_reference(max_sym):
    cif, cif_lens = _ragged_cif([7, 3, 0, 5])
    model = stand_in("cif_transducer", cif, cif_lens)
    enc, enc_lens = _encoder(4)
    with torch.no_grad():
        ref_hyps, ref_frames = _transducer_reference(model, max_sym)
    result = greedy_search(model, enc, enc_lens, max_sym_per_frame=max_sym, return_timestamps=True)
    assert isinstance(result, GreedyResult)
    assert result.hyps == ref_hyps
    assert result.timestamps == ref_frames
    # The example is only meaningful if it emits symbols, and (max_sym > 1) several per frame.
    assert sum(map(len, ref_hyps)) > 0
    if max_sym > 1:
        assert any(len(h) > int(n) for h, n in zip(ref_hyps, cif_lens))


def test_transducer_greedy_rejects_zero_symbols_per_frame():
    cif, cif_lens = _ragged_cif([2])
    model = stand_in("cif_transducer", cif, cif_lens)
    with pytest.raises(ValueError, match="max_sym_per_frame"):
        greedy_search(model, *_encoder(1), max_sym_per_frame=0)


# ---------------------------------------------------------------------------- AR / NAR
def test_ar_greedy_matches_recomputed_reference():
    cif, cif_lens = _ragged_cif([6, 2, 4])
    model = stand_in("cif_ce_ar", cif, cif_lens)
    ref = []
    with torch.no_grad():
        for i in range(3):
            prev = [BLANK]
            n = int(cif_lens[i])
            for u in range(n):
                # Full parallel pass over the prefix, last position: no cache involved.
                logits = model.head.ce_decoder(cif[i : i + 1, : u + 1], torch.tensor([u + 1]), torch.tensor([prev]))
                prev.append(int(logits[0, -1].argmax()))
            ref.append(prev[1:])
    result = greedy_search(model, *_encoder(3), return_timestamps=True)
    assert result.hyps == ref
    expected_frames = [(model.fire_frames[i, : int(cif_lens[i])] * 2).tolist() for i in range(3)]
    assert result.timestamps == expected_frames


def test_nar_greedy_is_argmax_per_vector():
    cif, cif_lens = _ragged_cif([5, 1, 3])
    model = stand_in("cif_ce_nar", cif, cif_lens)
    enc, enc_lens = _encoder(3)
    enc_lens = torch.tensor([9, 4, 6])
    ref = []
    with torch.no_grad():
        for i in range(3):
            n, t = int(cif_lens[i]), int(enc_lens[i])
            logits = model.head.ce_decoder(cif[i : i + 1, :n], cif_lens[i : i + 1], enc[i : i + 1, :t], enc_lens[i : i + 1])
            ref.append(logits[0].argmax(-1).tolist())
    assert greedy_search(model, enc, enc_lens) == ref
    assert [len(h) for h in ref] == cif_lens.tolist()


@pytest.mark.parametrize("decoder_type", ["cif_transducer", "cif_ce_ar", "cif_ce_nar"])
def test_greedy_without_any_fire_gives_empty_hyps(decoder_type):
    model = stand_in(decoder_type, torch.zeros(2, 0, C), torch.zeros(2, dtype=torch.int64))
    result = greedy_search(model, *_encoder(2), return_timestamps=True)
    assert result.hyps == [[], []] and result.timestamps == [[], []]


def test_check_model_names_what_a_model_lacks():
    cif, cif_lens = _ragged_cif([2])
    model = stand_in("cif_ce_nar", cif, cif_lens)
    model.head = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="head is a Linear, not a DecoderHead"):
        check_model(model)

    class NoCif:
        head, blank_id, vocab_size, cif_downsample_factor = model.head, 0, V, 2

    with pytest.raises(TypeError, match=r"NoCif is not a CifModel: it lacks \['forward', 'forward_encoder', "
                                        r"'forward_cif'"):
        check_model(NoCif())
