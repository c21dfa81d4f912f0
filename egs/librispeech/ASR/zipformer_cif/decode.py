#!/usr/bin/env python3
"""Decode the test sets with a trained Zipformer-CIF model (run from egs/<corpus>/ASR).

  ./zipformer_cif/decode.py --epoch 30 --avg 10 --use-averaged-model 1 \
    --exp-dir zipformer_cif/exp --max-duration 600 \
    --decoding-method modified_beam_search --beam-size 4

Pass the model options train.py was given (--encoder-config, --decoder-type, ...). Results go to
<exp-dir>/<decoding-method>/{recogs,errs,wer-summary}-<test-set>-*.txt. The loop lives in
icefall_cif/decode/loop.py; recipe.py says what is specific to this corpus.
"""
from recipe import RECIPE

from icefall_cif.decode.loop import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
