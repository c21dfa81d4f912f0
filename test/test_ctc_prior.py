"""`--ce-ctc-prior-scale`: the CE heads' logits plus the CTC head's log-probs at the vectors' spikes."""
import pytest
import torch
from model import get_model
from test_model import random_batch, small_config

from icefall_cif.alignment import ctc_forced_align
from icefall_cif.config import LossConfig
from icefall_cif.decode import ctc_greedy_search, greedy_search
from icefall_cif.decode.search import beam_search
from icefall_cif.segments import ctc_greedy_spikes, fill_missing_spikes, spike_log_probs

CE_TYPES = ("cif_ce_ar", "cif_ce_nar")


def prior_model(decoder_type: str, scale: float, seed: int = 0):
    torch.manual_seed(seed)
    model = get_model(small_config(decoder_type, cif_segmentation="ctc", ce_ctc_prior_scale=scale))
    # An untrained CTC head mostly emits blank; a low blank bias gives every utterance spikes.
    with torch.no_grad():
        model.ctc_output[1].bias[model.blank_id] = -3.0
    return model


def encode(model, n: int = 3, seed: int = 5):
    x, x_lens, ys = random_batch(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
    return x, x_lens, ys, enc, enc_lens


def test_spike_log_probs_gathers_the_spike_frames():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(2, 7, 5, generator=g).log_softmax(-1)
    spikes = torch.tensor([[0, 3, 6], [2, -1, -1]])
    prior = spike_log_probs(log_probs, spikes)
    for i in range(2):
        for u in range(3):
            want = log_probs[i, spikes[i, u]] if spikes[i, u] >= 0 else torch.zeros(5)
            torch.testing.assert_close(prior[i, u], want)
    assert not spike_log_probs(log_probs.requires_grad_(), spikes).requires_grad
    with pytest.raises(ValueError, match="spikes"):
        spike_log_probs(log_probs, spikes[0])


@pytest.mark.parametrize("decoder_type", CE_TYPES)
def test_forward_cif_returns_the_prior_at_the_spikes(decoder_type):
    model = prior_model(decoder_type, 1.0).eval()
    _, _, ys, enc, enc_lens = encode(model)
    with torch.no_grad():
        log_probs = model.ctc_log_probs(enc)
        decoded = model.forward_cif(enc, enc_lens)
        spikes = ctc_greedy_spikes(log_probs, enc_lens, model.blank_id)
        torch.testing.assert_close(decoded.token_prior, spike_log_probs(log_probs, spikes))
        assert decoded.head_inputs().keys() == {"token_prior"}
        # Training: the forced alignment of the reference picks the frames.
        y_lens = torch.tensor([len(y) for y in ys])
        y_padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(y) for y in ys], batch_first=True)
        trained = model.forward_cif(enc, enc_lens, target_lengths=y_lens, targets=y_padded)
        aligned = ctc_forced_align(log_probs, enc_lens, y_padded, y_lens, model.blank_id)
        frames = fill_missing_spikes(aligned, y_lens, enc_lens)
        torch.testing.assert_close(trained.token_prior, spike_log_probs(log_probs, frames))
    # Without the option nothing is gathered, and the searches get no extra argument.
    plain = get_model(small_config(decoder_type, cif_segmentation="ctc")).eval()
    with torch.no_grad():
        assert plain.forward_cif(enc, enc_lens).head_inputs() == {}


@pytest.mark.parametrize("decoder_type", CE_TYPES)
def test_greedy_search_is_the_argmax_of_the_logits_plus_the_scaled_prior(decoder_type):
    scale = 0.7
    model = prior_model(decoder_type, scale).eval()
    _, _, _, enc, enc_lens = encode(model)
    with torch.no_grad():
        cif_out = model.forward_cif(enc, enc_lens)
        hyps = greedy_search(model, enc, enc_lens)
        decoder, prior = model.head.ce_decoder, cif_out.token_prior
        for i, hyp in enumerate(hyps):
            U = int(cif_out.cif_lens[i])
            assert len(hyp) == U
            if decoder_type == "cif_ce_nar":
                logits = decoder(cif_out.cif[i : i + 1, :U], cif_out.cif_lens[i : i + 1], enc[i : i + 1],
                                 enc_lens[i : i + 1])[0]
                assert hyp == (logits + scale * prior[i, :U]).argmax(-1).tolist()
            else:  # one step at a time, the chosen token fed back
                previous, cache, want = torch.tensor([model.blank_id]), None, []
                for u in range(U):
                    logits, cache = decoder.forward_step(cif_out.cif[i : i + 1, u], previous, cache)
                    previous = (logits[0] + scale * prior[i, u]).argmax(-1, keepdim=True)
                    want.append(int(previous))
                assert hyp == want


