"""Tests for rnnt_type, delay_penalty, use_hat_loss and the k2 functions added for them in
icefall_cif/rnnt_loss.py, each against a naive float64 dynamic programme written here."""
import math
from typing import Callable, Dict, List, Sequence, Tuple

import pytest
import torch

import icefall_cif.rnnt_loss as rnnt

try:
    import k2
except ImportError:
    k2 = None

NEG_INF = float("-inf")
F64 = torch.float64
RNNT_TYPES = ["regular", "modified", "constrained"]
PENALTIES = [0.0, 0.3]

# (T_b, U_b) per sequence, ragged, all with T_b >= U_b (the one-symbol-per-frame topologies
# need it); (4, 4) has exactly one modified path, as a CIF vector per token gives.
LENGTHS = [(7, 4), (5, 0), (4, 4), (6, 2)]
B, T, U, V = len(LENGTHS), 7, 4, 6

Arc = Callable[[int, int], torch.Tensor]


@pytest.fixture(autouse=True)
def _pure_pytorch(monkeypatch):
    """Every test here exercises the pure-PyTorch path, even where k2 is installed."""
    monkeypatch.setattr(rnnt, "USE_K2", False)


def make_boundary(lengths: Sequence = LENGTHS) -> torch.Tensor:
    return torch.tensor([[0, 0, u, t] for t, u in lengths], dtype=torch.int64)


def logsumexp_terms(terms: List[torch.Tensor]) -> torch.Tensor:
    """log(sum(exp(terms))) that skips -inf terms, so autograd never sees inf - inf."""
    finite = [x for x in terms if not math.isinf(float(x.detach()))]
    if not finite:
        return torch.tensor(NEG_INF, dtype=F64)
    return torch.logsumexp(torch.stack(finite), dim=0)


def naive_nll(
    sym_arc: Arc, blank_arc: Arc, num_frames: int, num_symbols: int, rnnt_type: str, delay_penalty: float = 0.0
) -> torch.Tensor:
    """-log p(targets) of one sequence, from the topology's definition, with python loops.

    sym_arc(t, u): log-prob of emitting target u (0-based, after u targets) on frame t.
    blank_arc(t, u): log-prob of blank on frame t after u targets.
    regular: a symbol keeps the frame; the path ends with a blank on the last frame.
    modified: a symbol also moves to the next frame.
    constrained: modified, and the symbol also pays the blank after u+1 targets on frame t.
    delay_penalty: emitting on frame t earns delay_penalty * ((num_frames - 1) / 2 - t).
    """

    def emit(t: int, u: int) -> torch.Tensor:
        score = sym_arc(t, u) + delay_penalty * ((num_frames - 1) / 2 - t)
        if rnnt_type == "constrained":
            score = score + blank_arc(t, u + 1)
        return score

    alpha: Dict[Tuple[int, int], torch.Tensor] = {}
    if rnnt_type == "regular":  # alpha[t, u]: on frame t (not yet left) with u targets emitted
        for t in range(num_frames):
            for u in range(num_symbols + 1):
                terms = [torch.zeros((), dtype=F64)] if (t, u) == (0, 0) else []
                if u > 0:
                    terms.append(alpha[t, u - 1] + emit(t, u - 1))
                if t > 0:
                    terms.append(alpha[t - 1, u] + blank_arc(t - 1, u))
                alpha[t, u] = logsumexp_terms(terms)
        return -(alpha[num_frames - 1, num_symbols] + blank_arc(num_frames - 1, num_symbols))
    # alpha[t, u]: t frames consumed, u targets emitted
    for t in range(num_frames + 1):
        for u in range(num_symbols + 1):
            terms = [torch.zeros((), dtype=F64)] if (t, u) == (0, 0) else []
            if t > 0 and u > 0:
                terms.append(alpha[t - 1, u - 1] + emit(t - 1, u - 1))
            if t > 0:
                terms.append(alpha[t - 1, u] + blank_arc(t - 1, u))
            alpha[t, u] = logsumexp_terms(terms)
    return -alpha[num_frames, num_symbols]


