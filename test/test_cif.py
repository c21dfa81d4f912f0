"""Tests for icefall_cif/cif.py against independent float64 references written here.

Two references, both deliberately naive:
  - `reference_loop`: the frame-by-frame accumulator of docs/cif.md (fire when acc + alpha >= beta,
    leftover measured from 1), plus tail handling for every utterance. Valid while alpha < 1.
  - `reference_closed_form`: n_t, F_k(t) and a_{k,t} of docs/cif.md evaluated with scalar loops over
    tokens and frames; valid for any non-negative alpha (several fires per frame).
"""
import math
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch

from icefall_cif.cif import (
    CifOutput,
    CifPredictor,
    fit_to_target_lengths,
    integrate_and_fire,
    quantity_loss,
)

Tokens = List[Tuple[np.ndarray, List[int]]]  # per utterance: (U, C) vectors, fire frames


def reference_loop(
    h: torch.Tensor, alpha: torch.Tensor, h_lens: torch.Tensor, beta: float, tail: Optional[float]
) -> Tokens:
    h, alpha = h.double().numpy(), alpha.double().numpy()
    result = []
    for i, length in enumerate(h_lens.tolist()):
        acc, state = 0.0, np.zeros(h.shape[2])
        vectors, frames = [], []
        for t in range(length):
            a_t, h_t = alpha[i, t], h[i, t]
            if acc + a_t >= beta:
                vectors.append(state + (1.0 - acc) * h_t)
                frames.append(t)
                acc = acc + a_t - 1.0
                state = acc * h_t
            else:
                acc += a_t
                state = state + a_t * h_t
        if tail is not None and acc > tail:
            vectors.append(state / acc)
            frames.append(length - 1)
        result.append((np.array(vectors).reshape(len(vectors), h.shape[2]), frames))
    return result


def reference_closed_form(
    h: torch.Tensor, alpha: torch.Tensor, h_lens: torch.Tensor, beta: float, tail: Optional[float]
) -> Tokens:
    h, alpha = h.double().numpy(), alpha.double().numpy()
    result = []
    for i, length in enumerate(h_lens.tolist()):
        c = [0.0]
        for t in range(length):
            c.append(c[-1] + alpha[i, t])
        n = [math.floor(x + 1.0 - beta) for x in c]

        def level(k: int, t: int) -> float:  # F_k(t), t = 0 .. length (c[0] = 0)
            if n[t] >= k:
                return float(k)
            if n[t] < k - 1:
                return float(k - 1)
            return c[t]

        num = n[length] + (1 if tail is not None and c[length] - n[length] > tail else 0)
        vectors, frames = [], []
        for k in range(1, num + 1):
            v = np.zeros(h.shape[2])
            for t in range(1, length + 1):
                v += (level(k, t) - level(k, t - 1)) * h[i, t - 1]
            if k > n[length]:  # tail token
                v /= c[length] - n[length]
                frames.append(length - 1)
            else:
                frames.append(next(t for t in range(1, length + 1) if n[t] >= k) - 1)
            vectors.append(v)
        result.append((np.array(vectors).reshape(num, h.shape[2]), frames))
    return result


def assert_matches(out: CifOutput, ref: Tokens, atol: float = 1e-6) -> None:
    N = len(ref)
    lens = [len(frames) for _, frames in ref]
    assert out.cif_lens.tolist() == lens
    assert out.cif.shape[:2] == (N, max(lens, default=0))
    assert out.fire_frames.shape == out.cif.shape[:2]
    for i, (vectors, frames) in enumerate(ref):
        got = out.cif[i].detach().double().numpy()
        np.testing.assert_allclose(got[: lens[i]], vectors, atol=atol, rtol=0)
        assert np.all(got[lens[i] :] == 0), "padding tokens must be zero"
        assert out.fire_frames[i, : lens[i]].tolist() == frames
        assert np.all(out.fire_frames[i, lens[i] :].numpy() == -1)


