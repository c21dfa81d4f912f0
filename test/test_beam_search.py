"""Tests for icefall_cif/decode/{beam_search,ctc,search}.py.

- Tiny models overfit to three utterances (test/helpers_decode.py) must decode them with every
  method, LM fusion and n-best rescoring included.
- Beam 1 equals greedy search; LM fusion with scale 0 equals no fusion.
- The batched searches equal naive per-utterance, per-hypothesis references written here in
  float64: the transducer reference merges hypotheses in a dict (also with several tokens per
  CIF vector), the AR reference re-runs the
  teacher-forced parallel decoder instead of the cached step, and the LM terms come from the
  n-gram's scalar back-off queries or a plain forward of the RNN LM.
- With a beam wide enough to prune nothing, the transducer search returns every sequence with
  its exact log-probability, from brute-force enumeration of all alignments (1-3 tokens per
  CIF vector).
- CTC prefix beam search equals brute-force enumeration of all alignments.
"""
import itertools
import math
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
from ce_nar_head import NarCeHead
from helpers_decode import (
    FixedCifModel,
    build_tiny_model,
    cached_overfit_model,
    make_encoder_out,
    overfit_tiny_model,
)

from icefall_cif.alignment import ctc_forced_align
from icefall_cif.decode.beam_search import lm_hypothesis_scores
from icefall_cif.decode.ctc import ctc_prefix_beam_search
from icefall_cif.decode.greedy import greedy_search
from icefall_cif.decode.rescoring import cif_log_likelihoods, ctc_log_likelihoods
from icefall_cif.decode.search import beam_search, decode_batch, is_beam_method
from icefall_cif.lm import NgramLm, RnnLm, estimate_kneser_ney, train_rnn_lm
from icefall_cif.model_contract import check_model, decoding_methods
from icefall_cif.segments import fill_missing_spikes, pool_segments
from icefall_cif.utils import AttributeDict

DECODER_TYPES = ["cif_transducer", "cif_ce_ar", "cif_ce_nar"]
SOS = 1
NEG_INF = float("-inf")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The shared 2-core machine is oversubscribed; OpenMP spinning slows tiny ops a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def params(**kwargs) -> AttributeDict:
    base = dict(beam_size=4, lm_scale=0.3, nbest_scale=0.0, num_paths=4, max_sym_per_frame=1)
    base.update(kwargs)
    return AttributeDict(base)


