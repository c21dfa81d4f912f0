"""CTC-anchored CIF segments (icefall_cif/segments.py) and `--cif-segmentation ctc` in the model."""
import pytest
import torch
from model import get_model
from test_model import random_batch, small_config

from icefall_cif.alignment import ctc_forced_align
from icefall_cif.config import LossConfig
from icefall_cif.decode import greedy_search
from icefall_cif.model_contract import weighted_loss
from icefall_cif.segments import ctc_greedy_spikes, fill_missing_spikes, pool_segments


def naive_pool(h, alpha, h_len, spikes, d):
    """The formula of the module docstring, one utterance, float64, loops over time in steps of 1/1000."""
    centres = [s + 0.5 for s in spikes]
    bounds = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [d * h_len]
    out = []
    for u in range(len(spikes)):
        num = torch.zeros(h.size(1), dtype=torch.float64)
        den = 0.0
        for t in range(h_len):
            lo, hi = max(bounds[u], d * t), min(bounds[u + 1], d * t + d)
            share = max(0.0, hi - lo) / d
            num += share * float(alpha[t]) * h[t].double()
            den += share * float(alpha[t])
        out.append(num / den)
    return torch.stack(out)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_pool_segments_matches_the_formula(d):
    g = torch.Generator().manual_seed(d)
    h_lens = torch.tensor([9, 6, 4])
    h = torch.randn(3, 9, 5, generator=g)
    alpha = torch.rand(3, 9, generator=g) * 0.9 + 0.05
    alpha = alpha.masked_fill(torch.arange(9) >= h_lens[:, None], 0.0)
    # Spikes in encoder frames: distinct, non-decreasing, within d * h_len; utterance 2 has one token.
    spikes = torch.tensor([[0, 5, 6, 20], [3, 11, -1, -1], [7, -1, -1, -1]])
    spikes[0, 3] = min(20, d * 9 - 1)
    spikes[1, 1] = min(11, d * 6 - 1)
    spikes[2, 0] = min(7, d * 4 - 1)
    num_tokens = torch.tensor([4, 2, 1])
    out = pool_segments(h, alpha, h_lens, spikes, num_tokens, d)
    assert out.cif.shape == (3, 4, 5) and out.cif_lens.tolist() == [4, 2, 1]
    for i in range(3):
        n = int(num_tokens[i])
        expected = naive_pool(h[i], alpha[i], int(h_lens[i]), spikes[i, :n].tolist(), d)
        torch.testing.assert_close(out.cif[i, :n].double(), expected, atol=1e-5, rtol=1e-5)
        assert out.cif[i, n:].abs().sum() == 0
        assert out.fire_frames[i, :n].tolist() == [s // d for s in spikes[i, :n].tolist()]
        assert (out.fire_frames[i, n:] == -1).all()
    # A vector is a weighted mean: constant frames give that constant whatever the weights.
    flat = pool_segments(torch.ones(3, 9, 5), alpha, h_lens, spikes, num_tokens, d)
    assert torch.allclose(flat.cif[0], torch.ones(4, 5))


def naive_greedy_spikes(log_probs, length, blank):
    frames, previous = [], blank
    for t in range(length):
        k = int(log_probs[t].argmax())
        if k != blank and k != previous:
            frames.append(t)
        previous = k
    return frames


def test_ctc_greedy_spikes_match_a_loop():
    g = torch.Generator().manual_seed(0)
    # Few classes and a strong blank, so that repeats, blanks between repeats and empty paths occur.
    logits = torch.randn(6, 12, 3, generator=g)
    logits[..., 0] += 0.5
    logits[5] = torch.tensor([5.0, 0.0, 0.0])  # all blank: no token
    lens = torch.tensor([12, 7, 1, 12, 3, 12])
    log_probs = logits.log_softmax(-1)
    spikes = ctc_greedy_spikes(log_probs, lens, blank=0)
    for i in range(6):
        expected = naive_greedy_spikes(log_probs[i], int(lens[i]), 0)
        row = spikes[i].tolist()
        assert row[: len(expected)] == expected and all(f == -1 for f in row[len(expected):])
    assert spikes.size(1) == max(len(naive_greedy_spikes(log_probs[i], int(lens[i]), 0)) for i in range(6))


def test_fill_missing_spikes_spaces_failed_alignments_evenly():
    spikes = torch.tensor([[1, 4, 9], [-1, -1, -1], [2, -1, -1]])
    filled = fill_missing_spikes(spikes, torch.tensor([3, 3, 1]), torch.tensor([12, 6, 4]))
    assert filled.tolist() == [[1, 4, 9], [1, 3, 5], [2, -1, -1]]


def test_ctc_segmentation_in_the_model():
    g = torch.Generator().manual_seed(3)
    model = get_model(small_config("cif_transducer", cif_segmentation="ctc"))
    x, x_lens, ys = random_batch(3, g)
    config = LossConfig()
    out = model(x, x_lens, ys, config)
    assert {"ctc_loss", "quantity_loss", "simple_loss", "pruned_loss"} <= set(out)
    weighted_loss(model, out, config, 0).backward()
    # The weights still shape the vectors, so the predictor learns from the decoder's loss.
    assert model.cif_predictor.weight_proj.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        log_probs = model.ctc_log_probs(enc)
        # Decoding: one vector per token of the CTC greedy path, stamped at its spike.
        decoded = model.forward_cif(enc, enc_lens)
        spikes = ctc_greedy_spikes(log_probs, enc_lens, model.blank_id)
        assert decoded.cif_lens.tolist() == (spikes >= 0).sum(1).tolist()
        h, h_lens = model.downsample_for_cif(enc, enc_lens)
        alpha = model.cif_predictor.compute_weights(h, h_lens)
        expected = pool_segments(h, alpha, h_lens, spikes, decoded.cif_lens, 2)
        torch.testing.assert_close(decoded.cif, expected.cif)
        # Training: exactly U vectors, at the reference's forced-alignment spikes.
        y_lens = torch.tensor([len(y) for y in ys])
        y_padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(y) for y in ys], batch_first=True)
        trained = model.forward_cif(enc, enc_lens, target_lengths=y_lens, targets=y_padded)
        assert trained.cif_lens.tolist() == y_lens.tolist()
        aligned = ctc_forced_align(log_probs, enc_lens, y_padded, y_lens, model.blank_id)
        valid = aligned >= 0
        assert torch.equal(trained.fire_frames[valid], aligned[valid] // 2)
        greedy_search(model, enc, enc_lens)  # the searches run on these vectors
    # Given log-probs are where the spikes come from: blank everywhere but frames 1, 4 and 6.
    forced = torch.full_like(log_probs, -30.0)
    forced[..., model.blank_id] = 0.0
    for frame, token in ((1, 3), (4, 5), (6, 3)):
        forced[:, frame, model.blank_id], forced[:, frame, token] = -30.0, 0.0
    given = model.forward_cif(enc, enc_lens, ctc_log_probs=forced)
    assert given.cif_lens.tolist() == [3, 3, 3]
    assert given.fire_frames.tolist() == [[0, 2, 3]] * 3
    with pytest.raises(ValueError, match="pass targets"):
        model.forward_cif(enc, enc_lens, target_lengths=y_lens)
    with pytest.raises(ValueError, match="cif-segmentation ctc"):
        model.train()(x, x_lens, ys, LossConfig(cif_scale_weights=False))
    with pytest.raises(ValueError, match="cif_segmentation must be"):
        get_model(small_config("cif_transducer", cif_segmentation="spikes"))


def test_training_cuts_at_the_alignment_of_the_ctc_loss_own_log_probs(monkeypatch):
    # One pass of the CTC head per batch: a second one would draw another dropout mask, so the
    # vectors would be cut at spikes that the CTC loss never saw.
    model = get_model(small_config("cif_ce_nar", cif_segmentation="ctc")).train()
    x, x_lens, ys = random_batch(2, torch.Generator().manual_seed(4))
    calls = []
    head_pass = model.ctc_log_probs
    monkeypatch.setattr(model, "ctc_log_probs", lambda enc: calls.append(1) or head_pass(enc))
    model(x, x_lens, ys, LossConfig())
    assert len(calls) == 1
