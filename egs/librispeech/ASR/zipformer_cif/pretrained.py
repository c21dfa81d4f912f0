#!/usr/bin/env python3
"""Transcribe sound files with a pretrained.pt from export.py.

  ./zipformer_cif/pretrained.py --checkpoint zipformer_cif/exp/pretrained.pt \
    --method greedy_search --timestamps 1 /path/to/a.flac /path/to/b.wav

Any format and sample rate soundfile reads (mixed to mono, resampled to 16 kHz). The logic is
icefall_cif/pretrained.py.
"""
from recipe import RECIPE

from icefall_cif.pretrained import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
