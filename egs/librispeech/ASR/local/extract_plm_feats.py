#!/usr/bin/env python3
"""Stage 7 (only with --plm-dir): teacher features of a PLM for HieraDist distillation, one vector
per token of the lang dir, stored with Lhotse in a new training manifest (docs/distillation.md).

Options: run with --help. The logic lives in icefall_cif.plm_feats, shared by both recipes.
"""
from icefall_cif.plm_feats import main

if __name__ == "__main__":
    main("librispeech")
