"""Tests for icefall_cif/rnnt_loss.py against naive float64 dynamic programmes written here."""
import math
from typing import List, Sequence

import pytest
import torch

import icefall_cif.rnnt_loss as rnnt

try:
    import k2
except ImportError:
    k2 = None

NEG_INF = float("-inf")
REDUCTIONS = ["none", "sum", "mean"]
F64 = torch.float64

# (T_b, U_b) per sequence: ragged, one with no symbols, one with more symbols than frames.
LENGTHS = [(7, 4), (5, 0), (2, 3)]
B, T, U, V = len(LENGTHS), 7, 4, 6


@pytest.fixture(autouse=True)
def _pure_pytorch(monkeypatch):
    """Every test here exercises the pure-PyTorch path, even where k2 is installed."""
    monkeypatch.setattr(rnnt, "USE_K2", False)


def make_boundary(lengths: Sequence = LENGTHS) -> torch.Tensor:
    return torch.tensor([[0, 0, u, t] for t, u in lengths], dtype=torch.int64)


def make_symbols(batch: int = B, num_symbols: int = U, vocab: int = V) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, num_symbols))


def logsumexp_terms(terms: List[torch.Tensor]) -> torch.Tensor:
    """log(sum(exp(terms))) that skips -inf terms, so autograd never sees inf - inf."""
    finite = [x for x in terms if not math.isinf(float(x.detach()))]
    if not finite:
        return torch.tensor(NEG_INF, dtype=F64)
    return torch.logsumexp(torch.stack(finite), dim=0)


def graves_nll(arc_symbol, arc_blank, num_frames: int, num_symbols: int) -> torch.Tensor:
    """Textbook RNN-T negative log-likelihood (Graves 2012), with python loops.

    arc_symbol(t, u): log-prob of emitting symbol u+1 at frame t after u symbols.
    arc_blank(t, u): log-prob of blank at frame t after u symbols.
    """
    alpha = {}
    for t in range(num_frames):
        for u in range(num_symbols + 1):
            if t == 0 and u == 0:
                alpha[t, u] = torch.zeros((), dtype=F64)
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + arc_blank(t - 1, u))
            if u > 0:
                terms.append(alpha[t, u - 1] + arc_symbol(t, u - 1))
            alpha[t, u] = logsumexp_terms(terms)
    return -(alpha[num_frames - 1, num_symbols] + arc_blank(num_frames - 1, num_symbols))


def naive_full_losses(logprobs: List[torch.Tensor], symbols: torch.Tensor, lengths=LENGTHS) -> torch.Tensor:
    """logprobs[b]: (T, U+1, V) normalized log-probs of sequence b."""
    losses = []
    for b, (t_b, u_b) in enumerate(lengths):
        lp, ys = logprobs[b], symbols[b].tolist()
        losses.append(graves_nll(lambda t, u: lp[t, u, ys[u]], lambda t, u: lp[t, u, 0], t_b, u_b))
    return torch.stack(losses)


def reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": losses, "sum": losses.sum(), "mean": losses.mean()}[reduction]


def scalar(loss: torch.Tensor) -> torch.Tensor:
    """A scalar to back-propagate, weighting sequences differently when there is no reduction."""
    if loss.ndim == 0:
        return loss
    return (loss * torch.arange(1, loss.numel() + 1, dtype=loss.dtype)).sum()


