"""Tests for the CIF model (zipformer_cif/model.py) and its decoders.

Losses are checked against naive float64 references written here (CTC, RNN-T and
label-smoothed CE recursions/formulas), the decoders against their defining properties
(causality, padding, context), and a tiny model of each decoder type must overfit a few
synthetic utterances and then decode them exactly, alone or in a padded batch.
"""
import argparse
import math
import random
import time
from typing import List

import pytest
import torch
from ce_decoder import ArCeDecoder, NarCeDecoder
from decoder import Decoder
from joiner import Joiner
from mask_ctc_head import sample_cmlm_mask
from model import HEADS, CifAsrModel, ModelConfig, get_model, pad_token_ids
from transducer_head import transducer_loss_scales

from icefall_cif.config import LossConfig, add_config_arguments, config_from_options
from icefall_cif.decode import greedy_search
from icefall_cif.model_contract import check_model, loss_weights, weighted_loss
from icefall_cif.optim import ScaledAdam

VOCAB = 30
DECODER_TYPES = tuple(HEADS)
#: The decoder types that existed before the heads (their checkpoints may have pre-head keys).
PRE_HEAD_TYPES = ("cif_transducer", "cif_ce_ar", "cif_ce_nar")
HEAD_LOSSES = {"cif_transducer": {"simple_loss", "pruned_loss"}, "cif_ce_ar": {"ce_loss"}, "cif_ce_nar": {"ce_loss"},
               "mask_ctc": {"cmlm_loss"}}


def small_config(decoder_type: str, **overrides) -> ModelConfig:
    """A two-stack Zipformer smaller than `tiny`, with small decoders: fast on 2 CPU cores."""
    params = dict(
        vocab_size=VOCAB,
        blank_id=0,
        feature_dim=80,
        encoder_config="tiny",
        num_encoder_layers="1,1",
        downsampling_factor="1,2",
        encoder_dim="64,64",
        feedforward_dim="128,128",
        # = encoder_dim: no random feature masking, which only slows down overfitting.
        encoder_unmasked_dim="64,64",
        cnn_module_kernel="15,15",
        num_heads="2",
        decoder_type=decoder_type,
        decoder_dim=64,
        joiner_dim=64,
        ce_decoder_dim=64,
        ce_decoder_heads=4,
        cif_hidden_dim=64,
    )
    params.update(overrides)
    return ModelConfig(**params)


def random_batch(n: int, generator: torch.Generator, min_frames: int = 100, max_frames: int = 200):
    """Fbank-like features (N, T, 80) of 1-2 s and token sequences of 4-10 tokens."""
    x_lens = torch.randint(min_frames, max_frames + 1, (n,), generator=generator)
    x_lens[0] = max_frames  # the batch is as long as its longest utterance
    x = torch.randn(n, max_frames, 80, generator=generator)
    ys = [
        torch.randint(1, VOCAB, (int(torch.randint(4, 11, (1,), generator=generator)),), generator=generator).tolist()
        for _ in range(n)
    ]
    return x, x_lens, ys


# ---------------------------------------------------------------------------- references
def naive_ctc_loss(log_probs: torch.Tensor, target: List[int], blank: int) -> float:
    """-log P(target) by the CTC forward recursion. log_probs (T, V) float64."""
    ext = [blank]
    for k in target:
        ext += [k, blank]
    S, T = len(ext), log_probs.size(0)
    neg_inf = -math.inf
    alpha = [neg_inf] * S
    alpha[0] = float(log_probs[0, ext[0]])
    if S > 1:
        alpha[1] = float(log_probs[0, ext[1]])
    for t in range(1, T):
        new = [neg_inf] * S
        for s in range(S):
            terms = [alpha[s]]
            if s >= 1:
                terms.append(alpha[s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[s - 2])
            m = max(terms)
            if m == neg_inf:
                continue
            new[s] = m + math.log(sum(math.exp(v - m) for v in terms)) + float(log_probs[t, ext[s]])
        alpha = new
    ends = [alpha[-1], alpha[-2]] if S > 1 else [alpha[-1]]
    m = max(ends)
    return -(m + math.log(sum(math.exp(v - m) for v in ends)))


def naive_rnnt_loss(logits: torch.Tensor, target: List[int], blank: int) -> float:
    """-log P(target) of a regular RNN-T lattice. logits (T, U+1, V)."""
    lp = logits.double().log_softmax(-1)
    T, U = lp.size(0), len(target)
    alpha = torch.full((T, U + 1), -math.inf, dtype=torch.float64)
    alpha[0, 0] = 0.0
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + lp[t - 1, u, blank])
            if u > 0:
                terms.append(alpha[t, u - 1] + lp[t, u - 1, target[u - 1]])
            alpha[t, u] = torch.logsumexp(torch.stack(terms), 0)
    return -float(alpha[T - 1, U] + lp[T - 1, U, blank])


