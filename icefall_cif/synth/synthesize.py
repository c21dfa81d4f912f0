"""Synthesizing a whole corpus: plan, render each split to its size, write the transcripts
and the marker. The corpus's layout comes from the registry (`icefall_cif.corpora`)."""
import dataclasses
import logging
import math
from itertools import islice
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from tqdm import tqdm

from icefall_cif.corpora import get_corpus
from icefall_cif.corpora.aishell import Aishell
from icefall_cif.corpora.librispeech import LibriSpeech
from icefall_cif.synth.config import SPLITS, SplitSummary, SynthConfig, SynthSummary
from icefall_cif.synth.espeak import DEFAULT_VOICES, espeak_version, find_espeak, validate_voices
from icefall_cif.synth.executor import Executor, default_num_jobs
from icefall_cif.synth.markers import MARKER_VERSION, claim_corpus_dir, write_marker
from icefall_cif.synth.planner import PlannedUtt, Planner

logger = logging.getLogger(__name__)


def _remove_with_empty_parents(path: Path, stop: Path) -> None:
    """Delete the file `path` and then its parents up to `stop` (excluded) while they are empty."""
    path.unlink()
    parent = path.parent
    while parent != stop and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def render_split(
    planner: Planner, executor: Executor, split: str, progress: bool
) -> Tuple[List[PlannedUtt], Dict[str, float]]:
    """Render `split` to its size (`SynthConfig.split_size`): the kept utterances in plan order,
    and the seconds of audio of each."""
    count, target_seconds = planner.config.split_size(split)
    stream = planner.utterances(split)
    part = planner.layout.parts[split]
    kept: List[PlannedUtt] = []
    seconds: Dict[str, float] = {}
    total = 0.0
    if count is not None:
        bar = tqdm(total=count, unit="utt", desc=part, disable=not progress)
        planned = list(islice(stream, count))
        for utt, secs in zip(planned, executor.map([p.job for p in planned])):
            kept.append(utt)
            seconds[utt.utt_id] = secs
            bar.update(1)
        bar.close()
        return kept, seconds
    # Until the audio reaches the target: render batches in order, keep the shortest prefix
    # that reaches it and delete the rest of the last batch, so the result does not depend
    # on the batch size or the number of workers. Batches are sized from the mean duration
    # so far, so little is rendered past the target.
    bar = tqdm(total=int(target_seconds), unit="s", desc=part, disable=not progress)
    jobs = executor.num_jobs
    while total < target_seconds:
        needed = math.ceil((target_seconds - total) * len(kept) / total) if kept else 2 * jobs
        batch = list(islice(stream, min(max(needed, jobs), 8 * jobs)))
        for utt, secs in zip(batch, executor.map([p.job for p in batch])):
            if total >= target_seconds:
                _remove_with_empty_parents(Path(utt.job.path), planner.layout.corpus_dir)
                continue
            kept.append(utt)
            seconds[utt.utt_id] = secs
            shown = int(min(total, target_seconds))
            total += secs
            bar.update(int(min(total, target_seconds)) - shown)
    bar.close()
    return kept, seconds


