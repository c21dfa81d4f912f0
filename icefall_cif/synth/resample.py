"""Band-limited resampling of espeak-ng's 22050 Hz output to the corpora's 16 kHz."""
import math
from typing import Dict, Tuple

import numpy as np


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