@pytest.mark.parametrize("decoder_type", CE_TYPES)
def test_a_dominant_prior_gives_the_ctc_heads_tokens(decoder_type):
    # At its spike the CTC head's argmax is the spike's token, so a prior weighted far above
    # the decoder's logits reproduces CTC greedy search: the decoder starts from that output.
    model = prior_model(decoder_type, 1e4).eval()
    _, _, _, enc, enc_lens = encode(model)
    with torch.no_grad():
        ctc = ctc_greedy_search(model.ctc_log_probs(enc), enc_lens, model.blank_id)
        assert sum(map(len, ctc)) > 0
        assert greedy_search(model, enc, enc_lens) == ctc
        nbest = beam_search(model, enc, enc_lens, beam_size=3)
        assert [hyps[0].tokens for hyps in nbest] == ctc


def test_beam_1_equals_greedy_with_the_prior():
    model = prior_model("cif_ce_ar", 0.5).eval()
    _, _, _, enc, enc_lens = encode(model, n=4, seed=9)
    with torch.no_grad():
        greedy = greedy_search(model, enc, enc_lens)
        assert [hyps[0].tokens for hyps in beam_search(model, enc, enc_lens, beam_size=1)] == greedy


@pytest.mark.parametrize("decoder_type", CE_TYPES)
def test_the_loss_is_the_ce_of_the_logits_plus_the_prior_and_leaves_the_ctc_head_alone(decoder_type):
    scale = 2.0
    model = prior_model(decoder_type, scale).train()
    x, x_lens, ys, _, _ = encode(model, seed=11)
    torch.manual_seed(1)
    config = LossConfig(label_smoothing=0.0)
    losses = model(x, x_lens, ys, config)
    losses["ce_loss"].backward()
    # The prior is detached: the CE loss reaches the encoder through the vectors, never the CTC layer.
    assert model.ctc_output[1].weight.grad is None or model.ctc_output[1].weight.grad.abs().sum() == 0
    assert sum(p.grad.abs().sum() for p in model.encoder_embed.parameters() if p.grad is not None) > 0

    model.eval()
    with torch.no_grad():
        enc, enc_lens = model.forward_encoder(x, x_lens)
        y_lens = torch.tensor([len(y) for y in ys])
        y_padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(y) for y in ys], batch_first=True)
        cif_out = model.forward_cif(enc, enc_lens, target_lengths=y_lens, targets=y_padded)
        logits = model.head.token_logits(cif_out, enc, enc_lens, y_padded, y_lens)
        states = model.head.teacher_forced_states(cif_out, enc, enc_lens, y_padded, y_lens, config)
        raw = model.head.ce_decoder.output_linear(states)
        torch.testing.assert_close(logits, raw + scale * cif_out.token_prior)
        want = sum(
            torch.nn.functional.cross_entropy(logits[i, : len(y)].double(), y_padded[i, : len(y)], reduction="sum")
            for i, y in enumerate(ys)
        )
        got = model.head.loss(cif_out, enc, enc_lens, y_padded, y_lens, config)["ce_loss"]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="--decoder-type cif_transducer"):
        get_model(small_config("cif_transducer", cif_segmentation="ctc", ce_ctc_prior_scale=1.0))
    with pytest.raises(ValueError, match="--cif-segmentation ctc"):
        get_model(small_config("cif_ce_ar", ce_ctc_prior_scale=1.0))
    with pytest.raises(ValueError, match="must be >= 0"):
        get_model(small_config("cif_ce_ar", cif_segmentation="ctc", ce_ctc_prior_scale=-1.0))
    model = prior_model("cif_ce_nar", 1.0).eval()
    _, _, _, enc, enc_lens = encode(model)
    with torch.no_grad():
        cif_out = model.forward_cif(enc, enc_lens)
        with pytest.raises(ValueError, match="pass token_prior"):
            model.head.greedy_search(cif_out.cif, cif_out.cif_lens, enc, enc_lens, 3)


def test_the_prior_free_term_adds_the_ce_of_the_decoder_alone():
    model = prior_model("cif_ce_ar", 1.0).eval()
    x, x_lens, ys, enc, enc_lens = encode(model, seed=12)
    y_lens = torch.tensor([len(y) for y in ys])
    y_padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(y) for y in ys], batch_first=True)
    with torch.no_grad():
        cif_out = model.forward_cif(enc, enc_lens, target_lengths=y_lens, targets=y_padded)
        head = model.head
        states = head.teacher_forced_states(cif_out, enc, enc_lens, y_padded, y_lens, LossConfig())
        raw = head.ce_decoder.output_linear(states)

        def ce(logits):
            return sum(torch.nn.functional.cross_entropy(logits[i, : len(y)].double(), y_padded[i, : len(y)],
                                                         reduction="sum") for i, y in enumerate(ys))

        config = LossConfig(label_smoothing=0.0, ce_prior_free_scale=0.5)
        got = head.loss(cif_out, enc, enc_lens, y_padded, y_lens, config)["ce_loss"].double()
        torch.testing.assert_close(got, ce(raw + cif_out.token_prior) + 0.5 * ce(raw), rtol=1e-5, atol=1e-4)
    plain = get_model(small_config("cif_ce_ar", cif_segmentation="ctc")).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="no prior"):
        plain(x, x_lens, ys, LossConfig(ce_prior_free_scale=0.5))
    with pytest.raises(ValueError, match="--ce-prior-free-scale must be >= 0"):
        LossConfig(ce_prior_free_scale=-1.0)
