"""Tests for the mask_ctc head (zipformer_cif/mask_ctc_head.py) and icefall_cif/decode/mask_predict.py.

- mask_predict on a made-up predictor whose outputs depend on the given tokens: the beam with
  B = 1 is greedy search; with one round and a beam wide enough its n-best is the exact top of
  every joint filling (brute force); the round schedule fills ceil(M / iterations) per round.
- CTC greedy tokens with confidences equal ctc_greedy_search, with ESPnet's confidence.
- export-onnx.py refuses a mask_ctc model, naming the decoder type.
- The head: nothing masked (--mask-threshold 0) gives the CTC greedy output; beam 1 equals greedy;
  greedy_search is mask_ctc_greedy with the same options, which default to the head's;
  a tiny model overfit to three utterances decodes them with every method it offers, also with
  every token masked; the loss is the CE at the masked positions only; bad options are errors
  that name the option.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers_decode import VOCAB_SIZE, build_tiny_model, make_encoder_out, overfit_tiny_model, tiny_config
from mask_ctc_head import cmlm_loss, sample_cmlm_mask

from icefall_cif.config import LossConfig, config_to_dict
from icefall_cif.decode.greedy import ctc_greedy_search, ctc_greedy_tokens, greedy_search
from icefall_cif.decode.loop import results_key
from icefall_cif.decode.mask_predict import MASK, mask_predict_beam, mask_predict_greedy
from icefall_cif.decode.search import decode_batch
from icefall_cif.model_contract import decoding_methods
from icefall_cif.utils import AttributeDict

METHODS = ("mask_ctc_greedy", "mask_ctc_beam_search")


def params(**kwargs) -> AttributeDict:
    return AttributeDict({**dict(beam_size=4, nbest_scale=0.0, num_paths=4, ctc_weight=0.5), **kwargs})


class ContextPredictor:
    """A made-up predictor: per-position logits plus a term from the tokens given anywhere, so
    that every filling changes the next round's predictions. Counts its calls."""

    def __init__(self, N: int, L: int, V: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.base = 2 * torch.randn(N, L, V, generator=g, dtype=torch.float64)
        self.mix = torch.randn(V, V, generator=g, dtype=torch.float64)
        self.calls = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, K, L) -> (N, K, L, V)
        self.calls += 1
        V = self.mix.size(0)
        given = F.one_hot(tokens.clamp(min=0), V).double() * (tokens >= 0).unsqueeze(-1)
        context = given.sum(dim=2) @ self.mix  # (N, K, V)
        return (self.base.unsqueeze(1) + context.unsqueeze(2)).log_softmax(dim=-1)


def first_guess(N: int, L: int, V: int, lens, seed: int, share: float = 0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (N, L), generator=g)
    return tokens.masked_fill(torch.rand(N, L, generator=g) < share, MASK)


# ---------------------------------------------------------------------- mask_predict
@pytest.mark.parametrize("iterations", [1, 2, 10])
def test_beam_of_one_is_greedy(iterations):
    N, L, V = 4, 9, 6
    lens = torch.tensor([9, 5, 0, 7])
    for seed in range(3):
        tokens = first_guess(N, L, V, lens, seed)
        predict = ContextPredictor(N, L, V, seed)
        greedy, scores = mask_predict_greedy(predict, tokens, lens, iterations)
        beam = mask_predict_beam(predict, tokens, lens, iterations, beam_size=1)
        assert [nbest[0].tokens for nbest in beam] == [greedy[i, :n].tolist() for i, n in enumerate(lens.tolist())]
        assert [nbest[0].score for nbest in beam] == pytest.approx(scores.tolist(), abs=1e-9)
        valid = torch.arange(L) < lens.unsqueeze(1)
        # Given tokens stay, every hidden one is filled.
        assert torch.equal(greedy[valid & (tokens >= 0)], tokens[valid & (tokens >= 0)])
        assert bool((greedy[valid] >= 0).all())


