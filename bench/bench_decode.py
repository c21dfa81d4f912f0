#!/usr/bin/env python3
"""Cost of the decoding methods over CIF vectors, and what batching over utterances buys.

For a cif_transducer and a cif_ce_ar model (tiny encoder config, LibriSpeech-sized decoders,
500 tokens, random weights) and one batch of random encoder frames, it times, interleaved in
one process: greedy search, the batched beam search (beam 4), the same beam search run
utterance by utterance (what an unbatched implementation costs), shallow fusion with a
3-gram and with an LSTM LM, and CTC prefix beam search. The batched and per-utterance beams
are checked to give the same hypotheses first.

Usage:
  .venv/bin/python bench/bench_decode.py [--N 16] [--frames 150] [--beam 4] [--repeats 3]
      [--threads 1] [--device cpu]
Prints one summary line of median times in ms per batch, with ratios to greedy search.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "ASR" / "zipformer_cif"))

from model import ModelConfig, get_model  # noqa: E402

from icefall_cif.decode.beam_search import best_hyps  # noqa: E402
from icefall_cif.decode.ctc import ctc_prefix_beam_search  # noqa: E402
from icefall_cif.decode.greedy import greedy_search  # noqa: E402
from icefall_cif.decode.search import beam_search  # noqa: E402
from icefall_cif.lm import RnnLm, estimate_kneser_ney  # noqa: E402

VOCAB = 500


def median_ms(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Median wall time of each fn after a warm-up; the fns take turns in every repeat."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--N", type=int, default=16, help="utterances per batch")
    parser.add_argument("--frames", type=int, default=150, help="encoder frames (25 Hz) of the longest utterance")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    corpus = [torch.randint(3, VOCAB, (int(n),)).tolist() for n in torch.randint(5, 30, (2000,))]
    ngram = estimate_kneser_ney(corpus, VOCAB, order=3).to(device)
    rnn = RnnLm(VOCAB, embedding_dim=256, hidden_dim=512, num_layers=2).to(device).eval()

    parts = []
    for decoder_type in ("cif_transducer", "cif_ce_ar"):
        model = get_model(ModelConfig(vocab_size=VOCAB, encoder_config="tiny", decoder_type=decoder_type)).to(device).eval()
        enc = torch.randn(args.N, args.frames, model.encoder_dim, device=device)
        lens = torch.randint(args.frames // 2, args.frames + 1, (args.N,), device=device)
        lens[0] = args.frames
        search = beam_search

        def one_by_one() -> List[List[int]]:
            return [
                best_hyps(search(model, enc[i : i + 1, : lens[i]], lens[i : i + 1], args.beam))[0]
                for i in range(args.N)
            ]

        with torch.no_grad():
            if best_hyps(search(model, enc, lens, args.beam)) != one_by_one():
                raise RuntimeError("batched and per-utterance beam search disagree; fix that before timing")
            num_tokens = int(model.forward_cif(enc, lens).cif_lens.sum())
            fns = {
                "greedy": lambda: greedy_search(model, enc, lens),
                "beam": lambda: search(model, enc, lens, args.beam),
                "beam-per-utt": one_by_one,
                "beam+3gram": lambda: search(model, enc, lens, args.beam, lm=ngram, lm_scale=0.3),
                "beam+lstm": lambda: search(model, enc, lens, args.beam, lm=rnn, lm_scale=0.3),
                "ctc-prefix": lambda: ctc_prefix_beam_search(model.ctc_log_probs(enc), lens, args.beam),
            }
            ms = median_ms(fns, args.repeats, device)
        greedy = ms["greedy"]
        parts.append(
            f"{decoder_type} ({num_tokens} CIF vectors): "
            + ", ".join(f"{k} {v:.0f} ms ({v / greedy:.1f}x)" for k, v in ms.items())
            + f"; batching speed-up {ms['beam-per-utt'] / ms['beam']:.1f}x"
        )
    print(
        f"decode N={args.N} frames<={args.frames} beam={args.beam} V={VOCAB} {device.type} "
        f"threads={args.threads} | " + " | ".join(parts)
    )


if __name__ == "__main__":
    main()
