"""Bad input that RELIABILITY.md lists and no other test file covers: each gets a clear error
naming the item and what to do, or a counted skip; nothing crashes deep inside a library."""
import gzip
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet
from lhotse.testing.dummies import dummy_cut

from icefall_cif.corpora.audit import check_audio
from icefall_cif.datamodule import CheckedManifest, ManifestError
from icefall_cif.decode.loop import check_decoding_batch
from icefall_cif.tokenizer import Tokenizer


def test_audio_that_is_not_16_khz_mono_is_refused_with_the_conversion(tmp_path):
    tone = (np.sin(np.arange(8000) / 10) * 0.3).astype("float32")
    sf.write(tmp_path / "8k.flac", tone, 8000, subtype="PCM_16")
    assert check_audio(tmp_path / "8k.flac") == (
        "8000 Hz audio, the recipe expects 16000 Hz: resample it, e.g. `sox IN -r 16000 OUT`"
    )
    sf.write(tmp_path / "stereo.wav", np.stack([tone, tone], axis=1), 16000, subtype="PCM_16")
    assert check_audio(tmp_path / "stereo.wav").startswith("2-channel audio, the recipe expects mono")
    sf.write(tmp_path / "ok.wav", tone, 16000, subtype="PCM_16")
    assert check_audio(tmp_path / "ok.wav") is None


def write_manifest(path, cuts) -> None:
    with gzip.open(path, "wt") as f:
        for cut in cuts:
            f.write(json.dumps(cut) + "\n")


def test_truncated_manifest_names_the_file_and_the_cut(tmp_path):
    cuts = [dummy_cut(i, duration=1.0).to_dict() for i in range(200)]
    path = tmp_path / "librispeech_cuts_train-clean-100.jsonl.gz"
    write_manifest(path, cuts)
    assert len(list(CutSet(CheckedManifest(path, "librispeech")))) == 200
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ManifestError, match=r"train-clean-100\.jsonl\.gz: cannot read cut \d+ \(EOFError.*"
                                            r"prepare\.sh --stage 2 --stop-stage 2.*egs/librispeech/ASR.*"
                                            r"data/fbank/\.librispeech\.done"):
        list(CutSet(CheckedManifest(path, "librispeech")))


def test_manifest_with_a_missing_field_names_the_cut(tmp_path):
    cuts = [dummy_cut(i, duration=1.0).to_dict() for i in range(3)]
    del cuts[2]["duration"]
    path = tmp_path / "aishell_cuts_test.jsonl.gz"
    write_manifest(path, cuts)
    with pytest.raises(ManifestError, match=r"aishell_cuts_test\.jsonl\.gz: cannot read cut 3 \(.*duration"):
        list(CutSet(CheckedManifest(path, "aishell")))


def test_corrupt_bpe_model_is_a_clear_error(tmp_path):
    (tmp_path / "bpe.model").write_bytes(b"not a model" * 10)
    with pytest.raises(ValueError, match=r"bpe\.model is not a sentencepiece model .*prepare\.sh --stage 3"):
        Tokenizer.from_lang_dir(tmp_path)


def decoding_batch(cuts, features):
    return {"inputs": features, "supervisions": {"cut": cuts}}


def test_decoding_refuses_non_finite_features_and_duplicate_cut_ids():
    cuts = [dummy_cut(i, duration=1.0, with_data=True) for i in range(3)]
    features = torch.zeros(3, 100, 80)
    seen = set()
    check_decoding_batch(decoding_batch(cuts, features), seen)
    assert seen == {c.id for c in cuts}

    features[1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=rf"Cuts \['{cuts[1].id}'\] have NaN/inf feature values .*stage 2"):
        check_decoding_batch(decoding_batch(cuts, features), set())
    features[1, 5, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        check_decoding_batch(decoding_batch(cuts, features), set())

    with pytest.raises(ValueError, match=rf"Cut id '{cuts[0].id}' appears twice in the test set"):
        check_decoding_batch(decoding_batch(cuts[:1], torch.zeros(1, 10, 80)), seen)


def test_decoding_refuses_an_utterance_too_long_for_memory():
    long_cut = dummy_cut(0, duration=600.0)
    with pytest.raises(ValueError, match=rf"Cut {long_cut.id} is 600 s long, more than --max-utterance-duration 120"
                                         r".*cut_into_windows"):
        check_decoding_batch(decoding_batch([long_cut], torch.zeros(1, 10, 80)), set(), max_duration=120.0)
    check_decoding_batch(decoding_batch([dummy_cut(1, duration=30.0)], torch.zeros(1, 10, 80)), set(), 120.0)