def naive_losses(logprobs, symbols, rnnt_type, delay_penalty, blank=0, lengths=LENGTHS) -> torch.Tensor:
    """logprobs[b]: (T, U+1, V) normalized log-probs of sequence b."""
    losses = []
    for b, (t_b, u_b) in enumerate(lengths):
        lp, ys = logprobs[b], symbols[b].tolist()
        losses.append(
            naive_nll(
                lambda t, u, lp=lp, ys=ys: lp[t, u, ys[u]], lambda t, u, lp=lp: lp[t, u, blank],
                t_b, u_b, rnnt_type, delay_penalty,
            )
        )
    return torch.stack(losses)


def weighted_sum(loss: torch.Tensor) -> torch.Tensor:
    """A scalar to back-propagate that weights sequences differently."""
    return (loss * torch.arange(1, loss.numel() + 1, dtype=loss.dtype)).sum()


def assert_close(actual, expected, tol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def assert_same_grads(ours: torch.Tensor, naive: torch.Tensor, leaves: Sequence[torch.Tensor]):
    got = torch.autograd.grad(weighted_sum(ours), leaves)
    expected = torch.autograd.grad(weighted_sum(naive), leaves)
    for g, e in zip(got, expected):
        assert_close(g, e)


def am_lm_symbols(vocab: int = V):
    am = torch.randn(B, T, vocab, dtype=F64, requires_grad=True)
    lm = torch.randn(B, U + 1, vocab, dtype=F64, requires_grad=True)
    return am, lm, torch.randint(1, vocab, (B, U))


@pytest.mark.parametrize("delay_penalty", PENALTIES)
@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_matches_naive(rnnt_type, delay_penalty):
    logits = torch.randn(B, T, U + 1, V, dtype=F64, requires_grad=True)
    symbols = torch.randint(1, V, (B, U))
    loss = rnnt.rnnt_loss(
        logits, symbols, 0, make_boundary(), rnnt_type=rnnt_type, delay_penalty=delay_penalty, reduction="none"
    )
    expected = naive_losses(list(logits.log_softmax(-1)), symbols, rnnt_type, delay_penalty)
    assert torch.isfinite(expected).all()
    assert_close(loss, expected)
    assert_same_grads(loss, expected, [logits])


@pytest.mark.parametrize("delay_penalty", PENALTIES)
@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_simple_matches_naive(rnnt_type, delay_penalty):
    am, lm, symbols = am_lm_symbols()
    loss, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, symbols, 0, make_boundary(), rnnt_type, delay_penalty, reduction="none", return_grad=True
    )
    joint = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(-1)  # the naive (B, T, U+1, V) way
    expected = naive_losses(list(joint), symbols, rnnt_type, delay_penalty)
    assert_close(loss, expected)
    assert_same_grads(loss, expected, [am, lm])
    assert px_grad.shape == (B, U, T + 1 if rnnt_type == "regular" else T)
    assert py_grad.shape == (B, U + 1, T)
    for b, (_, u_b) in enumerate(LENGTHS):  # every path emits each target once
        assert_close(px_grad[b].sum(), torch.tensor(float(u_b), dtype=F64))
    summed = rnnt.rnnt_loss_simple(lm, am, symbols, 0, make_boundary(), rnnt_type, delay_penalty, "sum")
    assert_close(summed, loss.sum())


def naive_smoothed_logprobs(am, lm, lm_only_scale, am_only_scale) -> List[torch.Tensor]:
    """Interpolated log-probs per token written out over the full (T, U+1, V) grid."""
    unigram = lm.softmax(-1).mean(dim=(0, 1))  # average LM over every position of the batch
    mixed = []
    for b in range(am.shape[0]):
        combined = (am[b].unsqueeze(1) + lm[b].unsqueeze(0)).log_softmax(-1)  # (T, U+1, V)
        lm_only = lm[b].log_softmax(-1).unsqueeze(0)
        am_only = (am[b] + unigram.log()).log_softmax(-1).unsqueeze(1)
        mixed.append((1 - lm_only_scale - am_only_scale) * combined + lm_only_scale * lm_only + am_only_scale * am_only)
    return mixed


