"""Synthetic speech corpora in the exact LibriSpeech and AISHELL-1 layouts (espeak-ng voices).

The recipes' data stages (Lhotse manifests, fbank, tokens, ...) run unchanged on these trees, so
a demo or a test exercises the real code path without downloading 60 GB:

* LibriSpeech: ``OUT_DIR/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/
  <spk>-<chapter>-<utt:04d>.flac`` with one ``<spk>-<chapter>.trans.txt`` per chapter and a
  ``SPEAKERS.TXT``; pass ``OUT_DIR/LibriSpeech`` to ``lhotse.recipes.prepare_librispeech``.
* AISHELL-1: ``OUT_DIR/data_aishell/wav/{train,dev,test}/<spk>/BAC009<spk>W<nnnn>.wav`` and
  ``OUT_DIR/data_aishell/transcript/aishell_transcript_v0.8.txt``; pass ``OUT_DIR`` to
  ``lhotse.recipes.prepare_aishell``.

Audio is 16 kHz mono 16-bit. A *speaker* is a fixed espeak-ng voice + variant + rate + pitch.
dev and test hold out both sentences (a sentence's hash decides which split may use it, so no
split ever repeats another's sentence) and voices (the voice/variant pairs are partitioned
between train, dev and test), so their WER measures generalisation. Every random choice is
drawn from a generator seeded by (seed, what, split, index), which makes the corpus identical
for a seed whatever the number of worker processes.

Command line::

    python -m icefall_cif.synth librispeech download --hours 1
    python -m icefall_cif.synth aishell download --num-train-utts 200 --num-dev-utts 20 \\
        --num-test-utts 20 --noise-snr-db none
"""

import abc
import argparse
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import soundfile as sf
from tqdm import tqdm

from icefall_cif.wordlists import chinese_words, english_words, zipf_weights

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")

