#!/usr/bin/env python3
"""Stage 3: character tokens data/lang_char/tokens.txt from the train transcripts.

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import char_main

if __name__ == "__main__":
    char_main("aishell")
