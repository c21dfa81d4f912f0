"""Synthesis speed of the synthetic corpora: audio seconds written per wall-clock second.

Each corpus is synthesized with --num-jobs 1 and 2 side by side (same seed, same sentences),
into a temporary directory; the times include starting the worker processes and writing the
transcripts, i.e. what `python -m icefall_cif.synth` costs.

    python bench/bench_synth.py [--num-utts 80]
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Dict, Tuple

from icefall_cif.synth import synthesize_aishell, synthesize_librispeech


def measure(corpus: str, num_jobs: int, num_utts: int, root: Path) -> Tuple[float, float]:
    """(audio seconds, wall seconds) of synthesizing `num_utts` training utterances."""
    fn = synthesize_librispeech if corpus == "librispeech" else synthesize_aishell
    start = time.perf_counter()
    summary = fn(
        root / f"{corpus}-{num_jobs}",
        num_train_utts=num_utts,
        num_dev_utts=0,
        num_test_utts=0,
        num_jobs=num_jobs,
        progress=False,
    )
    return summary.splits["train"].seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-utts", type=int, default=80, help="training utterances per run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: Dict[str, Dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in ("librispeech", "aishell"):
            results[corpus] = {}
            for num_jobs in (1, 2):
                audio_s, wall_s = measure(corpus, num_jobs, args.num_utts, Path(tmp))
                results[corpus][num_jobs] = audio_s / wall_s
    parts = [
        f"{corpus} {r[1]:.0f} (1 job) / {r[2]:.0f} (2 jobs) audio-s/s, x{r[2] / r[1]:.2f}"
        for corpus, r in results.items()
    ]
    print(f"synth ({args.num_utts} utts per run): " + "; ".join(parts))


if __name__ == "__main__":
    main()
