#!/usr/bin/env python3
"""Where an exported encoder graph spends its time in onnxruntime: per op type and per node.

Runs the graph over the fbank of every cut of the manifest (one utterance per run, 1 thread,
as pretrained.py and sherpa-onnx decode files) with onnxruntime's profiler on, after one
unprofiled pass to warm up, and prints the share of each op type and the slowest nodes, summed
over all runs. Kernel times only: the per-run overhead (inputs, outputs) is the rest of the wall time.

  OMP_NUM_THREADS=1 .venv/bin/python bench/profile_onnx.py --model exp/model-epoch-7-avg-3.onnx \
    --cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz --top 25
"""
import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from icefall_cif.corpora.audit import SAMPLE_RATE
from icefall_cif.data_prep import get_fbank_extractor
from icefall_cif.pretrained import read_audio


def kernel_times(profile_file: Path) -> List[Tuple[str, str, float]]:
    """(node name, op type, microseconds) of every kernel run in an onnxruntime profile."""
    events = json.loads(profile_file.read_text())
    return [
        (e["name"].removesuffix("_kernel_time"), e["args"]["op_name"], float(e["dur"]))
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an encoder-side graph of export-onnx.py")
    parser.add_argument("--cuts", type=Path, required=True)
    parser.add_argument("--top", type=int, default=20, help="how many of the slowest nodes to list")
    parser.add_argument("--module-depth", type=int, default=3,
                        help="group node names by their first N '/'-separated parts (the exported modules)")
    parser.add_argument("--optimization", choices=["basic", "extended", "all"], default="all",
                        help="onnxruntime graph optimization level (all: its default, which sherpa-onnx keeps)")
    args = parser.parse_args()
    import onnxruntime as ort
    from lhotse import load_manifest

    extractor = get_fbank_extractor()
    feats = [
        extractor.extract(read_audio(Path(c.recording.sources[0].source))[None, :], SAMPLE_RATE)
        for c in load_manifest(args.cuts)
    ]
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }

    def session(profile: bool) -> "ort.InferenceSession":
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = levels[args.optimization]
        options.enable_profiling = profile
        return ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])

    def run_all(sess: "ort.InferenceSession") -> float:
        start = time.perf_counter()
        for f in feats:
            sess.run(None, {"x": f[None].astype(np.float32), "x_lens": np.array([f.shape[0]], dtype=np.int64)})
        return time.perf_counter() - start

    wall = run_all(session(profile=False))
    profiled = session(profile=True)
    run_all(profiled)
    times = kernel_times(Path(profiled.end_profiling()))

    by_type: Dict[str, float] = defaultdict(float)
    by_node: Dict[Tuple[str, str], float] = defaultdict(float)
    by_module: Dict[str, float] = defaultdict(float)
    for name, op, us in times:
        by_type[op] += us
        by_node[(name, op)] += us
        # Names are the module paths of the traced model ("/front_end/encoder_embed/conv/..."); nodes
        # onnxruntime added (reorders, fused ops) have none.
        by_module["/".join(name.split("/")[: args.module_depth + 1]) if name.startswith("/") else "(onnxruntime)"] += us
    total = sum(by_type.values())
    print(f"{len(feats)} utterances; wall time unprofiled {wall:.3f} s; kernels {total / 1e6:.3f} s "
          f"({len(by_node)} nodes, optimization {args.optimization})")
    print("\nop type                          seconds   share")
    for op, us in sorted(by_type.items(), key=lambda kv: -kv[1]):
        if us / total >= 0.002:
            print(f"  {op:<30} {us / 1e6:7.3f}  {100 * us / total:5.1f}%")
    print(f"\nmodule (first {args.module_depth} parts of the node name)")
    for module, us in sorted(by_module.items(), key=lambda kv: -kv[1]):
        if us / total >= 0.005:
            print(f"  {100 * us / total:5.1f}%  {module}")
    print(f"\nslowest {args.top} nodes")
    for (name, op), us in sorted(by_node.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {100 * us / total:5.1f}%  {op:<18} {name}")


if __name__ == "__main__":
    main()
