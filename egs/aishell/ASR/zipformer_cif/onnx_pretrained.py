#!/usr/bin/env python3
"""Transcribe Mandarin sound files with the ONNX files of an AISHELL-1 export-onnx.py, on onnxruntime.

  ./zipformer_cif/onnx_pretrained.py --tokens data/lang_char/tokens.txt \
    --encoder-model-filename zipformer_cif/exp/encoder-epoch-50-avg-10.onnx \
    --decoder-model-filename zipformer_cif/exp/decoder-epoch-50-avg-10.onnx \
    --joiner-model-filename zipformer_cif/exp/joiner-epoch-50-avg-10.onnx a.wav

The logic is icefall_cif/onnx_pretrained.py.
"""
from icefall_cif.onnx_pretrained import main

if __name__ == "__main__":
    main(__doc__)
