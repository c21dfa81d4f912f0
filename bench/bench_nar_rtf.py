#!/usr/bin/env python3
"""Real-time factor of trained models and their decoding methods, side by side, on real cuts.

Each `--model LABEL=PRETRAINED_PT:METHOD[,OPTION=VALUE...]` is an export.py `pretrained.pt` and a
`--decoding-method` with its decode options (e.g. `beam_size=4,mask_threshold=0.999`). Every
model decodes the same cuts (precomputed fbank, batches of about `--max-duration` seconds sorted
by length, as decode.py's), encoder included; the passes alternate between the models so that a
change in the machine's load touches them alike. Prints per model the median RTF over
`--repeats` passes and its ratio to the first model's.

From the recipe directory (the cuts' feature paths are relative to it):

  cd egs/librispeech/ASR && OMP_NUM_THREADS=1 ../../../.venv/bin/python ../../../bench/bench_nar_rtf.py \
    --cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz \\
    --model teacher=exp/pretrained.pt:modified_beam_search,beam_size=4 --model nar=exp-nar/pretrained.pt:greedy_search
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "ASR" / "zipformer_cif"))

from recipe import RECIPE  # noqa: E402

from icefall_cif.decode.search import decode_batch  # noqa: E402
from icefall_cif.pretrained import load_pretrained  # noqa: E402
from icefall_cif.utils import AttributeDict  # noqa: E402


def parse_model(spec: str) -> Tuple[str, Path, str, Dict[str, float]]:
    """'LABEL=PATH:METHOD[,k=v...]' -> (label, path, method, {k: number})."""
    try:
        label, rest = spec.split("=", 1)
        path, method_opts = rest.rsplit(":", 1)
        method, *opts = method_opts.split(",")
        options = {k: float(v) if "." in v else int(v) for k, v in (o.split("=") for o in opts)}
    except ValueError:
        raise SystemExit(f"--model {spec}: expected LABEL=PRETRAINED_PT:METHOD[,option=value...]") from None
    return label, Path(path), method, options


def load_batches(cuts_path: Path, max_duration: float) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor]], float]:
    """Feature batches (N, T, 80), (N,) of the cuts, longest first, and the audio seconds."""
    from lhotse import load_manifest

    cuts = sorted(load_manifest(cuts_path), key=lambda c: -c.duration)
    batches, current, seconds = [], [], 0.0
    for cut in cuts:
        if current and sum(c.duration for c in current) + cut.duration > max_duration:
            batches.append(current)
            current = []
        current.append(cut)
        seconds += cut.duration
    batches.append(current)
    out = []
    for batch in batches:
        feats = [torch.from_numpy(c.load_features()) for c in batch]
        lens = torch.tensor([f.size(0) for f in feats])
        out.append((torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lens))
    return out, seconds


@torch.no_grad()
def decode_all(model, method: str, params: AttributeDict, batches) -> float:
    """Seconds to decode every batch, encoder included."""
    start = time.perf_counter()
    for x, x_lens in batches:
        encoder_out, encoder_out_lens = model.forward_encoder(x, x_lens)
        decode_batch(method, model, encoder_out, encoder_out_lens, params)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=Path, required=True, help="Cuts with precomputed fbank (decode.py's test set).")
    parser.add_argument("--model", action="append", required=True, help="LABEL=PRETRAINED_PT:METHOD[,option=value...]")
    parser.add_argument("--max-duration", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    batches, seconds = load_batches(args.cuts, args.max_duration)
    runs = []
    for spec in args.model:
        label, path, method, options = parse_model(spec)
        model, _ = load_pretrained(RECIPE, path)
        num_params = sum(p.numel() for p in model.parameters())
        runs.append((label, model, method, AttributeDict(options), num_params))
    times: Dict[str, List[float]] = {label: [] for label, *_ in runs}
    for _ in range(args.repeats):
        for label, model, method, params, _ in runs:
            times[label].append(decode_all(model, method, params, batches))
    print(f"{len(batches)} batches, {seconds:.1f} s of audio, 1 thread, median of {args.repeats} passes")
    print("| model | parameters | method | RTF | RTF / first |")
    print("| --- | ---: | --- | ---: | ---: |")
    first = statistics.median(times[runs[0][0]]) / seconds
    for label, _, method, params, num_params in runs:
        rtf = statistics.median(times[label]) / seconds
        opts = ", ".join(f"{k} {v}" for k, v in params.items())
        print(f"| {label} | {num_params / 1e6:.2f} M | {method}{f' ({opts})' if opts else ''} | {rtf:.4f} | "
              f"{rtf / first:.2f} |")


if __name__ == "__main__":
    main()