def test_rounds_follow_the_schedule():
    N, L, V = 1, 7, 5
    tokens = torch.full((N, L), MASK)
    for iterations, rounds in [(1, 1), (2, 2), (3, 3), (5, 4), (10, 7)]:  # M = 7: ceil(7 / iterations) per round
        predict = ContextPredictor(N, L, V, 0)
        mask_predict_greedy(predict, tokens, torch.tensor([L]), iterations)
        assert predict.calls == rounds, iterations
    predict = ContextPredictor(N, L, V, 0)
    tokens = torch.randint(0, V, (N, L))
    filled, scores = mask_predict_greedy(predict, tokens, torch.tensor([L]), 10)
    assert predict.calls == 0 and torch.equal(filled, tokens) and scores.tolist() == [0.0]


def test_one_round_beam_is_the_exact_top_of_all_fillings():
    N, L, V, B = 2, 5, 4, 7
    lens = torch.tensor([5, 4])
    tokens = torch.tensor([[MASK, 2, MASK, MASK, 1], [3, MASK, MASK, 0, 1]])
    predict = ContextPredictor(N, L, V, 5)
    nbest = mask_predict_beam(predict, tokens, lens, iterations=1, beam_size=B)
    log_probs = predict(tokens.unsqueeze(1))[:, 0]  # one round: every hole sees the same input
    for i, n in enumerate(lens.tolist()):
        holes = [p for p in range(n) if tokens[i, p] == MASK]
        everything = []
        for filling in itertools.product(range(V), repeat=len(holes)):
            seq = tokens[i, :n].tolist()
            for p, t in zip(holes, filling):
                seq[p] = t
            everything.append((sum(float(log_probs[i, p, t]) for p, t in zip(holes, filling)), seq))
        everything.sort(key=lambda x: -x[0])
        assert [h.tokens for h in nbest[i]] == [seq for _, seq in everything[:B]]
        assert [h.score for h in nbest[i]] == pytest.approx([s for s, _ in everything[:B]], abs=1e-9)


def test_beam_hypotheses_are_distinct_and_at_least_as_good_as_greedy():
    N, L, V = 3, 8, 5
    lens = torch.tensor([8, 6, 7])
    tokens = first_guess(N, L, V, lens, 7, share=0.8)
    predict = ContextPredictor(N, L, V, 7)
    nbest = mask_predict_beam(predict, tokens, lens, iterations=3, beam_size=4)
    _, greedy_scores = mask_predict_greedy(predict, tokens, lens, 3)
    for i, hyps in enumerate(nbest):
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert hyps[0].score >= greedy_scores[i].item() - 1e-9


def test_ctc_greedy_tokens_and_confidences():
    # The docstring's example: argmax [a a <b> a b b], a = 1, b = 2.
    post = torch.tensor([[.6, .9, .8, .7, .5, .4]])
    best = torch.tensor([[1, 1, 0, 1, 2, 2]])
    probs = torch.full((1, 6, 3), 0.0)
    probs.scatter_(2, best.unsqueeze(2), post.unsqueeze(2))
    rest = (1 - post) / 2
    probs = torch.where(probs == 0, rest.unsqueeze(2), probs)
    out = ctc_greedy_tokens(probs.log(), torch.tensor([6]))
    assert out.tokens.tolist() == [[1, 1, 2]] and out.lens.tolist() == [3] and out.frames.tolist() == [[0, 3, 4]]
    assert out.confidence[0].tolist() == pytest.approx([.9, .7, .5])

    g = torch.Generator().manual_seed(0)
    log_probs = (3 * torch.randn(4, 30, 6, generator=g)).log_softmax(-1)
    lens = torch.tensor([30, 12, 1, 25])
    out = ctc_greedy_tokens(log_probs, lens)
    expected = ctc_greedy_search(log_probs, lens)
    assert [row[:n] for row, n in zip(out.tokens.tolist(), out.lens.tolist())] == expected
    for i, n in enumerate(out.lens.tolist()):
        for j in range(n):  # the run of token j starts at frames[i, j] and ends where the argmax changes
            t, run = int(out.frames[i, j]), []
            while t < int(lens[i]) and int(log_probs[i, t].argmax()) == int(out.tokens[i, j]):
                run.append(float(log_probs[i, t].max().exp()))
                t += 1
            assert out.confidence[i, j].item() == pytest.approx(max(run))


