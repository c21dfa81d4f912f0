#!/usr/bin/env python3
"""AR -> NAR knowledge transfer: the teacher on the fly (what training/loop.py does) vs its outputs
precomputed once and stored with Lhotse.

On the real demo data (train cuts, precomputed fbank, BPE-500 lang dir) and a trained teacher
(export.py's pretrained.pt), with a freshly built student (tiny Zipformer + cif_ce_nar, glancing
0.75, --kd-frame-scale 0.5 --kd-seq-scale 1.0), on `--num-batches` batches of the training sampler
(`make_sampler`, `--max-duration` seconds, its fixed seed), in one process:

  pass 1, the precomputation as a script would do it: per batch load and collate the features,
    `KdTeacher.targets(..., token_level=True)`, and write each cut's frame log-posteriors (T', V)
    and token log-posteriors (U, V) as float16 .npy files with Lhotse's NumpyFilesWriter, attached
    to the cut as custom `Array` fields (the storage of icefall_cif/plm_feats.py); then the cut
    manifest.
  pass 2, training as it would run: the manifest read back; per batch, in an order that rotates
    from batch to batch, (a) the student's step (forward with the KD targets, weighted_loss,
    backward; no optimizer), (b) the teacher on the fly, (c) loading the stored arrays of the
    batch's cuts and collating them into float32 (N, T', V) and (N, U, V) tensors.

Per-epoch figures are extrapolated from the batches by audio duration to the whole manifest. The
disk size of dense float16 targets is computed for every cut of the manifest (T' from the encoder's
frame formula, checked against the teacher's output; U from the tokenizer), with the top-k
variant (k values float16 + k indices int16 per row) beside it, and the teacher mass the top k
rows keep, measured on the batches. A warm-up batch runs untimed first.

  OMP_NUM_THREADS=1 .venv/bin/python bench/bench_kd_teacher.py [--num-batches 60] [--max-duration 15] \
      [--teacher /work/teacher/ls_transducer.pt] [--epochs 7] [--top-k 8,16]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "egs" / "librispeech" / "ASR" / "zipformer_cif"))

from lhotse import CutSet, load_manifest, load_manifest_lazy  # noqa: E402
from lhotse.cut import Cut  # noqa: E402
from lhotse.dataset.collation import collate_features  # noqa: E402
from lhotse.features.io import NumpyFilesWriter  # noqa: E402
from model import ModelConfig  # noqa: E402
from recipe import RECIPE  # noqa: E402

from icefall_cif.config import LossConfig  # noqa: E402
from icefall_cif.datamodule import make_sampler  # noqa: E402
from icefall_cif.kd import KdTargets, KdTeacher  # noqa: E402
from icefall_cif.model_contract import weighted_loss  # noqa: E402
from icefall_cif.tokenizer import Tokenizer  # noqa: E402
from icefall_cif.utils import pad_token_ids  # noqa: E402

ASR = Path("/work/final/egs/librispeech/ASR")
CTC_FIELD = "kd_ctc_log_probs"
TOKEN_FIELD = "kd_token_log_probs"
STEPS = ("student step", "teacher on the fly", "read stored targets")

Batch = Tuple[torch.Tensor, torch.Tensor, List[List[int]], torch.Tensor, torch.Tensor]


def encoder_frames(num_frames: int) -> int:
    """Feature frames (100 Hz) -> encoder (CTC) frames (25 Hz): Conv2dSubsampling's (T - 7) // 2,
    then the Zipformer's output downsampling ceil(T1 / 2) (model.num_output_frames without the CIF
    downsampling)."""
    return ((num_frames - 7) // 2 + 1) // 2


def collate(cuts: CutSet, tokenizer: Tokenizer, blank_id: int) -> Batch:
    """(x (N, T, 80), x_lens, token ids, y_padded (N, U), y_lens) of cuts already sorted longest first."""
    x, x_lens = collate_features(cuts)
    y = tokenizer.encode([c.supervisions[0].text for c in cuts])
    y_lens = torch.tensor([len(t) for t in y], dtype=torch.int64)
    return x, x_lens, y, pad_token_ids(y, blank_id, torch.device("cpu")), y_lens


def store(cuts: CutSet, targets: KdTargets, y_lens: torch.Tensor, writer: NumpyFilesWriter) -> List[Cut]:
    """Write each cut's valid rows of the teacher's outputs as float16 and attach them as Arrays."""
    out = []
    for n, cut in enumerate(cuts):
        ctc = targets.ctc_log_probs[n, : int(targets.ctc_lens[n])].numpy().astype(np.float16)
        tokens = targets.token_log_probs[n, : int(y_lens[n])].numpy().astype(np.float16)
        cut = cut.with_custom(CTC_FIELD, writer.store_array(f"{cut.id}-ctc", ctc))
        out.append(cut.with_custom(TOKEN_FIELD, writer.store_array(f"{cut.id}-tokens", tokens)))
    return out


def load(cuts: Sequence[Cut]) -> KdTargets:
    """The stored teacher outputs of a batch, collated as the teacher gives them (float32, zero-padded)."""
    ctc = [torch.from_numpy(c.load_custom(CTC_FIELD)).float() for c in cuts]
    tokens = [torch.from_numpy(c.load_custom(TOKEN_FIELD)).float() for c in cuts]
    return KdTargets(
        torch.nn.utils.rnn.pad_sequence(ctc, batch_first=True),
        torch.tensor([a.shape[0] for a in ctc], dtype=torch.int64),
        torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
    )


def valid_rows(targets: KdTargets, y_lens: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{"frame": (sum T', V), "token": (sum U, V)}: the teacher's log-posteriors without padding."""
    return {
        "frame": torch.cat([targets.ctc_log_probs[n, : int(t)] for n, t in enumerate(targets.ctc_lens)]),
        "token": torch.cat([targets.token_log_probs[n, : int(u)] for n, u in enumerate(y_lens)]),
    }


