#!/usr/bin/env python3
"""Where a model's CIF layer fires, against its own CTC head: the mean CIF alignment loss per token.

For each utterance the CTC head's Viterbi path through the reference gives each token's first
frame; the loss (icefall_cif.alignment.cif_alignment_loss) is |weight between consecutive spikes
- 1| per token: 0 when every CIF vector holds exactly one spike in its middle. A diagnostic for
RESULTS.md, not part of the test suite. Run from egs/<corpus>/ASR:

    ../../../tools/cif_fire_positions.py --lang-dir data/lang_bpe_500 \
      --cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz zipformer_cif/exp/pretrained.pt
"""
import argparse
import sys
from pathlib import Path

import torch
from lhotse import load_manifest_lazy

sys.path.insert(0, "zipformer_cif")  # the recipe's model files, as train.py sees them

from icefall_cif.config import LossConfig  # noqa: E402
from icefall_cif.pretrained import load_pretrained  # noqa: E402
from icefall_cif.tokenizer import Tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang-dir", type=Path, required=True, help="The lang dir the models were trained with.")
    parser.add_argument("--cuts", type=Path, action="append", required=True,
                        help="A cut manifest with features (repeat the option for several).")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="pretrained.pt files (export.py).")
    args = parser.parse_args()
    from recipe import RECIPE

    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_lang_dir(args.lang_dir)
    for checkpoint in args.checkpoints:
        model, _ = load_pretrained(RECIPE, checkpoint)
        figures = []
        for manifest in args.cuts:
            total = tokens = 0.0
            with torch.no_grad():
                for cut in load_manifest_lazy(manifest):
                    x = torch.from_numpy(cut.load_features()).unsqueeze(0)
                    y = tokenizer.encode([" ".join(s.text for s in cut.supervisions)])
                    losses = model(x, torch.tensor([x.size(1)]), y, LossConfig())
                    total += float(losses["cif_align_loss"])
                    tokens += len(y[0])
            figures.append(f"{manifest.name}: {total / max(tokens, 1):.3f}")
        print(f"{checkpoint}: mean CIF alignment loss per token, " + ", ".join(figures))


if __name__ == "__main__":
    main()
