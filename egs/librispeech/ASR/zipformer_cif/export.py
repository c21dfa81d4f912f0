#!/usr/bin/env python3
"""Export the averaged model of a run as one self-contained pretrained.pt (run from egs/<corpus>/ASR).

  ./zipformer_cif/export.py --exp-dir zipformer_cif/exp --epoch 30 --avg 9 --use-averaged-model 1 \
    --tokens data/lang_bpe_500/tokens.txt

Writes <exp-dir>/pretrained.pt: the weights, the model config and the token table (plain data,
nothing for training). The logic is icefall_cif/export.py.
"""
from recipe import RECIPE

from icefall_cif.export import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