@pytest.mark.parametrize("delay_penalty", PENALTIES)
@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_smoothed_matches_naive(rnnt_type, delay_penalty):
    am, lm, symbols = am_lm_symbols()
    loss = rnnt.rnnt_loss_smoothed(
        lm, am, symbols, 0, 0.25, 0.15, make_boundary(), rnnt_type, delay_penalty, reduction="none"
    )
    expected = naive_losses(naive_smoothed_logprobs(am, lm, 0.25, 0.15), symbols, rnnt_type, delay_penalty)
    assert_close(loss, expected)
    assert_same_grads(loss, expected, [am, lm])


def training_ranges(rnnt_type: str, s_range: int, lengths=LENGTHS, num_frames=T, num_symbols=U):
    """Ranges as the training path gets them: from the simple loss of the same topology."""
    am = torch.randn(len(lengths), num_frames, V, dtype=F64)
    lm = torch.randn(len(lengths), num_symbols + 1, V, dtype=F64)
    symbols = torch.randint(1, V, (len(lengths), num_symbols))
    boundary = make_boundary(lengths)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, symbols, 0, boundary, rnnt_type=rnnt_type, return_grad=True
    )
    return rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range), symbols, boundary


def naive_pruned_losses(pruned_logits, symbols, ranges, rnnt_type, delay_penalty, hat=False, lengths=LENGTHS):
    """Arcs exist only at positions listed in ranges[b, t]; each uses its own normalization."""
    losses = []
    for b, (t_b, u_b) in enumerate(lengths):
        logits = pruned_logits[b]  # (T, R, V)
        if hat:  # blank ~ Bernoulli(sigmoid(logit 0)), others ~ P(not blank) * softmax(logits 1..)
            blank_lp = torch.nn.functional.logsigmoid(logits[..., :1])
            sym_lp = logits - logits[..., 1:].logsumexp(-1, keepdim=True) + torch.log1p(-torch.sigmoid(logits[..., :1]))
            lp = torch.cat([blank_lp, sym_lp[..., 1:]], dim=-1)
        else:
            lp = logits.log_softmax(-1)
        where = [{int(s): r for r, s in enumerate(ranges[b, t])} for t in range(T)]
        ys = symbols[b].tolist()

        def sym_arc(t, u, lp=lp, where=where, ys=ys):
            return lp[t, where[t][u], ys[u]] if u in where[t] else torch.tensor(NEG_INF, dtype=F64)

        def blank_arc(t, u, lp=lp, where=where):
            return lp[t, where[t][u], 0] if u in where[t] else torch.tensor(NEG_INF, dtype=F64)

        losses.append(naive_nll(sym_arc, blank_arc, t_b, u_b, rnnt_type, delay_penalty))
    return torch.stack(losses)


