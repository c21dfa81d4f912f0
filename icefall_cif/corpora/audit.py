"""Checks shared by the corpus audits: is an audio file usable, and the records of an audit.

A corpus module's `audit` pairs its audio files with their transcripts (its own layout) and
hands the pairs to :func:`check_candidates`; everything left out is kept as a
:class:`SkippedItem` with its reason, so nothing is ever dropped silently.
"""
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple


@dataclass
class Utterance:
    """One usable utterance: its id, audio file, transcript and speaker."""

    utt_id: str
    audio: Path
    text: str
    speaker: str


@dataclass
class SkippedItem:
    """An item left out of the manifests. `part` is "-" for a transcript line that belongs to no
    part because it has no audio (routine in AISHELL); `path` is "" when there is no file."""

    part: str
    utt_id: str
    reason: str
    path: str


@dataclass
class CorpusAudit:
    """Usable utterances per part, and every item left out with its reason."""

    utterances: Dict[str, List[Utterance]] = field(default_factory=dict)
    skipped: List[SkippedItem] = field(default_factory=list)
    #: Transcripts the corpus's `normalize_text` changed, and the first of them (raw, normalised).
    num_normalized: int = 0
    normalized_example: Optional[Tuple[str, str]] = None

    def normalized(self, raw: str, text: str) -> str:
        """Count `raw` -> `text` if it changed; return `text`."""
        if text != raw:
            self.num_normalized += 1
            if self.normalized_example is None:
                self.normalized_example = (raw, text)
        return text


def _wav_declared_frames(path: Path) -> Optional[int]:
    """Number of samples the WAV header declares, or None when the header cannot tell."""
    try:
        with wave.open(str(path), "rb") as w:
            n = w.getnframes()
            frame_bytes = w.getsampwidth() * w.getnchannels()
    except (wave.Error, EOFError, OSError):
        return None
    # Streaming writers put 0 or 0xFFFFFFFF in the size field: no declared length.
    if n == 0 or n * frame_bytes >= 0xFFFFFFFF - frame_bytes:
        return None
    return n


#: What the recipes' features are computed for (80-dim fbank of 16 kHz mono speech).
SAMPLE_RATE = 16000


def check_audio(path: Path) -> Optional[str]:
    """Why the audio file cannot be used, or None when it is fine.

    Besides unreadable, empty and truncated files, audio that is not 16 kHz mono is refused
    (with the sox command that converts it): the fbank front end and the models assume it.

    Reads the header and decodes the last 10 ms, which catches unreadable files and truncated
    FLAC without decoding everything; for WAV the header's declared length is compared with the
    samples present, since libsndfile silently shortens a truncated WAV.
    """
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises several types for bad files
        return f"unreadable audio ({e})"
    if info.frames <= 0:
        return "empty audio (0 samples)"
    if info.samplerate != SAMPLE_RATE:
        return (f"{info.samplerate} Hz audio, the recipe expects {SAMPLE_RATE} Hz: resample it, e.g. "
                f"`sox IN -r {SAMPLE_RATE} OUT`")
    if info.channels != 1:
        return f"{info.channels}-channel audio, the recipe expects mono: downmix it, e.g. `sox IN -c 1 OUT`"
    if path.suffix.lower() == ".wav":
        declared = _wav_declared_frames(path)
        if declared is not None and declared != info.frames:
            return f"truncated audio: the header declares {declared} samples but the file holds {info.frames}"
    tail = min(info.frames, max(1, info.samplerate // 100))
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(info.frames - tail)
            got = len(f.read(tail, dtype="int16"))
    except Exception as e:
        return f"truncated or corrupt audio: its last 10 ms cannot be decoded ({e})"
    if got != tail:
        return f"truncated audio: the header declares {info.frames} samples but decoding stops early"
    return None


def check_candidates(part: str, candidates: List[Utterance], num_jobs: int, audit: CorpusAudit) -> List[Utterance]:
    """The candidates whose audio passes :func:`check_audio` (checked in `num_jobs` threads);
    the others are appended to `audit.skipped` with the reason."""
    with ThreadPoolExecutor(max(1, num_jobs)) as ex:
        problems = list(ex.map(lambda u: check_audio(u.audio), candidates))
    good = []
    for utt, problem in zip(candidates, problems):
        if problem is None:
            good.append(utt)
        else:
            audit.skipped.append(SkippedItem(part, utt.utt_id, problem, str(utt.audio)))
    return good


def read_text_lines(path: Path) -> Iterable[Tuple[int, str, str]]:
    """(line number, utt id, text) of a `<utt-id> <text>` file; text is '' when absent.

    Raises:
      OSError when the file cannot be read (a corpus's `problems` checks it exists first).
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.strip().split(maxsplit=1)
            if fields:
                yield lineno, fields[0], fields[1].strip() if len(fields) > 1 else ""
