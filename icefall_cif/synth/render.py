"""One utterance: espeak-ng speech at 16 kHz with a random level, silences and noise, and the
job a worker process runs to write it to its audio file."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import soundfile as sf

from icefall_cif.synth.espeak import run_espeak
from icefall_cif.synth.resample import resample
from icefall_cif.synth.wav import to_pcm16

SAMPLE_RATE = 16000

# Per-utterance level and silence, drawn so that files look like read speech rather than
# identical peak-normalised clips.
_PEAK_DBFS = (-6.0, -1.0)
EDGE_SILENCE_S = (0.1, 0.4)


def _noise(num_samples: int, pink: bool, rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) white or pink (1/f power) Gaussian noise drawn from `rng`."""
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
    lead, trail = (rng.uniform(*EDGE_SILENCE_S, size=2) * SAMPLE_RATE).astype(int)
    clean = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    if noise_snr_db is None:
        return clean
    snr_db = rng.uniform(*noise_snr_db)
    noise = _noise(len(clean), pink=bool(rng.integers(2)), rng=rng)
    scale = np.sqrt(np.mean(clean**2) / (np.mean(noise**2) * 10 ** (snr_db / 10)))
    return clean + scale * noise


@dataclass(frozen=True)
class UttJob:
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


def render_job(job: UttJob) -> float:
    """Render `job` with its own generator, write it as 16-bit PCM; returns its seconds."""
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
