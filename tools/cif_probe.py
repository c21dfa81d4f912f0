#!/usr/bin/env python3
"""Do the CIF vectors carry their token? A linear probe against the CTC head's spike frames.

For each utterance the CTC head's Viterbi path through the reference gives each token's first
(spike) frame. Per reference token u the tool collects

- `spike`: the 25 Hz encoder frame at token u's spike, what the CTC head classifies;
- `cif`: CIF vector u, the weights scaled to fire exactly U times (as in training);
- `cif_next`: CIF vector u + 1, the one a vector that straddles two tokens would leak into;
- `down`: the 12.5 Hz frame (after the extra downsampling) that holds the spike;
- `cif_context`: CIF vectors u - 1, u and u + 1 side by side (is the token spread over them?);
- `ctc_segments`: the CTC-anchored vector of icefall_cif.segments (segments between the
  midpoints of the forced-alignment spikes, pooled with the model's CIF weights).

It also counts how often token u's spike lies among the frames of CIF vector u.

A multinomial logistic regression (one linear layer, trained full-batch with Adam) is fitted on
the training cuts for each feature and scored on the test cuts: token accuracy and mean
cross-entropy per token. `ctc_argmax` is the CTC head's own argmax at the spike frame, with no
probe. If `cif` is probed as well as `spike`, the vectors hold the token and the decoder is what
fails to read it; if much worse, the integration loses it. A diagnostic for RESULTS.md, not part
of the test suite. Run from egs/<corpus>/ASR:

    ../../../tools/cif_probe.py --lang-dir data/lang_bpe_500 \
      --train-cuts data/fbank/librispeech_cuts_train-clean-100.jsonl.gz \
      --test-cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz zipformer_cif/exp/pretrained.pt
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from lhotse import load_manifest_lazy

sys.path.insert(0, "zipformer_cif")  # the recipe's model files, as train.py sees them

from icefall_cif.alignment import ctc_forced_align  # noqa: E402
from icefall_cif.pretrained import load_pretrained  # noqa: E402
from icefall_cif.segments import pool_segments  # noqa: E402
from icefall_cif.tokenizer import Tokenizer  # noqa: E402

FEATURES = ("spike", "cif", "cif_next", "down", "cif_context", "ctc_segments")


@torch.no_grad()
def collect(model, tokenizer: Tokenizer, manifest: Path, every: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, int, int]:
    """Per-token features of every `every`-th cut of `manifest`.

    Returns ({feature: (M, C)}, token ids (M,), CTC-argmax hits at the spikes, spikes inside
    their own CIF vector's frames); `cif_next` rows exist for all but each utterance's last
    token, so it is returned with its own targets under the key "cif_next_targets".
    """
    rows: Dict[str, List[torch.Tensor]] = {name: [] for name in FEATURES}
    targets: List[torch.Tensor] = []
    next_targets: List[torch.Tensor] = []
    ctc_hits = own_segment = 0
    d = model.cif_downsample_factor
    for index, cut in enumerate(load_manifest_lazy(manifest)):
        if index % every:
            continue
        x = torch.from_numpy(cut.load_features()).unsqueeze(0)
        y = tokenizer.encode([" ".join(s.text for s in cut.supervisions)])[0]
        if not y:
            continue
        encoder_out, encoder_out_lens = model.forward_encoder(x, torch.tensor([x.size(1)]))
        log_probs = model.ctc_log_probs(encoder_out)
        y_padded = torch.tensor([y])
        y_lens = torch.tensor([len(y)])
        spikes = ctc_forced_align(log_probs, encoder_out_lens, y_padded, y_lens, model.blank_id)[0]
        if bool((spikes < 0).any()):
            continue  # the CTC head cannot align this reference (too few frames)
        out = model.forward_cif(encoder_out, encoder_out_lens, target_lengths=y_lens, targets=y_padded)
        cif, fires = out.cif[0], out.fire_frames[0]
        h, _ = model.downsample_for_cif(encoder_out, encoder_out_lens)
        token_ids = torch.tensor(y)
        # CIF vector u integrates the CIF frames fires[u-1] .. fires[u] (both ends shared with a
        # neighbour when a fire splits a frame's weight), i.e. these 25 Hz encoder frames:
        starts = d * torch.cat([torch.zeros(1, dtype=torch.int64), fires[:-1]])
        ends = torch.minimum(d * fires + d - 1, encoder_out_lens[0] - 1)
        own_segment += int(((spikes >= starts) & (spikes <= ends)).sum())
        zero = cif.new_zeros(1, cif.size(1))
        rows["down"].append(h[0, spikes // d])
        rows["cif_context"].append(torch.cat([torch.cat([zero, cif[:-1]]), cif, torch.cat([cif[1:], zero])], dim=1))
        anchored = pool_segments(h, out.alpha, torch.tensor([h.size(1)]), spikes[None], y_lens, d)
        rows["ctc_segments"].append(anchored.cif[0])
        rows["spike"].append(encoder_out[0, spikes])
        rows["cif"].append(cif)
        rows["cif_next"].append(cif[1:])
        targets.append(token_ids)
        next_targets.append(token_ids[:-1])
        ctc_hits += int((log_probs[0, spikes].argmax(-1) == token_ids).sum())
    features = {name: torch.cat(value) for name, value in rows.items()}
    features["cif_next_targets"] = torch.cat(next_targets)
    return features, torch.cat(targets), ctc_hits, own_segment


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int, lr: float) -> torch.nn.Linear:
    """Multinomial logistic regression of y (M,) on standardised x (M, C), full-batch Adam."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.size(1), num_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-5)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(probe(x), y).backward()
        optimizer.step()
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang-dir", type=Path, required=True, help="The lang dir the models were trained with.")
    parser.add_argument("--train-cuts", type=Path, required=True, help="Cuts the probes are fitted on.")
    parser.add_argument("--test-cuts", type=Path, required=True, help="Cuts the probes are scored on.")
    parser.add_argument("--train-every", type=int, default=1, help="Use every N-th training cut.")
    parser.add_argument("--steps", type=int, default=500, help="Adam steps of each probe.")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate of the probes.")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="pretrained.pt files (export.py).")
    args = parser.parse_args()
    from recipe import RECIPE

    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_lang_dir(args.lang_dir)
    for checkpoint in args.checkpoints:
        model, _ = load_pretrained(RECIPE, checkpoint)
        train, train_y, _, _ = collect(model, tokenizer, args.train_cuts, args.train_every)
        test, test_y, ctc_hits, own_segment = collect(model, tokenizer, args.test_cuts, 1)
        print(f"{checkpoint}: {len(train_y)} training tokens, {len(test_y)} test tokens")
        print(f"  test tokens whose spike lies in their own CIF vector's frames: {100.0 * own_segment / len(test_y):.2f}%")
        print(f"  ctc_argmax: test accuracy {100.0 * ctc_hits / len(test_y):.2f}%")
        for name in FEATURES:
            fit_y = train["cif_next_targets"] if name == "cif_next" else train_y
            eval_y = test["cif_next_targets"] if name == "cif_next" else test_y
            mean, std = train[name].mean(0), train[name].std(0) + 1e-6
            probe = fit_probe((train[name] - mean) / std, fit_y, model.vocab_size, args.steps, args.lr)
            with torch.no_grad():
                train_logits = probe((train[name] - mean) / std)
                logits = probe((test[name] - mean) / std)
            train_acc = 100.0 * float((train_logits.argmax(-1) == fit_y).float().mean())
            acc = 100.0 * float((logits.argmax(-1) == eval_y).float().mean())
            ce = float(F.cross_entropy(logits, eval_y))
            print(f"  {name}: train accuracy {train_acc:.2f}%, test accuracy {acc:.2f}%, test CE {ce:.3f} nats/token")


if __name__ == "__main__":
    main()
