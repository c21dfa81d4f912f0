"""icefall_cif.datamodule on the synthetic corpora prepared by test_prepare.py (shared per session)."""
import argparse
import itertools
import logging
import math
import pickle
import random
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment, load_manifest, load_manifest_lazy
from lhotse.audio import AudioSource
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.utils import compute_num_frames, fastcopy
from torch.utils.data import DataLoader, Dataset

from icefall_cif import data_prep
from icefall_cif.datamodule import AsrDataModule, CutFilter, filter_cuts, make_sampler, restore_sampler_position
from icefall_cif.tokenizer import Tokenizer
from test_prepare import VOCAB_SIZE, prepared_recipe


def make_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    return parser.parse_args(["--num-workers", "0", "--max-duration", "12", *argv])


@pytest.fixture()
def libri(tmp_path_factory, monkeypatch):
    recipe, _ = prepared_recipe("librispeech", tmp_path_factory)
    monkeypatch.chdir(recipe)  # the recipes run from egs/<corpus>/ASR; feature paths are relative to it
    return recipe


def test_defaults_are_icefalls():
    args = make_args()
    assert args.manifest_dir.as_posix() == "data/fbank"
    assert (args.bucketing_sampler, args.num_buckets, args.shuffle, args.return_cuts) == (True, 30, True, True)
    assert (args.enable_spec_aug, args.spec_aug_time_warp_factor, args.concatenate_cuts) == (True, 80, False)


def test_cut_loaders_pick_the_corpus_files(libri, tmp_path):
    dm = AsrDataModule(make_args())
    assert dm.corpus == "librispeech"  # inferred: only LibriSpeech cuts in data/fbank
    assert {c.supervisions[0].id for c in dm.test_cuts()} == {
        s.id for s in load_manifest("data/manifests/librispeech_supervisions_test-clean.jsonl.gz")
    }
    assert len(list(dm.dev_cuts())) == 4 and len(list(dm.train_cuts())) == 3 * 12

    # The same class reads AISHELL's file names when the directory holds AISHELL cuts.
    (tmp_path / "aishell_cuts_dev.jsonl.gz").symlink_to(libri / "data/fbank/librispeech_cuts_dev-clean.jsonl.gz")
    ai = AsrDataModule(make_args("--manifest-dir", str(tmp_path)))
    assert ai.corpus == "aishell"
    assert len(list(ai.dev_cuts())) == 4
    with pytest.raises(FileNotFoundError, match="aishell_cuts_test.jsonl.gz"):
        ai.test_cuts()


def test_missing_or_ambiguous_manifests_are_clear_errors(libri, tmp_path):
    dm = AsrDataModule(make_args("--manifest-dir", str(tmp_path)), corpus="aishell")
    with pytest.raises(FileNotFoundError, match=r"aishell_cuts_train.jsonl.gz not found.*--stage 2 --stop-stage 2"):
        dm.train_cuts()
    for name in ("librispeech_cuts_dev-clean.jsonl.gz", "aishell_cuts_dev.jsonl.gz"):
        (tmp_path / name).touch()
    with pytest.raises(ValueError, match="pass --corpus"):
        AsrDataModule(make_args("--manifest-dir", str(tmp_path))).dev_cuts()
    with pytest.raises(FileNotFoundError, match=r"musan_cuts.jsonl.gz not found.*--stage 5 --stop-stage 5"):
        AsrDataModule(make_args("--enable-musan", "1")).train_dataloaders(CutSet.from_cuts([]))


def test_test_dataloader_yields_every_cut_once_with_its_features(libri):
    dm = AsrDataModule(make_args())
    cuts = {c.id: c for c in dm.test_cuts()}
    seen = []
    for batch in dm.test_dataloaders(dm.test_cuts()):
        x = batch["inputs"]
        sup = batch["supervisions"]
        assert x.dim() == 3 and x.shape[2] == 80
        for i, cut in enumerate(sup["cut"]):
            n = int(sup["num_frames"][i])
            assert n == cut.num_frames and sup["text"][i] == cut.supervisions[0].text
            # Features are the stored ones, unaugmented, followed by padding.
            row = int(sup["sequence_idx"][i])
            torch.testing.assert_close(x[row, :n], torch.from_numpy(cuts[cut.id].load_features()))
            seen.append(cut.id)
    assert sorted(seen) == sorted(cuts)