def topk_mass(targets: KdTargets, y_lens: torch.Tensor, ks: Sequence[int]) -> Dict[Tuple[str, int], List[float]]:
    """{(frame|token, k): the teacher probability mass of the k largest entries, one value per valid row}."""
    rows = valid_rows(targets, y_lens)
    return {(kind, k): r.exp().topk(k, dim=-1).values.sum(-1).tolist() for kind, r in rows.items() for k in ks}


def student_step(student: torch.nn.Module, batch: Batch, targets: KdTargets, loss_config: LossConfig,
                 batch_idx: int) -> None:
    """What compute_loss + backward do for one batch, without the optimizer."""
    x, x_lens, y, _, _ = batch
    losses = student(x, x_lens, y, loss_config, kd=targets)
    weighted_loss(student, losses, loss_config, batch_idx).backward()
    student.zero_grad(set_to_none=True)


def dir_bytes(path: Path) -> Tuple[int, int]:
    """(apparent size, allocated size) of the files under `path`, in bytes."""
    apparent = allocated = 0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def manifest_rows(cuts_path: Path, tokenizer: Tokenizer) -> Tuple[int, int, int, float]:
    """(cuts, encoder frames, tokens, audio seconds) of every cut in the manifest."""
    num_cuts = frames = tokens = 0
    seconds = 0.0
    for cut in load_manifest_lazy(cuts_path):
        num_cuts += 1
        frames += encoder_frames(cut.num_frames)
        tokens += len(tokenizer.encode([cut.supervisions[0].text])[0])
        seconds += cut.duration
    return num_cuts, frames, tokens, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=Path("/work/teacher/ls_transducer.pt"),
                        help="The teacher: export.py's pretrained.pt.")
    parser.add_argument("--cuts", type=Path, default=ASR / "data/fbank/librispeech_cuts_train-clean-100.jsonl.gz")
    parser.add_argument("--feature-root", type=Path, default=ASR,
                        help="The directory the manifest's relative feature paths start from.")
    parser.add_argument("--lang-dir", type=Path, default=ASR / "data/lang_bpe_500")
    parser.add_argument("--max-duration", type=float, default=15.0, help="Audio seconds per batch (as training).")
    parser.add_argument("--num-batches", type=int, default=60, help="Timed batches.")
    parser.add_argument("--epochs", type=int, default=7, help="Training epochs to cost (the demo's 7).")
    parser.add_argument("--top-k", default="8,16", help="k of the top-k storage variant.")
    parser.add_argument("--batch-idx", type=int, default=1000,
                        help="Training batch index for the warm-up schedules (past the demo's --warm-step).")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    ks = [int(k) for k in args.top_k.split(",")]

    tokenizer = Tokenizer.from_lang_dir(args.lang_dir)
    cpu = torch.device("cpu")
    teacher = KdTeacher.from_checkpoint(RECIPE, args.teacher, tokenizer, cpu)
    student = RECIPE.get_model(ModelConfig(vocab_size=tokenizer.vocab_size, encoder_config="tiny",
                                           decoder_type="cif_ce_nar")).train()
    student.set_batch_count(float(args.batch_idx))
    loss_config = LossConfig(glancing_ratio=0.75, kd_frame_scale=0.5, kd_seq_scale=1.0)
    blank = tokenizer.blank_id
    vocab = tokenizer.vocab_size

    cuts = load_manifest(args.cuts).with_features_path_prefix(str(args.feature_root))
    sampler = make_sampler(cuts, max_duration=args.max_duration, shuffle=True, drop_last=False, num_buckets=30)
    batches: List[CutSet] = []
    for batch_cuts in sampler:
        batches.append(batch_cuts.sort_by_duration(ascending=False))
        if len(batches) == args.num_batches + 1:
            break
    warmup, batches = batches[0], batches[1:]
    w = collate(warmup, tokenizer, blank)
    student_step(student, w, teacher.targets(w[0], w[1], w[3], w[4], token_level=True), loss_config, args.batch_idx)

    with tempfile.TemporaryDirectory(prefix="bench_kd_") as tmp:
        storage, manifest = Path(tmp) / "kd_targets", Path(tmp) / "cuts_kd.jsonl.gz"
        # Pass 1: the precomputation.
        pass1 = {"load features": 0.0, "teacher": 0.0, "write": 0.0}
        kept: List[KdTargets] = []
        stored: List[Cut] = []
        masses: Dict[Tuple[str, int], List[float]] = {}
        audio = 0.0
        with NumpyFilesWriter(storage) as writer:
            for batch_cuts in batches:
                audio += sum(c.duration for c in batch_cuts)
                t0 = time.perf_counter()
                batch = collate(batch_cuts, tokenizer, blank)
                t1 = time.perf_counter()
                targets = teacher.targets(batch[0], batch[1], batch[3], batch[4], token_level=True)
                t2 = time.perf_counter()
                stored += store(batch_cuts, targets, batch[4], writer)
                t3 = time.perf_counter()
                for name, t in zip(pass1, (t1 - t0, t2 - t1, t3 - t2)):
                    pass1[name] += t
                expected = torch.tensor([encoder_frames(c.num_frames) for c in batch_cuts])
                if not torch.equal(expected, targets.ctc_lens):
                    raise RuntimeError(f"encoder_frames {expected.tolist()} != teacher's {targets.ctc_lens.tolist()}")
                kept.append(targets)
                for key, values in topk_mass(targets, batch[4], ks).items():
                    masses.setdefault(key, []).extend(values)
            t0 = time.perf_counter()
            CutSet.from_cuts(stored).to_file(manifest)
            pass1["write"] += time.perf_counter() - t0
        apparent, allocated = dir_bytes(storage)

        # Pass 2: training, the three costs side by side.
        by_id = {c.id: c for c in load_manifest(manifest)}
        pass2 = dict.fromkeys(STEPS, 0.0)
        max_diff = 0.0
        for i, batch_cuts in enumerate(batches):
            batch = collate(batch_cuts, tokenizer, blank)
            cut_list = [by_id[c.id] for c in batch_cuts]
            for step in STEPS[i % 3:] + STEPS[: i % 3]:
                t0 = time.perf_counter()
                if step == "student step":
                    student_step(student, batch, kept[i], loss_config, args.batch_idx)
                elif step == "teacher on the fly":
                    teacher.targets(batch[0], batch[1], batch[3], batch[4], token_level=True)
                else:
                    read = load(cut_list)
                pass2[step] += time.perf_counter() - t0
            exact = valid_rows(kept[i], batch[4])
            for kind, rows in valid_rows(read, batch[4]).items():
                max_diff = max(max_diff, float((rows.exp() - exact[kind].exp()).abs().max()))

    num_cuts, frames, tokens, epoch_audio = manifest_rows(args.cuts, tokenizer)
    per_epoch = epoch_audio / audio
    student_s = pass2["student step"] * per_epoch
    teacher_s = pass2["teacher on the fly"] * per_epoch
    read_s = pass2["read stored targets"] * per_epoch
    once_s = sum(pass1.values()) * per_epoch
    saved_per_epoch = teacher_s - read_s
    break_even = once_s / saved_per_epoch if saved_per_epoch > 0 else float("inf")
    dense = (frames + tokens) * vocab * 2
    rows_per_hour = (frames + tokens) / epoch_audio * 3600
    n_cuts_batches = sum(len(b) for b in batches)

    teacher_params = sum(p.numel() for p in teacher.model.parameters())
    print(f"bench_kd_teacher: teacher {args.teacher.name} ({teacher_params / 1e6:.2f} M params, "
          f"{teacher.model.head.name}), student tiny cif_ce_nar "
          f"({sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params), {len(batches)} batches of "
          f"<= {args.max_duration:g} s ({n_cuts_batches} cuts, {audio:.1f} s of audio), {args.num_threads} thread(s); "
          f"manifest {num_cuts} cuts, {epoch_audio:.1f} s = 1 epoch, x{per_epoch:.2f} the batches")
    print("pass 1 (precompute) over the batches: " + ", ".join(f"{k} {v:.2f} s" for k, v in pass1.items()))
    print("pass 2 (training) over the batches: " + ", ".join(f"{k} {v:.2f} s" for k, v in pass2.items()))
    print(f"stored: {apparent / 2**20:.1f} MiB ({allocated / 2**20:.1f} MiB allocated) in {2 * n_cuts_batches} .npy "
          f"files, {apparent / audio / 1e3:.1f} kB per audio second; read-back max |p - p_fp16| {max_diff:.2e}")
    print()
    print("| per epoch (extrapolated by audio duration) | seconds | / student step |")
    print("| --- | ---: | ---: |")
    print(f"| student step (forward with KD targets, weighted loss, backward) | {student_s:.1f} | 1.00 |")
    print(f"| on the fly: the teacher, every epoch | {teacher_s:.1f} | {teacher_s / student_s:.3f} |")
    print(f"| precomputed: read + collate the stored targets, every epoch | {read_s:.2f} | {read_s / student_s:.4f} |")
    print(f"| precomputed: once, load features + teacher + write | {once_s:.1f} | {once_s / student_s:.3f} |")
    print()
    on_the_fly = args.epochs * teacher_s
    precomputed = once_s + args.epochs * read_s
    print(f"{args.epochs} epochs: on the fly {on_the_fly:.0f} s of teacher, precomputed {precomputed:.0f} s "
          f"(once {once_s:.0f} + {args.epochs} x {read_s:.1f}); saved {on_the_fly - precomputed:.0f} s = "
          f"{(on_the_fly - precomputed) / (args.epochs * student_s):.1%} of {args.epochs} epochs of student steps "
          f"({args.epochs * student_s:.0f} s); break-even after {break_even:.2f} epochs")
    print()
    print(f"| disk, float16 | this manifest ({epoch_audio / 3600:.2f} h, {frames} frames + {tokens} tokens) "
          f"| per hour of audio | 960 h |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| dense (T' + U) x V={vocab} x 2 B | {dense / 1e9:.3f} GB | {rows_per_hour * vocab * 2 / 1e9:.3f} GB "
          f"| {960 * rows_per_hour * vocab * 2 / 1e9:.0f} GB |")
    for k in ks:
        size = (frames + tokens) * k * 4
        print(f"| top-{k} values fp16 + indices int16 | {size / 1e9:.4f} GB | {rows_per_hour * k * 4 / 1e9:.4f} GB "
              f"| {960 * rows_per_hour * k * 4 / 1e9:.1f} GB |")
    print()
    for (kind, k), values in sorted(masses.items()):
        v = np.array(values)
        print(f"top-{k} teacher mass per {kind} row ({len(v)} rows): mean {v.mean():.5f}, 1st percentile "
              f"{np.percentile(v, 1):.4f}, min {v.min():.4f}")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average at the end)")


if __name__ == "__main__":
    main()