def assert_close(actual, expected, tol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rnnt_loss_matches_graves(reduction):
    logits = torch.randn(B, T, U + 1, V, dtype=F64, requires_grad=True)
    symbols = make_symbols()
    loss = rnnt.rnnt_loss(logits, symbols, termination_symbol=0, boundary=make_boundary(), reduction=reduction)
    expected = reduce(naive_full_losses(list(logits.log_softmax(-1)), symbols), reduction)
    assert_close(loss, expected)
    (grad,) = torch.autograd.grad(scalar(loss), logits)
    (expected_grad,) = torch.autograd.grad(scalar(expected), logits)
    assert_close(grad, expected_grad)


def test_rnnt_loss_without_boundary_uses_full_lengths():
    logits = torch.randn(2, 4, 3, 5, dtype=F64)
    symbols = make_symbols(2, 2, 5)
    lengths = [(4, 2), (4, 2)]
    loss = rnnt.rnnt_loss(logits, symbols, termination_symbol=0, reduction="none")
    assert_close(loss, naive_full_losses(list(logits.log_softmax(-1)), symbols, lengths))


def test_nonzero_termination_symbol():
    logits = torch.randn(2, 4, 3, 5, dtype=F64)
    symbols = torch.tensor([[0, 1], [2, 0]])
    blank = 4
    loss = rnnt.rnnt_loss(logits, symbols, termination_symbol=blank, reduction="none")
    lp = logits.log_softmax(-1)
    expected = torch.stack(
        [graves_nll(lambda t, u: lp[b, t, u, symbols[b, u]], lambda t, u: lp[b, t, u, blank], 4, 2) for b in range(2)]
    )
    assert_close(loss, expected)


def am_lm_inputs(vocab: int = V):
    am = torch.randn(B, T, vocab, dtype=F64, requires_grad=True)
    lm = torch.randn(B, U + 1, vocab, dtype=F64, requires_grad=True)
    return am, lm


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rnnt_loss_simple_matches_graves(reduction):
    am, lm = am_lm_inputs()
    symbols = make_symbols()
    loss = rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary=make_boundary(), reduction=reduction)
    joint = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1)  # the naive (B, T, U+1, V) way
    expected = reduce(naive_full_losses(list(joint), symbols), reduction)
    assert_close(loss, expected)
    grads = torch.autograd.grad(scalar(loss), [am, lm])
    expected_grads = torch.autograd.grad(scalar(expected), [am, lm])
    for g, e in zip(grads, expected_grads):
        assert_close(g, e)


def test_rnnt_loss_simple_is_shift_invariant_and_handles_large_logits():
    """Adding a per-frame constant to am (or per-position to lm) leaves the loss unchanged."""
    am, lm = am_lm_inputs()
    am, lm = am.detach() * 30, lm.detach() * 30  # exp() of these would overflow without the max trick
    symbols, boundary = make_symbols(), make_boundary()
    base = rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary=boundary, reduction="none")
    shifted = rnnt.rnnt_loss_simple(
        lm + torch.randn(B, U + 1, 1, dtype=F64) * 100, am + torch.randn(B, T, 1, dtype=F64) * 100,
        symbols, 0, boundary=boundary, reduction="none",
    )
    assert torch.isfinite(base).all()
    assert_close(shifted, base, tol=1e-8)


def naive_occupations(x_arc: torch.Tensor, y_arc: torch.Tensor, box: Sequence[int]):
    """Arc occupations of the generic recursion, by autograd through a python-loop DP.

    x_arc (S, T+1): arcs (s, t) -> (s+1, t); y_arc (S+1, T): arcs (s, t) -> (s, t+1);
    box = (s_begin, t_begin, s_end, t_end).
    """
    x_arc = x_arc.detach().clone().requires_grad_(True)
    y_arc = y_arc.detach().clone().requires_grad_(True)
    s0, t0, s1, t1 = box
    alpha = {}
    for s in range(s0, s1 + 1):
        for t in range(t0, t1 + 1):
            if (s, t) == (s0, t0):
                alpha[s, t] = torch.zeros((), dtype=F64)
                continue
            terms = []
            if s > s0:
                terms.append(alpha[s - 1, t] + x_arc[s - 1, t])
            if t > t0:
                terms.append(alpha[s, t - 1] + y_arc[s, t - 1])
            alpha[s, t] = logsumexp_terms(terms)
    score = alpha[s1, t1]
    gx, gy = torch.autograd.grad(score, [x_arc, y_arc], allow_unused=True)
    # An arc set the DP never reads (e.g. no symbols) has zero occupation.
    gx = torch.zeros_like(x_arc) if gx is None else gx
    gy = torch.zeros_like(y_arc) if gy is None else gy
    return score.detach(), gx, gy


