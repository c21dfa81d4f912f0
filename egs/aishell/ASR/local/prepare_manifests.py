#!/usr/bin/env python3
"""Stage 1: Lhotse manifests of AISHELL-1 in data/manifests; bad utterances are skipped and listed.

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import manifests_main

if __name__ == "__main__":
    manifests_main("aishell")
