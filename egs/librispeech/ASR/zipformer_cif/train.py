#!/usr/bin/env python3
"""Train a Zipformer-CIF model (run from egs/<corpus>/ASR after ./prepare.sh).

  # one machine, 8 GPUs
  ./zipformer_cif/train.py --world-size 8 --num-epochs 30 --start-epoch 1 --use-fp16 1 \
    --exp-dir zipformer_cif/exp --max-duration 1000 --decoder-type cif_ce_ar

  # resume an interrupted run from its newest checkpoint-<batch>.pt
  ./zipformer_cif/train.py <same options> --start-batch -1

  # several machines: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (--world-size is then ignored)
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
    ./zipformer_cif/train.py <options>

  # CPU only: gloo instead of NCCL; each process uses --num-threads threads (default 1, as icefall)
  ./zipformer_cif/train.py --world-size 2 --num-threads 1 <options>

The loop lives in icefall_cif/training/; recipe.py says what is specific to this corpus.
"""
from recipe import RECIPE

from icefall_cif.training import main

if __name__ == "__main__":
    main(RECIPE, __doc__)
