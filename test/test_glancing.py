"""Tests for cif_ce_nar's given-token input and Paraformer's glancing sampler (ce_nar_head.py).

The sampler is checked against its definition (how many positions, never padding), the
decoder's `known_tokens` against feeding the token embedding as the CIF vector, and the
head's training loss against the two passes written out here.
"""
import math

import pytest
import torch
from ce_decoder import NarCeDecoder, token_cross_entropy
from ce_nar_head import NarCeHead, glancing_positions

from icefall_cif.cif import CifPredictorOutput
from icefall_cif.config import LossConfig

VOCAB, CIF_DIM = 12, 16


def tiny_decoder() -> NarCeDecoder:
    return NarCeDecoder(cif_dim=CIF_DIM, memory_dim=CIF_DIM, vocab_size=VOCAB, d_model=16, num_layers=2,
                        num_heads=2, dropout=0.0)


def batch(n: int = 3, u: int = 6, t: int = 9):
    gen = torch.Generator().manual_seed(3)
    cif = torch.randn(n, u, CIF_DIM, generator=gen)
    cif_lens = torch.tensor([u, u - 2, 1][:n])
    memory = torch.randn(n, t, CIF_DIM, generator=gen)
    memory_lens = torch.tensor([t, t - 3, 4][:n])
    y = torch.randint(1, VOCAB, (n, u), generator=gen).masked_fill(
        torch.arange(u) >= cif_lens.unsqueeze(1), 0)
    return cif, cif_lens, memory, memory_lens, y


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75, 1.0])
def test_glancing_positions_count_and_padding(ratio):
    predicted = torch.tensor([[5, 7, 9, 4, 0], [1, 2, 3, 0, 0], [8, 8, 8, 8, 8]])
    y = torch.tensor([[5, 8, 6, 4, 0], [1, 2, 3, 0, 0], [1, 2, 3, 4, 5]])
    y_lens = torch.tensor([4, 3, 5])
    for _ in range(20):
        glanced = glancing_positions(predicted, y, y_lens, ratio)
        # Wrong tokens per row: 2, 0, 5.
        assert glanced.sum(dim=1).tolist() == [math.ceil(ratio * d) for d in (2, 0, 5)]
        assert not glanced[0, 4] and not glanced[1, 3:].any()


def test_glancing_positions_are_random_over_the_valid_ones():
    predicted = torch.zeros(1, 4, dtype=torch.int64)
    y = torch.tensor([[1, 2, 3, 0]])
    hits = torch.zeros(4)
    for _ in range(300):
        hits += glancing_positions(predicted, y, torch.tensor([3]), 0.34)[0].float()
    # ceil(0.34 * 3) = 2 of the 3 valid positions each time, each position about 2/3 of the times.
    assert hits[3] == 0 and hits.sum() == 600
    assert ((hits[:3] / 300 - 2 / 3).abs() < 0.12).all()


def test_known_tokens_replace_the_cif_vector_by_the_token_embedding():
    decoder = tiny_decoder().eval()
    cif, cif_lens, memory, memory_lens, y = batch()
    none_known = torch.full(y.shape, -1)
    torch.testing.assert_close(decoder(cif, cif_lens, memory, memory_lens, none_known),
                               decoder(cif, cif_lens, memory, memory_lens))
    known = none_known.clone()
    known[0, 1], known[1, 3] = 4, 7
    replaced = cif.clone()
    replaced[0, 1] = decoder.token_embedding.weight[4]
    replaced[1, 3] = decoder.token_embedding.weight[7]
    torch.testing.assert_close(decoder(cif, cif_lens, memory, memory_lens, known),
                               decoder(replaced, cif_lens, memory, memory_lens))
    with pytest.raises(ValueError, match="known_tokens must be"):
        decoder(cif, cif_lens, memory, memory_lens, known[:, :2])


def test_glancing_loss_is_the_ce_of_the_second_pass():
    head = NarCeHead(tiny_decoder(), blank_id=0).train()
    cif, cif_lens, memory, memory_lens, y = batch()
    cif_out = CifPredictorOutput(cif=cif, cif_lens=cif_lens, alpha=None, fire_frames=None, quantity_loss=None)
    config = LossConfig(glancing_ratio=0.75, label_smoothing=0.1)

    torch.manual_seed(11)
    loss = head.loss(cif_out, memory, memory_lens, y, cif_lens, config)["ce_loss"]
    torch.manual_seed(11)
    predicted = head.ce_decoder(cif, cif_lens, memory, memory_lens).argmax(-1)
    glanced = glancing_positions(predicted, y, cif_lens, 0.75)
    assert glanced.any(), "an untrained decoder is wrong somewhere, so something must be glanced"
    logits = head.ce_decoder(cif, cif_lens, memory, memory_lens, y.masked_fill(~glanced, -1))
    torch.testing.assert_close(loss, token_cross_entropy(logits, y, cif_lens, 0.1))

    plain = token_cross_entropy(head.ce_decoder(cif, cif_lens, memory, memory_lens), y, cif_lens, 0.1)
    assert loss.item() != pytest.approx(plain.item())
    # Validation (eval mode) and ratio 0 compute the plain one-pass loss.
    torch.testing.assert_close(head.eval().loss(cif_out, memory, memory_lens, y, cif_lens, config)["ce_loss"], plain)
    torch.testing.assert_close(
        head.train().loss(cif_out, memory, memory_lens, y, cif_lens, LossConfig(label_smoothing=0.1))["ce_loss"], plain)


def test_glancing_trains_the_token_embedding():
    head = NarCeHead(tiny_decoder(), blank_id=0).train()
    cif, cif_lens, memory, memory_lens, y = batch()
    cif_out = CifPredictorOutput(cif=cif, cif_lens=cif_lens, alpha=None, fire_frames=None, quantity_loss=None)
    head.loss(cif_out, memory, memory_lens, y, cif_lens, LossConfig(glancing_ratio=1.0))["ce_loss"].backward()
    grad = head.ce_decoder.token_embedding.weight.grad
    # Only the rows of glanced reference tokens receive a gradient.
    assert grad is not None and grad.abs().sum() > 0 and grad[0].abs().sum() == 0


def test_glancing_ratio_outside_0_1_is_an_error_naming_the_option():
    with pytest.raises(ValueError, match="--glancing-ratio must be in"):
        LossConfig(glancing_ratio=1.5)