def test_simple_loss_return_grad_is_arc_occupation():
    am, lm = am_lm_inputs()
    symbols, boundary = make_symbols(), make_boundary()
    loss, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, symbols, 0, boundary=boundary, reduction="sum", return_grad=True
    )
    assert px_grad.shape == (B, U, T + 1) and py_grad.shape == (B, U + 1, T)
    joint = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1).detach()  # (B, T, U+1, V)
    for b, (t_b, u_b) in enumerate(LENGTHS):
        x_arc = joint[b, :, :U].gather(2, symbols[b].reshape(1, U, 1).expand(T, U, 1)).squeeze(2).T
        x_arc = torch.cat([x_arc, torch.full((U, 1), NEG_INF, dtype=F64)], dim=1)
        x_arc[:, t_b] = NEG_INF  # no symbol on the one-past-the-last frame
        y_arc = joint[b, :, :, 0].T
        score, gx, gy = naive_occupations(x_arc, y_arc, (0, 0, u_b, t_b))
        assert_close(-score, naive_full_losses([joint[b]], symbols[b : b + 1], [(t_b, u_b)])[0])
        assert_close(px_grad[b], gx)
        assert_close(py_grad[b], gy)
        # Every path crosses each real frame once by a blank and emits each symbol once.
        assert_close(py_grad[b, :, :t_b].sum(0), torch.ones(t_b, dtype=F64))
        assert_close(px_grad[b].sum(), torch.tensor(float(u_b), dtype=F64))


def test_mutual_information_with_begin_offsets():
    """k2's boundary also allows lattices that start at (s_begin, t_begin) > (0, 0)."""
    S_, T_ = 4, 6
    px = torch.randn(2, S_, T_ + 1, dtype=F64, requires_grad=True)
    py = torch.randn(2, S_ + 1, T_, dtype=F64, requires_grad=True)
    boxes = [(1, 2, 3, 6), (0, 1, 4, 4)]
    boundary = torch.tensor(boxes, dtype=torch.int64)
    scores, (px_grad, py_grad) = rnnt.mutual_information_recursion(px, py, boundary, return_grad=True)
    (auto_px, auto_py) = torch.autograd.grad(scores.sum(), [px, py])
    for b, box in enumerate(boxes):
        score, gx, gy = naive_occupations(px[b], py[b], box)
        assert_close(scores[b], score)
        assert_close(px_grad[b], gx)
        assert_close(py_grad[b], gy)
    assert_close(auto_px, px_grad)
    assert_close(auto_py, py_grad)


def test_float32_long_lattice_is_finite_and_normalized():
    """At T=200, U=50 the float32 recursion agrees with float64 and occupations sum to 1."""
    b, t, u, v = 2, 200, 50, 30
    am = torch.randn(b, t, v) * 3
    lm = torch.randn(b, u + 1, v) * 3
    symbols = make_symbols(b, u, v)
    boundary = make_boundary([(200, 50), (120, 31)])
    loss32, (px32, py32) = rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none", return_grad=True)
    loss64 = rnnt.rnnt_loss_simple(lm.double(), am.double(), symbols, 0, boundary, reduction="none")
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-3)
    assert torch.isfinite(px32).all() and torch.isfinite(py32).all()
    torch.testing.assert_close(py32[1, :, :120].sum(0), torch.ones(120), rtol=1e-4, atol=1e-4)
    assert float(py32[1, :, 120:].abs().sum()) == 0.0 and float(px32[1, 32:].abs().sum()) == 0.0


