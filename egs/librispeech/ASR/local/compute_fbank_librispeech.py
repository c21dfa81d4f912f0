#!/usr/bin/env python3
"""Stage 2: 80-dim fbank cuts data/fbank/librispeech_cuts_<part>.jsonl.gz (speed perturbation for train).

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import fbank_main

if __name__ == "__main__":
    fbank_main("librispeech")
