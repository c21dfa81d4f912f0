#!/usr/bin/env python3
"""Stage 3: sentencepiece unigram model data/lang_bpe_<N>/{bpe.model,tokens.txt} from the train transcripts.

Options: run with --help. The logic lives in icefall_cif.data_prep, shared by both recipes.
"""
from icefall_cif.data_prep import bpe_main

if __name__ == "__main__":
    bpe_main("librispeech")
