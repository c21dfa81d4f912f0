"""Peak memory and time of cut filtering + one training-sampler epoch on a large lazy manifest.

Compares, each in its own subprocess (so peak RSS is clean), on a synthetic manifest of
`--num-cuts` cuts (0.5-25 s, one supervision each, no audio):

- eager: the former `filter_cuts` (every cut read into a list, one batched `encode`, kept cuts
  collected into `CutSet.from_cuts`), reimplemented here for comparison;
- lazy: :func:`icefall_cif.datamodule.filter_cuts` (a lazy CutSet, filtered on every pass);

each followed by the train sampler that `AsrDataModule.train_dataloaders` builds (default
options: DynamicBucketingSampler, 30 buckets, shuffle, drop_last) and one full epoch of it. Both
must give the same batches (a digest of the epoch's cut ids is compared).

    .venv/bin/python bench/bench_filter.py                 # 1,000,000 cuts
    .venv/bin/python bench/bench_filter.py --num-cuts 20000
"""
import argparse
import gzip
import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

FRAME_SHIFT = 0.01
WORDS = "the of and a to in he was that it his her with as had for you on be at by but not from they".split()


class CharTokenizer:
    """Tokenizer stand-in (no trained BPE needed): one token per non-space character."""

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        return [[ord(ch) for ch in text if not ch.isspace()] for text in texts]