@pytest.mark.parametrize("use_hat_loss", [False, True])
@pytest.mark.parametrize("delay_penalty", PENALTIES)
@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_pruned_matches_naive(rnnt_type, delay_penalty, use_hat_loss):
    ranges, symbols, boundary = training_ranges(rnnt_type, s_range=3)
    logits = torch.randn(B, T, 3, V, dtype=F64, requires_grad=True)
    loss = rnnt.rnnt_loss_pruned(
        logits, symbols, ranges, 0, boundary, rnnt_type, delay_penalty, reduction="none", use_hat_loss=use_hat_loss
    )
    expected = naive_pruned_losses(logits, symbols, ranges, rnnt_type, delay_penalty, hat=use_hat_loss)
    assert torch.isfinite(expected).all()
    assert_close(loss, expected)
    assert_same_grads(loss, expected, [logits])


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_get_rnnt_logprobs_variants_hold_the_arc_log_probs(rnnt_type):
    """px / py entry by entry; all four builders on logits = am + lm must agree."""
    am, lm, symbols = am_lm_symbols()
    am, lm = am.detach(), lm.detach()
    boundary = make_boundary()
    logits = am.unsqueeze(2) + lm.unsqueeze(1)  # (B, T, U+1, V)
    lp = logits.log_softmax(-1)
    full_ranges = torch.arange(U + 1).expand(B, T, U + 1).contiguous()
    variants = {
        "simple": rnnt.get_rnnt_logprobs(lm, am, symbols, 0, rnnt_type, boundary),
        "smoothed": rnnt.get_rnnt_logprobs_smoothed(lm, am, symbols, 0, 0.0, 0.0, boundary, rnnt_type),
        "joint": rnnt.get_rnnt_logprobs_joint(logits, symbols, 0, rnnt_type, boundary),
        "pruned": rnnt.get_rnnt_logprobs_pruned(logits, symbols, full_ranges, 0, boundary, rnnt_type),
    }
    columns = T + 1 if rnnt_type == "regular" else T
    for name, (px, py) in variants.items():
        assert px.shape == (B, U, columns) and py.shape == (B, U + 1, T), name
        for b, (t_b, _) in enumerate(LENGTHS):
            for u in range(U):
                for t in range(T):
                    expected = lp[b, t, u, symbols[b, u]]
                    if rnnt_type == "constrained":
                        expected = expected + lp[b, t, u + 1, 0]
                    if rnnt_type == "regular" and t == t_b:
                        expected = torch.tensor(NEG_INF, dtype=F64)
                    assert_close(px[b, u, t], expected)
            if rnnt_type == "regular":
                assert px[b, :, T].eq(NEG_INF).all(), name
        assert_close(py, lp[..., 0].transpose(1, 2))


def test_modified_with_one_frame_per_symbol_is_the_diagonal():
    """T_b = U_b leaves one modified path: target u on frame u, no blank at all."""
    logits = torch.randn(1, 4, 5, V, dtype=F64)
    symbols = torch.randint(1, V, (1, 4))
    loss = rnnt.rnnt_loss(logits, symbols, 0, make_boundary([(4, 4)]), rnnt_type="modified", reduction="none")
    lp = logits.log_softmax(-1)
    assert_close(loss[0], -sum(lp[0, u, u, symbols[0, u]] for u in range(4)))


def naive_lattice(x_arc, y_arc, box, modified: bool):
    """Score and arc occupations of the generic recursion, by autograd through python loops.

    x_arc (S, T+1) regular: (s, t) -> (s+1, t); (S, T) modified: (s, t) -> (s+1, t+1).
    y_arc (S+1, T): (s, t) -> (s, t+1); box = (s_begin, t_begin, s_end, t_end).
    """
    x_arc = x_arc.detach().clone().requires_grad_(True)
    y_arc = y_arc.detach().clone().requires_grad_(True)
    s0, t0, s1, t1 = box
    p = {}
    for s in range(s0, s1 + 1):
        for t in range(t0, t1 + 1):
            terms = [torch.zeros((), dtype=F64)] if (s, t) == (s0, t0) else []
            if s > s0 and not modified:
                terms.append(p[s - 1, t] + x_arc[s - 1, t])
            if s > s0 and t > t0 and modified:
                terms.append(p[s - 1, t - 1] + x_arc[s - 1, t - 1])
            if t > t0:
                terms.append(p[s, t - 1] + y_arc[s, t - 1])
            p[s, t] = logsumexp_terms(terms)
    score = p[s1, t1]
    if not score.requires_grad:  # no arc on any complete path
        return score, torch.zeros_like(x_arc), torch.zeros_like(y_arc)
    gx, gy = torch.autograd.grad(score, [x_arc, y_arc], allow_unused=True)
    gx = torch.zeros_like(x_arc) if gx is None else gx
    gy = torch.zeros_like(y_arc) if gy is None else gy
    return score.detach(), gx, gy


