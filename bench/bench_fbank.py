"""Feature extraction speed of prepare.sh stage 2: audio seconds per wall-clock second.

A synthetic LibriSpeech train part is prepared once (stage 1), then `compute_fbank` (80-dim
fbank into lilcom archives, no speed perturbation) runs with --num-jobs 1 and 2 side by side
(2 jobs forced, whatever the amount of audio). The times include starting the worker
processes, i.e. what the stage costs.

    python bench/bench_fbank.py [--num-utts 300]
"""
import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from icefall_cif.data_prep import compute_fbank, get_fbank_extractor, prepare_manifests
from icefall_cif.synth import synthesize_librispeech


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-utts", type=int, default=300, help="training utterances to extract")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # As the stage's CLI does: one thread per job.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        summary = synthesize_librispeech(
            root, num_train_utts=args.num_utts, num_dev_utts=1, num_test_utts=1, progress=False
        )
        prepare_manifests("librispeech", root / "LibriSpeech", root / "manifests", num_jobs=2)
        audio_s = summary.splits["train"].seconds
        speed = {}
        for num_jobs in (1, 2):
            start = time.perf_counter()
            compute_fbank(
                "librispeech", root / "manifests", root / f"fbank-{num_jobs}", num_jobs=num_jobs,
                perturb_speed=False, parts=["train-clean-100"], seconds_per_job=0,
            )
            speed[num_jobs] = audio_s / (time.perf_counter() - start)
    print(
        f"fbank ({type(get_fbank_extractor()).__name__}, {args.num_utts} utts, {audio_s:.0f} s audio): "
        f"{speed[1]:.0f} (1 job) / {speed[2]:.0f} (2 jobs) audio-s/s, x{speed[2] / speed[1]:.2f}"
    )


if __name__ == "__main__":
    main()
