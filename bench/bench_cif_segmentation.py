#!/usr/bin/env python3
"""What `--cif-segmentation ctc` costs a training step: the same model, fire vs ctc, side by side.

Builds the demo's model (`tiny` Zipformer, cif_transducer, BPE 500) twice from one seed, once per
segmentation, and times full training steps (forward, loss, backward) on the same demo-sized
batches, alternating between the two so that a busy machine slows both alike. Also times
forward_cif alone (training form: scaled integrate-and-fire vs forced alignment + pooling).

Usage (from the repository root):
  .venv/bin/python bench/bench_cif_segmentation.py [--repeats 5] [--steps 4] [--threads 1]
Prints the median CPU time per step of each and the ratio ctc / fire.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs/librispeech/ASR/zipformer_cif"))

from model import ModelConfig, get_model  # noqa: E402

from icefall_cif.config import LossConfig  # noqa: E402
from icefall_cif.model_contract import weighted_loss  # noqa: E402
from icefall_cif.utils import pad_token_ids  # noqa: E402


def demo_batch(seed: int):
    """A 15 s batch like the demo's: four utterances of 3-4 s, 15 tokens each, BPE 500."""
    g = torch.Generator().manual_seed(seed)
    x_lens = torch.tensor([400, 380, 350, 300])
    x = torch.randn(4, 400, 80, generator=g)
    ys = [torch.randint(1, 500, (15,), generator=g).tolist() for _ in range(4)]
    return x, x_lens, ys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Timed rounds per segmentation.")
    parser.add_argument("--steps", type=int, default=4, help="Training steps per round.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for seg in ("fire", "ctc"):
        torch.manual_seed(0)
        models[seg] = get_model(ModelConfig(encoder_config="tiny", decoder_type="cif_transducer",
                                            vocab_size=500, cif_segmentation=seg)).train()
    config = LossConfig()
    x, x_lens, ys = demo_batch(0)
    step_times = {seg: [] for seg in models}
    cif_times = {seg: [] for seg in models}
    for seg, model in models.items():  # warm-up
        weighted_loss(model, model(x, x_lens, ys, config), config, 1000).backward()
    for _ in range(args.repeats):
        for seg, model in models.items():
            start = time.process_time()
            for _ in range(args.steps):
                weighted_loss(model, model(x, x_lens, ys, config), config, 1000).backward()
            step_times[seg].append((time.process_time() - start) / args.steps)
            with torch.no_grad():
                enc, enc_lens = model.forward_encoder(x, x_lens)
                y_lens = torch.tensor([len(y) for y in ys])
                y_padded = pad_token_ids(ys, model.blank_id, enc.device)
                start = time.process_time()
                for _ in range(10):
                    model.forward_cif(enc, enc_lens, target_lengths=y_lens, targets=y_padded)
                cif_times[seg].append((time.process_time() - start) / 10)
    step = {seg: statistics.median(t) for seg, t in step_times.items()}
    cif = {seg: statistics.median(t) for seg, t in cif_times.items()}
    print(f"training step (threads={args.threads}, 4 x 3-4 s, tiny cif_transducer): fire {step['fire']:.3f} s, "
          f"ctc {step['ctc']:.3f} s, ctc / fire {step['ctc'] / step['fire']:.3f}; "
          f"forward_cif alone: fire {1000 * cif['fire']:.1f} ms, ctc {1000 * cif['ctc']:.1f} ms")


if __name__ == "__main__":
    main()