# Lattice boxes that start late, end early, are empty, or (modified) cannot be completed.
BOXES = [(1, 2, 3, 6), (0, 1, 4, 5), (2, 3, 2, 3), (0, 0, 4, 6), (1, 0, 4, 2)]


@pytest.mark.parametrize("modified", [False, True])
def test_mutual_information_recursion_matches_naive(modified):
    S_, T_ = 4, 6
    px = torch.randn(len(BOXES), S_, T_ if modified else T_ + 1, dtype=F64, requires_grad=True)
    py = torch.randn(len(BOXES), S_ + 1, T_, dtype=F64, requires_grad=True)
    boundary = torch.tensor(BOXES, dtype=torch.int64)
    scores, (px_grad, py_grad) = rnnt.mutual_information_recursion(px, py, boundary, return_grad=True)
    auto_px, auto_py = torch.autograd.grad(weighted_sum(scores), [px, py])
    weights = torch.arange(1, len(BOXES) + 1, dtype=F64).reshape(-1, 1, 1)
    assert_close(auto_px, px_grad * weights)
    assert_close(auto_py, py_grad * weights)
    for b, box in enumerate(BOXES):
        score, gx, gy = naive_lattice(px[b], py[b], box, modified)
        assert_close(scores[b], score)
        assert_close(px_grad[b], gx)
        assert_close(py_grad[b], gy)
    # The last box has 3 symbols and 2 frames: fine for regular, no modified path.
    assert bool(scores[4] == NEG_INF) == modified


@pytest.mark.parametrize("modified", [False, True])
def test_joint_mutual_information_splits_the_score(modified):
    S_, T_, N = 4, 6, 3
    boundary = torch.tensor(BOXES[:4], dtype=torch.int64)
    px = [torch.randn(4, S_, T_ if modified else T_ + 1, dtype=F64, requires_grad=True) for _ in range(N)]
    py = [torch.randn(4, S_ + 1, T_, dtype=F64, requires_grad=True) for _ in range(N)]
    with torch.no_grad():
        px[1][3, 1, :] = NEG_INF  # arcs inside box 3, -inf in one term only: 0 * -inf must not leak
    parts = rnnt.joint_mutual_information_recursion(px, py, boundary)
    assert parts.shape == (N, 4)
    grads = torch.autograd.grad(parts.sum(), px + py)
    px_sum, py_sum = sum(px), sum(py)
    for b, box in enumerate(BOXES[:4]):
        score, gx, gy = naive_lattice(px_sum[b], py_sum[b], box, modified)
        assert_close(parts[:, b].sum(), score)
        for i in range(1, N):  # the non-first parts are occupation-weighted arc scores
            expected = (gx * px[i][b].detach().nan_to_num(neginf=0.0)).sum() + (gy * py[i][b].detach()).sum()
            assert_close(parts[i, b], expected)
        for i in range(N):  # every term's gradient is the summed lattice's occupation
            assert_close(grads[i][b], gx)
            assert_close(grads[N + i][b], gy)


def published_starts(px_grad, py_grad, b, t_b, u_b, s_range, step):
    """The pruning rule of the paper plus k2's adjustments, with python loops."""
    num_frames, num_symbols = py_grad.shape[2], py_grad.shape[1] - 1
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
    return adjusted(start, step)


def adjusted(start: List[int], step: int) -> List[int]:
    for t in reversed(range(len(start) - 1)):  # non-decreasing
        start[t] = min(start[t], start[t + 1])
    for t in reversed(range(len(start) - 1)):  # at most `step` symbols per frame
        start[t] = max(start[t], start[t + 1] - step)
    return [min(s, step * t) for t, s in enumerate(start)]  # reachable from (0, 0)


LONG = [(12, 7), (9, 5), (7, 7), (5, 0)]