def random_lm_corpus(vocab_size: int, seed: int) -> List[List[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (30,), generator=g).tolist()
    return [torch.randint(2, vocab_size, (n,), generator=g).tolist() for n in lengths]


# ---------------------------------------------------------------------- overfit models
@pytest.fixture(scope="module")
def reference_lms():
    from helpers_decode import REFERENCES, VOCAB_SIZE

    ngram = estimate_kneser_ney(REFERENCES, VOCAB_SIZE, order=3)
    torch.manual_seed(0)
    rnn, _ = train_rnn_lm(REFERENCES, VOCAB_SIZE, embedding_dim=16, hidden_dim=32, num_layers=1, dropout=0.0,
                          num_epochs=40, batch_size=3, lr=2e-2, progress=False)
    return {"ngram": ngram, "rnn": rnn}


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_every_method_decodes_the_overfit_references(decoder_type, reference_lms):
    fit = cached_overfit_model(decoder_type)
    assert fit.model.forward_cif(fit.encoder_out, fit.encoder_out_lens).cif_lens.tolist() == [
        len(r) for r in fit.refs
    ], "the helper's model did not learn to fire once per token"
    for method in decoding_methods(fit.model):
        needs_lm = method.endswith("lm_shallow_fusion")
        for lm_name in ("ngram", "rnn") if needs_lm else (None,):
            lm = reference_lms[lm_name] if lm_name else None
            hyps = decode_batch(method, fit.model, fit.encoder_out, fit.encoder_out_lens, params(), lm=lm)
            assert hyps == fit.refs, (method, lm_name)
        if is_beam_method(method):
            for lm_name, lm in reference_lms.items():
                hyps = decode_batch(method, fit.model, fit.encoder_out, fit.encoder_out_lens,
                                    params(nbest_scale=0.5), lm=lm)
                assert hyps == fit.refs, (method, "n-best rescoring", lm_name)


# ---------------------------------------------------------------------- beam 1 / scale 0
@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_beam_one_equals_greedy(decoder_type):
    method = "modified_beam_search" if decoder_type == "cif_transducer" else "beam_search"
    fit = cached_overfit_model(decoder_type)
    cases = [(fit.model, fit.encoder_out, fit.encoder_out_lens)]
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_tiny_model(decoder_type)
        encoder_out, lens = make_encoder_out([24, 9, 17, 13], model.encoder_dim, seed)
        cases.append((model, encoder_out, lens))
    for model, encoder_out, lens in cases:
        greedy = greedy_search(model, encoder_out, lens, max_sym_per_frame=1)
        assert sum(map(len, greedy)) > 0
        assert decode_batch(method, model, encoder_out, lens, params(beam_size=1)) == greedy


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_lm_scale_zero_equals_no_fusion(decoder_type):
    torch.manual_seed(1)
    model = build_tiny_model(decoder_type)
    encoder_out, lens = make_encoder_out([24, 11, 18], model.encoder_dim, seed=1)
    search = beam_search
    plain = search(model, encoder_out, lens, beam_size=4)
    assert any(len(nbest) > 1 for nbest in plain)
    lms = {"ngram": estimate_kneser_ney(random_lm_corpus(10, 0), 10, order=3), "rnn": RnnLm(10, 8, 16, 1).eval()}
    for name, lm in lms.items():
        fused = search(model, encoder_out, lens, beam_size=4, lm=lm, lm_scale=0.0)
        assert fused == plain, name
        assert search(model, encoder_out, lens, beam_size=4, lm=lm, lm_scale=2.0) != plain, name


# ---------------------------------------------------------------------- naive references
def lm_next_log_probs(lm, history: List[int]) -> torch.Tensor:
    """(V,) float64 next-token log-probs after <sos/eos> + history, without the state API."""
    if isinstance(lm, NgramLm):
        return torch.tensor([lm.token_log_prob([SOS] + history, w) for w in range(lm.vocab_size)], dtype=torch.float64)
    with torch.no_grad():
        return lm(torch.tensor([[SOS] + history]))[0][0, -1].double().log_softmax(dim=-1)


def is_text(token: int, blank: int) -> bool:
    return token not in (blank, SOS)


def lm_token_term(lm, seq: Tuple[int, ...], token: int, blank: int) -> float:
    """The fusion term of the module docstring: LM log-prob of a text token given the text so
    far; the lowest log-prob of the row for a non-text token."""
    dist = lm_next_log_probs(lm, [t for t in seq if is_text(t, blank)])
    return float(dist[token]) if is_text(token, blank) else float(dist.min())


def lm_eos_term(lm, seq: Tuple[int, ...], blank: int) -> float:
    return float(lm_next_log_probs(lm, [t for t in seq if is_text(t, blank)])[SOS])


def top_k(cands: Dict[Tuple[int, ...], float], k: int) -> Dict[Tuple[int, ...], float]:
    return dict(sorted(cands.items(), key=lambda kv: -kv[1])[:k])


def log_add_into(cands: Dict[Tuple[int, ...], float], seq: Tuple[int, ...], score: float) -> None:
    old = cands.get(seq, NEG_INF)
    cands[seq] = max(old, score) + math.log1p(math.exp(-abs(old - score))) if old > NEG_INF else score


def reference_modified_beam_search(
    model, cif: torch.Tensor, K: int, lm, lm_scale: float, max_sym: int = 1
) -> List[Tuple[List[int], float]]:
    """One utterance, cif (U, C): dicts of sequences, extended and log-add-merged one by one.

    Per CIF vector, up to `max_sym` rounds: blank finishes a hypothesis, a token keeps it
    open (the best K open ones go on) except in the last round, where every extension
    finishes; finished ones are merged into the best K, and open ones below the K-th
    finished score are dropped.
    """
    decoder, joiner, blank, cs = model.head.decoder, model.head.joiner, model.blank_id, model.head.decoder.context_size
    hyps: Dict[Tuple[int, ...], float] = {(): 0.0}
    for t in range(cif.size(0)):
        open_hyps, finished = hyps, {}
        for round_ in range(max_sym):
            last = round_ == max_sym - 1
            new_finished: Dict[Tuple[int, ...], float] = {}
            new_open: Dict[Tuple[int, ...], float] = {}
            for seq, score in open_hyps.items():
                context = ([-1] * (cs - 1) + [blank] + list(seq))[-cs:]
                dec = decoder(torch.tensor([context]), need_pad=False)[0, 0]
                log_probs = joiner(cif[t], dec).log_softmax(dim=-1)
                for v in range(log_probs.numel()):
                    s = score + float(log_probs[v])
                    if v == blank:
                        log_add_into(new_finished, seq, s)
                        continue
                    if lm is not None:
                        s += lm_scale * lm_token_term(lm, seq, v, blank)
                    if last:
                        log_add_into(new_finished, seq + (v,), s)
                    else:
                        new_open[seq + (v,)] = s
            if last:
                new_finished = top_k(new_finished, K)
            for seq, score in new_finished.items():
                log_add_into(finished, seq, score)
            finished = top_k(finished, K)
            kth = sorted(finished.values(), reverse=True)[K - 1] if len(finished) >= K else NEG_INF
            open_hyps = {seq: sc for seq, sc in top_k(new_open, K).items() if sc >= kth}
            if not open_hyps:
                break
        hyps = finished
    if lm is not None:
        hyps = {seq: s + lm_scale * lm_eos_term(lm, seq, blank) for seq, s in hyps.items()}
    return [(list(seq), s) for seq, s in sorted(hyps.items(), key=lambda kv: -kv[1])]


def reference_ce_beam_search(model, cif, nar_log_probs, K, lm, lm_scale) -> List[Tuple[List[int], float]]:
    """One utterance, cif (U, C); nar_log_probs (U, V) for the NAR decoder, None for AR."""
    blank = model.blank_id
    hyps: Dict[Tuple[int, ...], float] = {(): 0.0}
    for u in range(cif.size(0)):
        cands = {}
        for seq, score in hyps.items():
            if nar_log_probs is None:
                prev = torch.tensor([[blank] + list(seq)])
                logits = model.head.ce_decoder(cif[None, : u + 1], torch.tensor([u + 1]), prev)
                log_probs = logits[0, -1].log_softmax(dim=-1)
            else:
                log_probs = nar_log_probs[u]
            for v in range(log_probs.numel()):
                s = score + float(log_probs[v])
                if lm is not None:
                    s += lm_scale * lm_token_term(lm, seq, v, blank)
                cands[seq + (v,)] = s
        hyps = top_k(cands, K)
    if lm is not None:
        hyps = {seq: s + lm_scale * lm_eos_term(lm, seq, blank) for seq, s in hyps.items()}
    return [(list(seq), s) for seq, s in sorted(hyps.items(), key=lambda kv: -kv[1])]


def reference_lm(lm_kind: Optional[str]) -> Tuple[Optional[object], float]:
    """The LM (vocabulary 10) and fusion scale the reference comparisons run with."""
    if lm_kind == "ngram":
        return estimate_kneser_ney(random_lm_corpus(10, 3), 10, order=3), 0.7
    if lm_kind == "rnn":
        torch.manual_seed(3)
        return RnnLm(10, 8, 16, 1, dropout=0.0).double().eval(), 0.7
    return None, 0.0


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
@pytest.mark.parametrize("lm_kind", [None, "ngram", "rnn"])
def test_batched_search_equals_naive_reference(decoder_type, lm_kind):
    torch.manual_seed(2)
    model = build_tiny_model(decoder_type).double()
    encoder_out, lens = make_encoder_out([22, 8, 15], model.encoder_dim, seed=2)
    encoder_out = encoder_out.double()
    lm, lm_scale = reference_lm(lm_kind)
    K = 3
    with torch.no_grad():
        cif_out = model.forward_cif(encoder_out, lens)
        got = beam_search(model, encoder_out, lens, beam_size=K, lm=lm, lm_scale=lm_scale)
        nar = None
        if decoder_type == "cif_ce_nar":
            nar = model.head.ce_decoder(cif_out.cif, cif_out.cif_lens, encoder_out, lens).log_softmax(dim=-1)
        for i, n in enumerate(cif_out.cif_lens.tolist()):
            cif = cif_out.cif[i, :n]
            if decoder_type == "cif_transducer":
                expected = reference_modified_beam_search(model, cif, K, lm, lm_scale)
            else:
                expected = reference_ce_beam_search(model, cif, None if nar is None else nar[i, :n], K, lm, lm_scale)
            assert [h.tokens for h in got[i]] == [seq for seq, _ in expected], i
            # The n-gram's distribution tensors are float32; everything else runs in float64.
            tol = 1e-5 if lm_kind == "ngram" else 1e-9
            assert [h.score for h in got[i]] == pytest.approx([s for _, s in expected], rel=tol, abs=tol)


def fixed_cif_transducer(vocab_size: int, cif_lens: List[int], seed: int) -> FixedCifModel:
    """A cif_transducer whose CIF layer returns random vectors (N, max(cif_lens), C)."""
    torch.manual_seed(seed)
    model = build_tiny_model("cif_transducer", vocab_size).double()
    joiner = model.head.joiner
    # An untrained joiner's distributions are nearly flat; sharpen them so that the beam has
    # real choices to make, and make blank rarer so that vectors carry several tokens.
    with torch.no_grad():
        joiner.output_linear.weight.mul_(8.0)
        joiner.output_linear.bias[model.blank_id] -= 2.0
    dim = joiner.encoder_proj.in_features
    cif = 3 * torch.randn(len(cif_lens), max(cif_lens), dim, dtype=torch.float64)
    fixed = FixedCifModel(model.head, cif, cif_lens)
    check_model(fixed)
    return fixed


def brute_force_transducer(model: FixedCifModel, cif: torch.Tensor, max_sym: int) -> Dict[Tuple[int, ...], float]:
    """log p(sequence) for every sequence, summed over every alignment with at most `max_sym`
    tokens per CIF vector (after `max_sym` tokens the next vector starts without a blank)."""
    decoder, joiner, blank, cs = model.head.decoder, model.head.joiner, model.blank_id, model.head.decoder.context_size

    def log_probs(t: int, seq: Tuple[int, ...]) -> torch.Tensor:
        context = ([-1] * (cs - 1) + [blank] + list(seq))[-cs:]
        return joiner(cif[t], decoder(torch.tensor([context]), need_pad=False)[0, 0]).log_softmax(dim=-1)

    paths: Dict[Tuple[int, ...], float] = {(): 0.0}
    for t in range(cif.size(0)):
        after: Dict[Tuple[int, ...], float] = {}
        stack = [(seq, score, 0) for seq, score in paths.items()]
        while stack:
            seq, score, emitted = stack.pop()
            if emitted == max_sym:
                log_add_into(after, seq, score)
                continue
            lp = log_probs(t, seq).tolist()
            log_add_into(after, seq, score + lp[blank])
            stack.extend((seq + (v,), score + lp[v], emitted + 1) for v in range(len(lp)) if v != blank)
        paths = after
    return paths


@pytest.mark.parametrize("max_sym", [1, 2, 3])
def test_transducer_beam_search_with_a_wide_beam_is_exact(max_sym):
    # Vocabulary {blank, 1, 2} and 3 CIF vectors: fewer than 2**(3 * max_sym + 1) sequences;
    # a beam that holds them all prunes nothing, so every sequence comes back with the log-sum
    # of the probabilities of all its alignments.
    model = fixed_cif_transducer(3, [3, 2], seed=4)
    K = 2 ** (3 * max_sym + 1)
    with torch.no_grad():
        got = beam_search(model, None, None, beam_size=K, max_sym_per_frame=max_sym)
        for i, n in enumerate(model.cif_lens.tolist()):
            expected = brute_force_transducer(model, model.cif[i, :n], max_sym)
            assert len(got[i]) == len(expected)
            assert {tuple(h.tokens): h.score for h in got[i]} == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert math.fsum(math.exp(s) for s in expected.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("max_sym", [2, 3])
@pytest.mark.parametrize("lm_kind", [None, "ngram", "rnn"])
def test_multi_symbol_transducer_search_equals_naive_reference(max_sym, lm_kind):
    model = fixed_cif_transducer(10, [7, 3, 5], seed=5)
    lm, lm_scale = reference_lm(lm_kind)
    K = 3
    with torch.no_grad():
        got = beam_search(model, None, None, beam_size=K, lm=lm, lm_scale=lm_scale, max_sym_per_frame=max_sym)
        greedy_like = beam_search(model, None, None, beam_size=K, max_sym_per_frame=1)
        for i, n in enumerate(model.cif_lens.tolist()):
            expected = reference_modified_beam_search(model, model.cif[i, :n], K, lm, lm_scale, max_sym)
            assert [h.tokens for h in got[i]] == [seq for seq, _ in expected], i
            tol = 1e-5 if lm_kind == "ngram" else 1e-9
            assert [h.score for h in got[i]] == pytest.approx([s for _, s in expected], rel=tol, abs=tol)
    # The case this search is for: some hypothesis emits more tokens than there are vectors.
    if lm_kind is None:
        assert any(len(h.tokens) > n for nbest, n in zip(got, model.cif_lens.tolist()) for h in nbest)
        assert got != greedy_like


def test_max_sym_per_frame_must_be_positive():
    model = fixed_cif_transducer(3, [2], seed=0)
    with pytest.raises(ValueError, match="max_sym_per_frame must be >= 1, got 0"):
        beam_search(model, None, None, beam_size=2, max_sym_per_frame=0)


# ---------------------------------------------------------------------- fusion and rescoring at work
class FixedLogProbs(nn.Module):
    """A NAR CE decoder stand-in that returns fixed log-probs (N, U, V) whatever its input."""

    def __init__(self, log_probs: torch.Tensor):
        super().__init__()
        self.log_probs = log_probs
        self.vocab_size = log_probs.size(2)

    def forward(self, cif, cif_lens, encoder_out, encoder_out_lens):
        return self.log_probs


def fake_nar_model(log_probs: torch.Tensor, cif_lens: List[int]) -> FixedCifModel:
    """A cif_ce_nar model whose decoder returns the given log-probs (N, U, V)."""
    N, U, _ = log_probs.shape
    model = FixedCifModel(NarCeHead(FixedLogProbs(log_probs), blank_id=0), torch.zeros(N, U, 1), cif_lens)
    check_model(model)
    return model


def test_lm_fusion_and_rescoring_fix_an_acoustic_confusion():
    # Acoustics: "3 {6 > 4} 5", the LM has only ever seen "3 4 5" and "3 6 7".
    V = 10
    probs = torch.full((2, 3, V), 1e-3)
    probs[0, 0, 3] = probs[0, 2, 5] = 0.9
    probs[0, 1, 6], probs[0, 1, 4] = 0.5, 0.45
    probs[1, :2, 7] = 0.9  # a second utterance with only two CIF vectors
    model = fake_nar_model(probs.log(), [3, 2])
    lm = estimate_kneser_ney([[3, 4, 5]] * 5 + [[3, 6, 7]], V, order=3)
    enc, enc_lens = torch.zeros(2, 3, 1), torch.tensor([3, 3])
    assert decode_batch("greedy_search", model, enc, enc_lens, params()) == [[3, 6, 5], [7, 7]]
    assert decode_batch("beam_search", model, enc, enc_lens, params()) == [[3, 6, 5], [7, 7]]
    fused = decode_batch("beam_search_lm_shallow_fusion", model, enc, enc_lens, params(lm_scale=0.5), lm=lm)
    assert fused == [[3, 4, 5], [7, 7]]
    rescored = decode_batch("beam_search", model, enc, enc_lens, params(nbest_scale=0.5), lm=lm)
    assert rescored == [[3, 4, 5], [7, 7]]
    only_best = decode_batch("beam_search", model, enc, enc_lens, params(nbest_scale=0.5, num_paths=1), lm=lm)
    assert only_best[0] == [3, 6, 5]


def test_utterance_without_cif_vectors():
    probs = torch.full((2, 2, 6), 0.1).log()
    probs[1, :, 4] = 0.0
    model = fake_nar_model(probs, [0, 2])
    enc, enc_lens = torch.zeros(2, 2, 1), torch.tensor([2, 2])
    lm = estimate_kneser_ney([[4, 4]], 6, order=2)
    for method in ("beam_search", "beam_search_lm_shallow_fusion"):
        assert decode_batch(method, model, enc, enc_lens, params(), lm=lm) == [[], [4, 4]]


@pytest.mark.parametrize("kind", ["ngram", "rnn"])
def test_lm_hypothesis_scores(kind):
    lm = estimate_kneser_ney(random_lm_corpus(10, 4), 10, order=3) if kind == "ngram" else RnnLm(10, 8, 16, 1).eval()
    seqs = [[3, 4, 5], [], [9, 9]]
    torch.testing.assert_close(lm_hypothesis_scores(lm, seqs, 0, torch.device("cpu")), lm.score_sequences(seqs))
    # Non-text ids: no LM advance, the row's lowest log-prob.
    with_blank = lm_hypothesis_scores(lm, [[3, 0, 4]], 0, torch.device("cpu"))
    expected = sum(lm_token_term(lm, (3,) if j else (), t, 0) if t else lm_token_term(lm, (3,), 0, 0)
                   for j, t in enumerate([3, 0, 4])) + lm_eos_term(lm, (3, 4), 0)
    assert with_blank.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------- errors
def test_decode_batch_errors_name_the_valid_methods():
    model = build_tiny_model("cif_ce_ar")
    enc, lens = make_encoder_out([10], model.encoder_dim)
    with pytest.raises(ValueError, match="modified_beam_search is not offered by decoder type 'cif_ce_ar'.*'beam_search'"):
        decode_batch("modified_beam_search", model, enc, lens, params())
    with pytest.raises(ValueError, match="fast_beam_search is not offered .*greedy_search"):
        decode_batch("fast_beam_search", model, enc, lens, params())
    with pytest.raises(ValueError, match="needs an LM"):
        decode_batch("beam_search_lm_shallow_fusion", model, enc, lens, params())
    with pytest.raises(ValueError, match="needs an LM"):
        decode_batch("beam_search", model, enc, lens, params(nbest_scale=0.5))
    with pytest.raises(ValueError, match="keeps one"):
        decode_batch("greedy_search", model, enc, lens, params(nbest_scale=0.5), lm=RnnLm(10, 8, 8, 1))
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        decode_batch("beam_search", model, enc, lens, params(beam_size=0))


# ---------------------------------------------------------------------- CTC prefix beam search
def brute_force_ctc(log_probs: torch.Tensor, blank: int = 0) -> Dict[Tuple[int, ...], float]:
    """log P(prefix) = logsumexp over every alignment (T, V) that collapses to it."""
    T, V = log_probs.shape
    out: Dict[Tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        lp = sum(float(log_probs[t, s]) for t, s in enumerate(path))
        label = tuple(s for s, _ in itertools.groupby(path) if s != blank)
        old = out.get(label, NEG_INF)
        out[label] = max(old, lp) + math.log1p(math.exp(-abs(old - lp))) if old > NEG_INF else lp
    return out


# ---------------------------------------------------------------------- joint CIF + CTC
def naive_rnnt_log_prob(head, cif: torch.Tensor, y: List[int]) -> float:
    """log p(y | cif (T, C)) by the RNN-T forward recursion over every alignment, float64."""
    blank = head.blank_id
    dec = head.decoder(torch.tensor([[blank] + y]))[0]  # (U+1, D), training's left context
    lp = head.joiner(cif.unsqueeze(1), dec.unsqueeze(0)).double().log_softmax(dim=-1)  # (T, U+1, V)
    T, U = cif.size(0), len(y)
    alpha = [[NEG_INF] * (U + 1) for _ in range(T)]
    alpha[0][0] = 0.0
    for t in range(T):
        for u in range(U + 1):
            terms = [alpha[t][u]] if (t, u) == (0, 0) else []
            if t > 0:
                terms.append(alpha[t - 1][u] + float(lp[t - 1, u, blank]))
            if u > 0:
                terms.append(alpha[t][u - 1] + float(lp[t, u - 1, y[u - 1]]))
            alpha[t][u] = float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0))
    return alpha[T - 1][U] + float(lp[T - 1, U, blank])


def test_cif_and_ctc_log_likelihoods_equal_naive_references():
    model = fixed_cif_transducer(10, [4, 2], seed=6)
    seqs, utts = [[3, 4], [], [5, 5, 6, 7, 8], [9]], [0, 0, 0, 1]
    with torch.no_grad():
        frames, frame_lens = make_encoder_out([4, 2], 3)  # the fixed model's CIF ignores its frames
        got = cif_log_likelihoods(model, frames, frame_lens, seqs, utts)
        for (y, i), score in zip(zip(seqs, utts), got.tolist()):
            n = int(model.cif_lens[i])
            assert score == pytest.approx(naive_rnnt_log_prob(model.head, model.cif[i, :n], y), rel=1e-9), y

    tiny = build_tiny_model("cif_ce_ar").double()
    encoder_out, lens = make_encoder_out([4, 3], tiny.encoder_dim, seed=7)
    with torch.no_grad():
        log_probs = tiny.ctc_log_probs(encoder_out.double())
        seqs, utts = [[3], [4, 4], [], [5, 6, 7]], [0, 0, 1, 1]
        got = ctc_log_likelihoods(tiny, encoder_out.double(), lens, seqs, utts).tolist()
    for (y, i), score in zip(zip(seqs, utts), got):
        truth = brute_force_ctc(log_probs[i, : int(lens[i])]).get(tuple(y), NEG_INF)
        assert score == pytest.approx(truth, rel=1e-9) or score == truth == NEG_INF, y


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_joint_methods_reduce_to_their_parts(decoder_type):
    torch.manual_seed(8)
    model = build_tiny_model(decoder_type).double()
    encoder_out, lens = make_encoder_out([24, 11, 18], model.encoder_dim, seed=8)
    encoder_out = encoder_out.double()
    with torch.no_grad():
        plain = beam_search(model, encoder_out, lens, beam_size=4, max_sym_per_frame=2)
        joint = decode_batch("joint_beam_search", model, encoder_out, lens, params(max_sym_per_frame=2, ctc_weight=0.0))
        assert joint == [nbest[0].tokens for nbest in plain]  # --ctc-weight 0: the plain beam search
        one = decode_batch("joint_beam_search", model, encoder_out, lens, params(max_sym_per_frame=2, num_paths=1))
        assert one == [nbest[0].tokens for nbest in plain]  # an n-best of one: that hypothesis
        # A weight large enough makes the CTC log-likelihood decide among the n-best.
        heavy = decode_batch("joint_beam_search", model, encoder_out, lens, params(max_sym_per_frame=2, ctc_weight=1e6))
        for i, nbest in enumerate(plain):
            ctc = ctc_log_likelihoods(model, encoder_out, lens, [h.tokens for h in nbest], [i] * len(nbest)).tolist()
            assert heavy[i] == nbest[max(range(len(nbest)), key=ctc.__getitem__)].tokens

        if decoder_type != "cif_transducer":
            assert "cif_rescoring" not in decoding_methods(model)
            return
        ctc_nbest = ctc_prefix_beam_search(model.ctc_log_probs(encoder_out), lens, 4, model.blank_id)
        assert decode_batch("cif_rescoring", model, encoder_out, lens, params(num_paths=1)) == [
            nbest[0].tokens for nbest in ctc_nbest
        ]
        rescored = decode_batch("cif_rescoring", model, encoder_out, lens, params(ctc_weight=0.0))
        for i, nbest in enumerate(ctc_nbest):
            cif = cif_log_likelihoods(model, encoder_out, lens, [h.tokens for h in nbest], [i] * len(nbest)).tolist()
            assert rescored[i] == nbest[max(range(len(nbest)), key=cif.__getitem__)].tokens


@pytest.mark.parametrize("decoder_type,prior_scale", [("cif_ce_ar", 0.0), ("cif_ce_nar", 1.0)])
def test_cif_rescoring_of_a_ce_head_scores_each_hypothesis_on_its_own_cut(decoder_type, prior_scale):
    """A CE head over CTC-cut vectors rescores the CTC n-best: each hypothesis on vectors cut at
    its own forced alignment (not the greedy path's), so hypotheses of any length compare."""
    fit = overfit_tiny_model(decoder_type, steps=150, cif_segmentation="ctc", ce_ctc_prior_scale=prior_scale)
    model, encoder_out, lens = fit.model, fit.encoder_out, fit.encoder_out_lens
    assert "cif_rescoring" in decoding_methods(model)
    with torch.no_grad():
        assert decode_batch("cif_rescoring", model, encoder_out, lens, params()) == fit.refs
        ctc_nbest = ctc_prefix_beam_search(model.ctc_log_probs(encoder_out), lens, 4, model.blank_id)
        assert decode_batch("cif_rescoring", model, encoder_out, lens, params(num_paths=1)) == [
            nbest[0].tokens for nbest in ctc_nbest
        ]
        rescored = decode_batch("cif_rescoring", model, encoder_out, lens, params(ctc_weight=0.0))
        log_probs = model.ctc_log_probs(encoder_out)
        h, h_lens = model.downsample_for_cif(encoder_out, lens)
        for i, nbest in enumerate(ctc_nbest):
            seqs = [hyp.tokens for hyp in nbest]
            batched = cif_log_likelihoods(model, encoder_out, lens, seqs, [i] * len(seqs)).tolist()
            assert rescored[i] == seqs[max(range(len(seqs)), key=batched.__getitem__)]
            for seq, score in zip(seqs, batched):
                # The reference: this hypothesis alone, cut at its forced alignment by hand.
                y = torch.tensor([seq], dtype=torch.int64)
                n = torch.tensor([len(seq)])
                spikes = fill_missing_spikes(ctc_forced_align(log_probs[i : i + 1], lens[i : i + 1], y, n,
                                                              model.blank_id), n, lens[i : i + 1])
                pooled = pool_segments(h[i : i + 1], model.cif_predictor.compute_weights(h[i : i + 1], h_lens[i : i + 1]),
                                       h_lens[i : i + 1], spikes, n, model.cif_downsample_factor)
                cif_out = model.forward_cif(encoder_out[i : i + 1], lens[i : i + 1], target_lengths=n, targets=y)
                assert torch.allclose(cif_out.cif, pooled.cif, atol=1e-6)
                logits = model.head.token_logits(cif_out, encoder_out[i : i + 1], lens[i : i + 1], y, n)
                alone = logits.double().log_softmax(-1)[0, torch.arange(len(seq)), y[0]].sum().item()
                assert score == pytest.approx(alone, abs=1e-4), seq

    fire = build_tiny_model(decoder_type)
    assert "cif_rescoring" not in decoding_methods(fire)
    with pytest.raises(ValueError, match="--cif-segmentation ctc"):
        fire.hypothesis_log_probs(encoder_out, lens, torch.tensor([[3], [4], [5]]), torch.tensor([1, 1, 1]),
                                  torch.arange(3))


def test_ctc_prefix_beam_search_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([5, 3, 4])
    log_probs = (2.0 * torch.randn(3, 5, 3, generator=g, dtype=torch.float64)).log_softmax(dim=-1)
    # 63 prefixes of length <= 5 over 2 tokens: a beam of 64 never prunes, so the search is exact.
    exact = ctc_prefix_beam_search(log_probs, lens, beam_size=64)
    small = ctc_prefix_beam_search(log_probs, lens, beam_size=3)
    for i, T in enumerate(lens.tolist()):
        truth = brute_force_ctc(log_probs[i, :T])
        assert {tuple(h.tokens): h.score for h in exact[i]} == pytest.approx(truth, rel=1e-12)
        best = max(truth, key=truth.get)
        assert tuple(exact[i][0].tokens) == best
        # With pruning each kept prefix has lost alignments: its score is a lower bound.
        assert len(small[i]) == 3
        for h in small[i]:
            assert h.score <= truth[tuple(h.tokens)] + 1e-12
        assert tuple(small[i][0].tokens) == best


def test_ctc_prefix_beam_search_batch_independence():
    g = torch.Generator().manual_seed(1)
    log_probs = torch.randn(4, 12, 7, generator=g).log_softmax(dim=-1)
    lens = torch.tensor([12, 5, 9, 1])
    batched = ctc_prefix_beam_search(log_probs, lens, beam_size=4, blank_id=2)
    for i in range(4):
        alone = ctc_prefix_beam_search(log_probs[i : i + 1, : lens[i]], lens[i : i + 1], beam_size=4, blank_id=2)
        assert [h.tokens for h in alone[0]] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone[0]] == pytest.approx([h.score for h in batched[i]], abs=1e-5)
        assert all(2 not in h.tokens for h in batched[i])