def random_batch(
    N: int, T: int, C: int, low: float, high: float, dtype=torch.float64
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = torch.randn(N, T, C, dtype=dtype)
    alpha = torch.empty(N, T, dtype=dtype).uniform_(low, high)
    h_lens = torch.randint(1, T + 1, (N,))
    h_lens[0] = T  # the longest utterance must get tail handling too (the seed's bug)
    # Garbage at padded frames must not matter.
    alpha.masked_fill_(torch.arange(T) >= h_lens.unsqueeze(1), 7.5)
    return h, alpha, h_lens


@pytest.mark.parametrize("tail", [None, 0.5, 0.3])
@pytest.mark.parametrize("beta", [0.99, 1.0, 0.9])
def test_matches_reference_loop(beta: float, tail: Optional[float]) -> None:
    for _ in range(3):
        h, alpha, h_lens = random_batch(N=5, T=40, C=6, low=0.0, high=0.999)
        out = integrate_and_fire(h, alpha, h_lens, threshold=beta, tail_threshold=tail)
        assert_matches(out, reference_loop(h, alpha, h_lens, beta, tail))


def test_matches_reference_loop_float32() -> None:
    h, alpha, h_lens = random_batch(N=4, T=200, C=8, low=0.05, high=0.6, dtype=torch.float32)
    out = integrate_and_fire(h, alpha, h_lens, tail_threshold=0.5)
    assert out.cif.dtype == torch.float32
    assert_matches(out, reference_loop(h, alpha, h_lens, 0.99, 0.5), atol=1e-5)


@pytest.mark.parametrize("tail", [None, 0.5])
def test_multi_fire_matches_closed_form(tail: Optional[float]) -> None:
    h, alpha, h_lens = random_batch(N=4, T=25, C=5, low=0.0, high=3.2)
    out = integrate_and_fire(h, alpha, h_lens, tail_threshold=tail)
    ref = reference_closed_form(h, alpha, h_lens, 0.99, tail)
    assert any(len(set(frames)) < len(frames) for _, frames in ref), "want several fires per frame"
    assert_matches(out, ref)


def test_closed_form_reference_agrees_with_loop_below_one() -> None:
    # Cross-check of the two test references, so that each one vouches for the other.
    h, alpha, h_lens = random_batch(N=3, T=30, C=4, low=0.0, high=0.99)
    loop = reference_loop(h, alpha, h_lens, 0.99, 0.4)
    closed = reference_closed_form(h, alpha, h_lens, 0.99, 0.4)
    for (v1, f1), (v2, f2) in zip(loop, closed):
        assert f1 == f2
        np.testing.assert_allclose(v1, v2, atol=1e-12)


def test_worked_examples() -> None:
    # By hand: alpha = 0.5 everywhere -> tokens (h0 + h1) / 2 and (h2 + h3) / 2.
    h = torch.eye(4, dtype=torch.float64).unsqueeze(0)
    out = integrate_and_fire(h, torch.full((1, 4), 0.5, dtype=torch.float64), torch.tensor([4]))
    torch.testing.assert_close(out.cif[0], torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]).double())
    assert out.fire_frames.tolist() == [[1, 3]]

    # beta = 0.9, alpha = (0.95, 0.5): token 1 = h0, then leftover 0.95 - 1 = -0.05 (a negative
    # weight, kept as in the reference), token 2 (tail, r = 0.45) = (-0.05 h0 + 0.5 h1) / 0.45.
    h = torch.eye(2, dtype=torch.float64).unsqueeze(0)
    out = integrate_and_fire(h, torch.tensor([[0.95, 0.5]]).double(), torch.tensor([2]), 0.9, 0.4)
    expected = torch.tensor([[1.0, 0.0], [-0.05 / 0.45, 0.5 / 0.45]]).double()
    torch.testing.assert_close(out.cif[0], expected)
    assert out.fire_frames.tolist() == [[0, 1]]


def test_padded_frames_ignored_and_batch_independent() -> None:
    h, alpha, h_lens = random_batch(N=4, T=30, C=5, low=0.0, high=0.9)
    pad = torch.arange(30) >= h_lens.unsqueeze(1)
    alpha_nan = alpha.masked_fill(pad, float("nan"))
    batch = integrate_and_fire(h, alpha_nan, h_lens, tail_threshold=0.5)
    for i, length in enumerate(h_lens.tolist()):
        single = integrate_and_fire(
            h[i : i + 1, :length], alpha[i : i + 1, :length], h_lens[i : i + 1], tail_threshold=0.5
        )
        n = int(single.cif_lens)
        assert int(batch.cif_lens[i]) == n
        torch.testing.assert_close(batch.cif[i, :n], single.cif[0])
        assert batch.fire_frames[i, :n].tolist() == single.fire_frames[0].tolist()