def test_train_dataloader_batches(libri):
    dm = AsrDataModule(make_args("--num-buckets", "3"))
    total = 0
    for batch in dm.train_dataloaders(dm.train_cuts()):
        x, sup = batch["inputs"], batch["supervisions"]
        assert x.shape[0] == len(sup["text"]) == len(sup["cut"]) and x.shape[2] == 80
        assert torch.isfinite(x).all()
        assert sum(c.duration for c in sup["cut"]) <= 12 + 1e-6  # --max-duration
        total += x.shape[0]
    assert total > 0


def test_sampler_resumes_mid_epoch_exactly(libri):
    """A sampler restored from state_dict after k batches yields exactly the remaining batches."""
    dm = AsrDataModule(make_args("--num-buckets", "3", "--enable-spec-aug", "0"))
    cuts = dm.train_cuts()

    def epoch_ids(dl):
        return [[c.id for c in b["supervisions"]["cut"]] for b in dl]

    dl = dm.train_dataloaders(cuts)
    dl.sampler.set_epoch(2)
    full = epoch_ids(dl)
    assert len(full) >= 4

    k = 3
    dl = dm.train_dataloaders(cuts)
    dl.sampler.set_epoch(2)
    it = iter(dl)
    head = [[c.id for c in next(it)["supervisions"]["cut"]] for _ in range(k)]
    state = dl.sampler.state_dict()
    assert head == full[:k]

    resumed = dm.train_dataloaders(cuts, sampler_state_dict=state)
    assert epoch_ids(resumed) == full[k:]
    assert state["diagnostics"]["stats_per_epoch"][2]["kept_batches"] == k  # the caller's dict is untouched


def test_small_cut_sets_get_fewer_buckets_instead_of_failing(libri):
    cuts = load_manifest("data/fbank/librispeech_cuts_test-clean.jsonl.gz")
    # 4 cuts: Lhotse refuses more buckets than cuts; a single bucket is a simple sampler.
    sampler = make_sampler(cuts, max_duration=12, shuffle=False, drop_last=False, num_buckets=30)
    assert sorted(c.id for b in sampler for c in b) == sorted(c.id for c in cuts)


def test_musan_mixing(libri, tmp_path):
    rng = np.random.default_rng(0)
    noise_dir = tmp_path / "musan" / "noise" / "free-sound"
    noise_dir.mkdir(parents=True)
    for i in range(2):
        sf.write(noise_dir / f"noise-free-sound-{i:04d}.wav", rng.standard_normal(16000 * 7) * 0.1, 16000)
    fbank = tmp_path / "fbank"
    data_prep.prepare_musan(tmp_path / "musan", tmp_path / "manifests", fbank)
    (fbank / "librispeech_cuts_dev-clean.jsonl.gz").symlink_to(libri / "data/fbank/librispeech_cuts_dev-clean.jsonl.gz")
    args = make_args("--manifest-dir", str(fbank), "--enable-musan", "1", "--enable-spec-aug", "0", "--shuffle", "0")
    dm = AsrDataModule(args)
    plain = AsrDataModule(make_args("--manifest-dir", str(fbank), "--enable-spec-aug", "0", "--shuffle", "0"))
    cuts = dm.dev_cuts()
    mixed = {c.id: x for b in dm.train_dataloaders(cuts) for c, x in zip(b["supervisions"]["cut"], b["inputs"])}
    clean = {c.id: x for b in plain.train_dataloaders(cuts) for c, x in zip(b["supervisions"]["cut"], b["inputs"])}
    assert mixed.keys() == clean.keys()
    assert all(mixed[k].shape == clean[k].shape for k in clean)
    # CutMix has p=0.5: some utterances come out with noise added (more energy), the rest unchanged.
    changed = [k for k in clean if not torch.allclose(mixed[k], clean[k])]
    assert changed
    for k in changed:
        assert mixed[k].exp().sum() > clean[k].exp().sum()


