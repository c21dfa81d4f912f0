#!/usr/bin/env python3
"""Export the averaged model of a run as ONNX files (run from egs/<corpus>/ASR).

  ./zipformer_cif/export-onnx.py --exp-dir zipformer_cif/exp --epoch 30 --avg 9 --use-averaged-model 1 \
    --tokens data/lang_bpe_500/tokens.txt --int8 1

cif_transducer: encoder/decoder/joiner-epoch-30-avg-9.onnx for sherpa-onnx's offline transducer,
e.g. `sherpa-onnx-offline --encoder=... --decoder=... --joiner=... --tokens=... a.wav`;
cif_ce_nar: model-epoch-30-avg-9.onnx for sherpa-onnx's zipformer2_ctc; cif_ce_ar:
encoder/decoder-epoch-30-avg-9.onnx for onnx_pretrained.py. The logic is icefall_cif/onnx_export.py.
"""
from recipe import RECIPE

from icefall_cif.onnx_export import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
