#!/usr/bin/env python3
"""Where sherpa-onnx's decoding time goes: its streams + fbank alone, its whole decode, against
Lhotse's fbank and our onnxruntime runner (graph + greedy search) from features, 1 thread.

Each part is timed alone over every cut of the manifest, best of --repeats passes, seconds.
Takes an export-onnx.py cif_ce_nar file (sherpa-onnx's zipformer2_ctc layout) or, with
--encoder/--decoder/--joiner, a cif_transducer export.

  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sherpa_split.py --model /tmp/onnx_nar/model-epoch-7-avg-3.onnx \
    --tokens <recipe>/data/lang_bpe_500/tokens.txt --cuts <recipe>/data/fbank/librispeech_cuts_test-clean.jsonl.gz
"""
import argparse
import time
from pathlib import Path
from typing import Callable

from icefall_cif.corpora.audit import SAMPLE_RATE
from icefall_cif.data_prep import get_fbank_extractor
from icefall_cif.onnx_pretrained import OnnxCifModel, sherpa_recognizer, sherpa_transcribe
from icefall_cif.pretrained import read_audio


def best_of(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="cif_ce_nar export (model-*.onnx)")
    parser.add_argument("--encoder", type=Path)
    parser.add_argument("--decoder", type=Path)
    parser.add_argument("--joiner", type=Path)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--cuts", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from lhotse import load_manifest

    files = {"model": args.model, "encoder": args.encoder, "decoder": args.decoder, "joiner": args.joiner}
    model = OnnxCifModel(files, num_threads=1)
    recognizer = sherpa_recognizer(model, files, args.tokens, num_threads=1)
    audio = [read_audio(Path(c.recording.sources[0].source)) for c in load_manifest(args.cuts)]
    extractor = get_fbank_extractor()
    feats = [extractor.extract(a[None, :], SAMPLE_RATE) for a in audio]

    def sherpa_features() -> None:
        for samples in audio:
            recognizer.create_stream().accept_waveform(SAMPLE_RATE, samples)

    seconds = sum(len(a) for a in audio) / SAMPLE_RATE
    print(f"{len(audio)} utterances, {seconds:.1f} s of audio, best of {args.repeats}, seconds:")
    print(f"  Lhotse fbank                                   {best_of(lambda: [extractor.extract(a[None, :], SAMPLE_RATE) for a in audio], args.repeats):.3f}")
    print(f"  sherpa-onnx streams + its fbank                {best_of(sherpa_features, args.repeats):.3f}")
    print(f"  onnxruntime graph + our search, from features  {best_of(lambda: [model.transcribe_ids([f]) for f in feats], args.repeats):.3f}")
    print(f"  sherpa-onnx, whole decode                      {best_of(lambda: [sherpa_transcribe(recognizer, a) for a in audio], args.repeats):.3f}")


if __name__ == "__main__":
    main()
