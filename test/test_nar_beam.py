"""Tests for cif_ce_nar's mask-predict searches, `nar_mask_predict` and `nar_beam_search` (ce_nar_head.py).

- Nothing masked (--mask-threshold 0): both are the one-pass greedy search.
- The beam with --beam-size 1 is `nar_mask_predict`.
- Options not given take the head's defaults (threshold 0.9, one round).
- The re-predicted positions see the other tokens (`known_tokens`), not their CIF vectors alone.
- A tiny model overfit (with the glancing sampler) to three utterances decodes them, also with
  every position re-predicted.
"""
import pytest
import torch
from helpers_decode import build_tiny_model, make_encoder_out, overfit_tiny_model

from icefall_cif.config import LossConfig
from icefall_cif.decode.greedy import greedy_search
from icefall_cif.decode.loop import results_key
from icefall_cif.decode.search import decode_batch, is_beam_method
from icefall_cif.model_contract import decoding_methods
from icefall_cif.utils import AttributeDict

METHODS = ("nar_mask_predict", "nar_beam_search")


def params(**kwargs) -> AttributeDict:
    return AttributeDict({**dict(beam_size=4, nbest_scale=0.0, num_paths=4, ctc_weight=0.5), **kwargs})


def random_case(seed: int):
    torch.manual_seed(seed)
    model = build_tiny_model("cif_ce_nar")
    encoder_out, lens = make_encoder_out([24, 9, 17, 13], model.encoder_dim, seed)
    return model, encoder_out, lens


def test_the_head_offers_both_next_to_its_beam_search():
    model = build_tiny_model("cif_ce_nar")
    methods = decoding_methods(model)
    assert set(METHODS) < set(methods) and {"beam_search", "joint_beam_search"} < set(methods)
    assert is_beam_method("nar_beam_search") and not is_beam_method("nar_mask_predict")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nothing_masked_is_greedy_and_beam_one_is_mask_predict(seed):
    model, encoder_out, lens = random_case(seed)
    with torch.no_grad():
        greedy = greedy_search(model, encoder_out, lens)
        assert sum(map(len, greedy)) > 0
        for method in METHODS:
            assert decode_batch(method, model, encoder_out, lens, params(mask_threshold=0.0)) == greedy, method
        for iterations in (1, 2, 10):
            options = dict(mask_threshold=1.0, mask_iterations=iterations)
            refined = decode_batch("nar_mask_predict", model, encoder_out, lens, params(**options))
            beam = decode_batch("nar_beam_search", model, encoder_out, lens, params(beam_size=1, **options))
            assert beam == refined, iterations
            assert [len(h) for h in refined] == [len(h) for h in greedy]


def test_re_predicted_positions_see_the_given_tokens():
    """With two rounds the second one runs with the first round's tokens given: an untrained
    decoder's token embeddings then change its predictions."""
    model, encoder_out, lens = random_case(0)
    with torch.no_grad():
        greedy = greedy_search(model, encoder_out, lens)
        refined = decode_batch("nar_mask_predict", model, encoder_out, lens,
                               params(mask_threshold=1.0, mask_iterations=2))
    assert refined != greedy


@pytest.fixture(scope="module")
def overfit():
    # The glancing sampler trains the given-token embedding the searches feed.
    return overfit_tiny_model("cif_ce_nar", config=LossConfig(warm_step=0, glancing_ratio=1.0))


def test_overfit_model_decodes_the_references(overfit):
    fit = overfit
    assert fit.model.forward_cif(fit.encoder_out, fit.encoder_out_lens).cif_lens.tolist() == [len(r) for r in fit.refs]
    for method in METHODS:
        for threshold, iterations in [(0.999, 10), (1.0, 1), (1.0, 3)]:
            hyps = decode_batch(method, fit.model, fit.encoder_out, fit.encoder_out_lens,
                                params(mask_threshold=threshold, mask_iterations=iterations))
            assert hyps == fit.refs, (method, threshold, iterations)


def test_bad_option_names_it():
    model, encoder_out, lens = random_case(0)
    with pytest.raises(ValueError, match="--mask-threshold must be in"):
        decode_batch("nar_beam_search", model, encoder_out, lens, params(mask_threshold=2.0))
    with pytest.raises(ValueError, match="--mask-iterations must be >= 1"):
        decode_batch("nar_mask_predict", model, encoder_out, lens, params(mask_iterations=0))


def test_unset_mask_options_take_the_heads_defaults():
    model, encoder_out, lens = random_case(3)
    unset = params(mask_threshold=None, mask_iterations=None)
    with torch.no_grad():
        for method in METHODS:
            assert decode_batch(method, model, encoder_out, lens, unset) == decode_batch(
                method, model, encoder_out, lens, params(mask_threshold=0.9, mask_iterations=1)), method
    key = results_key(AttributeDict(unset, decoding_method="nar_mask_predict"), model.head)
    assert key == "nar_mask_predict_mask_threshold_0.9_iterations_1"
    # greedy_search stays the one-pass search of this head, whatever the mask options.
    assert results_key(AttributeDict(unset, decoding_method="greedy_search"), model.head) == "greedy_search"