def synthesize(
    corpus: str,
    out_dir: Union[str, Path],
    config: Optional[SynthConfig] = None,
    *,
    num_jobs: Optional[int] = None,
    force: bool = False,
    espeak_bin: str = "espeak-ng",
    progress: bool = True,
    **options,
) -> SynthSummary:
    """Write a synthetic copy of the registered corpus `corpus` under `out_dir`, in its layout.

    Args:
      corpus: a name in `icefall_cif.corpora.CORPORA`, e.g. "librispeech".
      out_dir: where the corpus's directory goes (as after untarring the real corpus).
      config: the corpus options; `**options` override single fields, e.g.
        `synthesize("librispeech", "download", num_train_utts=50, seed=1)`.
      num_jobs: worker processes; None: every core this process may use.
      force: delete an existing different corpus in its directory instead of failing.
      espeak_bin: the espeak-ng executable (name on PATH or path).
      progress: show tqdm progress bars.
    Returns:
      The summary (utterances, speakers, seconds per split); its `lhotse_corpus_dir` is what
      the corpus's Lhotse recipe takes.
    Raises:
      ValueError for an option out of range or a voice espeak-ng lacks; RuntimeError when
      espeak-ng is missing or fails; FileExistsError when the directory holds something else;
      DataPrepError for an unknown corpus.
    """
    config = dataclasses.replace(config or SynthConfig(), **options)
    config.validate()
    num_jobs = default_num_jobs() if num_jobs is None else num_jobs
    if num_jobs < 1:
        raise ValueError(f"--num-jobs must be >= 1, got {num_jobs}")
    espeak_path = find_espeak(espeak_bin)
    layout = get_corpus(corpus).synth_layout(Path(out_dir), config)
    voices = tuple(config.voices) if config.voices else DEFAULT_VOICES[layout.lang]
    validate_voices(voices, config.variants, layout.lang, espeak_path)
    wanted = {
        "generator": "icefall_cif.synth",
        "version": MARKER_VERSION,
        "corpus": corpus,
        "config": config.to_json(),
    }
    stored = claim_corpus_dir(layout.corpus_dir, wanted, force)
    if stored is not None:
        return stored
    planner = Planner(layout, config, voices, espeak_path)
    layout.corpus_dir.mkdir(parents=True, exist_ok=True)
    write_marker(
        layout.corpus_dir, {**wanted, "complete": False, "espeak_ng": espeak_version(espeak_path)}
    )

    logger.info(f"Synthesizing {corpus} into {layout.corpus_dir} with {num_jobs} processes")
    utts: List[PlannedUtt] = []
    seconds: Dict[str, float] = {}
    splits: Dict[str, SplitSummary] = {}
    with Executor(num_jobs) as executor:
        for split in SPLITS:
            kept, secs = render_split(planner, executor, split, progress)
            utts.extend(kept)
            seconds.update(secs)
            splits[split] = SplitSummary(
                part=layout.parts[split],
                num_utterances=len(kept),
                num_speakers=len({u.speaker.speaker_id for u in kept}),
                seconds=round(sum(secs.values()), 3),
            )
    layout.write_transcripts(utts, seconds)

    speakers = {
        u.speaker.speaker_id: {
            "split": u.split,
            "voice": u.speaker.voice,
            "variant": u.speaker.variant,
            "rate": u.speaker.rate,
            "pitch": u.speaker.pitch,
        }
        for u in utts
    }
    summary = SynthSummary(corpus, str(layout.lhotse_corpus_dir()), splits, speakers)
    write_marker(
        layout.corpus_dir,
        {
            **wanted,
            "complete": True,
            "espeak_ng": espeak_version(espeak_path),
            "summary": summary.to_json(),
        },
    )
    logger.info(str(summary))
    return summary


def synthesize_librispeech(
    out_dir: Union[str, Path], config: Optional[SynthConfig] = None, **kwargs
) -> SynthSummary:
    """:func:`synthesize` a LibriSpeech (train-clean-100, dev-clean, test-clean) under
    `out_dir/LibriSpeech`; pass its `lhotse_corpus_dir` to `lhotse.recipes.prepare_librispeech`."""
    return synthesize(LibriSpeech.name, out_dir, config, **kwargs)


def synthesize_aishell(
    out_dir: Union[str, Path], config: Optional[SynthConfig] = None, **kwargs
) -> SynthSummary:
    """:func:`synthesize` an AISHELL-1 (train, dev, test) under `out_dir/data_aishell`.

    Sentence lengths (`min_words`, `max_words`) count characters, as AISHELL's tokens are
    characters; pass `out_dir` itself to `lhotse.recipes.prepare_aishell`.
    """
    return synthesize(Aishell.name, out_dir, config, **kwargs)