ENGLISH_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
# espeak-ng 1.51's `cmn` voice turns each character into pinyin and then reads that pinyin
# with English letter rules ("ni3" -> "nee three"); `cmn-latn-pinyin` reads the same
# characters with Mandarin phonemes and tones.
MANDARIN_VOICES = ("cmn-latn-pinyin",)
# "default" is the voice without a `+variant` suffix.
VARIANTS = ("default", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")

MARKER_NAME = ".icefall_cif_synth.json"
_MARKER_VERSION = 1

# Stream codes for np.random.default_rng([seed, stream, ...]): each kind of choice has its
# own generator so that adding, say, noise does not change the sentences.
_RNG_VOICES, _RNG_SPEAKER, _RNG_TEXT, _RNG_UTT, _RNG_IDS = range(5)
_SPLIT_CODE = {split: i for i, split in enumerate(SPLITS)}

# A sentence may appear only in the split its hash names: 18/20 of sentence space is train,
# 1/20 dev, 1/20 test, so dev/test sentences never occur in train whatever its size.
_HASH_BUCKETS = 20
_BUCKET_SPLIT = {0: "dev", 1: "test"}
_MAX_SENTENCE_TRIES = 20000

# Per-utterance level and silence, drawn so that files look like read speech rather than
# identical peak-normalised clips.
_PEAK_DBFS = (-6.0, -1.0)
_EDGE_SILENCE_S = (0.1, 0.4)


# --------------------------------------------------------------------------- espeak-ng


def find_espeak(espeak_bin: str = "espeak-ng") -> str:
    """The full path of the espeak-ng executable, or a RuntimeError that says how to install it."""
    path = shutil.which(espeak_bin)
    if path is None:
        raise RuntimeError(
            f"espeak-ng ('{espeak_bin}') was not found; the synthetic corpora are spoken by it. "
            "Install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu) or "
            "`brew install espeak-ng` (macOS), or pass the path of the executable "
            "(--espeak-ng / espeak_bin=...)."
        )
    return path


def _espeak_output(espeak_bin: str, args: Sequence[str], text: Optional[str] = None) -> bytes:
    proc = subprocess.run(
        [espeak_bin, *args],
        input=None if text is None else text.encode("utf-8"),
        capture_output=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{espeak_bin} {' '.join(args)}` failed with exit code {proc.returncode}: "
            f"{proc.stderr.decode('utf-8', 'replace').strip()}"
        )
    return proc.stdout


def espeak_version(espeak_bin: str = "espeak-ng") -> str:
    """The version string espeak-ng reports, e.g. "1.51"."""
    out = _espeak_output(espeak_bin, ["--version"]).decode("utf-8", "replace")
    match = re.search(r"text-to-speech:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


def espeak_voices(espeak_bin: str = "espeak-ng") -> Set[str]:
    """Language codes accepted by `espeak-ng -v`, e.g. {"en-us", "cmn-latn-pinyin", ...}."""
    lines = _espeak_output(espeak_bin, ["--voices"]).decode("utf-8", "replace").splitlines()
    return {line.split()[1] for line in lines[1:] if len(line.split()) > 1}


def espeak_variants(espeak_bin: str = "espeak-ng") -> Set[str]:
    """Variant names usable as `-v <voice>+<variant>`, e.g. {"m1", "f3", "klatt", ...}."""
    out = _espeak_output(espeak_bin, ["--voices=variant"]).decode("utf-8", "replace")
    return {tok[len("!v/") :] for tok in out.split() if tok.startswith("!v/")}


def _voice_spec(voice: str, variant: str) -> str:
    return voice if variant == "default" else f"{voice}+{variant}"


def validate_voices(
    voices: Sequence[str], variants: Sequence[str], lang: str, espeak_bin: str
) -> None:
    """Raise ValueError for a voice or variant espeak-ng does not have, or a Mandarin voice
    that does not read Chinese characters as Mandarin."""
    known = espeak_voices(espeak_bin)
    bad = [v for v in voices if v not in known]
    if bad:
        prefix = "en" if lang == "en" else ("cmn", "zh")
        suggestions = sorted(v for v in known if v.startswith(prefix))
        raise ValueError(
            f"Unknown espeak-ng voice(s) {bad}. Installed voices for this language: "
            f"{suggestions} (`espeak-ng --voices` lists all)."
        )
    known_variants = espeak_variants(espeak_bin) | {"default"}
    bad = [v for v in variants if v not in known_variants]
    if bad:
        raise ValueError(
            f"Unknown espeak-ng variant(s) {bad}; use 'default' or one of "
            f"{sorted(known_variants - {'default'})} (`espeak-ng --voices=variant`)."
        )
    if lang == "zh":
        for voice in voices:
            phonemes = _espeak_output(
                espeak_bin, ["-v", voice, "-q", "-x", "-b", "1", "--stdin"], "你好"
            )
            # espeak-ng marks a switch to another language's phonemes as "(en)".
            if b"(" in phonemes:
                raise ValueError(
                    f"espeak-ng voice '{voice}' does not read Chinese characters as Mandarin "
                    f"(phonemes for 你好: {phonemes.decode('utf-8', 'replace').strip()}); "
                    f"use {MANDARIN_VOICES[0]}."
                )


def _parse_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """Samples and rate of a 16-bit mono PCM WAV from espeak-ng's stdout.

    espeak-ng streams the WAV, so its RIFF and data sizes are placeholders; the samples are
    whatever follows the data chunk header.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError(f"espeak-ng did not write a WAV file (got {data[:16]!r})")
    pos, rate = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"fmt ":
            fmt, channels, rate = struct.unpack_from("<HHI", data, pos + 8)
            (bits,) = struct.unpack_from("<H", data, pos + 22)
            if (fmt, channels, bits) != (1, 1, 16):
                raise RuntimeError(
                    f"expected 16-bit mono PCM from espeak-ng, got format {fmt}, "
                    f"{channels} channels, {bits} bits"
                )
        elif chunk == b"data":
            if rate is None:
                raise RuntimeError("espeak-ng WAV has no fmt chunk before its data")
            pcm = data[pos + 8 :]
            pcm = pcm[: len(pcm) - len(pcm) % 2]
            return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0, rate
        pos += 8 + size + size % 2
    raise RuntimeError("espeak-ng WAV has no data chunk")


def run_espeak(
    text: str, voice: str, rate: int, pitch: int, espeak_bin: str = "espeak-ng"
) -> Tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng.

    Args:
      text: UTF-8 text to speak.
      voice: `-v` argument, e.g. "en-gb+f3".
      rate: words per minute (`-s`).
      pitch: 0-99 (`-p`).
    Returns:
      ((T,) float64 samples in [-1, 1), sample rate), the rate being espeak-ng's (22050 Hz).
    """
    args = ["-v", voice, "-s", str(rate), "-p", str(pitch), "-b", "1", "--stdout", "--stdin"]
    samples, rate_hz = _parse_wav(_espeak_output(espeak_bin, args, text))
    if samples.size == 0 or not np.any(samples):
        raise RuntimeError(f"espeak-ng voice '{voice}' produced no audio for {text!r}")
    return samples, rate_hz


# --------------------------------------------------------------------------- resampling


class PolyphaseResampler:
    """Band-limited rational resampling with a Kaiser-windowed sinc, one filter per phase.

    An output sample m sits at input time t = m * orig / new and is the filtered sum of the
    inputs within `zero_crossings` lobes of the low-pass filter around t. Outputs come in
    blocks of `up = new / gcd` that read a window of inputs starting every `down = orig / gcd`
    samples with the same taps, so the whole resampling is one matrix product
    (blocks, window) @ (window, up).

    Args:
      orig_rate, new_rate: sample rates in Hz, e.g. 22050 -> 16000.
      zero_crossings: half-length of the filter in lobes of the sinc; more is sharper.
      rolloff: cut-off as a fraction of the lower Nyquist frequency (keeps the transition
        band below it, so nothing aliases).
      beta: Kaiser window shape; 8.6 gives about 80 dB stop-band attenuation.
    """

    def __init__(
        self,
        orig_rate: int,
        new_rate: int,
        zero_crossings: int = 16,
        rolloff: float = 0.945,
        beta: float = 8.6,
    ):
        g = math.gcd(orig_rate, new_rate)
        self.up, self.down = new_rate // g, orig_rate // g
        # Cut-off in cycles per input sample.
        cutoff = 0.5 * rolloff * min(1.0, self.up / self.down)
        half_width = zero_crossings / (2 * cutoff)
        self.width = int(math.ceil(half_width))
        # Output r of a block sits at input position first[r] + frac[r] from the block start;
        # taps reach inputs first[r] - width + 1 ... first[r] + width.
        first = np.arange(self.up) * self.down // self.up
        frac = (np.arange(self.up) * self.down % self.up) / self.up
        offsets = np.arange(-self.width + 1, self.width + 1)
        t = frac[:, None] - offsets[None, :]
        window = np.i0(beta * np.sqrt(np.clip(1 - (t / half_width) ** 2, 0, None))) / np.i0(beta)
        taps = 2 * cutoff * np.sinc(2 * cutoff * t) * np.where(np.abs(t) < half_width, window, 0.0)
        # Unit DC gain for every phase, so a constant signal stays exactly constant.
        taps /= taps.sum(axis=1, keepdims=True)
        # Inputs are padded by `width` zeros on the left, so block q reads padded samples
        # q * down + [0, span).
        self.span = int(first[-1]) + 2 * self.width + 1
        # float64, although float32 would be faster: BLAS sums in an order that depends on
        # its thread count and CPU, and float32's rounding differences would flip 16-bit
        # samples, so the same seed would not give the same audio everywhere.
        self.kernel = np.zeros((self.span, self.up))
        for r in range(self.up):
            self.kernel[first[r] + 1 : first[r] + 1 + 2 * self.width, r] = taps[r]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Resample (T,) samples to (ceil(T * new / orig),) float64 samples."""
        num_out = -(-len(x) * self.up // self.down)
        num_blocks = -(-num_out // self.up)
        padded = np.zeros((num_blocks - 1) * self.down + self.span)
        padded[self.width : self.width + len(x)] = x
        blocks = np.lib.stride_tricks.sliding_window_view(padded, self.span)[:: self.down]
        return (blocks[:num_blocks] @ self.kernel).reshape(-1)[:num_out]


_RESAMPLERS: Dict[Tuple[int, int], PolyphaseResampler] = {}


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample (T,) samples from `orig_rate` to `new_rate` Hz (filters cached per pair)."""
    if orig_rate == new_rate:
        return x
    key = (orig_rate, new_rate)
    if key not in _RESAMPLERS:
        _RESAMPLERS[key] = PolyphaseResampler(orig_rate, new_rate)
    return _RESAMPLERS[key](x)


# --------------------------------------------------------------------------- one utterance


def _noise(num_samples: int, pink: bool, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(num_samples)
    if not pink:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(num_samples)
    # 1/f power; the DC bin is dropped rather than divided by zero.
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n=num_samples)


def render_utterance(
    text: str,
    voice: str,
    rate: int,
    pitch: int,
    rng: np.random.Generator,
    noise_snr_db: Optional[Tuple[float, float]] = None,
    espeak_bin: str = "espeak-ng",
) -> np.ndarray:
    """One utterance at 16 kHz: espeak-ng speech, resampled, at a random level, with silence
    of random length on both sides and optionally noise at a random SNR.

    The level and silences are drawn from `rng` before the noise, so the same generator state
    gives the same clean signal with or without noise.

    Args:
      text: what to speak.
      voice: espeak-ng `-v` argument, e.g. "en-us+m3".
      rate, pitch: espeak-ng `-s` (words per minute) and `-p` (0-99).
      rng: the utterance's own generator.
      noise_snr_db: (low, high): white or pink noise at an SNR drawn uniformly in it,
        measured against the power of the whole (padded) clean utterance; None: no noise.
    Returns:
      (T,) float64 samples; not clipped (see `to_pcm16`).
    """
    speech, rate_hz = run_espeak(text, voice, rate, pitch, espeak_bin)
    speech = resample(speech, rate_hz, SAMPLE_RATE)
    peak_db = rng.uniform(*_PEAK_DBFS)
    speech = speech * (10 ** (peak_db / 20) / np.max(np.abs(speech)))
    lead, trail = (rng.uniform(*_EDGE_SILENCE_S, size=2) * SAMPLE_RATE).astype(int)
    clean = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    if noise_snr_db is None:
        return clean
    snr_db = rng.uniform(*noise_snr_db)
    noise = _noise(len(clean), pink=bool(rng.integers(2)), rng=rng)
    scale = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return clean + scale * noise


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """(T,) float samples -> (T,) int16, rounded and clipped to the 16-bit range."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class _UttJob:
    """Everything a worker process needs to write one audio file (picklable)."""

    path: str
    speak_text: str
    voice: str
    rate: int
    pitch: int
    entropy: Tuple[int, ...]
    noise_snr_db: Optional[Tuple[float, float]]
    audio_format: str
    espeak_bin: str


def _render_job(job: _UttJob) -> float:
    samples = render_utterance(
        job.speak_text,
        job.voice,
        job.rate,
        job.pitch,
        np.random.default_rng(list(job.entropy)),
        job.noise_snr_db,
        job.espeak_bin,
    )
    pcm = to_pcm16(samples)
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(job.path, pcm, SAMPLE_RATE, subtype="PCM_16", format=job.audio_format)
    return len(pcm) / SAMPLE_RATE


# --------------------------------------------------------------------------- text


class SentenceSampler:
    """Random sentences from a fixed vocabulary with Zipf-weighted word choice.

    A sentence's length is drawn uniformly in [min_len, max_len] and counts words (English)
    or characters (Chinese, where words have 1-4 characters; the last word is drawn among
    those that still fit, so the length is exact).

    Args:
      words: the vocabulary.
      weights: (len(words),) probabilities, e.g. from `zipf_weights`.
      count_chars: measure length in characters instead of words.
    """

    def __init__(
        self,
        words: Sequence[str],
        weights: np.ndarray,
        min_len: int,
        max_len: int,
        count_chars: bool,
    ):
        self.words = list(words)
        self.min_len, self.max_len = min_len, max_len
        units = np.array([len(w) if count_chars else 1 for w in self.words])
        if not np.any(units == 1):
            raise ValueError(
                "the vocabulary needs single-character words to fill sentences exactly"
            )
        # tables[r]: (indices, cumulative weights) of the words no longer than r units.
        self.tables: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        for r in range(1, int(units.max()) + 1):
            idx = np.flatnonzero(units <= r)
            self.tables[r] = (idx, np.cumsum(weights[idx]))
        self.longest = int(units.max())
        self.units = units

    def __call__(self, rng: np.random.Generator) -> List[str]:
        target = int(rng.integers(self.min_len, self.max_len + 1))
        out: List[str] = []
        total = 0
        while total < target:
            idx, cdf = self.tables[min(target - total, self.longest)]
            k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(idx) - 1)
            out.append(self.words[idx[k]])
            total += int(self.units[idx[k]])
        return out


def sentence_split(key: str) -> str:
    """The only split ("train", "dev" or "test") allowed to use a sentence (by its hash)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return _BUCKET_SPLIT.get(int.from_bytes(digest, "big") % _HASH_BUCKETS, "train")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesize; equal configs (and espeak-ng builds) give identical corpora.

    Sizes: a split gets `num_<split>_utts` utterances when that is set, otherwise utterances
    until its audio reaches `<split>_hours` (train: `hours`).
    """

    hours: float = 1.0
    dev_hours: float = 0.1
    test_hours: float = 0.1
    num_train_utts: Optional[int] = None
    num_dev_utts: Optional[int] = None
    num_test_utts: Optional[int] = None
    vocab_size: int = 1000
    min_words: int = 5
    max_words: int = 20
    zipf_exponent: float = 1.0
    seed: int = 0
    # Mild by default: it fills espeak-ng's digital silence, and barely masks the speech.
    noise_snr_db: Optional[Tuple[float, float]] = (30.0, 50.0)
    voices: Optional[Tuple[str, ...]] = None
    variants: Tuple[str, ...] = VARIANTS
    held_out_voices: Optional[int] = None
    rate_range: Tuple[int, int] = (140, 190)
    pitch_range: Tuple[int, int] = (25, 75)
    utts_per_speaker: int = 20
    eval_utts_per_speaker: int = 8
    utts_per_chapter: int = 10

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        checks = [
            (
                self.hours >= 0 and self.dev_hours >= 0 and self.test_hours >= 0,
                "hours must be >= 0",
            ),
            (
                all(
                    n is None or n >= 0
                    for n in (self.num_train_utts, self.num_dev_utts, self.num_test_utts)
                ),
                "utterance counts must be >= 0",
            ),
            (
                1 <= self.min_words <= self.max_words,
                f"need 1 <= --min-words <= --max-words, got {self.min_words}, {self.max_words}",
            ),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (
                self.noise_snr_db is None or self.noise_snr_db[0] <= self.noise_snr_db[1],
                f"--noise-snr-db needs LOW <= HIGH, got {self.noise_snr_db}",
            ),
            (
                80 <= self.rate_range[0] <= self.rate_range[1] <= 450,
                f"--rate-range must lie in [80, 450] words/min, got {self.rate_range}",
            ),
            (
                0 <= self.pitch_range[0] <= self.pitch_range[1] <= 99,
                f"--pitch-range must lie in [0, 99], got {self.pitch_range}",
            ),
            (
                min(self.utts_per_speaker, self.eval_utts_per_speaker, self.utts_per_chapter) >= 1,
                "utterances per speaker/chapter must be >= 1",
            ),
            (
                self.utts_per_speaker <= 9999 and self.eval_utts_per_speaker <= 9999,
                "at most 9999 utterances per speaker",
            ),
            (
                self.held_out_voices is None or self.held_out_voices >= 1,
                "--held-out-voices must be >= 1",
            ),
            (len(self.variants) >= 1, "need at least one variant"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def split_size(self, split: str) -> Tuple[Optional[int], float]:
        """(utterance count or None, target seconds) for `split`."""
        count = {
            "train": self.num_train_utts,
            "dev": self.num_dev_utts,
            "test": self.num_test_utts,
        }[split]
        hours = {"train": self.hours, "dev": self.dev_hours, "test": self.test_hours}[split]
        return count, hours * 3600.0

    def to_json(self) -> Dict[str, object]:
        """A JSON-able dict (tuples become lists), stored next to the corpus."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: one espeak-ng voice, variant, rate and pitch."""

    speaker_id: str
    split: str
    voice: str
    variant: str
    rate: int
    pitch: int

    @property
    def espeak_voice(self) -> str:
        return _voice_spec(self.voice, self.variant)

    @property
    def sex(self) -> str:
        return "F" if self.variant.startswith("f") else "M"


@dataclass
class SplitSummary:
    part: str
    num_utterances: int
    num_speakers: int
    seconds: float


@dataclass
class SynthSummary:
    """What was written. `lhotse_corpus_dir` is the corpus_dir Lhotse's prepare_* expects."""

    corpus: str
    lhotse_corpus_dir: str
    splits: Dict[str, SplitSummary]
    speakers: Dict[str, Dict[str, object]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Dict) -> "SynthSummary":
        splits = {k: SplitSummary(**v) for k, v in d["splits"].items()}
        return cls(d["corpus"], d["lhotse_corpus_dir"], splits, d.get("speakers", {}))

    def __str__(self) -> str:
        parts = [
            f"{s.part}: {s.num_utterances} utts, {s.seconds / 3600:.3f} h, {s.num_speakers} spk"
            for s in self.splits.values()
        ]
        return f"{self.corpus} at {self.lhotse_corpus_dir} -- " + "; ".join(parts)


# --------------------------------------------------------------------------- corpus layouts


@dataclass
class _PlannedUtt:
    split: str
    utt_id: str
    speaker: Speaker
    chapter: Optional[int]
    transcript: str
    job: _UttJob


class _Layout(abc.ABC):
    """File names and transcript files of one real corpus."""

    lang = ""
    subdir = ""
    audio_format = ""
    parts: Dict[str, str] = {}
    default_voices: Tuple[str, ...] = ()

    def __init__(self, out_dir: Path, config: SynthConfig):
        self.out_dir, self.config = out_dir, config
        self.corpus_dir = out_dir / self.subdir

    @abc.abstractmethod
    def lhotse_corpus_dir(self) -> Path:
        """The corpus_dir that Lhotse's prepare_<corpus> expects."""

    @abc.abstractmethod
    def speaker_id(self, split: str, k: int) -> str:
        """The id of the k-th speaker of `split`, unique over all splits."""

    @abc.abstractmethod
    def utterance(self, speaker: Speaker, u: int) -> Tuple[str, Path, Optional[int]]:
        """(utterance id, audio path, chapter or None) of speaker's u-th utterance."""

    @abc.abstractmethod
    def transcript(self, words: Sequence[str]) -> str:
        """The sentence as the corpus's transcript files write it."""

    @abc.abstractmethod
    def speak_text(self, words: Sequence[str]) -> str:
        """The sentence as given to espeak-ng."""

    def sentence_key(self, words: Sequence[str]) -> str:
        """The text that identifies a sentence for the held-out check."""
        return " ".join(words)

    @abc.abstractmethod
    def write_transcripts(self, utts: List[_PlannedUtt], seconds: Dict[str, float]) -> None:
        """Write the transcript (and speaker) files of the kept utterances."""


class _LibriSpeechLayout(_Layout):
    lang = "en"
    subdir = "LibriSpeech"
    audio_format = "FLAC"
    parts = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
    default_voices = ENGLISH_VOICES
    # Disjoint pools of numeric speaker ids, like the real corpus's 2-4 digit ids.
    _ID_POOLS = {"train": (0, 7000), "dev": (7000, 8493), "test": (8493, 9986)}

    def __init__(self, out_dir: Path, config: SynthConfig):
        super().__init__(out_dir, config)
        rng = np.random.default_rng([config.seed, _RNG_IDS])
        self._ids = rng.permutation(np.arange(14, 10000))

    def lhotse_corpus_dir(self) -> Path:
        return self.corpus_dir

    def speaker_id(self, split: str, k: int) -> str:
        lo, hi = self._ID_POOLS[split]
        if lo + k >= hi:
            raise ValueError(
                f"{split} needs more than {hi - lo} LibriSpeech speaker ids; raise "
                "--utts-per-speaker / --eval-utts-per-speaker"
            )
        return str(self._ids[lo + k])

    def _chapters(self, speaker: Speaker) -> np.ndarray:
        per_speaker = (
            self.config.utts_per_speaker
            if speaker.split == "train"
            else self.config.eval_utts_per_speaker
        )
        n = -(-per_speaker // self.config.utts_per_chapter)
        rng = np.random.default_rng([self.config.seed, _RNG_IDS, int(speaker.speaker_id)])
        return rng.integers(100, 200000) + np.cumsum(rng.integers(1, 3000, size=n))

    def utterance(self, speaker: Speaker, u: int) -> Tuple[str, Path, Optional[int]]:
        chapter = int(self._chapters(speaker)[u // self.config.utts_per_chapter])
        spk = speaker.speaker_id
        utt_id = f"{spk}-{chapter}-{u % self.config.utts_per_chapter:04d}"
        path = self.corpus_dir / self.parts[speaker.split] / spk / str(chapter) / f"{utt_id}.flac"
        return utt_id, path, chapter

    def transcript(self, words: Sequence[str]) -> str:
        return " ".join(words).upper()

    def speak_text(self, words: Sequence[str]) -> str:
        # Lowercase, because espeak-ng spells out some all-capital words as acronyms.
        return " ".join(words)

    def write_transcripts(self, utts: List[_PlannedUtt], seconds: Dict[str, float]) -> None:
        chapters: Dict[Tuple[str, str, int], List[_PlannedUtt]] = {}
        for utt in utts:
            chapters.setdefault((utt.split, utt.speaker.speaker_id, utt.chapter), []).append(utt)
        for (split, spk, chapter), group in chapters.items():
            path = (
                self.corpus_dir
                / self.parts[split]
                / spk
                / str(chapter)
                / f"{spk}-{chapter}.trans.txt"
            )
            lines = sorted(f"{u.utt_id} {u.transcript}\n" for u in group)
            path.write_text("".join(lines), encoding="utf-8")
        minutes: Dict[str, float] = {}
        speakers: Dict[str, Speaker] = {}
        for utt in utts:
            spk = utt.speaker.speaker_id
            speakers[spk] = utt.speaker
            minutes[spk] = minutes.get(spk, 0.0) + seconds[utt.utt_id] / 60
        lines = [
            "; Synthetic speakers written by icefall_cif.synth: espeak-ng voice, rate (words/min)"
            " and pitch\n",
            ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
        ]
        for spk in sorted(speakers, key=int):
            s = speakers[spk]
            lines.append(
                f"{spk:<5}| {s.sex} | {self.parts[s.split]:<17}| {minutes[spk]:5.2f} | "
                f"{s.espeak_voice} rate {s.rate} pitch {s.pitch}\n"
            )
        (self.corpus_dir / "SPEAKERS.TXT").write_text("".join(lines), encoding="utf-8")


class _AishellLayout(_Layout):
    lang = "zh"
    subdir = "data_aishell"
    audio_format = "WAV"
    parts = {"train": "train", "dev": "dev", "test": "test"}
    default_voices = MANDARIN_VOICES
    # The real corpus's speaker ranges: train S0002-S0723, dev S0724-S0763, test S0764-S0916.
    _ID_RANGES = {"train": (2, 724), "dev": (724, 764), "test": (764, 917)}

    def lhotse_corpus_dir(self) -> Path:
        return self.out_dir

    def speaker_id(self, split: str, k: int) -> str:
        lo, hi = self._ID_RANGES[split]
        if lo + k >= hi:
            raise ValueError(
                f"AISHELL-1's {split} speaker ids S{lo:04d}-S{hi - 1:04d} are used up; raise "
                "--utts-per-speaker / --eval-utts-per-speaker for a larger corpus"
            )
        return f"S{lo + k:04d}"

    def utterance(self, speaker: Speaker, u: int) -> Tuple[str, Path, Optional[int]]:
        utt_id = f"BAC009{speaker.speaker_id}W{u + 1:04d}"
        path = self.corpus_dir / "wav" / speaker.split / speaker.speaker_id / f"{utt_id}.wav"
        return utt_id, path, None

    def transcript(self, words: Sequence[str]) -> str:
        return " ".join(words)

    def speak_text(self, words: Sequence[str]) -> str:
        return "".join(words)

    def sentence_key(self, words: Sequence[str]) -> str:
        # Lhotse removes the spaces between words, so two segmentations are one sentence.
        return "".join(words)

    def write_transcripts(self, utts: List[_PlannedUtt], seconds: Dict[str, float]) -> None:
        path = self.corpus_dir / "transcript" / "aishell_transcript_v0.8.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = sorted(f"{u.utt_id} {u.transcript}\n" for u in utts)
        path.write_text("".join(lines), encoding="utf-8")


_LAYOUTS = {"librispeech": _LibriSpeechLayout, "aishell": _AishellLayout}


# --------------------------------------------------------------------------- planning


def partition_voices(
    voices: Sequence[str], variants: Sequence[str], held_out: Optional[int], seed: int
) -> Dict[str, List[Tuple[str, str]]]:
    """Split the (voice, variant) pairs into disjoint train / dev / test sets.

    Args:
      held_out: pairs reserved for each of dev and test; None: 15% of the pairs (at least 1).
    Returns:
      {"train": [...], "dev": [...], "test": [...]}, each a list of (voice, variant).
    """
    pairs = [(v, var) for v in voices for var in variants]
    if held_out is None:
        held_out = max(1, round(0.15 * len(pairs)))
    if 2 * held_out >= len(pairs):
        raise ValueError(
            f"{len(pairs)} voice/variant pairs cannot hold out {held_out} for dev and {held_out} "
            "for test and keep some for train; add --voices/--variants or lower --held-out-voices"
        )
    order = np.random.default_rng([seed, _RNG_VOICES]).permutation(len(pairs))
    shuffled = [pairs[i] for i in order]
    return {
        "dev": shuffled[:held_out],
        "test": shuffled[held_out : 2 * held_out],
        "train": shuffled[2 * held_out :],
    }


class _Planner:
    """The deterministic, endless stream of utterances of each split."""

    def __init__(
        self,
        layout: _Layout,
        config: SynthConfig,
        voices: Sequence[str],
        espeak_bin: str,
    ):
        self.layout, self.config, self.espeak_bin = layout, config, espeak_bin
        self.pairs = partition_voices(voices, config.variants, config.held_out_voices, config.seed)
        words = (
            english_words(config.vocab_size)
            if layout.lang == "en"
            else chinese_words(config.vocab_size)
        )
        weights = zipf_weights(words, layout.lang, config.zipf_exponent)
        self.sampler = SentenceSampler(
            words, weights, config.min_words, config.max_words, count_chars=layout.lang == "zh"
        )

    def speaker(self, split: str, k: int) -> Speaker:
        pairs = self.pairs[split]
        # Cycling through the (already shuffled) pairs uses every voice before repeating one.
        voice, variant = pairs[k % len(pairs)]
        rng = np.random.default_rng([self.config.seed, _RNG_SPEAKER, _SPLIT_CODE[split], k])
        rate = int(rng.integers(self.config.rate_range[0], self.config.rate_range[1] + 1))
        pitch = int(rng.integers(self.config.pitch_range[0], self.config.pitch_range[1] + 1))
        return Speaker(self.layout.speaker_id(split, k), split, voice, variant, rate, pitch)

    def sentences(self, split: str) -> Iterator[List[str]]:
        rng = np.random.default_rng([self.config.seed, _RNG_TEXT, _SPLIT_CODE[split]])
        seen: Set[str] = set()
        while True:
            for _ in range(_MAX_SENTENCE_TRIES):
                words = self.sampler(rng)
                key = self.layout.sentence_key(words)
                if key not in seen and sentence_split(key) == split:
                    seen.add(key)
                    yield words
                    break
            else:
                raise ValueError(
                    f"Could not find a new {split} sentence after {_MAX_SENTENCE_TRIES} tries "
                    f"({len(seen)} so far): the vocabulary and lengths allow too few distinct "
                    "sentences; raise --vocab-size or --max-words"
                )

    def utterances(self, split: str) -> Iterator[_PlannedUtt]:
        per_speaker = (
            self.config.utts_per_speaker if split == "train" else self.config.eval_utts_per_speaker
        )
        speaker = None
        for i, words in enumerate(self.sentences(split)):
            k, u = divmod(i, per_speaker)
            if u == 0:
                speaker = self.speaker(split, k)
            utt_id, path, chapter = self.layout.utterance(speaker, u)
            job = _UttJob(
                path=str(path),
                speak_text=self.layout.speak_text(words),
                voice=speaker.espeak_voice,
                rate=speaker.rate,
                pitch=speaker.pitch,
                entropy=(self.config.seed, _RNG_UTT, _SPLIT_CODE[split], i),
                noise_snr_db=self.config.noise_snr_db,
                audio_format=self.layout.audio_format,
                espeak_bin=self.espeak_bin,
            )
            yield _PlannedUtt(split, utt_id, speaker, chapter, self.layout.transcript(words), job)


# --------------------------------------------------------------------------- running


def default_num_jobs() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# One BLAS thread per worker: the workers already fill the cores, and the resampler's matrix
# product runs several times slower when BLAS threads compete for busy cores.
_WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class _Executor:
    """Renders jobs in order in `num_jobs` worker processes.

    Even one job gets a worker process rather than running inline: the calling process may
    have BLAS threads set up for other work, and the workers must all compute alike for the
    corpus not to depend on `num_jobs`.
    """

    def __init__(self, num_jobs: int):
        self.num_jobs = num_jobs
        # spawn, not fork: the parent may hold threads (torch, tqdm's monitor) that fork would
        # copy in an arbitrary state, and fresh interpreters read _WORKER_ENV when they import
        # numpy.
        saved = {k: os.environ.get(k) for k in _WORKER_ENV}
        os.environ.update(_WORKER_ENV)
        try:
            self.pool = multiprocessing.get_context("spawn").Pool(num_jobs)
        finally:
            for k, v in saved.items():
                if v is None:
                    del os.environ[k]
                else:
                    os.environ[k] = v

    def map(self, jobs: Sequence[_UttJob]) -> Iterable[float]:
        return self.pool.imap(_render_job, jobs, chunksize=2)

    def __enter__(self) -> "_Executor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.pool.close()
        else:
            # Ctrl-C or an espeak-ng failure: do not wait for the queued utterances.
            self.pool.terminate()
        self.pool.join()


def _remove_with_empty_parents(path: Path, stop: Path) -> None:
    path.unlink()
    parent = path.parent
    while parent != stop and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _render_split(
    planner: _Planner, executor: _Executor, split: str, progress: bool
) -> Tuple[List[_PlannedUtt], Dict[str, float]]:
    count, target_seconds = planner.config.split_size(split)
    stream = planner.utterances(split)
    part = planner.layout.parts[split]
    kept: List[_PlannedUtt] = []
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


def _read_marker(corpus_dir: Path) -> Optional[Dict]:
    try:
        return json.loads((corpus_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_marker(corpus_dir: Path, content: Dict) -> None:
    tmp = corpus_dir / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(corpus_dir / MARKER_NAME)


def _claim_corpus_dir(corpus_dir: Path, wanted: Dict, force: bool) -> Optional[SynthSummary]:
    """Make `corpus_dir` ours to write. Returns the stored summary when it already holds
    exactly the corpus `wanted` describes, so reruns are free."""
    if not corpus_dir.exists() or not any(corpus_dir.iterdir()):
        return None
    marker = _read_marker(corpus_dir)
    same = marker is not None and all(marker.get(k) == v for k, v in wanted.items())
    if same and marker.get("complete") and not force:
        logger.info(f"{corpus_dir} already holds this synthetic corpus; nothing to do")
        return SynthSummary.from_json(marker["summary"])
    if same or force:
        reason = "--force" if force else "an unfinished run of the same corpus"
        logger.warning(f"Removing {corpus_dir} ({reason}) to synthesize it anew")
        shutil.rmtree(corpus_dir)
        return None
    if marker is None:
        what = "files that icefall_cif.synth did not write (a real corpus?)"
    else:
        changed = sorted(
            k for k in wanted["config"] if marker.get("config", {}).get(k) != wanted["config"][k]
        )
        what = f"a synthetic corpus made with other options (differing: {', '.join(changed)})"
    raise FileExistsError(
        f"{corpus_dir} already holds {what}. Pass --force (force=True) to delete it and "
        "synthesize anew, or choose another output directory."
    )


def _synthesize(
    corpus: str,
    out_dir: Union[str, Path],
    config: SynthConfig,
    num_jobs: Optional[int],
    force: bool,
    espeak_bin: str,
    progress: bool,
) -> SynthSummary:
    config.validate()
    num_jobs = default_num_jobs() if num_jobs is None else num_jobs
    if num_jobs < 1:
        raise ValueError(f"--num-jobs must be >= 1, got {num_jobs}")
    espeak_path = find_espeak(espeak_bin)
    layout = _LAYOUTS[corpus](Path(out_dir), config)
    voices = tuple(config.voices) if config.voices else layout.default_voices
    validate_voices(voices, config.variants, layout.lang, espeak_path)
    wanted = {
        "generator": "icefall_cif.synth",
        "version": _MARKER_VERSION,
        "corpus": corpus,
        "config": config.to_json(),
    }
    stored = _claim_corpus_dir(layout.corpus_dir, wanted, force)
    if stored is not None:
        return stored
    planner = _Planner(layout, config, voices, espeak_path)
    layout.corpus_dir.mkdir(parents=True, exist_ok=True)
    _write_marker(
        layout.corpus_dir, {**wanted, "complete": False, "espeak_ng": espeak_version(espeak_path)}
    )

    logger.info(f"Synthesizing {corpus} into {layout.corpus_dir} with {num_jobs} processes")
    utts: List[_PlannedUtt] = []
    seconds: Dict[str, float] = {}
    splits: Dict[str, SplitSummary] = {}
    with _Executor(num_jobs) as executor:
        for split in SPLITS:
            kept, secs = _render_split(planner, executor, split, progress)
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
    _write_marker(
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
    out_dir: Union[str, Path],
    config: Optional[SynthConfig] = None,
    *,
    num_jobs: Optional[int] = None,
    force: bool = False,
    espeak_bin: str = "espeak-ng",
    progress: bool = True,
    **options,
) -> SynthSummary:
    """Write a synthetic LibriSpeech (train-clean-100, dev-clean, test-clean) under
    `out_dir/LibriSpeech`.

    Args:
      out_dir: parent of the LibriSpeech directory (as after untarring the real corpus).
      config: the corpus options; `**options` override single fields, e.g.
        `synthesize_librispeech("download", num_train_utts=50, seed=1)`.
      num_jobs: worker processes; None: every core this process may use.
      force: delete an existing different corpus in `out_dir/LibriSpeech` instead of failing.
      espeak_bin: the espeak-ng executable (name on PATH or path).
      progress: show tqdm progress bars.
    Returns:
      The summary (utterances, speakers, seconds per split); pass its `lhotse_corpus_dir` to
      `lhotse.recipes.prepare_librispeech`.
    """
    config = dataclasses.replace(config or SynthConfig(), **options)
    return _synthesize("librispeech", out_dir, config, num_jobs, force, espeak_bin, progress)


def synthesize_aishell(
    out_dir: Union[str, Path],
    config: Optional[SynthConfig] = None,
    *,
    num_jobs: Optional[int] = None,
    force: bool = False,
    espeak_bin: str = "espeak-ng",
    progress: bool = True,
    **options,
) -> SynthSummary:
    """Write a synthetic AISHELL-1 (train, dev, test) under `out_dir/data_aishell`.

    Sentence lengths (`min_words`, `max_words`) count characters, as AISHELL's tokens are
    characters. Arguments as for `synthesize_librispeech`; pass `out_dir` itself to
    `lhotse.recipes.prepare_aishell`.
    """
    config = dataclasses.replace(config or SynthConfig(), **options)
    return _synthesize("aishell", out_dir, config, num_jobs, force, espeak_bin, progress)


# --------------------------------------------------------------------------- command line


def _comma_list(value: str) -> Tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def get_parser() -> argparse.ArgumentParser:
    d = SynthConfig()
    parser = argparse.ArgumentParser(
        prog="python -m icefall_cif.synth",
        description="Synthesize a small LibriSpeech- or AISHELL-1-layout corpus with espeak-ng.",
    )
    parser.add_argument("corpus", choices=sorted(_LAYOUTS), help="which corpus layout to write")
    parser.add_argument("out_dir", type=Path, help="LibriSpeech/ or data_aishell/ goes in here")
    size = parser.add_argument_group("size (per split: utterance count if given, else hours)")
    size.add_argument("--hours", type=float, default=d.hours, help="train audio; %(default)s")
    size.add_argument("--dev-hours", type=float, default=d.dev_hours, help="%(default)s")
    size.add_argument("--test-hours", type=float, default=d.test_hours, help="%(default)s")
    for split in SPLITS:
        size.add_argument(f"--num-{split}-utts", type=int, help=f"exact {split} utterance count")
    text = parser.add_argument_group("text")
    text.add_argument(
        "--vocab-size",
        type=int,
        default=d.vocab_size,
        help="the most frequent wordfreq words; %(default)s",
    )
    text.add_argument(
        "--min-words",
        type=int,
        default=d.min_words,
        help="shortest sentence, in words (AISHELL: characters); %(default)s",
    )
    text.add_argument("--max-words", type=int, default=d.max_words, help="%(default)s")
    text.add_argument(
        "--zipf-exponent",
        type=float,
        default=d.zipf_exponent,
        help="word probability ~ frequency**exponent (0: uniform); %(default)s",
    )
    voice = parser.add_argument_group("voices")
    voice.add_argument(
        "--voices",
        type=_comma_list,
        help="comma-separated espeak-ng voices; default: "
        f"{','.join(ENGLISH_VOICES)} (librispeech), {','.join(MANDARIN_VOICES)} (aishell)",
    )
    voice.add_argument(
        "--variants",
        type=_comma_list,
        default=",".join(d.variants),
        help="comma-separated espeak-ng variants, 'default' for none; %(default)s",
    )
    voice.add_argument(
        "--held-out-voices",
        type=int,
        help="voice/variant pairs reserved for each of dev and test; default: 15%% of them",
    )
    voice.add_argument(
        "--rate-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=d.rate_range,
        help="speaking rate per speaker, words/min; %(default)s",
    )
    voice.add_argument(
        "--pitch-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=d.pitch_range,
        help="espeak-ng pitch per speaker, 0-99; %(default)s",
    )
    voice.add_argument(
        "--utts-per-speaker", type=int, default=d.utts_per_speaker, help="train; %(default)s"
    )
    voice.add_argument(
        "--eval-utts-per-speaker",
        type=int,
        default=d.eval_utts_per_speaker,
        help="dev and test; %(default)s",
    )
    voice.add_argument(
        "--utts-per-chapter",
        type=int,
        default=d.utts_per_chapter,
        help="LibriSpeech; %(default)s",
    )
    parser.add_argument(
        "--noise-snr-db",
        nargs="+",
        default=[f"{x:g}" for x in d.noise_snr_db],
        metavar="DB",
        help="LOW HIGH: white or pink noise at an SNR drawn in [LOW, HIGH] dB; 'none': clean "
        f"audio; default: {d.noise_snr_db[0]:g} {d.noise_snr_db[1]:g}",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="%(default)s")
    parser.add_argument("--num-jobs", type=int, help="worker processes; default: all cores")
    parser.add_argument(
        "--force", action="store_true", help="replace a different corpus already in OUT_DIR"
    )
    parser.add_argument("--espeak-ng", default="espeak-ng", help="executable; %(default)s")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def _parse_snr(parser: argparse.ArgumentParser, values: List[str]) -> Optional[Tuple[float, float]]:
    if len(values) == 1 and values[0].lower() == "none":
        return None
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        parser.error(f"--noise-snr-db takes LOW HIGH (dB) or 'none', got {' '.join(values)}")
    return (low, high)


def main(argv: Optional[Sequence[str]] = None) -> SynthSummary:
    """Command-line entry point; see `python -m icefall_cif.synth --help`."""
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
    )
    config = SynthConfig(
        hours=args.hours,
        dev_hours=args.dev_hours,
        test_hours=args.test_hours,
        num_train_utts=args.num_train_utts,
        num_dev_utts=args.num_dev_utts,
        num_test_utts=args.num_test_utts,
        vocab_size=args.vocab_size,
        min_words=args.min_words,
        max_words=args.max_words,
        zipf_exponent=args.zipf_exponent,
        seed=args.seed,
        noise_snr_db=_parse_snr(parser, args.noise_snr_db),
        voices=args.voices,
        variants=tuple(args.variants),
        held_out_voices=args.held_out_voices,
        rate_range=tuple(args.rate_range),
        pitch_range=tuple(args.pitch_range),
        utts_per_speaker=args.utts_per_speaker,
        eval_utts_per_speaker=args.eval_utts_per_speaker,
        utts_per_chapter=args.utts_per_chapter,
    )
    try:
        config.validate()
    except ValueError as e:
        parser.error(str(e))
    synthesize = synthesize_librispeech if args.corpus == "librispeech" else synthesize_aishell
    try:
        return synthesize(
            args.out_dir,
            config,
            num_jobs=args.num_jobs,
            force=args.force,
            espeak_bin=args.espeak_ng,
        )
    except (FileExistsError, ValueError, RuntimeError) as e:
        # These carry a message saying what to do; a traceback would bury it.
        logger.debug("traceback", exc_info=True)
        logger.error(str(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
