#!/usr/bin/env python3
"""Export the averaged AISHELL-1 model as ONNX files (run from egs/aishell/ASR).

  ./zipformer_cif/export-onnx.py --exp-dir zipformer_cif/exp --epoch 50 --avg 10 --use-averaged-model 1 \
    --tokens data/lang_char/tokens.txt --int8 1

The layouts are those of the LibriSpeech recipe; the logic is icefall_cif/onnx_export.py.
"""
from recipe import RECIPE

from icefall_cif.onnx_export import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
