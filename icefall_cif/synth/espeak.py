"""espeak-ng, the voice of the synthetic corpora: finding it, its voices, and speaking a text."""
import re
import shutil
import subprocess
from typing import Dict, Optional, Sequence, Set, Tuple

import numpy as np

from icefall_cif.synth.wav import parse_wav

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
# The voices a corpus gets unless --voices says otherwise, by its layout's language.
DEFAULT_VOICES: Dict[str, Tuple[str, ...]] = {"en": ENGLISH_VOICES, "zh": MANDARIN_VOICES}
# "default" is the voice without a `+variant` suffix.
VARIANTS = ("default", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")


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
    """stdout of `espeak_bin args` fed `text`; RuntimeError with its stderr when it fails."""
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


def voice_spec(voice: str, variant: str) -> str:
    """The `-v` argument of a voice and variant ("default": the voice alone)."""
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
    Raises:
      RuntimeError when espeak-ng fails or produces silence.
    """
    args = ["-v", voice, "-s", str(rate), "-p", str(pitch), "-b", "1", "--stdout", "--stdin"]
    samples, rate_hz = parse_wav(_espeak_output(espeak_bin, args, text))
    if samples.size == 0 or not np.any(samples):
        raise RuntimeError(f"espeak-ng voice '{voice}' produced no audio for {text!r}")
    return samples, rate_hz
