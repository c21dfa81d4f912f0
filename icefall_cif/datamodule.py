"""Lhotse data loading for both recipes: icefall's `AsrDataModule` options, samplers and datasets.

One class serves LibriSpeech and AISHELL: the corpus (`--corpus`, or inferred from the cut files
in `--manifest-dir`) only decides which `<corpus>_cuts_<part>.jsonl.gz` files `train_cuts()`,
`dev_cuts()` and `test_cuts()` read (the part names are in :data:`icefall_cif.data_prep.CORPORA`).

Batches are those of Lhotse's `K2SpeechRecognitionDataset`: `batch["inputs"]` (N, T, 80) fbank,
`batch["supervisions"]` with `text`, `sequence_idx`, `start_frame`, `num_frames` (N,) and, with
`--return-cuts`, `cut`.
"""
import argparse
import copy
import logging
import random
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from lhotse import CutSet, load_manifest, load_manifest_lazy
from lhotse.dataset import (
    CutConcatenate,
    CutMix,
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from lhotse.dataset.input_strategies import OnTheFlyFeatures, PrecomputedFeatures
from lhotse.utils import compute_num_frames
from torch.utils.data import DataLoader

from icefall_cif.data_prep import CORPORA, cuts_filename, get_fbank_extractor
from icefall_cif.utils import str2bool

FRAME_SHIFT = 0.01


class _SeedWorkers:
    """Gives each DataLoader worker its own deterministic seed (augmentation randomness)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        seed = self.seed + worker_id
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


def subsampled_length(num_frames: int, cif_downsample: int = 2) -> int:
    """Number of CIF encoder frames for `num_frames` 100 Hz feature frames.

    Conv2dSubsampling gives (T - 7) // 2 frames at 50 Hz, Zipformer's final 2x downsampling
    ((T - 7) // 2 + 1) // 2 at 25 Hz (icefall's formula), and the CIF model's extra
    SimpleDownsample pads to a multiple of `cif_downsample`, hence the ceiling.
    """
    t = ((num_frames - 7) // 2 + 1) // 2
    return max(0, -(-t // cif_downsample))


def filter_cuts(
    cuts: CutSet,
    tokenizer,
    min_duration: float = 1.0,
    max_duration: float = 20.0,
    cif_downsample: int = 2,
) -> CutSet:
    """Keep the cuts a CIF model can train on, logging how many were removed and why.

    A cut is removed when its duration is outside [min_duration, max_duration] seconds, or when
    the encoder output after CIF downsampling (:func:`subsampled_length`) is shorter than its
    number of tokens (CIF fires at most once per frame in expectation, and CTC needs T >= U).

    Args:
      cuts: cuts with one supervision each (features optional: without them the frame count
        comes from the duration).
      tokenizer: an :class:`icefall_cif.tokenizer.Tokenizer` (anything with `encode`).
    Returns:
      The kept cuts (eager CutSet, in the input order).
    """
    cuts = list(cuts)
    texts = [" ".join(s.text for s in c.supervisions) for c in cuts]
    num_tokens = [len(ids) for ids in tokenizer.encode(texts)]
    kept = []
    too_short = too_long = too_many_tokens = 0
    for cut, u in zip(cuts, num_tokens):
        if cut.duration < min_duration:
            too_short += 1
            continue
        if cut.duration > max_duration:
            too_long += 1
            continue
        if cut.has_features:
            num_frames = cut.num_frames
        else:
            num_frames = compute_num_frames(cut.duration, FRAME_SHIFT, cut.sampling_rate)
        if subsampled_length(num_frames, cif_downsample) < u:
            too_many_tokens += 1
            logging.debug(f"Dropping {cut.id}: {num_frames} frames, {u} tokens (cif_downsample {cif_downsample})")
            continue
        kept.append(cut)
    removed = len(cuts) - len(kept)
    logging.info(
        f"filter_cuts: removed {removed} of {len(cuts)} cuts ({too_short} shorter than {min_duration} s, "
        f"{too_long} longer than {max_duration} s, {too_many_tokens} with fewer encoder frames after "
        f"subsampling (cif_downsample {cif_downsample}) than tokens); {len(kept)} left"
    )
    if not kept and cuts:
        logging.warning(
            "filter_cuts removed every cut: check --min-duration/--max-cut-duration and --cif-downsample "
            "against your data"
        )
    return CutSet.from_cuts(kept)


def _num_buckets(cuts: CutSet, requested: int, max_duration: float) -> int:
    """`requested`, reduced for small cut sets so each bucket holds at least ~4 full batches.

    With drop_last every bucket may discard its last partial batch: on a small corpus 30
    buckets would drop most of the data. Large corpora keep `requested` unchanged.
    """
    num_cuts, total = 0, 0.0
    for c in cuts:
        num_cuts += 1
        total += c.duration
    fitting = max(1, min(num_cuts, int(total / (4 * max_duration))))
    if fitting < requested:
        logging.info(
            f"Using {fitting} duration bucket(s) instead of {requested}: {num_cuts} cuts ({total:.0f} s) "
            f"at --max-duration {max_duration}"
        )
        return fitting
    return requested


def make_sampler(
    cuts: CutSet,
    max_duration: float,
    shuffle: bool,
    drop_last: bool,
    num_buckets: Optional[int],
):
    """A DynamicBucketingSampler with at most `num_buckets` buckets (see :func:`_num_buckets`);
    a SimpleCutSampler when `num_buckets` is None or the cuts only fill one bucket."""
    if num_buckets is not None:
        num_buckets = _num_buckets(cuts, num_buckets, max_duration)
    if num_buckets is None or num_buckets < 2:
        return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, drop_last=drop_last)
    with warnings.catch_warnings():
        # filter_cuts returns an eager CutSet on purpose (it counts what it removes); Lhotse's
        # "no memory benefit" notice would only confuse.
        warnings.filterwarnings("ignore", message=".*DynamicBucketingSampler with an eagerly read CutSet.*")
        return DynamicBucketingSampler(
            cuts,
            max_duration=max_duration,
            shuffle=shuffle,
            num_buckets=num_buckets,
            buffer_size=num_buckets * 5000,
            drop_last=drop_last,
        )


class AsrDataModule:
    """icefall's `AsrDataModule`: train/valid/test DataLoaders over Lhotse cuts.

    Args:
      args: parsed options from :meth:`add_arguments`.
      corpus: overrides `args.corpus` ("librispeech" or "aishell").
    """

    def __init__(self, args: argparse.Namespace, corpus: Optional[str] = None):
        self.args = args
        self._corpus = corpus or getattr(args, "corpus", None)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            title="ASR data related options",
            description="How batches are built from Lhotse cuts: sizes, sampling, augmentation.",
        )
        group.add_argument("--corpus", type=str, default=None, choices=sorted(CORPORA),
                           help="Which corpus's cut files to read; inferred from --manifest-dir when omitted.")
        group.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                           help="Directory with <corpus>_cuts_<part>.jsonl.gz (prepare.sh stage 2).")
        group.add_argument("--max-duration", type=float, default=200.0,
                           help="Maximum total audio seconds in a batch; lower it on out-of-memory errors.")
        group.add_argument("--bucketing-sampler", type=str2bool, default=True,
                           help="Batch cuts of similar duration together (less padding).")
        group.add_argument("--num-buckets", type=int, default=30,
                           help="Number of duration buckets of the DynamicBucketingSampler.")
        group.add_argument("--concatenate-cuts", type=str2bool, default=False,
                           help="Concatenate cuts in a batch to reduce padding.")
        group.add_argument("--duration-factor", type=float, default=1.0,
                           help="Maximum duration of a concatenated cut relative to the longest cut of the batch.")
        group.add_argument("--gap", type=float, default=1.0,
                           help="Seconds of padding between concatenated cuts (filled with noise under MUSAN).")
        group.add_argument("--on-the-fly-feats", type=str2bool, default=False,
                           help="Compute fbank from audio while loading instead of reading stored features.")
        group.add_argument("--shuffle", type=str2bool, default=True, help="Shuffle the training cuts each epoch.")
        group.add_argument("--drop-last", type=str2bool, default=True, help="Drop the last incomplete batch.")
        group.add_argument("--return-cuts", type=str2bool, default=True,
                           help="Put the cuts of a batch in batch['supervisions']['cut'].")
        group.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes.")
        group.add_argument("--enable-spec-aug", type=str2bool, default=True, help="SpecAugment on training batches.")
        group.add_argument("--spec-aug-time-warp-factor", type=int, default=80,
                           help="SpecAugment time warping; values below 1 disable it.")
        group.add_argument("--enable-musan", type=str2bool, default=False,
                           help="Mix MUSAN noise into training cuts (needs prepare.sh --musan-dir, stage 5).")

    # ------------------------------------------------------------------------------------------
    # Cut loaders

    @property
    def corpus(self) -> str:
        """The corpus whose cut files the loaders read (inferred once from --manifest-dir if needed)."""
        if self._corpus is None:
            found = sorted(
                name for name in CORPORA if any(Path(self.args.manifest_dir).glob(f"{name}_cuts_*.jsonl.gz"))
            )
            if len(found) != 1:
                raise ValueError(
                    f"Cannot tell the corpus from {self.args.manifest_dir} (cut files found for: "
                    f"{', '.join(found) or 'none'}); pass --corpus {'|'.join(sorted(CORPORA))}"
                    + ("" if found else " and check --manifest-dir (prepare.sh stage 2 writes the cuts)")
                )
            self._corpus = found[0]
        if self._corpus not in CORPORA:
            raise ValueError(f"Unknown corpus {self._corpus!r}; expected one of {', '.join(sorted(CORPORA))}")
        return self._corpus

    def cuts_path(self, part: str) -> Path:
        return Path(self.args.manifest_dir) / cuts_filename(self.corpus, part)

    def load_cuts(self, part: str) -> CutSet:
        """The (lazily read) cuts of a corpus part, e.g. `load_cuts("test-other")`."""
        path = self.cuts_path(part)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found. Create it with `./prepare.sh --stage 2 --stop-stage 2` in "
                f"egs/{self.corpus}/ASR (after stages 0-1), or point --manifest-dir at the directory that has it."
            )
        logging.info(f"Loading cuts from {path}")
        return load_manifest_lazy(path)

    def train_cuts(self) -> CutSet:
        return self.load_cuts(CORPORA[self.corpus].splits["train"])

    def dev_cuts(self) -> CutSet:
        return self.load_cuts(CORPORA[self.corpus].splits["dev"])

    def test_cuts(self) -> CutSet:
        return self.load_cuts(CORPORA[self.corpus].splits["test"])

    def musan_cuts(self) -> CutSet:
        path = Path(self.args.manifest_dir) / "musan_cuts.jsonl.gz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found, but --enable-musan is on. Create it with "
                "`./prepare.sh --stage 5 --stop-stage 5 --musan-dir /path/to/musan`, or pass --enable-musan 0."
            )
        return load_manifest(path)

    # ------------------------------------------------------------------------------------------
    # DataLoaders

    def _input_strategy(self):
        if self.args.on_the_fly_feats:
            return OnTheFlyFeatures(get_fbank_extractor())
        return PrecomputedFeatures()

    def _concatenate(self):
        return [CutConcatenate(duration_factor=self.args.duration_factor, gap=self.args.gap)]

    def train_dataloaders(
        self, cuts_train: CutSet, sampler_state_dict: Optional[Dict[str, Any]] = None
    ) -> DataLoader:
        """Training DataLoader; `sampler_state_dict` (from a checkpoint) resumes mid-epoch.

        The sampler is restored from a copy of the state, so the caller's dict stays intact.
        """
        transforms = []
        if self.args.concatenate_cuts:
            # First, so that MUSAN noise also fills the gaps between concatenated cuts.
            transforms += self._concatenate()
        if self.args.enable_musan:
            logging.info("MUSAN noise mixing enabled")
            transforms.append(CutMix(cuts=self.musan_cuts(), p=0.5, snr=(10, 20), preserve_id=True))

        input_transforms = []
        if self.args.enable_spec_aug:
            input_transforms.append(
                SpecAugment(
                    time_warp_factor=self.args.spec_aug_time_warp_factor,
                    num_frame_masks=10,
                    features_mask_size=27,
                    num_feature_masks=2,
                    frames_mask_size=100,
                )
            )
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self._input_strategy(),
            cut_transforms=transforms,
            input_transforms=input_transforms,
            return_cuts=self.args.return_cuts,
        )
        sampler = make_sampler(
            cuts_train,
            max_duration=self.args.max_duration,
            shuffle=self.args.shuffle,
            drop_last=self.args.drop_last,
            num_buckets=self.args.num_buckets if self.args.bucketing_sampler else None,
        )
        if sampler_state_dict is not None:
            logging.info("Restoring the training sampler's state (resuming mid-epoch)")
            sampler.load_state_dict(copy.deepcopy(sampler_state_dict))

        # Derived from the (seeded) global RNG, so worker augmentation is reproducible per run.
        seed = int(torch.randint(0, 100000, ()).item())
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.args.num_workers,
            persistent_workers=False,
            worker_init_fn=_SeedWorkers(seed),
        )

    def _eval_dataloader(self, cuts: CutSet, concatenate: bool) -> DataLoader:
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self._input_strategy(),
            cut_transforms=self._concatenate() if concatenate else [],
            return_cuts=self.args.return_cuts,
        )
        sampler = make_sampler(
            cuts, max_duration=self.args.max_duration, shuffle=False, drop_last=False, num_buckets=10
        )
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=self.args.num_workers)

    def valid_dataloaders(self, cuts_valid: CutSet) -> DataLoader:
        """Validation DataLoader: no augmentation, no shuffling, every cut kept."""
        return self._eval_dataloader(cuts_valid, concatenate=self.args.concatenate_cuts)

    def test_dataloaders(self, cuts: CutSet) -> DataLoader:
        """Decoding DataLoader: no augmentation, no shuffling, no concatenation, every cut kept."""
        return self._eval_dataloader(cuts, concatenate=False)
