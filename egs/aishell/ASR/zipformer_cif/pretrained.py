#!/usr/bin/env python3
"""Transcribe Mandarin sound files with an AISHELL-1 pretrained.pt from export.py.

  ./zipformer_cif/pretrained.py --checkpoint zipformer_cif/exp/pretrained.pt --method greedy_search a.wav

The logic is icefall_cif/pretrained.py.
"""
from recipe import RECIPE

from icefall_cif.pretrained import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
