#!/usr/bin/env python3
"""Train a Zipformer-CIF model on AISHELL-1 (run from egs/aishell/ASR after ./prepare.sh).

  ./zipformer_cif/train.py --world-size 2 --num-epochs 50 --use-fp16 1 \
    --exp-dir zipformer_cif/exp --max-duration 1000 --decoder-type cif_ce_ar

The model files here are symlinks into egs/librispeech/ASR/zipformer_cif, the loop is
icefall_cif/training/, and recipe.py holds what is specific to AISHELL (cuts, data/lang_char).
"""
from recipe import RECIPE

from icefall_cif.training import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
