#!/usr/bin/env python3
"""Stage 4: LM training text data/lm/{train,dev}_text.txt and data/lm/lang_char/{train,dev}_tokens.txt.

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import lm_text_main

if __name__ == "__main__":
    lm_text_main("aishell")