def cif_output_frames(num_frames: int) -> int:
    """The CIF model's encoder output length at --cif-downsample 2 (`model.num_output_frames`)."""
    return max(0, -(-(((num_frames - 7) // 2 + 1) // 2) // 2))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (VmHWM), in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_manifest(path: Path, num_cuts: int, seed: int = 0) -> None:
    """Write `num_cuts` MonoCut JSON lines directly (faster than building Lhotse objects).

    Rates of 4-22 characters per second make some cuts have more characters than the
    12.5 encoder frames per second, so all three removal reasons occur.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(2000):
        text = ""
        while len(text) < 600:
            text += rng.choice(WORDS) + " "
        texts.append(text)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=1) as f:
        for i in range(num_cuts):
            duration = round(rng.uniform(0.5, 25.0), 2)
            text = rng.choice(texts)[: max(1, int(duration * rng.uniform(4.0, 22.0)))].strip() or "a"
            rec_id = f"rec{i:07d}"
            cut = {
                "id": f"cut{i:07d}", "start": 0.0, "duration": duration, "channel": 0,
                "supervisions": [{"id": f"sup{i:07d}", "recording_id": rec_id, "start": 0.0, "duration": duration,
                                  "channel": 0, "text": text}],
                "recording": {"id": rec_id, "sources": [{"type": "file", "channels": [0], "source": f"/absent/{rec_id}.flac"}],
                              "sampling_rate": 16000, "num_samples": round(duration * 16000), "duration": duration,
                              "channel_ids": [0]},
                "type": "MonoCut",
            }
            f.write(json.dumps(cut) + "\n")
    tmp.rename(path)


def eager_filter(cuts, tokenizer, min_duration: float = 1.0, max_duration: float = 20.0):
    """The former eager `filter_cuts`: returns (kept CutSet, outcome counts)."""
    from lhotse import CutSet
    from lhotse.utils import compute_num_frames

    cuts = list(cuts)
    num_tokens = [len(ids) for ids in tokenizer.encode([" ".join(s.text for s in c.supervisions) for c in cuts])]
    kept = []
    counts = {"kept": 0, "too_short": 0, "too_long": 0, "too_many_tokens": 0}
    for cut, u in zip(cuts, num_tokens):
        if cut.duration < min_duration:
            counts["too_short"] += 1
        elif cut.duration > max_duration:
            counts["too_long"] += 1
        elif cif_output_frames(compute_num_frames(cut.duration, FRAME_SHIFT, cut.sampling_rate)) < u:
            counts["too_many_tokens"] += 1
        else:
            counts["kept"] += 1
            kept.append(cut)
    return CutSet.from_cuts(kept), counts


def child(mode: str, manifest: Path, max_duration: float) -> Dict:
    """Filter + build the train sampler + one epoch in this process; returns the measurements."""
    import warnings

    from lhotse import load_manifest_lazy

    from icefall_cif.datamodule import AsrDataModule, filter_cuts

    parser = argparse.ArgumentParser()
    AsrDataModule.add_arguments(parser)
    args = parser.parse_args(["--num-workers", "0", "--max-duration", str(max_duration)])
    base_mib = peak_rss_mib()  # after the imports (torch, lhotse): the floor of both modes

    t0 = time.perf_counter()
    cuts = load_manifest_lazy(manifest)
    if mode == "eager":
        kept, counts = eager_filter(cuts, CharTokenizer())
    else:
        kept, cut_filter = filter_cuts(cuts, CharTokenizer(), cif_output_frames)
    t_filter = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lhotse's buffer-size heuristic notice
        sampler = AsrDataModule(args).train_dataloaders(kept).sampler
    t_build = time.perf_counter() - t0 - t_filter
    if mode == "lazy":
        counts = cut_filter.counts  # the bucket count in train_dataloaders made one full pass

    sampler.set_epoch(0)
    digest = hashlib.sha1()
    num_batches = num_cuts = 0
    for batch in sampler:
        ids = [c.id for c in batch]
        digest.update("\n".join(ids).encode() + b"\0")
        num_batches += 1
        num_cuts += len(ids)
    t_epoch = time.perf_counter() - t0 - t_filter - t_build
    return {
        "mode": mode, "sampler": type(sampler).__name__, "counts": counts, "batches": num_batches,
        "cuts_in_batches": num_cuts, "digest": digest.hexdigest(), "filter_s": t_filter, "build_s": t_build,
        "epoch_s": t_epoch, "base_mib": base_mib, "peak_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-cuts", type=int, default=1_000_000)
    parser.add_argument("--max-duration", type=float, default=200.0, help="--max-duration of the sampler")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_filter"),
                        help="Where the synthetic manifest is written (and reused by later runs)")
    parser.add_argument("--child", choices=["eager", "lazy"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.manifest, args.max_duration)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    manifest = args.workdir / f"cuts_{args.num_cuts}.jsonl.gz"
    if not manifest.is_file():
        t0 = time.perf_counter()
        write_manifest(manifest, args.num_cuts)
        print(f"wrote {manifest} ({manifest.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    results = {}
    for mode in ("eager", "lazy"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--manifest", str(manifest), "--max-duration", str(args.max_duration)],
            check=True, capture_output=True, text=True,
        ).stdout
        results[mode] = r = json.loads(out.strip().splitlines()[-1])
        total = r["filter_s"] + r["build_s"] + r["epoch_s"]
        print(f"{mode:5s}: peak {r['peak_mib']:7.0f} MiB (after imports {r['base_mib']:.0f}), filter {r['filter_s']:6.1f} s, "
              f"sampler build {r['build_s']:6.1f} s, epoch {r['epoch_s']:6.1f} s, total {total:6.1f} s | "
              f"{r['sampler']}, {r['batches']} batches, {r['cuts_in_batches']} cuts, counts {r['counts']}", flush=True)
    eager, lazy = results["eager"], results["lazy"]
    same = (eager["digest"], eager["counts"]) == (lazy["digest"], lazy["counts"])
    print(f"bench_filter {args.num_cuts} cuts, --max-duration {args.max_duration:g}: eager peak {eager['peak_mib']:.0f} MiB, "
          f"lazy peak {lazy['peak_mib']:.0f} MiB ({lazy['peak_mib'] / eager['peak_mib']:.2f}x); identical batches and "
          f"counts: {same}")
    if not same:
        sys.exit("the lazy filter's batches or counts differ from the eager filter's")


if __name__ == "__main__":
    main()