@pytest.mark.parametrize("s_range", [1, 2, 3])
def test_modified_prune_ranges_match_the_published_rule(s_range):
    boundary = make_boundary(LONG)
    am = torch.randn(len(LONG), 12, V, dtype=F64)
    lm = torch.randn(len(LONG), 8, V, dtype=F64)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, torch.randint(1, V, (len(LONG), 7)), 0, boundary, rnnt_type="constrained", return_grad=True
    )
    ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    assert ranges.shape == (len(LONG), 12, s_range)  # never raised: one symbol per frame fits
    for b, (t_b, u_b) in enumerate(LONG):
        assert ranges[b, :, 0].tolist() == published_starts(px_grad, py_grad, b, t_b, u_b, s_range, step=1)


@pytest.mark.parametrize("regular", [False, True])
def test_deprecated_prune_ranges_match_their_rule(regular):
    """Window = most occupation of the arcs (symbol and blank) leaving the nodes it covers."""
    s_range, num_frames, num_symbols = 3, 12, 7
    am = torch.randn(len(LONG), num_frames, V, dtype=F64) * 2
    lm = torch.randn(len(LONG), num_symbols + 1, V, dtype=F64) * 2
    boundary = make_boundary(LONG)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(
        lm, am, torch.randint(1, V, (len(LONG), num_symbols)), 0, boundary,
        rnnt_type="regular" if regular else "modified", return_grad=True,
    )
    ranges = rnnt.get_rnnt_prune_ranges_deprecated(px_grad, py_grad, boundary, s_range)
    for b, (t_b, u_b) in enumerate(LONG):
        start = []
        for t in range(num_frames):
            if t >= t_b - 1:
                start.append(max(u_b - s_range + 1, 0))
                continue
            mass = [
                sum(float(py_grad[b, s, t]) + (float(px_grad[b, s, t]) if s < num_symbols else 0.0)
                    for s in range(r, r + s_range))
                for r in range(num_symbols + 2 - s_range)
            ]
            start.append(mass.index(max(mass)))
        assert ranges[b, :, 0].tolist() == adjusted(start, s_range - 1 if regular else 1)


@pytest.mark.parametrize("rnnt_type", ["modified", "constrained"])
def test_pruned_one_symbol_per_frame_keeps_a_path(rnnt_type):
    """Every s_range from the least (1 modified, 2 constrained) to S+1 leaves a finite loss,
    equal to the unpruned one once nothing is pruned."""
    lengths = [(30, 12), (21, 20), (9, 0), (17, 17)]
    num_frames, num_symbols = 30, 20
    am = torch.randn(4, num_frames, V, dtype=F64)
    lm = torch.randn(4, num_symbols + 1, V, dtype=F64)
    symbols = torch.randint(1, V, (4, num_symbols))
    boundary = make_boundary(lengths)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, return_grad=True)
    full = rnnt.rnnt_loss(am.unsqueeze(2) + lm.unsqueeze(1), symbols, 0, boundary, rnnt_type, reduction="none")
    least = 1 if rnnt_type == "modified" else 2
    for s_range in range(least, num_symbols + 2):
        ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
        start = ranges[:, :, 0]
        steps = start[:, 1:] - start[:, :-1]
        assert (start[:, 0] == 0).all() and (steps >= 0).all() and (steps <= 1).all()
        am_p, lm_p = rnnt.do_rnnt_pruning(am, lm, ranges)
        pruned = rnnt.rnnt_loss_pruned(am_p + lm_p, symbols, ranges, 0, boundary, rnnt_type, reduction="none")
        assert torch.isfinite(pruned).all(), s_range
        assert (pruned >= full - 1e-9).all()
    assert_close(pruned, full, tol=1e-9)


def test_delay_penalty_moves_occupation_earlier():
    am, lm, symbols = am_lm_symbols()
    boundary = make_boundary()

    def mean_emission_frame(delay_penalty):
        _, (px_grad, _) = rnnt.rnnt_loss_simple(
            lm, am, symbols, 0, boundary, "modified", delay_penalty, return_grad=True
        )
        return float((px_grad.sum(1) * torch.arange(T, dtype=F64)).sum() / px_grad.sum())

    assert mean_emission_frame(1.0) < mean_emission_frame(0.0)


