#!/usr/bin/env python3
"""Real-time factor of each decoding method: encoder + CIF + search, per audio second.

For the tiny and small encoder configs and each decoder type (random weights, BPE-sized
vocabulary of 500), decodes one batch of random 80-dim features (N utterances of `--seconds`
seconds) with every method that applies, at 1 and 2 intra-op threads, and prints one line per
(config, threads) with the RTF of each method (decode wall time / audio duration, median of
`--repeats`). Random weights make the searches' hypothesis lengths arbitrary but the encoder
cost, which dominates, is the real one.

  .venv/bin/python bench/bench_rtf.py [--configs tiny small] [--threads 1 2] [--N 8] [--seconds 6]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "ASR" / "zipformer_cif"))

from model import ModelConfig, get_model  # noqa: E402

from icefall_cif.decode.search import decode_batch  # noqa: E402
from icefall_cif.model_contract import decoding_methods  # noqa: E402
from icefall_cif.utils import AttributeDict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--decoder-types", nargs="+", default=["cif_ce_ar", "cif_transducer"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--N", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    frames = int(args.seconds * 100)
    x = torch.randn(args.N, frames, 80)
    x_lens = torch.full((args.N,), frames)
    audio = args.N * args.seconds
    search_params = AttributeDict(beam_size=4, max_sym_per_frame=3, lm_scale=0.0, nbest_scale=0.0, num_paths=4,
                                  blank_id=0)
    for config in args.configs:
        for decoder_type in args.decoder_types:
            model = get_model(ModelConfig(encoder_config=config, decoder_type=decoder_type, vocab_size=500)).eval()
            methods = [m for m in decoding_methods(model) if "lm" not in m]
            for threads in args.threads:
                torch.set_num_threads(threads)
                rtf = {}
                with torch.no_grad():
                    for method in methods:
                        times = []
                        for _ in range(args.repeats + 1):
                            t0 = time.perf_counter()
                            enc, enc_lens = model.forward_encoder(x, x_lens)
                            decode_batch(method, model, enc, enc_lens, search_params)
                            times.append(time.perf_counter() - t0)
                        rtf[method] = statistics.median(times[1:]) / audio
                summary = ", ".join(f"{m} {v:.4f}" for m, v in rtf.items())
                print(f"rtf {config} {decoder_type} threads={threads} N={args.N}x{args.seconds:g}s cpu: {summary}",
                      flush=True)


if __name__ == "__main__":
    main()
