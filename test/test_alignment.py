"""CTC forced alignment against brute-force enumeration of all CTC paths, and the CIF alignment loss."""
import itertools

import pytest
import torch

from icefall_cif.alignment import cif_alignment_loss, ctc_forced_align


def collapse(path, blank=0):
    out, prev = [], None
    for label in path:
        if label != blank and label != prev:
            out.append(label)
        prev = label
    return out


def brute_force_first_frames(log_probs, target, blank=0):
    """Enumerate every label sequence of length T, keep those that collapse to `target`,
    return the first frame of each token on the best one (None when there is no path)."""
    T, V = log_probs.shape
    best, best_path = float("-inf"), None
    for path in itertools.product(range(V), repeat=T):
        if collapse(path, blank) != list(target):
            continue
        score = sum(float(log_probs[t, label]) for t, label in enumerate(path))
        if score > best:
            best, best_path = score, path
    if best_path is None:
        return None
    frames, u, prev = [], 0, None
    for t, label in enumerate(best_path):
        if label != blank and label != prev:
            frames.append(t)
            u += 1
        prev = label
    return frames


def test_forced_alignment_equals_brute_force_on_a_ragged_batch():
    torch.manual_seed(0)
    V = 4
    cases = [(6, [1, 2]), (5, [3, 3]), (6, [2, 1, 2]), (4, [1]), (3, [2, 2, 2])]  # last: no path
    T = max(t for t, _ in cases)
    U = max(len(y) for _, y in cases)
    log_probs = torch.randn(len(cases), T, V).log_softmax(-1)
    targets = torch.zeros(len(cases), U, dtype=torch.int64)
    for i, (_, y) in enumerate(cases):
        targets[i, : len(y)] = torch.tensor(y)
    lens = torch.tensor([t for t, _ in cases])
    target_lens = torch.tensor([len(y) for _, y in cases])

    frames = ctc_forced_align(log_probs, lens, targets, target_lens)

    assert frames.shape == (len(cases), U)
    for i, (t, y) in enumerate(cases):
        expected = brute_force_first_frames(log_probs[i, :t], y)
        if expected is None:
            assert frames[i].tolist() == [-1] * U
        else:
            assert frames[i].tolist() == expected + [-1] * (U - len(y)), f"utterance {i}"


def test_forced_alignment_does_not_depend_on_the_batch():
    torch.manual_seed(1)
    log_probs = torch.randn(2, 9, 5).log_softmax(-1)
    targets = torch.tensor([[1, 4, 2], [3, 0, 0]])
    lens, target_lens = torch.tensor([9, 5]), torch.tensor([3, 1])
    together = ctc_forced_align(log_probs, lens, targets, target_lens)
    alone = ctc_forced_align(log_probs[1:, :5], lens[1:], targets[1:, :1], target_lens[1:])
    assert together[1, :1].tolist() == alone[0].tolist()


def test_forced_alignment_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"log_probs must be \(N, T, V\)"):
        ctc_forced_align(torch.zeros(3, 4), torch.tensor([4]), torch.zeros(1, 1, dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match="targets must be"):
        ctc_forced_align(torch.zeros(2, 4, 3), torch.tensor([4, 4]), torch.zeros(1, 1, dtype=torch.long),
                         torch.tensor([1, 1]))


def test_cif_alignment_loss_is_the_formula_and_has_its_gradient():
    alpha = torch.tensor([[0.2, 0.6, 0.5, 0.9, 0.0], [0.5, 0.5, 0.5, 0.0, 0.0]], requires_grad=True)
    frames = torch.tensor([[1, 3], [0, -1]])
    loss = cif_alignment_loss(alpha, frames)
    # c = [0.2, 0.8, 1.3, 2.2, 2.2] and [0.5, 1.0, 1.5, ...]:
    # |0.8 + 0.5 - 1| + |(2.2 - 0.8) - 1| + |0.5 + 0.5 - 1|
    assert loss.item() == pytest.approx(0.3 + 0.4 + 0.0)
    loss.backward()
    # Frames 0-1 are the first segment (error +0.3), frames 2-3 the second (+0.4), frame 4 none.
    assert alpha.grad[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.0])


def test_cif_alignment_loss_charges_a_misplaced_fire_locally():
    frames = torch.tensor([[1, 3, 5, 7, 9]])
    right = torch.tensor([[0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    early = right.clone()
    early[0, 0] += 0.5  # half a token too much before the first spike
    # |c_{f_u} - (u - 1/2)| would charge all five tokens 0.5; the per-segment form only the first.
    assert cif_alignment_loss(right, frames).item() == pytest.approx(0.0)
    assert cif_alignment_loss(early, frames).item() == pytest.approx(0.5)


def test_cif_alignment_loss_is_zero_when_cif_is_half_way_at_every_spike():
    alpha = torch.full((1, 8), 0.5)  # fires every 2 frames; c_t = (t + 1) / 2
    frames = torch.tensor([[0, 2, 4, 6]])  # c = 0.5, 1.5, 2.5, 3.5
    assert cif_alignment_loss(alpha, frames).item() == pytest.approx(0.0)
