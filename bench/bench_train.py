#!/usr/bin/env python3
"""Training throughput of the CIF model on CPU: audio seconds trained per wall-clock second.

One training step is what icefall_cif/training/loop.py does per batch: set the model's batch count,
forward (all losses), backward, Eden step_batch, ScaledAdam step (with clipping). The batches
are synthetic: random 80-dim features of `--utt-seconds` long utterances and random token ids at
`--tokens-per-second` (about what BPE-500 gives for read English), so no corpus is needed and the
numbers measure the model and optimizer only (data loading, validation and checkpointing excluded).
Each (config, threads) pair runs `--warmup` untimed steps and then `--steps` timed ones; all
pairs run in this one process, one after another, so their ratios are comparable.

  .venv/bin/python bench/bench_train.py [--configs tiny,small] [--threads 1,2] \
      [--decoder-type cif_ce_ar] [--batch-seconds 32] [--utt-seconds 8] [--steps 3] [--warmup 1]
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs" / "librispeech" / "ASR" / "zipformer_cif"))

from model import ModelConfig, get_model  # noqa: E402

from icefall_cif.optim import Eden, ScaledAdam  # noqa: E402
from icefall_cif.config import LossConfig  # noqa: E402
from icefall_cif.model_contract import weighted_loss  # noqa: E402

VOCAB_SIZE = 500


def make_batch(num_utts: int, utt_seconds: float, tokens_per_second: float, seed: int) -> Tuple:
    """Random fbank-like features (N, T, 80) @100 Hz, lengths (N,) from 75% to 100% of T, tokens."""
    g = torch.Generator().manual_seed(seed)
    frames = int(utt_seconds * 100)
    x = torch.randn(num_utts, frames, 80, generator=g)
    lens = torch.linspace(frames, int(frames * 0.75), num_utts).long()
    y = []
    for n in lens.tolist():
        num_tokens = max(1, int(n / 100 * tokens_per_second))
        y.append(torch.randint(3, VOCAB_SIZE, (num_tokens,), generator=g).tolist())
    return x, lens, y


def throughput(config: str, threads: int, args: argparse.Namespace) -> Tuple[float, int]:
    """(audio seconds per wall second, number of parameters) of training `config` with `threads`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_model(ModelConfig(vocab_size=VOCAB_SIZE, encoder_config=config, decoder_type=args.decoder_type))
    loss_config = LossConfig()
    model.train()
    optimizer = ScaledAdam(model.named_parameters(), lr=0.045, clipping_scale=2.0)
    scheduler = Eden(optimizer, lr_batches=7500, lr_epochs=3.5)
    num_utts = max(1, int(args.batch_seconds // args.utt_seconds))
    batches = [make_batch(num_utts, args.utt_seconds, args.tokens_per_second, seed) for seed in range(4)]

    audio = elapsed = 0.0
    for step in range(args.warmup + args.steps):
        x, lens, y = batches[step % len(batches)]
        start = time.perf_counter()
        model.set_batch_count(float(step))
        loss = weighted_loss(model, model(x, lens, y, loss_config), loss_config, step)
        loss.backward()
        scheduler.step_batch(step + 1)
        optimizer.step()
        optimizer.zero_grad()
        if step >= args.warmup:
            elapsed += time.perf_counter() - start
            audio += float(lens.sum()) / 100.0
    return audio / elapsed, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small", help="Encoder configs (--encoder-config names).")
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to compare.")
    parser.add_argument("--decoder-type", default="cif_ce_ar")
    parser.add_argument("--batch-seconds", type=float, default=32.0, help="Audio per batch (like --max-duration).")
    parser.add_argument("--utt-seconds", type=float, default=8.0)
    parser.add_argument("--tokens-per-second", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=3, help="Timed training steps per (config, threads).")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps first.")
    args = parser.parse_args()

    results: Dict[Tuple[str, int], float] = {}
    sizes: Dict[str, int] = {}
    for config in args.configs.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            results[config, threads], sizes[config] = throughput(config, threads, args)
    parts: List[str] = []
    for config in args.configs.split(","):
        rates = ", ".join(f"{t} thr {results[c, t]:.2f}x" for c, t in results if c == config)
        parts.append(f"{config} ({sizes[config] / 1e6:.1f} M params): {rates}")
    print(
        f"train throughput, audio s per wall s on CPU ({args.decoder_type}, synthetic {args.utt_seconds:g} s "
        f"utterances, {args.batch_seconds:g} s batches, {args.steps} steps): " + " | ".join(parts)
    )


if __name__ == "__main__":
    main()