def test_tiny_shapes() -> None:
    h = torch.randn(2, 6, 3)
    out = integrate_and_fire(h, torch.rand(2, 6), torch.tensor([0, 0]), tail_threshold=0.5)
    assert out.cif.shape == (2, 0, 3) and out.cif_lens.tolist() == [0, 0]
    out = integrate_and_fire(torch.randn(3, 0, 4), torch.rand(3, 0), torch.zeros(3, dtype=torch.long))
    assert out.cif.shape == (3, 0, 4) and out.fire_frames.shape == (3, 0)
    # At most one token, from one frame or from a tail only.
    for alpha, lens in (([[0.5, 0.6, 0.0], [0.2, 0.1, 0.1]], [3, 3]), ([[0.7], [0.3]], [1, 1])):
        alpha, lens = torch.tensor(alpha).double(), torch.tensor(lens)
        h = torch.randn(2, alpha.shape[1], 3, dtype=torch.float64)
        for tail in (None, 0.5):
            out = integrate_and_fire(h, alpha, lens, tail_threshold=tail)
            assert_matches(out, reference_loop(h, alpha, lens, 0.99, tail))


def test_low_precision_weights_do_not_drift() -> None:
    # 500 frames of float16 / bfloat16 weights: a half-precision cumsum would be off by whole
    # tokens; the count must equal the float64 count of the very same (rounded) weights.
    torch.manual_seed(1)
    h = torch.randn(3, 500, 8)
    h_lens = torch.tensor([500, 431, 377])
    for dtype in (torch.float16, torch.bfloat16):
        alpha = torch.empty(3, 500).uniform_(0.1, 0.7).to(dtype)
        out = integrate_and_fire(h.to(dtype), alpha, h_lens, tail_threshold=0.5)
        assert out.cif.dtype == dtype
        ref = reference_loop(h, alpha.double(), h_lens, 0.99, 0.5)
        assert out.cif_lens.tolist() == [len(f) for _, f in ref]
        for i, (vectors, frames) in enumerate(ref):
            assert out.fire_frames[i, : len(frames)].tolist() == frames
            np.testing.assert_allclose(out.cif[i, : len(frames)].double().numpy(), vectors, atol=0.05)