def naive_smoothed_losses(am, lm, symbols, lm_only_scale, am_only_scale, lengths=LENGTHS):
    """Interpolated log-probs per token written out over the full (T, U+1, V) grid."""
    unigram = lm.softmax(-1).mean(dim=(0, 1))  # average LM over every position of the batch
    losses = []
    for b, (t_b, u_b) in enumerate(lengths):
        combined = (am[b].unsqueeze(1) + lm[b].unsqueeze(0)).log_softmax(-1)  # (T, U+1, V)
        lm_only = lm[b].log_softmax(-1).unsqueeze(0)  # (1, U+1, V)
        am_only = (am[b] + unigram.log()).log_softmax(-1).unsqueeze(1)  # (T, 1, V)
        mixed = (1 - lm_only_scale - am_only_scale) * combined + lm_only_scale * lm_only + am_only_scale * am_only
        ys = symbols[b].tolist()
        losses.append(graves_nll(lambda t, u: mixed[t, u, ys[u]], lambda t, u: mixed[t, u, 0], t_b, u_b))
    return torch.stack(losses)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rnnt_loss_smoothed_matches_naive(reduction):
    am, lm = am_lm_inputs()
    symbols = make_symbols()
    loss = rnnt.rnnt_loss_smoothed(
        lm, am, symbols, 0, lm_only_scale=0.25, am_only_scale=0.15, boundary=make_boundary(), reduction=reduction
    )
    expected = reduce(naive_smoothed_losses(am, lm, symbols, 0.25, 0.15), reduction)
    assert_close(loss, expected)
    grads = torch.autograd.grad(scalar(loss), [am, lm])
    expected_grads = torch.autograd.grad(scalar(expected), [am, lm])
    for g, e in zip(grads, expected_grads):
        assert_close(g, e)


def test_rnnt_loss_smoothed_return_grad_and_zero_scales():
    am, lm = am_lm_inputs()
    symbols, boundary = make_symbols(), make_boundary()
    smoothed, (px_grad, py_grad) = rnnt.rnnt_loss_smoothed(
        lm, am, symbols, 0, 0.0, 0.0, boundary=boundary, reduction="none", return_grad=True
    )
    simple, (px_ref, py_ref) = rnnt.rnnt_loss_simple(
        lm, am, symbols, 0, boundary=boundary, reduction="none", return_grad=True
    )
    assert_close(smoothed, simple)
    assert_close(px_grad, px_ref)
    assert_close(py_grad, py_ref)


def simple_ranges(s_range: int, lengths=LENGTHS, num_frames: int = T, num_symbols: int = U):
    am = torch.randn(len(lengths), num_frames, V, dtype=F64)
    lm = torch.randn(len(lengths), num_symbols + 1, V, dtype=F64)
    symbols = make_symbols(len(lengths), num_symbols)
    boundary = make_boundary(lengths)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    return rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range), symbols, boundary


def naive_pruned_losses(pruned_logits, symbols, ranges, lengths=LENGTHS):
    """Arcs exist only at positions listed in ranges[b, t]; each uses its own softmax."""
    losses = []
    for b, (t_b, u_b) in enumerate(lengths):
        lp = pruned_logits[b].log_softmax(-1)  # (T, R, V)
        where = [{int(s): r for r, s in enumerate(ranges[b, t])} for t in range(T)]
        ys = symbols[b].tolist()

        def symbol_arc(t, u):
            return lp[t, where[t][u], ys[u]] if u in where[t] else torch.tensor(NEG_INF, dtype=F64)

        def blank_arc(t, u):
            return lp[t, where[t][u], 0] if u in where[t] else torch.tensor(NEG_INF, dtype=F64)

        losses.append(graves_nll(symbol_arc, blank_arc, t_b, u_b))
    return torch.stack(losses)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rnnt_loss_pruned_matches_naive(reduction):
    ranges, symbols, boundary = simple_ranges(s_range=3)
    logits = torch.randn(B, T, 3, V, dtype=F64, requires_grad=True)
    loss = rnnt.rnnt_loss_pruned(logits, symbols, ranges, 0, boundary=boundary, reduction=reduction)
    expected = reduce(naive_pruned_losses(logits, symbols, ranges), reduction)
    assert torch.isfinite(expected).all()
    assert_close(loss, expected)
    (grad,) = torch.autograd.grad(scalar(loss), logits)
    (expected_grad,) = torch.autograd.grad(scalar(expected), logits)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pruned_with_all_positions_equals_full_loss(reduction):
    ranges, symbols, boundary = simple_ranges(s_range=U + 3)  # more than U+1: nothing pruned
    assert ranges.shape == (B, T, U + 1)
    logits = torch.randn(B, T, U + 1, V, dtype=F64, requires_grad=True)
    pruned_logits = logits.gather(2, ranges.unsqueeze(-1).expand(B, T, U + 1, V))
    pruned = rnnt.rnnt_loss_pruned(pruned_logits, symbols, ranges, 0, boundary=boundary, reduction=reduction)
    full = rnnt.rnnt_loss(logits, symbols, 0, boundary=boundary, reduction=reduction)
    assert_close(pruned, full, tol=1e-10)
    assert_close(torch.autograd.grad(scalar(pruned), logits)[0], torch.autograd.grad(scalar(full), logits)[0])