def naive_smoothed_ce(logits: torch.Tensor, target: List[int], smoothing: float) -> float:
    """Label-smoothed CE summed over tokens: target (1 - eps) one-hot + eps uniform."""
    lp = logits.double().log_softmax(-1)
    total = 0.0
    for u, k in enumerate(target):
        total += -(1 - smoothing) * float(lp[u, k]) - smoothing * float(lp[u].mean())
    return total


# ---------------------------------------------------------------------------- model losses
@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_forward_shapes_and_loss_keys(decoder_type):
    g = torch.Generator().manual_seed(1)
    model = get_model(small_config(decoder_type))
    check_model(model)
    x, x_lens, ys = random_batch(3, g)
    out = model(x, x_lens, ys, LossConfig())
    expected = {"ctc_loss", "quantity_loss"} | HEAD_LOSSES[decoder_type]
    assert set(out) == expected == set(loss_weights(model, LossConfig(), 0))
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    weighted_loss(model, out, LossConfig(), 0).backward()
    # cif_ce_nar's given-token embedding is only read by the glancing sampler (test_glancing.py).
    trained = [p for name, p in model.head.named_parameters() if not name.endswith("token_embedding.weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert model.cif_predictor.weight_proj.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        # 100 Hz -> (T-7)//2 @50 Hz -> ceil(/2) @25 Hz
        expected_lens = ((x_lens - 7) // 2 + 1) // 2
        assert enc.shape == (3, int(expected_lens.max()), 64) and enc_lens.tolist() == expected_lens.tolist()
        ctc = model.ctc_log_probs(enc)
        assert ctc.shape == (3, enc.size(1), VOCAB)
        assert torch.allclose(ctc.exp().sum(-1), torch.ones(3, enc.size(1)), atol=1e-5)
        y_lens = torch.tensor([len(y) for y in ys])
        train_cif = model.forward_cif(enc, enc_lens, y_lens)
        assert train_cif.cif_lens.tolist() == y_lens.tolist()
        assert train_cif.cif.shape == (3, int(y_lens.max()), 64)
        assert train_cif.alpha.shape == (3, (enc.size(1) + 1) // 2)
        infer_cif = model.forward_cif(enc, enc_lens)
        assert infer_cif.quantity_loss is None and infer_cif.cif.size(0) == 3


def test_cif_alignment_loss_and_ctc_input_are_wired_in():
    g = torch.Generator().manual_seed(4)
    model = get_model(small_config("cif_transducer", cif_ctc_input=True))
    assert model.cif_predictor.conv.in_channels == 64 + 1
    x, x_lens, ys = random_batch(3, g)
    config = LossConfig(cif_align_loss_scale=0.5)
    out = model(x, x_lens, ys, config)
    weights = loss_weights(model, config, 0)
    assert "cif_align_loss" in out and weights["cif_align_loss"] == 0.5
    weighted_loss(model, out, config, 0).backward()
    conv_grad = model.cif_predictor.conv.weight.grad  # (hidden, C + 1, width)
    assert conv_grad[:, -1].abs().sum() > 0, "the CTC input channel gets no gradient"
    # Detached: the CIF losses do not reach the CTC head through its input to the predictor.
    model.zero_grad(set_to_none=True)
    out = model(x, x_lens, ys, config)
    (out["quantity_loss"] + out["cif_align_loss"]).backward()
    assert all(p.grad is None for p in model.ctc_output.parameters())

    # Off in training unless asked for; always measured in validation.
    assert "cif_align_loss" not in model(x, x_lens, ys, LossConfig())
    with torch.no_grad():
        assert "cif_align_loss" in model.eval()(x, x_lens, ys, LossConfig())

    # The extra channel is the CTC head's non-blank mass per CIF frame (2 encoder frames).
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        spikes = model.ctc_spike_input(enc, enc_lens)
        non_blank = 1 - model.ctc_log_probs(enc)[..., model.blank_id].exp()
        i, t = 0, int(enc_lens[0]) - 1
        expected = non_blank[i, t] if t % 2 == 0 else non_blank[i, t - 1] + non_blank[i, t]
        assert spikes.shape == (3, (enc.size(1) + 1) // 2, 1)
        assert spikes[i, t // 2, 0].item() == pytest.approx(expected.item(), abs=1e-5)


def test_modified_rnnt_type_with_one_vector_per_token_is_the_diagonal_ce():
    """k2's modified topology on the U scaled CIF vectors has one path: token u on vector u."""
    g = torch.Generator().manual_seed(6)
    model = get_model(small_config("cif_transducer")).eval()
    x, x_lens, ys = random_batch(3, g)
    config = LossConfig(rnnt_type="modified", lm_scale=0.0, am_scale=0.0, warm_step=0)
    with torch.no_grad():
        out = model(x, x_lens, ys, config)
        enc, enc_lens = model.forward_encoder(x, x_lens)
        cif_out = model.forward_cif(enc, enc_lens, torch.tensor([len(y) for y in ys]))
        diagonal = 0.0
        for i, y in enumerate(ys):
            dec = model.head.decoder(torch.tensor([[0] + y]))[0, : len(y)]  # (U, D): contexts before u
            logits = model.head.joiner(cif_out.cif[i, : len(y)], dec).double()  # (U, V)
            diagonal -= logits.log_softmax(-1)[torch.arange(len(y)), torch.tensor(y)].sum().item()
    assert out["pruned_loss"].item() == pytest.approx(diagonal, rel=1e-4)
    assert out["pruned_loss"].item() != pytest.approx(model(x, x_lens, ys, LossConfig(warm_step=0))["pruned_loss"].item(),
                                                      rel=1e-3)


def test_training_on_the_fires_of_decoding():
    g = torch.Generator().manual_seed(5)
    model = get_model(small_config("cif_transducer")).eval()
    x, x_lens, ys = random_batch(3, g)
    y_lens = torch.tensor([len(y) for y in ys])
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        decoded = model.forward_cif(enc, enc_lens)
        trained = model.forward_cif_as_decoded(enc, enc_lens, y_lens)
    assert trained.cif_lens.tolist() == decoded.cif_lens.clamp(min=1).tolist()
    n = int(decoded.cif_lens.max())
    assert torch.equal(trained.cif[:, :n], decoded.cif[:, :n])
    expected_quantity = (decoded.alpha.sum(1) - y_lens).abs().sum()
    assert trained.quantity_loss.item() == pytest.approx(expected_quantity.item(), rel=1e-6)

    # No fire at all: one zero vector, still a finite loss.
    model.cif_predictor.weight_proj.bias.data.fill_(-30.0)
    out = model.train()(x, x_lens, ys, LossConfig(cif_scale_weights=False, warm_step=0))
    assert all(torch.isfinite(v) for v in out.values())

    ce_model = get_model(small_config("cif_ce_ar"))
    with pytest.raises(ValueError, match="--cif-scale-weights 0 needs a decoder that reads any number"):
        ce_model(x, x_lens, ys, LossConfig(cif_scale_weights=False))


@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_losses_match_naive_references(decoder_type):
    g = torch.Generator().manual_seed(2)
    # prune_range above every U + 1: the pruned loss must then equal the full RNN-T loss;
    # lm/am smoothing off: the simple loss is then the plain RNN-T loss of the trivial joiner.
    loss_config = LossConfig(prune_range=12, lm_scale=0.0, am_scale=0.0, warm_step=100)
    model = get_model(small_config(decoder_type)).eval()
    head = model.head
    x, x_lens, ys = random_batch(3, g)
    rng = torch.get_rng_state()  # what mask_ctc's training mask is drawn from
    with torch.no_grad():
        out = model(x, x_lens, ys, loss_config)
        enc, enc_lens = model.forward_encoder(x, x_lens)
        y_lens = torch.tensor([len(y) for y in ys])
        cif_out = model.forward_cif(enc, enc_lens, y_lens)
        ctc_lp = model.ctc_log_probs(enc).double()

    ctc_ref = sum(naive_ctc_loss(ctc_lp[i, : int(enc_lens[i])], ys[i], 0) for i in range(3))
    assert out["ctc_loss"].item() == pytest.approx(ctc_ref, rel=1e-4)
    quantity_ref = sum(abs(float(cif_out.alpha[i].double().sum()) - len(ys[i])) for i in range(3))
    assert out["quantity_loss"].item() == pytest.approx(quantity_ref, rel=1e-5, abs=1e-5)
    total = 0.5 * ctc_ref + 1.0 * quantity_ref

    if decoder_type == "cif_transducer":
        simple_ref = pruned_ref = 0.0
        with torch.no_grad():
            for i, y in enumerate(ys):
                dec = head.decoder(torch.tensor([[0] + y]))[0]  # (U+1, D)
                cif = cif_out.cif[i, : len(y)]  # (T=U, C)
                full = head.joiner(cif.unsqueeze(1), dec.unsqueeze(0))  # (T, U+1, V)
                pruned_ref += naive_rnnt_loss(full, y, 0)
                trivial = head.simple_am_proj(cif).unsqueeze(1) + head.simple_lm_proj(dec).unsqueeze(0)
                simple_ref += naive_rnnt_loss(trivial, y, 0)
        assert out["pruned_loss"].item() == pytest.approx(pruned_ref, rel=1e-4)
        assert out["simple_loss"].item() == pytest.approx(simple_ref, rel=1e-4)
        # Half-way through warm-up: simple 1.0 -> 0.5 is at 0.75, pruned 0.1 -> 1.0 at 0.55.
        total += 0.75 * simple_ref + 0.55 * pruned_ref
    elif decoder_type == "mask_ctc":
        torch.set_rng_state(rng)  # the same mask again
        hidden = sample_cmlm_mask(y_lens, max(y_lens.tolist()))
        y = pad_token_ids(ys, 0, enc.device)
        with torch.no_grad():
            logits = head.cmlm(y.masked_fill(hidden, -1), y_lens, enc, enc_lens)
        # The CE at the masked positions only.
        cmlm_ref = sum(naive_smoothed_ce(logits[i][hidden[i]], y[i][hidden[i]].tolist(), 0.1) for i in range(3))
        assert out["cmlm_loss"].item() == pytest.approx(cmlm_ref, rel=1e-4)
        total += cmlm_ref
    else:
        with torch.no_grad():
            if decoder_type == "cif_ce_ar":
                # Teacher forcing: step u is fed token u-1, the blank (0) at u = 0.
                prev = pad_token_ids([[0] + y[:-1] for y in ys], 0, enc.device)
                logits = head.ce_decoder(cif_out.cif, cif_out.cif_lens, prev)
            else:
                logits = head.ce_decoder(cif_out.cif, cif_out.cif_lens, enc, enc_lens)
        ce_ref = sum(naive_smoothed_ce(logits[i, : len(y)], y, 0.1) for i, y in enumerate(ys))
        assert out["ce_loss"].item() == pytest.approx(ce_ref, rel=1e-4)
        total += ce_ref
    assert weighted_loss(model, out, loss_config, 50).item() == pytest.approx(total, rel=1e-4)


def test_transducer_token_ce_is_the_lattice_diagonal():
    g = torch.Generator().manual_seed(5)
    model = get_model(small_config("cif_transducer")).eval()
    x, x_lens, ys = random_batch(3, g)
    off, on = LossConfig(), LossConfig(transducer_ce_scale=0.7, label_smoothing=0.0)
    with torch.no_grad():
        assert "token_ce_loss" not in model(x, x_lens, ys, off) and "token_ce_loss" not in loss_weights(model, off, 0)
        out = model(x, x_lens, ys, on)
        enc, enc_lens = model.forward_encoder(x, x_lens)
        cif_out = model.forward_cif(enc, enc_lens, torch.tensor([len(y) for y in ys]))
        ref = 0.0
        for i, y in enumerate(ys):
            dec = model.head.decoder(torch.tensor([[0] + y]))[0]  # (U+1, D)
            for u, token in enumerate(y):
                logits = model.head.joiner(cif_out.cif[i, u], dec[u]).double()
                ref -= float(logits.log_softmax(-1)[token])
    assert out["token_ce_loss"].item() == pytest.approx(ref, rel=1e-4)
    assert loss_weights(model, on, 0)["token_ce_loss"] == 0.7


def test_transducer_loss_scales_follow_icefall_warmup():
    assert transducer_loss_scales(0, 2000, 0.5) == pytest.approx((1.0, 0.1))
    assert transducer_loss_scales(500, 2000, 0.5) == pytest.approx((0.875, 0.325))
    assert transducer_loss_scales(2000, 2000, 0.5) == pytest.approx((0.5, 1.0))
    assert transducer_loss_scales(10**6, 2000, 0.3) == pytest.approx((0.3, 1.0))


def test_pad_token_ids():
    assert pad_token_ids([[3, 4], [], [5]], 0, torch.device("cpu")).tolist() == [[3, 4], [0, 0], [5, 0]]
    assert pad_token_ids([[], []], 0, torch.device("cpu")).shape == (2, 0)


# ---------------------------------------------------------------------------- decoders
def test_prediction_network_context_and_inference_mode():
    dec = Decoder(vocab_size=10, decoder_dim=16, blank_id=0, context_size=3).eval()
    y = torch.tensor([[0, 4, 7, 2, 9, 1]])
    full = dec(y)
    assert full.shape == (1, 6, 16)
    # Output u sees tokens u-2..u only: changing token 1 leaves outputs 4 and 5 unchanged.
    y2 = y.clone()
    y2[0, 1] = 5
    changed = (dec(y2) - full).abs().sum(-1)[0]
    assert changed[:1].max() == 0 and changed[1:4].min() > 0 and changed[4:].max() == 0
    # need_pad=False on the last context_size tokens is the padded pass's last output;
    # -1 ("no token") is the zero left padding of training.
    assert torch.allclose(dec(y[:, -3:], need_pad=False)[:, 0], full[:, -1])
    assert torch.allclose(dec(torch.tensor([[-1, -1, 0]]), need_pad=False)[:, 0], full[:, 0])
    with pytest.raises(ValueError, match="context_size=3"):
        dec(y[:, -2:], need_pad=False)


def test_joiner_matches_formula():
    joiner = Joiner(encoder_dim=6, decoder_dim=5, joiner_dim=7, vocab_size=4)
    enc, dec = torch.randn(2, 3, 1, 6), torch.randn(2, 1, 4, 5)
    p = {k: v.double() for k, v in joiner.state_dict().items()}
    hidden = (
        enc.double() @ p["encoder_proj.weight"].T
        + p["encoder_proj.bias"]
        + dec.double() @ p["decoder_proj.weight"].T
        + p["decoder_proj.bias"]
    )
    ref = torch.tanh(hidden) @ p["output_linear.weight"].T + p["output_linear.bias"]
    out = joiner(enc, dec)
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    projected = joiner(joiner.encoder_proj(enc), joiner.decoder_proj(dec), project_input=False)
    assert torch.allclose(projected, out, atol=1e-6)


def test_ar_decoder_steps_equal_parallel_pass_and_are_causal():
    dec = ArCeDecoder(cif_dim=12, vocab_size=9, d_model=16, num_layers=2, num_heads=4).eval()
    cif = torch.randn(2, 6, 12)
    prev = torch.randint(1, 9, (2, 6))
    prev[:, 0] = 0
    with torch.no_grad():
        full = dec(cif, torch.tensor([6, 4]), prev)
        cache, steps = None, []
        for u in range(6):
            logits, cache = dec.forward_step(cif[:, u], prev[:, u], cache)
            steps.append(logits)
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        assert [c.shape for c in cache] == [(2, 6, 16)] * 2
        # Changing step 4's inputs changes nothing before step 4.
        cif2, prev2 = cif.clone(), prev.clone()
        cif2[:, 4:] += 1.0
        prev2[:, 4:] = (prev2[:, 4:] % 8) + 1
        other = dec(cif2, torch.tensor([6, 4]), prev2)
    assert torch.allclose(other[:, :4], full[:, :4], atol=1e-6)
    assert not torch.allclose(other[:, 4:], full[:, 4:])


def test_nar_decoder_ignores_padding():
    dec = NarCeDecoder(cif_dim=12, memory_dim=10, vocab_size=9, d_model=16, num_heads=4).eval()
    cif, mem = torch.randn(2, 5, 12), torch.randn(2, 8, 10)
    cif_lens, mem_lens = torch.tensor([5, 3]), torch.tensor([8, 6])
    with torch.no_grad():
        out = dec(cif, cif_lens, mem, mem_lens)
        cif2, mem2 = cif.clone(), mem.clone()
        cif2[1, 3:] = 100.0
        mem2[1, 6:] = -100.0
        out2 = dec(cif2, cif_lens, mem2, mem_lens)
        # An utterance alone (no padding at all) gives the same logits.
        alone = dec(cif[1:, :3], cif_lens[1:], mem[1:, :6], mem_lens[1:])
    assert out.shape == (2, 5, 9)
    assert torch.allclose(out2[0], out[0]) and torch.allclose(out2[1, :3], out[1, :3], atol=1e-5)
    assert torch.allclose(alone[0], out[1, :3], atol=1e-5)
    # Zero CIF vectors must not produce NaN for the other utterances.
    with torch.no_grad():
        out3 = dec(cif, torch.tensor([5, 0]), mem, mem_lens)
    assert torch.isfinite(out3).all()


# ---------------------------------------------------------------------------- options
def test_options_override_encoder_config_and_cif_downsample():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ModelConfig)
    args = parser.parse_args(
        "--encoder-config tiny --num-encoder-layers 1,2 --downsampling-factor 1,2 "
        "--encoder-dim 48,64 --encoder-unmasked-dim 48,48 --feedforward-dim 96,128 "
        "--cnn-module-kernel 7,7 --num-heads 2 --cif-downsample 1 --decoder-type cif_ce_nar".split()
    )
    model = get_model(config_from_options(ModelConfig, dict(vars(args), vocab_size=VOCAB)))
    assert isinstance(model, CifAsrModel)
    assert model.encoder.num_encoder_layers == (1, 2) and model.encoder.encoder_dim == (48, 64)
    assert model.encoder_dim == 64 and model.cif_downsample is None
    x = torch.randn(2, 120, 80)
    model.eval()
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, torch.tensor([120, 90]))
        cif_out = model.forward_cif(enc, enc_lens)
    # No extra downsampling: one CIF weight per encoder frame.
    assert cif_out.alpha.shape == enc.shape[:2]
    defaults, loss_defaults = ModelConfig(), LossConfig()
    assert defaults.cif_downsample == 2 and loss_defaults.ctc_loss_scale == 0.5
    assert loss_defaults.quantity_loss_scale == 1.0 and loss_defaults.label_smoothing == 0.1


def test_encoder_embed_channels_narrow_the_front_end():
    """The three Conv2d layers and the ConvNeXt take the given widths; the output is unchanged in shape."""
    default = get_model(small_config("cif_ce_nar"))
    assert [default.encoder_embed.conv[i].out_channels for i in (0, 4, 7)] == [8, 32, 128]
    narrow = get_model(small_config("cif_ce_nar", encoder_embed_channels="4,8,16"))
    assert [narrow.encoder_embed.conv[i].out_channels for i in (0, 4, 7)] == [4, 8, 16]
    assert narrow.encoder_embed.convnext.pointwise_conv1.out_channels == 3 * 16
    assert narrow.encoder_embed.out.in_features == 16 * narrow.encoder_embed.out_width
    embed_params = lambda m: sum(p.numel() for p in m.encoder_embed.parameters())  # noqa: E731
    assert embed_params(narrow) < embed_params(default) / 4
    x, x_lens = torch.randn(2, 60, 80), torch.tensor([60, 41])
    narrow.eval()
    with torch.no_grad():
        out, out_lens = narrow.encoder_embed(x, x_lens)
    assert out.shape == (2, (60 - 7) // 2, 64) and out_lens.tolist() == [(60 - 7) // 2, (41 - 7) // 2]
    with pytest.raises(ValueError, match="one channel count per Conv2d layer"):
        get_model(small_config("cif_ce_nar", encoder_embed_channels="4,8"))


def test_get_model_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="vocab_size"):
        get_model(small_config("cif_ce_ar", vocab_size=None))
    with pytest.raises(ValueError, match="decoder_type must be one of"):
        get_model(small_config("ctc_only"))
    with pytest.raises(ValueError, match="cif_downsample"):
        get_model(small_config("cif_ce_ar", cif_downsample=0))


@pytest.mark.parametrize("decoder_type", PRE_HEAD_TYPES)
def test_checkpoints_from_before_the_heads_load(decoder_type):
    """Pre-head checkpoints keep the decoder modules at the top level (`joiner.*`, `ce_decoder.*`)."""
    model = get_model(small_config(decoder_type))
    old = {k.removeprefix("head."): v for k, v in model.state_dict().items()}
    assert not any(k.startswith("head.") for k in old) and len(old) == len(model.state_dict())
    torch.manual_seed(123)
    other = get_model(small_config(decoder_type))
    other.load_state_dict(old, strict=True)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())

    state = model.adaptive_state()
    assert state and any(k.startswith("head.") for k in state) == (decoder_type == "cif_transducer")
    changed = {k.removeprefix("head."): v / 2 for k, v in state.items()}
    other.load_adaptive_state(changed)
    assert other.adaptive_state() == {k: v / 2 for k, v in state.items()}


@pytest.mark.parametrize(
    "decoder_type,ctc_input", [(t, False) for t in DECODER_TYPES] + [("cif_transducer", True)]
)
def test_random_model_is_padding_invariant(decoder_type, ctc_input):
    g = torch.Generator().manual_seed(3)
    model = get_model(small_config(decoder_type, cif_ctc_input=ctc_input)).eval()
    x, x_lens, _ = random_batch(3, g)
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        batch_cif = model.forward_cif(enc, enc_lens)
        for i in range(3):
            t = int(x_lens[i])
            enc1, lens1 = model.forward_encoder(x[i : i + 1, :t], x_lens[i : i + 1])
            assert lens1.item() == enc_lens[i].item()
            assert torch.allclose(enc1[0], enc[i, : lens1.item()], atol=1e-4)
            cif1 = model.forward_cif(enc1, lens1)
            n = int(cif1.cif_lens)
            assert n == int(batch_cif.cif_lens[i])
            assert torch.allclose(cif1.cif[0, :n], batch_cif.cif[i, :n], atol=1e-4)
            assert cif1.fire_frames[0, :n].tolist() == batch_cif.fire_frames[i, :n].tolist()


# ---------------------------------------------------------------------------- overfit
# About 60-100 steps of ~0.4-0.7 s CPU each (the Conv2dSubsampling front end dominates):
# around a minute per decoder type on 2 busy cores, hence `slow`.
@pytest.mark.slow
@pytest.mark.parametrize("decoder_type", DECODER_TYPES)
def test_tiny_model_overfits_and_decodes_exactly(decoder_type):
    random.seed(0)  # the Balancers draw from Python's generator
    g = torch.Generator().manual_seed(4)
    # No dropout: nothing here should keep the model from memorizing.
    model = get_model(small_config(decoder_type, cif_dropout=0.0, ce_decoder_dropout=0.0))
    loss_config = LossConfig(warm_step=20)
    x, x_lens, ys = random_batch(8, g)
    optimizer = ScaledAdam(model.parameters(), lr=0.045, clipping_scale=2.0)
    # Constant for 30 steps, then down to 0.1x over 50: the quantity loss is an L1 loss whose
    # minimum a constant step size keeps overshooting, and the number of fires at inference
    # must be exact for the CE decoders.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.1, 1.0 - max(0, s - 30) / 50 * 0.9))

    def decode(xs, lens):
        model.eval()
        with torch.no_grad():
            return greedy_search(model, *model.forward_encoder(xs, lens))

    first_loss = None
    start = time.process_time()
    for step in range(150):
        model.train()
        loss = weighted_loss(model, model(x, x_lens, ys, loss_config), loss_config, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        first_loss = first_loss or loss.item()
        if step >= 40 and step % 10 == 0 and loss.item() < 0.1 * first_loss and decode(x, x_lens) == ys:
            break
    hyps = decode(x, x_lens)
    with torch.no_grad():
        final_loss = weighted_loss(model, model(x, x_lens, ys, loss_config), loss_config, step).item()
    print(f"{decoder_type}: {step + 1} steps, {time.process_time() - start:.1f} s CPU, loss {first_loss:.1f} -> {final_loss:.2f}")
    assert final_loss < 0.1 * first_loss
    assert hyps == ys
    # Each utterance alone, without padding, decodes as it did in the padded batch.
    alone = [decode(x[i : i + 1, : int(x_lens[i])], x_lens[i : i + 1])[0] for i in range(8)]
    assert alone == hyps