def _cut_with(cut, duration: float, text: str):
    """A copy of `cut` with another duration/frame count and transcript."""
    sup = fastcopy(cut.supervisions[0], text=text, duration=duration)
    feats = fastcopy(cut.features, num_frames=round(duration * 100), duration=duration)
    return fastcopy(cut, id=f"{cut.id}-{duration}-{len(text)}", duration=duration, supervisions=[sup], features=feats)


def cif_output_frames(num_frames: int, cif_downsample: int = 2) -> int:
    """The CIF model's encoder output length (the formula behind `model.num_output_frames`)."""
    return max(0, -(-(((num_frames - 7) // 2 + 1) // 2) // cif_downsample))


def test_filter_cuts_against_a_direct_frame_count(libri, caplog):
    tok = Tokenizer.from_lang_dir(f"data/lang_bpe_{VOCAB_SIZE}")
    base = next(iter(load_manifest("data/fbank/librispeech_cuts_dev-clean.jsonl.gz")))
    words = base.supervisions[0].text.split()
    cuts = [
        _cut_with(base, d, " ".join((words * 20)[:n]))
        for d in (0.5, 0.99, 1.0, 1.6, 3.0, 19.9, 20.5)
        for n in (1, 4, 12, 40)
    ]

    def encoder_frames(num_frames: int, cif_downsample: int) -> int:
        # Run the length arithmetic on tensors: Conv2dSubsampling's three convolutions (time
        # kernel 3; strides 1, 2, 1; no time padding), then Zipformer's and the CIF model's
        # 2x SimpleDownsample, which pad the end up to a multiple of the factor.
        x = torch.zeros(1, 1, num_frames)
        for stride in (1, 2, 1):
            x = torch.nn.functional.conv1d(x, torch.zeros(1, 1, 3), stride=stride)
        for factor in (2, cif_downsample):
            t = x.shape[-1]
            x = torch.zeros(1, 1, math.ceil(t / factor))
        return x.shape[-1]

    for cif_downsample in (1, 2, 3):
        expected = [
            c.id
            for c in cuts
            if 1.0 <= c.duration <= 20.0
            and encoder_frames(c.num_frames, cif_downsample) >= len(tok.encode([c.supervisions[0].text])[0])
        ]
        kept, cut_filter = filter_cuts(CutSet.from_cuts(cuts), tok, lambda t: cif_output_frames(t, cif_downsample))
        assert [c.id for c in kept] == expected
        assert 0 < len(expected) < len(cuts)
        with caplog.at_level(logging.INFO):
            caplog.clear()
            cut_filter.log_summary()
        assert f"removed {len(cuts) - len(expected)} of {len(cuts)} cuts" in caplog.text


class _CharTokenizer:
    """A tokenizer stand-in: one token per non-space character."""

    def encode(self, texts):
        return [[ord(ch) for ch in text if not ch.isspace()] for text in texts]


def _synthetic_manifest(path, num_cuts: int, seed: int = 0):
    """Write `num_cuts` audio-less cuts of 0.5-25 s, some with more characters than encoder
    frames, to `path`; returns the path."""
    rng = random.Random(seed)
    words = "the a speech of recognition model cif fires tokens frames at twenty five hertz".split()
    cuts = []
    for i in range(num_cuts):
        duration = round(rng.uniform(0.5, 25.0), 3)
        text = " ".join(rng.choice(words) for _ in range(int(duration * rng.uniform(0.4, 6.0)) + 1))
        rec = Recording(
            id=f"rec{i}", sources=[AudioSource(type="file", channels=[0], source=f"/absent/{i}.flac")],
            sampling_rate=16000, num_samples=int(duration * 16000), duration=duration,
        )
        sup = SupervisionSegment(id=f"sup{i}", recording_id=rec.id, start=0.0, duration=duration, text=text)
        cuts.append(MonoCut(id=f"cut{i:05d}", start=0.0, duration=duration, channel=0, recording=rec, supervisions=[sup]))
    CutSet.from_cuts(cuts).to_file(path)
    return path


def _eager_reference_filter(cuts, min_duration=1.0, max_duration=20.0):
    """The former eager filter_cuts (list + CutSet.from_cuts): the kept CutSet and the counts."""
    cuts = list(cuts)
    num_tokens = [len(ids) for ids in _CharTokenizer().encode([c.supervisions[0].text for c in cuts])]
    kept, counts = [], dict.fromkeys(CutFilter.OUTCOMES, 0)
    for cut, u in zip(cuts, num_tokens):
        if cut.duration < min_duration:
            counts["too_short"] += 1
        elif cut.duration > max_duration:
            counts["too_long"] += 1
        elif cif_output_frames(compute_num_frames(cut.duration, 0.01, cut.sampling_rate)) < u:
            counts["too_many_tokens"] += 1
        else:
            counts["kept"] += 1
            kept.append(cut)
    return CutSet.from_cuts(kept), counts


@pytest.mark.parametrize("argv", [(), ("--max-duration", "60"), ("--bucketing-sampler", "0"), ("--shuffle", "0")])
def test_lazy_filter_matches_the_eager_one_and_the_sampler_batches_too(tmp_path, argv):
    """The lazy filter keeps the eager filter's cuts, and the train sampler batches them identically."""
    path = _synthetic_manifest(tmp_path / "cuts.jsonl.gz", 600)
    reference, reference_counts = _eager_reference_filter(load_manifest_lazy(path))
    assert all(reference_counts.values())  # every reason occurs

    kept, cut_filter = filter_cuts(load_manifest_lazy(path), _CharTokenizer(), cif_output_frames)
    assert kept.is_lazy and cut_filter.counts is None and cut_filter.num_passes == 0  # nothing read yet
    list(itertools.islice(kept, 10))
    assert cut_filter.counts is None  # an abandoned pass is not counted
    assert [c.id for c in kept] == [c.id for c in reference]
    assert cut_filter.counts == reference_counts
    list(kept)
    assert cut_filter.counts == reference_counts and cut_filter.num_passes == 2  # per pass, not summed

    dm = AsrDataModule(make_args("--max-duration", "200", *argv))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lhotse's notices about buffer sizes / eager sets
        lazy_sampler = dm.train_dataloaders(kept).sampler
        eager_sampler = dm.train_dataloaders(reference).sampler
    assert type(lazy_sampler) is type(eager_sampler)
    for epoch in range(2):
        lazy_sampler.set_epoch(epoch)
        eager_sampler.set_epoch(epoch)
        lazy_batches = [[c.id for c in b] for b in lazy_sampler]
        assert lazy_batches == [[c.id for c in b] for b in eager_sampler]
        assert len(lazy_batches) > 1

    # Picklable (a sampler may travel to DataLoader workers, e.g. with Lhotse's IterableDatasetWrapper).
    assert [c.id for c in pickle.loads(pickle.dumps(kept))] == [c.id for c in reference]


def test_cut_filter_summary_warns_when_every_cut_is_removed(tmp_path, caplog):
    path = _synthetic_manifest(tmp_path / "cuts.jsonl.gz", 50)
    kept, cut_filter = filter_cuts(load_manifest_lazy(path), _CharTokenizer(), lambda t: 0, max_duration=30.0)
    assert "no pass" in cut_filter.summary()
    with caplog.at_level(logging.DEBUG):
        assert list(kept) == []
        cut_filter.log_summary()
    assert "removed 50 of 50 cuts" in caplog.text and "filter_cuts removed every cut" in caplog.text
    assert "Dropping cut" in caplog.text  # each dropped cut at debug level


class _CutIds(Dataset):
    """A dataset whose batches are the sampled cut ids (no features needed)."""

    def __getitem__(self, cuts):
        return [c.id for c in cuts]


def _epoch_ids(sampler):
    return list(DataLoader(_CutIds(), sampler=sampler, batch_size=None))


@pytest.fixture(scope="module")
def synthetic_kept_cuts(tmp_path_factory):
    path = _synthetic_manifest(tmp_path_factory.mktemp("synthetic") / "cuts.jsonl.gz", 300, seed=1)
    return filter_cuts(load_manifest_lazy(path), _CharTokenizer(), cif_output_frames)[0]


@pytest.mark.parametrize("kind", ["dynamic", "simple"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_restore_sampler_position_continues_the_epoch(synthetic_kept_cuts, kind, world_size):
    """After restore_sampler_position(k) a DataLoader yields exactly batches k+1.. of the epoch."""

    def make(rank: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "dynamic":
                return DynamicBucketingSampler(synthetic_kept_cuts, max_duration=40, shuffle=True, num_buckets=3,
                                               buffer_size=15000, drop_last=True, world_size=world_size, rank=rank)
            return SimpleCutSampler(synthetic_kept_cuts.to_eager(), max_duration=40, shuffle=True, drop_last=True,
                                    world_size=world_size, rank=rank)

    durations = {c.id: c.duration for c in synthetic_kept_cuts}
    for rank in range(world_size):
        sampler = make(rank)
        sampler.set_epoch(2)
        full = _epoch_ids(sampler)
        assert len(full) >= 8
        restored = make(rank)
        # Restoring the same sampler again (k decreasing too) must restart the epoch each time.
        for k in (3, 0, 1, len(full) // 2, len(full) - 1, len(full), 2):
            seconds = restore_sampler_position(restored, 2, k)
            assert _epoch_ids(restored) == full[k:], (kind, world_size, rank, k)
            assert seconds == pytest.approx(sum(durations[i] for batch in full[:k] for i in batch))


@pytest.mark.parametrize("kind", ["dynamic", "simple"])
def test_restore_sampler_position_with_too_few_batches(synthetic_kept_cuts, kind):
    sampler = make_sampler(synthetic_kept_cuts, max_duration=40, shuffle=True, drop_last=True,
                           num_buckets=3 if kind == "dynamic" else None)
    assert isinstance(sampler, DynamicBucketingSampler if kind == "dynamic" else SimpleCutSampler)
    sampler.set_epoch(0)
    n = len(_epoch_ids(sampler))
    with pytest.raises(ValueError, match=rf"after {n + 1} batches of epoch 1, .* gives only {n}: .*--max-duration"):
        restore_sampler_position(sampler, 0, n + 1)


def test_on_the_fly_features_match_stored_ones(libri):
    dm = AsrDataModule(make_args("--on-the-fly-feats", "1"))
    stored = AsrDataModule(make_args())
    a = next(iter(dm.test_dataloaders(dm.test_cuts())))
    b = next(iter(stored.test_dataloaders(stored.test_cuts())))
    assert [c.id for c in a["supervisions"]["cut"]] == [c.id for c in b["supervisions"]["cut"]]
    assert a["supervisions"]["num_frames"].tolist() == b["supervisions"]["num_frames"].tolist()
    for row, n in enumerate(a["supervisions"]["num_frames"].tolist()):
        # Stored features went through lilcom compression. The last frame's window reaches past
        # the audio, which Lhotse pads differently for a batch of waveforms: not compared.
        torch.testing.assert_close(a["inputs"][row, : n - 1], b["inputs"][row, : n - 1], atol=0.1, rtol=0)


def test_duplicate_cut_ids_are_an_error_naming_the_id(tmp_path):
    import gzip
    import json

    cuts = list(load_manifest_lazy(_synthetic_manifest(tmp_path / "cuts.jsonl.gz", 20)))
    cuts[12] = fastcopy(cuts[12], id=cuts[3].id)
    path = tmp_path / "with-duplicate.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for cut in cuts:
            print(json.dumps(cut.to_dict()), file=f)
    kept, cut_filter = filter_cuts(load_manifest_lazy(path), _CharTokenizer(), cif_output_frames, max_duration=30.0)
    with pytest.raises(ValueError, match=rf"Cut id '{cuts[3].id}' occurs more than once .* cut #12"):
        list(kept)
    assert cut_filter.counts is None  # the aborted pass counted nothing

    cuts[12] = fastcopy(cuts[12], id=cuts[12].id + "-b")
    assert len(list(filter_cuts(CutSet.from_cuts(cuts), _CharTokenizer(), cif_output_frames,
                                max_duration=30.0)[0])) > 0
