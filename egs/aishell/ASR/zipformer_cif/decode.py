#!/usr/bin/env python3
"""Decode AISHELL-1 test and dev with a trained Zipformer-CIF model; scored as CER.

  ./zipformer_cif/decode.py --epoch 50 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_cif/exp --max-duration 600 --decoding-method beam_search --beam-size 10

Pass the model options train.py was given. The loop is icefall_cif/decode/loop.py.
"""
from recipe import RECIPE

from icefall_cif.decode.loop import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
