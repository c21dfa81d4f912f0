#!/usr/bin/env python3
"""MUSAN manifests and fbank cuts data/fbank/musan_cuts.jsonl.gz for --enable-musan.

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import musan_main

if __name__ == "__main__":
    musan_main()