# ---------------------------------------------------------------------- the head
def test_the_head_offers_its_methods_and_no_joint_beam():
    model = build_tiny_model("mask_ctc")
    assert decoding_methods(model) == ["greedy_search", *METHODS, "ctc_greedy_search", "ctc_prefix_beam_search"]
    with pytest.raises(NotImplementedError, match="mask_ctc_beam_search"):
        model.head.beam_search(None, None, None, None, 4, None, 0.0, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_nothing_masked_is_ctc_greedy_and_beam_one_is_greedy(seed):
    torch.manual_seed(seed)
    model = build_tiny_model("mask_ctc")
    encoder_out, lens = make_encoder_out([24, 9, 17, 13], model.encoder_dim, seed)
    with torch.no_grad():
        ctc = ctc_greedy_search(model.ctc_log_probs(encoder_out), lens)
        for method in METHODS:
            assert decode_batch(method, model, encoder_out, lens, params(mask_threshold=0.0)) == ctc, method
        # An untrained CTC head is unsure of everything: the CMLM fills every token.
        greedy = decode_batch("mask_ctc_greedy", model, encoder_out, lens, params(mask_iterations=3))
        assert greedy != ctc and [len(h) for h in greedy] == [len(h) for h in ctc]
        beam = decode_batch("mask_ctc_beam_search", model, encoder_out, lens,
                            params(beam_size=1, mask_iterations=3))
        assert beam == greedy
        # greedy_search is mask_ctc_greedy with the head's default options; its times are the CTC frames.
        result = greedy_search(model, encoder_out, lens, return_timestamps=True)
        assert result.hyps == decode_batch("mask_ctc_greedy", model, encoder_out, lens, params())
        first = ctc_greedy_tokens(model.ctc_log_probs(encoder_out), lens)
        assert result.timestamps == [row[:n] for row, n in zip(first.frames.tolist(), first.lens.tolist())]


def test_greedy_search_reads_the_mask_options_which_default_to_the_heads():
    torch.manual_seed(2)
    model = build_tiny_model("mask_ctc")
    encoder_out, lens = make_encoder_out([24, 9, 17], model.encoder_dim, 2)
    with torch.no_grad():
        outputs = []
        for threshold in (0.0, 1.0):
            options = params(mask_threshold=threshold, mask_iterations=2)
            outputs.append(decode_batch("greedy_search", model, encoder_out, lens, options))
            assert outputs[-1] == decode_batch("mask_ctc_greedy", model, encoder_out, lens, options), threshold
        assert outputs[0] != outputs[1]
        # No option given (decode.py's None): the head's 0.3 and 10 rounds.
        unset = params(mask_threshold=None, mask_iterations=None)
        for method in METHODS:
            assert decode_batch(method, model, encoder_out, lens, unset) == decode_batch(
                method, model, encoder_out, lens, params(mask_threshold=0.3, mask_iterations=10)), method
    key = results_key(AttributeDict(unset, decoding_method="greedy_search"), model.head)
    assert key == "mask_ctc_greedy_mask_threshold_0.3_iterations_10"
    key = results_key(AttributeDict(unset, decoding_method="mask_ctc_beam_search", mask_threshold=0.5), model.head)
    assert key == "beam_size_4_mask_threshold_0.5_iterations_10_ctc_weight_0.5"


@pytest.fixture(scope="module")
def overfit():
    # The CMLM needs longer than the helper's default 100 steps to learn every masked token, and
    # at the default lr 1e-2 Adam reached the all-masked references on one CPU and not on another.
    return overfit_tiny_model("mask_ctc", steps=1000, lr=3e-3)


def test_overfit_model_decodes_the_references(overfit):
    fit = overfit
    for method in decoding_methods(fit.model):
        hyps = decode_batch(method, fit.model, fit.encoder_out, fit.encoder_out_lens, params())
        assert hyps == fit.refs, method
    # Every token masked: the CMLM alone has to find them, in rounds.
    for method in METHODS:
        for iterations in (1, 3):
            hyps = decode_batch(method, fit.model, fit.encoder_out, fit.encoder_out_lens,
                                params(mask_threshold=1.0, mask_iterations=iterations))
            assert hyps == fit.refs, (method, iterations)


def test_loss_is_the_ce_of_the_masked_positions():
    torch.manual_seed(3)
    model = build_tiny_model("mask_ctc")
    cmlm = model.head.cmlm
    encoder_out, lens = make_encoder_out([20, 14, 9], model.encoder_dim, 3)
    y = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 3, 0, 0], [5, 5, 0, 0, 0]])
    y_lens = torch.tensor([5, 3, 2])
    hidden = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = cmlm_loss(cmlm, y, y_lens, hidden, encoder_out, lens, 0.1)
        logits = cmlm(y.masked_fill(hidden, MASK), y_lens, encoder_out, lens)
        expected = F.cross_entropy(logits[hidden], y[hidden], label_smoothing=0.1, reduction="sum")
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        # Changing a visible token changes the input, not the scored positions' targets: the loss
        # depends on the unmasked tokens only through the context.
        other = y.clone()
        other[0, 1] = 9
        logits2 = cmlm(other.masked_fill(hidden, MASK), y_lens, encoder_out, lens)
        expected2 = F.cross_entropy(logits2[hidden], y[hidden], label_smoothing=0.1, reduction="sum")
        assert cmlm_loss(cmlm, other, y_lens, hidden, encoder_out, lens, 0.1).item() == pytest.approx(expected2.item())
    # The head's loss draws its own mask; the model weights it 1.0 as "cmlm_loss".
    out = model.head.loss(None, encoder_out, lens, y, y_lens, LossConfig())
    assert set(out) == {"cmlm_loss"} and out["cmlm_loss"].item() > 0
    assert model.head.loss_weights(LossConfig(), 0) == {"cmlm_loss": 1.0}


