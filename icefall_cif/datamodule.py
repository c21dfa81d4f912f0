"""Lhotse data loading for both recipes: icefall's `AsrDataModule` options, samplers and datasets.

One class serves LibriSpeech and AISHELL: the corpus (`--corpus`, or inferred from the cut files
in `--manifest-dir`) only decides which `<corpus>_cuts_<part>.jsonl.gz` files `train_cuts()`,
`dev_cuts()` and `test_cuts()` read (the part names are in :data:`icefall_cif.data_prep.CORPORA`).

Batches are those of Lhotse's `K2SpeechRecognitionDataset`: `batch["inputs"]` (N, T, 80) fbank,
`batch["supervisions"]` with `text`, `sequence_idx`, `start_frame`, `num_frames` (N,) and, with
`--return-cuts`, `cut`. With `--plm-manifest` (distillation), the training cuts come from that
manifest and training batches also hold `batch["teacher"]`: `feats` (N, U, D) float32 padded with
zeros and `lens` (N,), each cut's teacher vectors (`icefall_cif.distill`) in supervision order.
"""
import argparse
import copy
import logging
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from lhotse import CutSet, load_manifest, load_manifest_lazy
from lhotse.cut import Cut
from lhotse.dataset import (
    CutConcatenate,
    CutMix,
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from lhotse.dataset.input_strategies import OnTheFlyFeatures, PrecomputedFeatures
from lhotse.dataset.sampling.base import CutSampler
from lhotse.lazy import Dillable
from lhotse.utils import compute_num_frames
from torch.utils.data import DataLoader

from icefall_cif.data_prep import CORPORA, cuts_filename, get_fbank_extractor
from icefall_cif.distill import TEACHER_FIELD, collate_teacher
from icefall_cif.utils import str2bool

FRAME_SHIFT = 0.01


class ManifestError(ValueError):
    """A cut manifest that cannot be read: truncated, not a manifest, or missing fields."""


class CheckedManifest(Dillable):
    """A lazily read cut manifest whose read errors name the file and the cut, and say what to do.

    Lhotse reads a lazy manifest line by line wherever it is iterated (the sampler, a sum over
    durations), so a truncated `.jsonl.gz` or a cut missing a field would otherwise fail deep
    inside a sampler with a bare `EOFError` or `KeyError`.
    """

    def __init__(self, path: Path, corpus: str):
        self.path = Path(path)
        self.corpus = corpus

    def __iter__(self) -> Iterator[Cut]:
        count = 0
        try:
            for cut in load_manifest_lazy(self.path):
                count += 1
                yield cut
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(
                f"{self.path}: cannot read cut {count + 1} ({type(e).__name__}: {e}). The file is truncated or "
                f"was not written by prepare.sh: re-create it with `./prepare.sh --stage 2 --stop-stage 2` in "
                f"egs/{self.corpus}/ASR after removing the stage's done-marker data/fbank/.{self.corpus}.done."
            ) from None


class _SeedWorkers:
    """Gives each DataLoader worker its own deterministic seed (augmentation randomness)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        seed = self.seed + worker_id
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


class CutFilter:
    """Which cuts a CIF model can train on, with the counts of the last complete pass.

    A cut is removed when its duration is outside [min_duration, max_duration] seconds, or when
    the model's encoder output (`num_output_frames` of its feature frames) is shorter than its
    number of tokens (CIF fires at most once per frame in expectation, and CTC needs T >= U).
    The checks run in that order, so only cuts of an accepted duration are tokenized.

    Picklable when `tokenizer` and `num_output_frames` are (a bound method pickles its model
    too: pass a module-level function or a functools.partial where that matters).

    Attributes:
      counts: outcome -> number of cuts (:data:`OUTCOMES`) over the most recent complete pass of
        the CutSet returned by :func:`filter_cuts`; None until one pass has run to the end.
      num_passes: how many passes have run to the end.
    """

    KEPT, TOO_SHORT, TOO_LONG, TOO_MANY_TOKENS = "kept", "too_short", "too_long", "too_many_tokens"
    OUTCOMES = (KEPT, TOO_SHORT, TOO_LONG, TOO_MANY_TOKENS)

    def __init__(
        self,
        tokenizer,
        num_output_frames: Callable[[int], int],
        min_duration: float = 1.0,
        max_duration: float = 20.0,
    ):
        self.tokenizer = tokenizer
        self.num_output_frames = num_output_frames
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.counts: Optional[Dict[str, int]] = None
        self.num_passes = 0

    def outcome(self, cut: Cut) -> str:
        """One of :data:`OUTCOMES` for `cut` (features optional: without them the frame count
        comes from the duration). Dropped cuts are logged at debug level until a first pass has
        completed (later passes repeat the same decisions)."""
        if cut.duration < self.min_duration or cut.duration > self.max_duration:
            outcome = self.TOO_SHORT if cut.duration < self.min_duration else self.TOO_LONG
            why = f"{cut.duration} s is outside [{self.min_duration}, {self.max_duration}] s"
        else:
            if cut.has_features:
                num_frames = cut.num_frames
            else:
                num_frames = compute_num_frames(cut.duration, FRAME_SHIFT, cut.sampling_rate)
            num_tokens = len(self.tokenizer.encode([" ".join(s.text for s in cut.supervisions)])[0])
            num_output = self.num_output_frames(num_frames)
            if num_output >= num_tokens:
                return self.KEPT
            outcome = self.TOO_MANY_TOKENS
            why = f"{num_frames} frames give {num_output} encoder frames, fewer than its {num_tokens} tokens"
        if self.counts is None:
            logging.debug(f"Dropping {cut.id}: {why}")
        return outcome

    def pass_completed(self, counts: Dict[str, int]) -> None:
        """Record the outcome counts of one pass that ran over every input cut."""
        self.counts = counts
        self.num_passes += 1

    def summary(self) -> str:
        """How many cuts the last complete pass removed and why (a note when none has run yet)."""
        if self.counts is None:
            return "filter_cuts: no pass over the cuts has completed yet, so nothing was counted"
        c = self.counts
        total = sum(c.values())
        return (
            f"filter_cuts: removed {total - c[self.KEPT]} of {total} cuts ({c[self.TOO_SHORT]} shorter than "
            f"{self.min_duration} s, {c[self.TOO_LONG]} longer than {self.max_duration} s, "
            f"{c[self.TOO_MANY_TOKENS]} with fewer encoder output frames than tokens); {c[self.KEPT]} left"
        )

    def log_summary(self) -> None:
        """Log :meth:`summary` (info), and a warning when the last complete pass removed every cut."""
        logging.info(self.summary())
        if self.counts is not None and self.counts[self.KEPT] == 0 and sum(self.counts.values()) > 0:
            logging.warning(
                "filter_cuts removed every cut: check --min-duration/--max-cut-duration and the model's "
                "subsampling (--cif-downsample) against your data"
            )


class _CountedFilter(Dillable):
    """A lazy filter over `cuts` by `cut_filter` that reports each pass run to the end.

    Lhotse's own `CutSet.filter` (LazyFilter) cannot tell where a pass ends, and a training run
    makes several (bucket count, bucket bins, audio-seconds sum, every epoch, resuming), some
    abandoned part way; counting per iterator and publishing only at the end of the input keeps
    :attr:`CutFilter.counts` those of exactly one pass.
    """

    def __init__(self, cuts: CutSet, cut_filter: CutFilter):
        self.cuts = cuts
        self.cut_filter = cut_filter

    def __iter__(self) -> Iterator[Cut]:
        counts = dict.fromkeys(CutFilter.OUTCOMES, 0)
        # A repeated id would be trained on twice and would collide in every per-cut output.
        # The hashes of the ids seen in this pass find it: ~70 bytes a cut (69 MB for 1M, measured),
        # freed when the pass ends. Two different ids with the same 64-bit hash: ~1e-8 at 1M cuts.
        seen_ids = set()
        for position, cut in enumerate(self.cuts):
            id_hash = hash(cut.id)
            if id_hash in seen_ids:
                raise ValueError(
                    f"Cut id '{cut.id}' occurs more than once in the training/validation cuts (again at "
                    f"cut #{position}); remove the duplicates, e.g. with lhotse's "
                    f"CutSet.from_cuts(...), which refuses them, or rename one of each pair"
                )
            seen_ids.add(id_hash)
            outcome = self.cut_filter.outcome(cut)
            counts[outcome] += 1
            if outcome == CutFilter.KEPT:
                yield cut
        self.cut_filter.pass_completed(counts)


def filter_cuts(
    cuts: CutSet,
    tokenizer,
    num_output_frames: Callable[[int], int],
    min_duration: float = 1.0,
    max_duration: float = 20.0,
) -> Tuple[CutSet, CutFilter]:
    """Keep the cuts a CIF model can train on (see :class:`CutFilter`), lazily.

    Nothing is read here: every iteration of the returned CutSet streams `cuts` again and
    re-applies the filter, so a manifest of any size costs constant memory. The kept cuts come
    in the input order, exactly those an eager filter would keep, so samplers yield the same
    batches as from `CutSet.from_cuts(kept)` (see :func:`make_sampler` for SimpleCutSampler).

    Args:
      cuts: cuts with one supervision each (lazy or eager).
      tokenizer: an :class:`icefall_cif.tokenizer.Tokenizer` (anything with `encode(texts)`).
      num_output_frames: the model's encoder output length for a number of 100 Hz feature
        frames (`model.num_output_frames`).
      min_duration, max_duration: the accepted cut durations in seconds (inclusive).
    Returns:
      `(kept, cut_filter)`: the kept cuts as a lazy CutSet, and the :class:`CutFilter` whose
      :meth:`~CutFilter.log_summary` reports what was removed once a pass over `kept` has run to
      the end (e.g. after summing the epoch's audio seconds).
    """
    cut_filter = CutFilter(tokenizer, num_output_frames, min_duration=min_duration, max_duration=max_duration)
    return CutSet(_CountedFilter(cuts, cut_filter)), cut_filter


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
    a SimpleCutSampler when `num_buckets` is None or the cuts only fill one bucket.

    Returns:
      The sampler. A DynamicBucketingSampler streams lazy `cuts` (memory bounded by its buffer);
      a SimpleCutSampler holds them in memory (see below).
    """
    if num_buckets is not None:
        num_buckets = _num_buckets(cuts, num_buckets, max_duration)
    if num_buckets is None or num_buckets < 2:
        # Read into memory, as the recipes always had it (filter_cuts used to return an eager
        # set): Lhotse shuffles an eager set with a full permutation but a lazy one with a
        # 10,000-cut streaming buffer, so a lazy set would give other batches; and the eager
        # data source counts the cuts drawn, which restore_sampler_position needs under DDP.
        # This sampler only serves sets too small for two buckets, or --bucketing-sampler 0.
        return SimpleCutSampler(cuts.to_eager(), max_duration=max_duration, shuffle=shuffle, drop_last=drop_last)
    with warnings.catch_warnings():
        # Tests and small callers pass eager sets; Lhotse's "no memory benefit" notice is moot there.
        warnings.filterwarnings("ignore", message=".*DynamicBucketingSampler with an eagerly read CutSet.*")
        return DynamicBucketingSampler(
            cuts,
            max_duration=max_duration,
            shuffle=shuffle,
            num_buckets=num_buckets,
            buffer_size=num_buckets * 5000,
            drop_last=drop_last,
        )


def restore_sampler_position(sampler: CutSampler, epoch: int, num_batches: int) -> float:
    """Position a Lhotse sampler after the first `num_batches` batches of `epoch` (0-based).

    Afterwards `iter(DataLoader(..., sampler=sampler))` yields batches `num_batches + 1`, ... of
    that epoch, the same as an uninterrupted run, for DynamicBucketingSampler and
    SimpleCutSampler, with or without DDP (the sampler's rank/world_size). Only the public
    sampler API is used: the sampler is iterated from the start of the epoch to learn the
    position, and `load_state_dict` of its `state_dict` then restores that position (Lhotse
    replays it from the counts in the state) and makes the next `iter()` continue from there
    instead of restarting the epoch. The position is recomputed rather than taken from a
    checkpoint's sampler state because that state also counts the batches the DataLoader had
    prefetched. The replay iterates the skipped batches a second time (metadata only).

    Returns:
      The audio seconds of the skipped batches (this rank's), for the progress ETA.
    Raises:
      ValueError: when the epoch now has fewer than `num_batches` batches.
    """
    # A sampler restored earlier would otherwise continue where it was instead of restarting.
    sampler.allow_iter_to_reset_state()
    sampler.set_epoch(epoch)
    batches = iter(sampler)
    seconds = 0.0
    for i in range(num_batches):
        try:
            cuts = next(batches)
        except StopIteration:
            raise ValueError(
                f"The checkpoint was taken after {num_batches} batches of epoch {epoch + 1}, but the training "
                f"data now gives only {i}: resume with the same data options (--manifest-dir, --max-duration, "
                f"--min-duration, --max-cut-duration, ...), or from an epoch checkpoint with --start-epoch"
            ) from None
        seconds += sum(c.duration for c in cuts)
    state = sampler.state_dict()
    if isinstance(sampler, SimpleCutSampler) and sampler.world_size > 1:
        # SimpleCutSampler's restore skips the epoch's kept + discarded cuts, but its kept count
        # covers only this rank's batches while every rank draws the cuts of all world_size
        # batches. Its (eager, see make_sampler) data source knows how many were drawn.
        if sampler.remaining_cuts is None:
            raise ValueError("restore_sampler_position: a SimpleCutSampler with world_size > 1 needs an eager CutSet")
        stats = state["diagnostics"]["stats_per_epoch"][state["diagnostics"]["current_epoch"]]
        stats["kept_cuts"] = sampler.num_cuts - sampler.remaining_cuts - stats["discarded_cuts"]
    sampler.load_state_dict(state)
    return seconds


class TeacherDataset(K2SpeechRecognitionDataset):
    """`K2SpeechRecognitionDataset` whose batches also carry the cuts' teacher vectors.

    `batch["teacher"]` = {"feats": (N, U, D) float32, "lens": (N,) int64}, read from the custom
    field `field` of each cut (a MUSAN-mixed cut reads its speech track's), in the order of
    `batch["supervisions"]`. `return_cuts` keeps its meaning: the cuts are always collected
    for the lookup but only stay in the batch when it is True.
    """

    def __init__(self, *args, return_cuts: bool = False, field: str = TEACHER_FIELD, **kwargs):
        super().__init__(*args, return_cuts=True, **kwargs)
        self.keep_cuts = return_cuts
        self.field = field

    def __getitem__(self, cuts: CutSet) -> Dict[str, Any]:
        batch = super().__getitem__(cuts)
        feats, lens = collate_teacher(batch["supervisions"]["cut"], self.field)
        batch["teacher"] = {"feats": feats, "lens": lens}
        if not self.keep_cuts:
            del batch["supervisions"]["cut"]
        return batch


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
        group.add_argument("--plm-manifest", type=Path, default=None,
                           help="Training cuts with teacher features (local/extract_plm_feats.py, prepare.sh "
                                "stage 7): read instead of the training cuts of --manifest-dir, and their teacher "
                                "vectors go into the batches. Needed by --acd-loss-scale / --lrd-loss-scale > 0.")
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
        return CutSet(CheckedManifest(path, self.corpus))

    def train_cuts(self) -> CutSet:
        """The training cuts: --plm-manifest when given, else the corpus' training part."""
        plm_manifest = getattr(self.args, "plm_manifest", None)
        if plm_manifest is None:
            return self.load_cuts(CORPORA[self.corpus].splits["train"])
        if not Path(plm_manifest).is_file():
            raise FileNotFoundError(
                f"--plm-manifest {plm_manifest} not found. Write it with local/extract_plm_feats.py (or "
                f"`./prepare.sh --stage 7 --stop-stage 7 --plm-dir DIR`) in egs/{self.corpus}/ASR."
            )
        logging.info(f"Loading the training cuts with teacher features from {plm_manifest}")
        return CutSet(CheckedManifest(Path(plm_manifest), self.corpus))

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
        with_teacher = getattr(self.args, "plm_manifest", None) is not None
        dataset = (TeacherDataset if with_teacher else K2SpeechRecognitionDataset)(
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
