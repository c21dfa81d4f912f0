#!/usr/bin/env python3
"""Export the averaged AISHELL-1 model as one self-contained pretrained.pt (run from egs/aishell/ASR).

  ./zipformer_cif/export.py --exp-dir zipformer_cif/exp --epoch 50 --avg 10 --use-averaged-model 1 \
    --tokens data/lang_char/tokens.txt

The logic is icefall_cif/export.py.
"""
from recipe import RECIPE

from icefall_cif.export import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
