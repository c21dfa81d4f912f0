"""16-bit PCM in and out: espeak-ng's streamed WAV to samples, float samples to int16."""
import struct
from typing import Tuple

import numpy as np


def parse_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """Samples and rate of a 16-bit mono PCM WAV from espeak-ng's stdout.

    espeak-ng streams the WAV, so its RIFF and data sizes are placeholders; the samples are
    whatever follows the data chunk header.

    Raises:
      RuntimeError when `data` is not a 16-bit mono PCM WAV.
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


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """(T,) float samples -> (T,) int16, rounded and clipped to the 16-bit range."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)