def test_errors_name_the_argument():
    am, lm, symbols = am_lm_symbols()
    logits = torch.randn(B, T, U + 1, V)
    boundary = make_boundary()
    calls = {
        "rnnt_loss": lambda **kw: rnnt.rnnt_loss(logits, symbols, 0, boundary, **kw),
        "rnnt_loss_simple": lambda **kw: rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, **kw),
        "rnnt_loss_smoothed": lambda **kw: rnnt.rnnt_loss_smoothed(lm, am, symbols, 0, boundary=boundary, **kw),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match="rnnt_type"):
            call(rnnt_type="Modified")
        with pytest.raises(ValueError, match="delay_penalty"):
            call(delay_penalty=-0.1)
    with pytest.raises(ValueError, match="rnnt_type"):
        rnnt.get_rnnt_logprobs(lm, am, symbols, 0, rnnt_type="hat")
    with pytest.raises(ValueError, match="num_frames >= num_symbols"):
        rnnt.rnnt_loss(logits, symbols, 0, make_boundary([(7, 4), (5, 0), (3, 4), (6, 2)]), rnnt_type="modified")
    with pytest.raises(ValueError, match="num_frames >= num_symbols"):
        rnnt.rnnt_loss_simple(lm, am[:, :3], symbols, 0, rnnt_type="constrained")
    ranges, _, _ = training_ranges("regular", 3)
    with pytest.raises(ValueError, match="termination_symbol"):
        rnnt.rnnt_loss_pruned(torch.randn(B, T, 3, V), symbols, ranges, 2, boundary, use_hat_loss=True)
    _, (px_grad, py_grad) = rnnt.rnnt_loss_simple(lm, am, symbols, 0, boundary, "modified", return_grad=True)
    with pytest.raises(ValueError, match="s_range"):
        rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 0)
    with pytest.raises(ValueError, match="boundary"):
        rnnt.get_rnnt_prune_ranges(px_grad, py_grad, None, 2)
    with pytest.raises(ValueError, match="px_grad and py_grad"):
        rnnt.get_rnnt_prune_ranges(px_grad[:, :, :-1], py_grad, boundary, 2)
    with pytest.raises(ValueError, match="px and py"):
        rnnt.joint_mutual_information_recursion([torch.randn(1, 2, 3)], [])


@pytest.mark.skipif(k2 is None, reason="k2 is not installed")
@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_pure_pytorch_agrees_with_k2(monkeypatch, rnnt_type):
    am, lm, symbols = am_lm_symbols()
    am, lm = am.detach().float(), lm.detach().float()
    boundary = make_boundary()
    logits = torch.randn(B, T, U + 1, V)

    def run():
        simple, (px_grad, py_grad) = rnnt.rnnt_loss_smoothed(
            lm, am, symbols, 0, 0.1, 0.1, boundary, rnnt_type, 0.2, reduction="none", return_grad=True
        )
        ranges = rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 3)
        am_p, lm_p = rnnt.do_rnnt_pruning(am, lm, ranges)
        pruned = rnnt.rnnt_loss_pruned(am_p + lm_p, symbols, ranges, 0, boundary, rnnt_type, 0.2, "none")
        hat = rnnt.rnnt_loss_pruned(am_p + lm_p, symbols, ranges, 0, boundary, rnnt_type, 0.0, "none", True)
        full = rnnt.rnnt_loss(logits, symbols, 0, boundary, rnnt_type, 0.2, reduction="none")
        return simple, px_grad, py_grad, ranges, pruned, hat, full

    pure = run()
    monkeypatch.setattr(rnnt, "USE_K2", True)
    accelerated = run()
    for a, b in zip(pure, accelerated):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