def test_pruning_keeps_a_path_and_only_removes_probability():
    """Pruned lattice = subset of the full one: its loss is finite and >= the full loss."""
    ranges, symbols, boundary = simple_ranges(s_range=2)  # raised to 3: 3 symbols in 2 frames
    assert ranges.shape == (B, T, 3)
    logits = torch.randn(B, T, U + 1, V, dtype=F64)
    pruned_logits = logits.gather(2, ranges.unsqueeze(-1).expand(B, T, 3, V))
    pruned = rnnt.rnnt_loss_pruned(pruned_logits, symbols, ranges, 0, boundary=boundary, reduction="none")
    full = rnnt.rnnt_loss(logits, symbols, 0, boundary=boundary, reduction="none")
    assert torch.isfinite(pruned).all()
    assert (pruned >= full - 1e-12).all()
    assert_close(pruned, naive_pruned_losses(pruned_logits, symbols, ranges))


@pytest.mark.parametrize("s_range", [2, 3, 5])
def test_prune_ranges_constraints(s_range):
    lengths = [(30, 12), (21, 20), (9, 0), (6, 17)]  # the last needs s_range >= ceil(17/6)+1 = 4
    ranges, _, _ = simple_ranges(s_range, lengths, num_frames=30, num_symbols=20)
    r = ranges.shape[2]
    assert r == max(s_range, 4)
    start = ranges[:, :, 0]
    assert torch.equal(ranges, start.unsqueeze(2) + torch.arange(r))
    assert (start[:, 0] == 0).all()
    steps = start[:, 1:] - start[:, :-1]
    assert (steps >= 0).all() and (steps <= r - 1).all()
    assert (start >= 0).all() and (ranges[:, :, -1] <= 20).all()
    for b, (t_b, u_b) in enumerate(lengths):
        assert ranges[b, t_b - 1, -1] >= u_b  # the last real frame reaches the final symbol


def test_prune_ranges_match_the_published_rule():
    """Window scores, end-of-sequence rule and adjustments spelled out with python loops."""
    lengths = [(12, 7), (9, 5), (5, 2)]
    num_frames, num_symbols, s_range = 12, 7, 3
    am = torch.randn(3, num_frames, V, dtype=F64) * 2
    lm = torch.randn(3, num_symbols + 1, V, dtype=F64) * 2
    boundary = make_boundary(lengths)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, make_symbols(3, num_symbols), 0, boundary, return_grad=True
    )
    ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    for b, (t_b, u_b) in enumerate(lengths):
        start = []
        for t in range(num_frames):
            if t >= t_b - 1:
                start.append(max(u_b - s_range + 1, 0))
                continue
            scores = [
                float(py_grad[b, r : r + s_range, t].sum()) - (float(px_grad[b, r - 1, t]) if r > 0 else 0.0)
                for r in range(num_symbols + 2 - s_range)
            ]
            start.append(scores.index(max(scores)))
        for t in reversed(range(num_frames - 1)):  # non-decreasing
            start[t] = min(start[t], start[t + 1])
        for t in reversed(range(num_frames - 1)):  # at most s_range - 1 symbols per frame
            start[t] = max(start[t], start[t + 1] - (s_range - 1))
        start = [min(s, (s_range - 1) * t) for t, s in enumerate(start)]  # reachable from (0, 0)
        assert ranges[b, :, 0].tolist() == start


