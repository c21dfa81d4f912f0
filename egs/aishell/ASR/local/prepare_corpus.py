#!/usr/bin/env python3
"""Stage 0: check an AISHELL-1 tree (--corpus-dir) and link it into download/aishell.

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import corpus_main

if __name__ == "__main__":
    corpus_main("aishell")
