#!/usr/bin/env python3
"""Transcribe sound files with the ONNX files of export-onnx.py, on onnxruntime.

  ./zipformer_cif/onnx_pretrained.py --tokens data/lang_bpe_500/tokens.txt \
    --encoder-model-filename zipformer_cif/exp/encoder-epoch-30-avg-9.onnx \
    --decoder-model-filename zipformer_cif/exp/decoder-epoch-30-avg-9.onnx \
    --joiner-model-filename zipformer_cif/exp/joiner-epoch-30-avg-9.onnx /path/to/a.flac

cif_ce_ar: --encoder-model-filename and --decoder-model-filename; cif_ce_nar: --model-filename.
The logic is icefall_cif/onnx_pretrained.py.
"""
from icefall_cif.onnx_pretrained import main

if __name__ == "__main__":
    main(__doc__)