def test_training_masks_hide_one_to_all_tokens_uniformly():
    y_lens = torch.tensor([4, 1, 0, 6])
    counts = {n: [0] * (n + 1) for n in y_lens.tolist()}
    for _ in range(600):
        hidden = sample_cmlm_mask(y_lens, 7)
        assert hidden.shape == (4, 7)
        assert not bool(hidden[torch.arange(7) >= y_lens.unsqueeze(1)].any())
        for n, m in zip(y_lens.tolist(), hidden.sum(dim=1).tolist()):
            counts[n][m] += 1
    assert counts[0] == [600] and counts[1] == [0, 600]
    for n in (4, 6):
        assert counts[n][0] == 0 and all(c > 600 / n / 2 for c in counts[n][1:]), counts[n]


@pytest.mark.parametrize("option,value,message", [
    ("mask_threshold", 1.5, "--mask-threshold must be in"),
    ("mask_threshold", -0.1, "--mask-threshold must be in"),
    ("mask_iterations", 0, "--mask-iterations must be >= 1"),
    ("beam_size", 0, "--beam-size must be >= 1"),
])
def test_bad_options_name_the_option(option, value, message):
    model = build_tiny_model("mask_ctc")
    encoder_out, lens = make_encoder_out([12, 9], model.encoder_dim)
    with pytest.raises(ValueError, match=message):
        decode_batch("mask_ctc_beam_search", model, encoder_out, lens, params(**{option: value}))


def test_onnx_export_refuses_mask_ctc(tmp_path):
    from recipe import RECIPE

    from icefall_cif import onnx_export

    model = build_tiny_model("mask_ctc")
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    torch.save({"model": model.state_dict(), "model_config": config_to_dict(tiny_config("mask_ctc"))},
               exp_dir / "epoch-1.pt")
    tokens = tmp_path / "tokens.txt"
    symbols = ["<blk>", "<sos/eos>", "<unk>"] + [f"t{i}" for i in range(3, VOCAB_SIZE)]
    tokens.write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)))
    args = onnx_export.get_parser(RECIPE).parse_args(
        ["--exp-dir", str(exp_dir), "--epoch", "1", "--avg", "1", "--use-averaged-model", "0", "--tokens", str(tokens)]
    )
    with pytest.raises(ValueError, match="has decoder type mask_ctc; export-onnx.py has layouts for"):
        onnx_export.load_selected_model(args, RECIPE)