def test_prune_ranges_follow_a_sharp_alignment():
    """One-hot occupations of a known path: every (t, s) it visits stays inside the window."""
    num_frames, num_symbols, s_range = 8, 6, 3
    emitted = [0, 2, 0, 1, 0, 0, 2, 1]  # symbols emitted on each frame (<= s_range - 1)
    px_grad = torch.zeros(1, num_symbols, num_frames + 1, dtype=F64)
    py_grad = torch.zeros(1, num_symbols + 1, num_frames, dtype=F64)
    visited, s = [], 0
    for t, n in enumerate(emitted):
        visited.append(list(range(s, s + n + 1)))
        for k in range(n):
            px_grad[0, s + k, t] = 1.0
        s += n
        py_grad[0, s, t] = 1.0
    boundary = torch.tensor([[0, 0, num_symbols, num_frames]])
    ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    for t in range(num_frames):
        window = set(ranges[0, t].tolist())
        assert set(visited[t]) <= window, (t, visited[t], window)


def test_do_rnnt_pruning_gathers_rows():
    ranges, _, _ = simple_ranges(s_range=3)
    am = torch.randn(B, T, 4)
    lm = torch.randn(B, U + 1, 5)
    am_p, lm_p = rnnt.do_rnnt_pruning(am, lm, ranges)
    assert am_p.shape == (B, T, 3, 4) and lm_p.shape == (B, T, 3, 5)
    for b in range(B):
        for t in range(T):
            for r in range(3):
                assert torch.equal(am_p[b, t, r], am[b, t])
                assert torch.equal(lm_p[b, t, r], lm[b, ranges[b, t, r]])


def test_errors_say_what_is_wrong():
    logits = torch.randn(2, 4, 3, 5)
    symbols = make_symbols(2, 2, 5)
    with pytest.raises(ValueError, match="reduction"):
        rnnt.rnnt_loss(logits, symbols, 0, reduction="avg")
    with pytest.raises(ValueError, match="boundary"):
        rnnt.rnnt_loss(logits, symbols, 0, boundary=torch.tensor([[0, 0, 3, 4], [0, 0, 2, 4]]))
    with pytest.raises(ValueError, match="boundary"):
        rnnt.rnnt_loss(logits, symbols, 0, boundary=torch.tensor([[0, 0, 2, 4]]))
    with pytest.raises(ValueError, match="symbols"):
        rnnt.rnnt_loss(logits, torch.full((2, 2), -1), 0)
    with pytest.raises(ValueError, match="termination_symbol"):
        rnnt.rnnt_loss(logits, symbols, 7)
    with pytest.raises(ValueError, match="lm"):
        rnnt.rnnt_loss_simple(torch.randn(2, 3, 5), torch.randn(2, 4, 6), symbols, 0)
    bad_ranges = torch.tensor([0, 2]).expand(2, 4, 2).contiguous()
    with pytest.raises(ValueError, match="ranges"):
        rnnt.rnnt_loss_pruned(torch.randn(2, 4, 2, 5), symbols, bad_ranges, 0)
    with pytest.raises(ValueError, match="px and py"):  # px must have T+1 or T columns
        rnnt.mutual_information_recursion(torch.randn(1, 2, 5), torch.randn(1, 3, 3))


@pytest.mark.skipif(k2 is None, reason="k2 is not installed")
def test_pure_pytorch_agrees_with_k2(monkeypatch):
    am, lm = am_lm_inputs()
    am, lm = am.detach().float(), lm.detach().float()
    symbols, boundary = make_symbols(), make_boundary()
    logits = torch.randn(B, T, U + 1, V)

    def run():
        simple, (px_grad, py_grad) = rnnt.rnnt_loss_smoothed(
            lm, am, symbols, 0, 0.1, 0.1, boundary=boundary, reduction="none", return_grad=True
        )
        ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 3)
        am_p, lm_p = rnnt.do_rnnt_pruning(am, lm, ranges)
        pruned = rnnt.rnnt_loss_pruned(am_p + lm_p, symbols, ranges, 0, boundary=boundary, reduction="none")
        full = rnnt.rnnt_loss(logits, symbols, 0, boundary=boundary, reduction="none")
        return simple, px_grad, py_grad, ranges, pruned, full

    pure = run()
    monkeypatch.setattr(rnnt, "USE_K2", True)
    accelerated = run()
    for a, b in zip(pure, accelerated):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