def test_under_autocast() -> None:
    h, alpha, h_lens = random_batch(N=3, T=120, C=8, low=0.05, high=0.6, dtype=torch.float32)
    proj = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = proj(h)  # bfloat16 under autocast, as the encoder output would be
        out = integrate_and_fire(x, alpha, h_lens, tail_threshold=0.5)
    assert x.dtype == torch.bfloat16 and out.cif.dtype == torch.bfloat16
    ref = reference_loop(x.detach().float(), alpha, h_lens, 0.99, 0.5)
    assert out.cif_lens.tolist() == [len(f) for _, f in ref]

    pred = CifPredictor(8)
    targets = torch.tensor([40, 17, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pred(proj(h), h_lens, targets)
    assert out.alpha.dtype == torch.float32  # the weights stay float32 for the scaling to U
    assert out.cif_lens.tolist() == targets.tolist() and out.cif.shape[1] == 40
    assert torch.isfinite(out.quantity_loss)


def _smooth_alpha(h_lens: torch.Tensor, T: int, high: float, beta: float, tail: float) -> torch.Tensor:
    """(N, T) weights whose c_t stay >= 0.02 away from every fire boundary and whose remainder
    stays >= 0.02 away from the tail threshold, so that the function is smooth around them."""
    gen = torch.Generator().manual_seed(3)
    valid = torch.arange(T) < h_lens.unsqueeze(1)
    for _ in range(10000):
        alpha = torch.empty(len(h_lens), T, dtype=torch.float64).uniform_(0.1, high, generator=gen)
        c = torch.where(valid, alpha, 0.0).cumsum(1) + 1 - beta
        frac = c - c.floor()
        r = c[:, -1] - c[:, -1].floor() - (1 - beta)
        if frac.min() > 0.02 and frac.max() < 0.98 and (r - tail).abs().min() > 0.02:
            return alpha
    raise RuntimeError("could not draw smooth weights")


@pytest.mark.parametrize("high", [0.8, 2.5])
def test_gradcheck(high: float) -> None:
    N, T, C = 2, 7, 3
    h_lens = torch.tensor([7, 5])
    alpha = _smooth_alpha(h_lens, T, high, 0.99, 0.3)
    alpha[1, 5:] = 0.4  # padding: any value, its gradient must be 0
    h = torch.randn(N, T, C, dtype=torch.float64, requires_grad=True)
    alpha.requires_grad_(True)

    def fn(h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return integrate_and_fire(h, alpha, h_lens, tail_threshold=0.3).cif

    c_end = torch.where(torch.arange(T) < h_lens.unsqueeze(1), alpha, 0.0).sum(1)
    out = integrate_and_fire(h, alpha, h_lens, tail_threshold=0.3)
    assert torch.any(out.cif_lens > torch.floor(c_end + 0.01)), "the tail's gradient must be covered"
    assert torch.autograd.gradcheck(fn, (h, alpha), eps=1e-6, atol=1e-7)
    fn(h, alpha).sum().backward()
    assert torch.all(alpha.grad[1, 5:] == 0)


def test_errors_are_explained() -> None:
    h, alpha, lens = torch.randn(2, 5, 3), torch.rand(2, 5), torch.tensor([5, 3])
    with pytest.raises(ValueError, match="alpha must be"):
        integrate_and_fire(h, alpha[:, :4], lens)
    with pytest.raises(ValueError, match="h must be"):
        integrate_and_fire(h[0], alpha, lens)
    with pytest.raises(ValueError, match="h_lens must be"):
        integrate_and_fire(h, alpha, lens[:1])
    with pytest.raises(ValueError, match=r"h_lens must lie in \[0, T=5\]"):
        integrate_and_fire(h, alpha, torch.tensor([6, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        integrate_and_fire(h, alpha - 0.5, lens)
    with pytest.raises(ValueError, match="NaN or inf"):
        integrate_and_fire(h, alpha.masked_fill(torch.eye(2, 5, dtype=torch.bool), float("nan")), lens)
    with pytest.raises(ValueError, match="threshold must be in"):
        integrate_and_fire(h, alpha, lens, threshold=1.5)
    with pytest.raises(ValueError, match="tail_threshold must be >= 0"):
        integrate_and_fire(h, alpha, lens, tail_threshold=-0.1)
    with pytest.raises(ValueError, match="weight_type must be one of"):
        CifPredictor(4, weight_type="lstm")
    with pytest.raises(ValueError, match="conv_width must be a positive odd"):
        CifPredictor(4, conv_width=4)


def _linear_alpha_by_hand(pred: CifPredictor, h: torch.Tensor, h_lens: torch.Tensor) -> torch.Tensor:
    w, b = pred.weight_proj.weight.detach().double(), pred.weight_proj.bias.detach().double()
    alpha = 1.0 / (1.0 + torch.exp(-(h.double() @ w[0] + b[0])))
    return torch.where(torch.arange(h.shape[1]) < h_lens.unsqueeze(1), alpha, 0.0)


def test_predictor_training_gives_exactly_u_vectors() -> None:
    N, T, C = 4, 30, 8
    h = torch.randn(N, T, C)
    h_lens = torch.tensor([30, 22, 17, 9])
    targets = torch.tensor([6, 11, 3, 9])  # 9 tokens in 9 frames: alpha' = 1 everywhere
    pred = CifPredictor(C, weight_type="linear")
    out = pred(h, h_lens, targets)
    assert out.cif.shape == (N, 11, C)
    assert out.cif_lens.tolist() == targets.tolist()

    alpha = _linear_alpha_by_hand(pred, h, h_lens)
    torch.testing.assert_close(out.alpha.double(), alpha, atol=1e-6, rtol=0)
    expected_q = sum(abs(float(alpha[i].sum()) - int(targets[i])) for i in range(N))
    assert out.quantity_loss is not None
    assert abs(float(out.quantity_loss.detach()) - expected_q) < 1e-4
    torch.testing.assert_close(quantity_loss(alpha, targets).double(), torch.tensor(expected_q).double())

    scaled = alpha * targets.unsqueeze(1).double() / (alpha.sum(1, keepdim=True) + 1e-8)
    ref = reference_closed_form(h, scaled, h_lens, 0.99, None)
    for i, (vectors, frames) in enumerate(ref):
        U = int(targets[i])
        assert len(frames) == U  # the scaled weights fire U times in exact arithmetic
        np.testing.assert_allclose(out.cif[i, :U].detach().double().numpy(), vectors, atol=1e-4)
        assert out.fire_frames[i, :U].tolist() == frames
        assert torch.all(out.cif[i, U:] == 0) and torch.all(out.fire_frames[i, U:] == -1)


def test_predictor_inference_uses_tail_and_raw_weights() -> None:
    N, T, C = 3, 40, 8
    h, h_lens = torch.randn(N, T, C), torch.tensor([40, 33, 12])
    for weight_type in CifPredictor.WEIGHT_TYPES:
        pred = CifPredictor(C, weight_type=weight_type, tail_threshold=0.5).eval()
        out = pred(h, h_lens)
        assert out.quantity_loss is None
        assert torch.all((out.alpha > 0) & (out.alpha < 1) | (torch.arange(T) >= h_lens.unsqueeze(1)))
        assert torch.all(out.alpha[torch.arange(T) >= h_lens.unsqueeze(1)] == 0)
        assert_matches(out, reference_loop(h, out.alpha.detach(), h_lens, 0.99, 0.5), atol=1e-5)
        # Timestamps: non-decreasing along tokens, inside the utterance.
        for i, n in enumerate(out.cif_lens.tolist()):
            frames = out.fire_frames[i, :n]
            assert torch.all(frames[1:] >= frames[:-1])
            assert torch.all((frames >= 0) & (frames < h_lens[i]))


def test_predictor_ignores_padded_frames() -> None:
    N, T, C = 3, 25, 8
    h, h_lens = torch.randn(N, T, C), torch.tensor([25, 18, 7])
    pad = (torch.arange(T) >= h_lens.unsqueeze(1)).unsqueeze(-1)
    h_garbage = torch.where(pad, 100.0 * torch.randn(N, T, C), h)
    targets = torch.tensor([5, 4, 2])
    for weight_type in CifPredictor.WEIGHT_TYPES:
        pred = CifPredictor(C, weight_type=weight_type, conv_width=5).eval()
        for tgt in (None, targets):
            a, b = pred(h, h_lens, tgt), pred(h_garbage, h_lens, tgt)
            torch.testing.assert_close(a.alpha, b.alpha)
            torch.testing.assert_close(a.cif, b.cif)
            assert a.fire_frames.tolist() == b.fire_frames.tolist()


def test_predictor_backward_reaches_parameters() -> None:
    h = torch.randn(2, 20, 8, requires_grad=True)
    pred = CifPredictor(8)
    out = pred(h, torch.tensor([20, 14]), torch.tensor([4, 6]))
    (out.cif.square().sum() + out.quantity_loss).backward()
    for name, p in pred.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_fit_to_target_lengths_pads_and_truncates() -> None:
    cif = torch.arange(1, 1 + 2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    out = CifOutput(cif, torch.tensor([3, 2]), torch.tensor([[1, 4, 6], [2, 5, -1]]))
    fitted = fit_to_target_lengths(out, torch.tensor([2, 4]), h_lens=torch.tensor([8, 9]))
    assert fitted.cif.shape == (2, 4, 2)
    assert fitted.cif_lens.tolist() == [2, 4]
    torch.testing.assert_close(fitted.cif[0, :2], cif[0, :2])  # extra token dropped
    assert torch.all(fitted.cif[0, 2:] == 0)
    torch.testing.assert_close(fitted.cif[1, :2], cif[1, :2])  # two zero tokens padded in
    assert torch.all(fitted.cif[1, 2:] == 0)
    assert fitted.fire_frames.tolist() == [[1, 4, -1, -1], [2, 5, 8, 8]]
