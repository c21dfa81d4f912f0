#!/usr/bin/env python3
"""PyTorch vs onnxruntime vs sherpa-onnx on a test set: RTF at 1 thread, WER, agreement, file sizes.

Exports the model with export-onnx.py (fp32 and int8) into --onnx-dir, then decodes every cut of
the cut manifest from its audio file, one utterance at a time, with
  - pytorch:      pretrained.py's path (Lhotse fbank, the model, greedy_search);
  - onnxruntime:  onnx_pretrained.py's path (Lhotse fbank, the ONNX files, our greedy search);
  - sherpa-onnx:  its OfflineRecognizer (its own fbank, its greedy search);
each for fp32 and int8 files. Timed: samples in memory -> transcript (features included; model
loading and audio reading excluded), in --repeats passes that alternate between the runtimes.
RTF = median pass time / audio duration. Prints a markdown table, the
number of utterances whose transcript equals PyTorch's, and each differing utterance.

  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_onnx.py \
    --exp-dir /work/final/egs/librispeech/ASR/zipformer_cif/exp-demo-default --epoch 7 --avg 3 \
    --tokens /work/final/egs/librispeech/ASR/data/lang_bpe_500/tokens.txt \
    --cuts /work/final/egs/librispeech/ASR/data/fbank/librispeech_cuts_test-clean.jsonl.gz \
    --onnx-dir /tmp/onnx_demo
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "egs" / "librispeech" / "ASR" / "zipformer_cif"
sys.path.insert(0, str(RECIPE_DIR))

from recipe import RECIPE  # noqa: E402

from icefall_cif.corpora.audit import SAMPLE_RATE  # noqa: E402
from icefall_cif.data_prep import get_fbank_extractor  # noqa: E402
from icefall_cif.onnx_pretrained import REQUIRED_FILES, OnnxCifModel, sherpa_recognizer, sherpa_transcribe  # noqa: E402
from icefall_cif.pretrained import load_pretrained, read_audio, transcribe  # noqa: E402
from icefall_cif.scoring import compute_error_stats  # noqa: E402
from icefall_cif.tokenizer import Tokenizer, read_tokens_txt  # noqa: E402
from icefall_cif.utils import AttributeDict  # noqa: E402


def export(args: argparse.Namespace) -> None:
    common = ["--exp-dir", str(args.exp_dir), "--epoch", str(args.epoch), "--avg", str(args.avg),
              "--use-averaged-model", "1", "--tokens", str(args.tokens)]
    subprocess.run([sys.executable, str(RECIPE_DIR / "export.py"), *common, "--output",
                    str(args.onnx_dir / "pretrained.pt")], check=True, capture_output=True)
    subprocess.run([sys.executable, str(RECIPE_DIR / "export-onnx.py"), *common, "--output-dir", str(args.onnx_dir),
                    "--int8", "1", "--max-sym-per-frame", str(args.max_sym_per_frame)], check=True,
                   capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--avg", type=int, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--cuts", type=Path, required=True, help="Cut manifest whose recordings are decoded.")
    parser.add_argument("--onnx-dir", type=Path, required=True, help="Where the exports are written.")
    parser.add_argument("--max-sym-per-frame", type=int, default=3)
    parser.add_argument("--skip-export", action="store_true", help="Reuse the files already in --onnx-dir.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes over the test set per runtime.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.onnx_dir.mkdir(parents=True, exist_ok=True)
    if not args.skip_export:
        export(args)
    from lhotse import load_manifest

    cuts = load_manifest(args.cuts)
    audio = {c.id: read_audio(Path(c.recording.sources[0].source)) for c in cuts}
    refs = {c.id: c.supervisions[0].text for c in cuts}
    duration = sum(len(a) for a in audio.values()) / SAMPLE_RATE
    tokenizer = Tokenizer(read_tokens_txt(args.tokens))
    extractor = get_fbank_extractor()
    suffix = f"epoch-{args.epoch}-avg-{args.avg}"

    model, _ = load_pretrained(RECIPE, args.onnx_dir / "pretrained.pt")
    params = AttributeDict(method="greedy_search", max_sym_per_frame=args.max_sym_per_frame, timestamps=False)

    def pytorch(samples: np.ndarray) -> str:
        feats = torch.from_numpy(extractor.extract(samples[None, :], SAMPLE_RATE))
        return transcribe(model, tokenizer, [feats], params)[0][0]

    runners: Dict[str, Callable[[np.ndarray], str]] = {"pytorch fp32": pytorch}
    sizes = {"pytorch fp32": (args.onnx_dir / "pretrained.pt").stat().st_size}
    roles = REQUIRED_FILES[model.decoder_type]
    for precision, ext in (("fp32", ".onnx"), ("int8", ".int8.onnx")):
        files = {role: args.onnx_dir / f"{role}-{suffix}{ext}" for role in roles}
        onnx_model = OnnxCifModel(files, num_threads=1)

        def ort(samples: np.ndarray, m=onnx_model) -> str:
            feats = extractor.extract(samples[None, :], SAMPLE_RATE)
            return tokenizer.decode(m.transcribe_ids([feats])[0])

        size = sum(f.stat().st_size for f in files.values())
        runners[f"onnxruntime {precision}"] = ort
        sizes[f"onnxruntime {precision}"] = size
        if model.decoder_type != "cif_ce_ar":  # no sherpa-onnx layout fits the AR decoder
            recognizer = sherpa_recognizer(onnx_model, files, args.tokens, num_threads=1)
            runners[f"sherpa-onnx {precision}"] = lambda s, r=recognizer: sherpa_transcribe(r, s)
            sizes[f"sherpa-onnx {precision}"] = size

    hyps: Dict[str, Dict[str, str]] = {name: {} for name in runners}
    seconds: Dict[str, List[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(next(iter(audio.values())))  # warm-up: first-call allocations
    # The runtimes take turns in every repeat, so a burst of load from other jobs hits them alike.
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            for cut_id, samples in audio.items():
                hyps[name][cut_id] = run(samples)
            seconds[name].append(time.perf_counter() - start)

    print(f"{len(audio)} utterances, {duration:.1f} s of audio, 1 thread, max-sym-per-frame {args.max_sym_per_frame}, "
          f"RTF median (min) of {args.repeats} passes\n")
    print("| runtime | RTF | RTF / pytorch | WER (%) | same transcript as pytorch | model files (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rtf = {name: statistics.median(t) / duration for name, t in seconds.items()}
    reference = hyps["pytorch fp32"]
    for name in runners:
        stats = compute_error_stats([(cid, refs[cid].split(), hyps[name][cid].split()) for cid in audio])
        wer = 100.0 * (stats.num_ins + stats.num_del + stats.num_sub) / stats.ref_len
        same = sum(hyps[name][cid] == reference[cid] for cid in audio)
        print(f"| {name} | {rtf[name]:.4f} ({min(seconds[name]) / duration:.4f}) | {rtf[name] / rtf['pytorch fp32']:.2f} "
              f"| {wer:.2f} | {same}/{len(audio)} | {sizes[name] / 1e6:.1f} |")
    for name in runners:
        diffs: List[str] = [cid for cid in audio if hyps[name][cid] != reference[cid]]
        for cid in diffs:
            print(f"\n{name} differs on {cid}:\n  pytorch: {reference[cid]}\n  {name}: {hyps[name][cid]}")


if __name__ == "__main__":
    main()
