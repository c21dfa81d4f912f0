"""Data preparation shared by the recipes' `prepare.sh` stages, for every registered corpus.

The recipes' `local/*.py` scripts are thin entry points into the `*_main` functions here, so
all recipes run the same code and differ only in the corpus they name; what is specific to a
corpus (its parts, tree, audit and Lhotse recipe) lives in its module of :mod:`icefall_cif.corpora`:

- stage 0 :func:`link_corpus` / :func:`find_corpus`: check a corpus tree and link it into `download/`;
- stage 1 :func:`prepare_manifests`: audit the corpus (unreadable or truncated audio, empty or missing
  transcripts), then the corpus's Lhotse recipe on the usable utterances;
- stage 2 :func:`compute_fbank`: 80-dim fbank cuts with lilcom archives, speed perturbation for train;
- stage 3 :func:`prepare_bpe_lang` / :func:`prepare_char_lang`: token files;
- stage 4 :func:`prepare_lm_text`: LM training text, as words/characters and as token ids;
- MUSAN :func:`prepare_musan`: noise cuts with features for `--enable-musan`.

Nothing is ever dropped silently: every skipped utterance is logged with its reason and written to a
TSV next to the stage's outputs.
"""
import argparse
import gzip
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from icefall_cif.corpora import DataPrepError, get_corpus
from icefall_cif.corpora.audit import CorpusAudit, SkippedItem

# Not used here: importable from here, where the datamodule and the tests find them.
from icefall_cif.corpora import CORPORA  # noqa: F401
from icefall_cif.corpora.aishell import AISHELL_TRANSCRIPT  # noqa: F401
from icefall_cif.corpora.audit import check_audio  # noqa: F401

SAMPLING_RATE = 16000
NUM_MEL_BINS = 80
SPEED_FACTORS = (0.9, 1.1)
# Audio seconds a feature-extraction worker must have to pay for its start-up (a spawned process
# importing torch and Lhotse: 5-10 s on 2 busy cores). bench/bench_fbank.py measured 2 jobs slower
# than 1 up to 1.6 h of audio on 2 cores, break-even extrapolated at ~3 h.
SECONDS_PER_JOB = 7200.0
# How many skipped items a stage names one by one in its log; the TSV always has all of them.
MAX_LOGGED_ITEMS = 100


def cuts_filename(corpus: str, part: str) -> str:
    """`<corpus>_cuts_<part>.jsonl.gz`, the stage-2 output the datamodule reads."""
    return f"{corpus}_cuts_{part}.jsonl.gz"


def manifest_path(manifest_dir: Path, corpus: str, kind: str, part: str) -> Path:
    """Lhotse's naming: `<corpus>_{recordings,supervisions}_<part>.jsonl.gz`."""
    return Path(manifest_dir) / f"{corpus}_{kind}_{part}.jsonl.gz"


def _require_file(path: Path, stage_hint: str) -> Path:
    if not Path(path).is_file():
        raise DataPrepError(f"{path} does not exist; create it with {stage_hint}")
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Stage 0: locate the corpus and link it into download/


def find_corpus(corpus: str, corpus_dir: Path) -> Path:
    """The directory Lhotse's recipe takes as `corpus_dir`, found from what a user passed.

    Which directories are accepted is the corpus's :meth:`~icefall_cif.corpora.Corpus.root`:
    LibriSpeech takes `LibriSpeech/` or its parent; AISHELL the parent of `data_aishell/` or
    `data_aishell/` itself.

    Raises:
      DataPrepError naming every missing directory or file when the tree is not the corpus.
    """
    spec = get_corpus(corpus)
    corpus_dir = Path(corpus_dir).absolute()
    if not corpus_dir.is_dir():
        raise DataPrepError(
            f"Corpus directory {corpus_dir} does not exist. Pass the directory holding {spec.layout}, "
            "or use --synthetic 1 to generate a small corpus in this layout."
        )
    root = spec.root(corpus_dir)
    problems = spec.problems(root)
    if not problems:
        return root
    raise DataPrepError(
        f"{corpus_dir} is not a usable {corpus} corpus: " + "; ".join(problems) + ". "
        f"Expected the layout {spec.layout}. Fix the tree or pass another --corpus-dir "
        "(or use --synthetic 1 to generate a small corpus in this layout)."
    )


def link_corpus(corpus: str, corpus_dir: Path, download_dir: Path) -> Path:
    """Check `corpus_dir` and make `download_dir/<download_subdir>` the corpus's root.

    Links the root there, or, for a corpus with a `linked_subdir` (AISHELL's Lhotse
    corpus_dir is the parent of `data_aishell/`), that directory of the root one level down.
    Returns `download_dir/<download_subdir>`.

    Raises:
      DataPrepError when `corpus_dir` is not the corpus (see :func:`find_corpus`), or a real
      directory, which is never replaced, stands where the link goes.
    """
    spec = get_corpus(corpus)
    root = find_corpus(corpus, corpus_dir)
    download_dir = Path(download_dir).absolute()
    download_dir.mkdir(parents=True, exist_ok=True)
    linked = download_dir / spec.download_subdir
    if spec.linked_subdir:
        linked.mkdir(exist_ok=True)
        target, link = root / spec.linked_subdir, linked / spec.linked_subdir
    else:
        target, link = root, linked
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        if link.resolve() == target.resolve():
            return linked
        raise DataPrepError(
            f"{link} already exists and is not a symlink; remove it (or drop --corpus-dir to use it as is)"
        )
    link.symlink_to(target, target_is_directory=True)
    logging.info(f"Linked {link} -> {target}")
    return linked


# ----------------------------------------------------------------------------------------------
# Stage 1: audit + Lhotse manifests


def log_skipped(items: Sequence[SkippedItem], tsv: Path, what: str) -> None:
    """Write every skipped item to `tsv` and log them (counts per reason, then the items)."""
    tsv.parent.mkdir(parents=True, exist_ok=True)
    with open(tsv, "w", encoding="utf-8") as f:
        f.write("part\tutt_id\treason\tpath\n")
        for it in items:
            f.write(f"{it.part}\t{it.utt_id}\t{it.reason}\t{it.path}\n")
    if not items:
        logging.info(f"{what}: nothing skipped")
        return
    # A missing-audio transcript line is routine in AISHELL (unreleased utterances): count it only.
    loud = [it for it in items if it.part != "-"]
    quiet = len(items) - len(loud)
    if quiet:
        logging.info(f"{what}: {quiet} transcript line(s) have no audio file (normal for AISHELL); see {tsv}")
    if not loud:
        return
    # Reasons read "<kind>: <details>" or "<kind> (<details>)"; count per kind.
    by_reason = Counter(it.reason.split(":")[0].split(" (")[0] for it in loud)
    logging.warning(
        f"{what}: skipped {len(loud)} utterance(s): "
        + ", ".join(f"{n} {reason}" for reason, n in by_reason.most_common())
        + f". The full list is in {tsv}; fix or remove those files and re-run this stage to include them."
    )
    for it in loud[:MAX_LOGGED_ITEMS]:
        logging.warning(f"  skipped {it.part}/{it.utt_id}: {it.reason}{' [' + it.path + ']' if it.path else ''}")
    if len(loud) > MAX_LOGGED_ITEMS:
        logging.warning(f"  ... and {len(loud) - MAX_LOGGED_ITEMS} more in {tsv}")


def prepare_manifests(corpus: str, corpus_dir: Path, output_dir: Path, num_jobs: int = 1) -> CorpusAudit:
    """Stage 1: Lhotse recording/supervision manifests of the usable utterances.

    The corpus is audited first; Lhotse's recipe then runs on a view of the corpus without the
    bad items (so it neither crashes on them nor drops them silently), and the recordings are
    pointed back at the original audio files. Writes
    `output_dir/<corpus>_{recordings,supervisions}_<part>.jsonl.gz` and `<corpus>_skipped.tsv`.
    """
    from lhotse import RecordingSet
    from lhotse.utils import fastcopy

    spec = get_corpus(corpus)
    corpus_dir = find_corpus(corpus, corpus_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    logging.info(f"Auditing {corpus} in {corpus_dir} (parts: {', '.join(spec.parts)})")
    audit = spec.audit(corpus_dir, num_jobs)
    tsv = output_dir / f"{corpus}_skipped.tsv"
    log_skipped(audit.skipped, tsv, f"{corpus} manifests")
    if audit.num_normalized:
        raw, text = audit.normalized_example
        logging.info(f"{audit.num_normalized} transcripts rewritten in {corpus}'s conventions, e.g. {raw!r} -> {text!r}")
    empty = [p for p in spec.parts if not audit.utterances[p]]
    if empty:
        raise DataPrepError(
            f"No usable utterances in {corpus} part(s) {', '.join(empty)} under {corpus_dir}; "
            f"the reasons are listed in {tsv}"
        )

    originals = {u.utt_id: u.audio for utts in audit.utterances.values() for u in utts}
    with tempfile.TemporaryDirectory(prefix=f".{corpus}_view_", dir=output_dir) as tmp:
        view = Path(tmp)
        spec.write_view(audit, view)
        manifests = spec.lhotse_manifests(view, num_jobs)

    for part in spec.parts:
        recordings = RecordingSet.from_recordings(
            fastcopy(r, sources=[fastcopy(s, source=str(originals[r.id])) for s in r.sources])
            for r in manifests[part]["recordings"]
        )
        supervisions = manifests[part]["supervisions"]
        recordings.to_file(manifest_path(output_dir, corpus, "recordings", part))
        supervisions.to_file(manifest_path(output_dir, corpus, "supervisions", part))
        hours = sum(r.duration for r in recordings) / 3600
        logging.info(f"{corpus} {part}: {len(recordings)} utterances, {hours:.3f} h")
    return audit


# ----------------------------------------------------------------------------------------------
# Stage 2: fbank


def get_fbank_extractor():
    """kaldifeat's fbank when installed (faster), else Lhotse's pure-PyTorch `Fbank`; both 80-dim."""
    from lhotse.utils import is_module_available

    if is_module_available("kaldifeat"):
        from lhotse.features.kaldifeat import KaldifeatFbank, KaldifeatFbankConfig, KaldifeatMelOptions

        return KaldifeatFbank(KaldifeatFbankConfig(mel_opts=KaldifeatMelOptions(num_bins=NUM_MEL_BINS)))
    from lhotse import Fbank, FbankConfig

    return Fbank(FbankConfig(num_mel_bins=NUM_MEL_BINS))


def _write_atomic(cuts, path: Path) -> None:
    """Write a manifest so an interrupted run never leaves a partial file that looks finished."""
    tmp = path.with_name(f".tmp.{path.name}")
    cuts.to_file(tmp)
    os.replace(tmp, path)


def compute_fbank(
    corpus: str,
    manifest_dir: Path,
    output_dir: Path,
    num_jobs: int = 1,
    perturb_speed: bool = True,
    parts: Optional[Sequence[str]] = None,
    seconds_per_job: float = SECONDS_PER_JOB,
) -> Dict[str, int]:
    """Stage 2: cuts with 80-dim fbank for each part; returns the number of cuts per part.

    Writes `output_dir/<corpus>_cuts_<part>.jsonl.gz` and lilcom archives
    `<corpus>_feats_<part>[.lca|/]`. The train part also gets speed-perturbed copies (factors 0.9
    and 1.1, ids suffixed `_sp0.9`/`_sp1.1`, audio resampled by Lhotse). A part whose cuts file
    already exists is skipped, so an interrupted stage resumes where it stopped. A part uses at
    most one job per `seconds_per_job` seconds of audio (0: always `num_jobs`), as a worker
    process costs seconds to start.
    """
    spec = get_corpus(corpus)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    extractor = get_fbank_extractor()
    logging.info(f"Feature extractor: {type(extractor).__name__}, {NUM_MEL_BINS} bins, up to {num_jobs} job(s)")
    todo = []
    for part in parts or spec.parts:
        out = output_dir / cuts_filename(corpus, part)
        if out.is_file():
            logging.info(f"{out} already exists - skipping {part}")
            continue
        cuts = _part_cuts(corpus, part, manifest_dir, perturb_speed and part == spec.train_part)
        seconds = sum(c.duration for c in cuts)
        jobs = num_jobs if seconds_per_job <= 0 else max(1, min(num_jobs, int(seconds // seconds_per_job)))
        todo.append((part, out, cuts, jobs))
        logging.info(f"{corpus} {part}: {len(cuts)} cuts, {seconds / 3600:.2f} h of audio, {jobs} job(s)")
    counts = {}
    with _executor(max((jobs for *_, jobs in todo), default=1)) as ex:
        for part, out, cuts, jobs in todo:
            counts[part] = _extract(corpus, part, cuts, out, output_dir, extractor, jobs, ex)
    return counts


@contextmanager
def _executor(num_jobs: int):
    """One worker pool for a whole stage: spawning workers costs seconds (each imports torch)."""
    if num_jobs <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")  # as Lhotse: forked torch workers can deadlock
    with ProcessPoolExecutor(num_jobs, mp_context=ctx, initializer=_single_threaded_worker) as ex:
        yield ex


def _single_threaded_worker() -> None:
    # Each job is one process; torch's own threads would only oversubscribe the cores.
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _part_cuts(corpus: str, part: str, manifest_dir: Path, perturb_speed: bool):
    """Cuts of a part from its stage-1 manifests, at 16 kHz, with speed-perturbed copies if asked."""
    from lhotse import CutSet, load_manifest

    hint = "prepare.sh stage 1 (./prepare.sh --stage 1 --stop-stage 1)"
    recordings = load_manifest(_require_file(manifest_path(manifest_dir, corpus, "recordings", part), hint))
    supervisions = load_manifest(_require_file(manifest_path(manifest_dir, corpus, "supervisions", part), hint))
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions).resample(SAMPLING_RATE)
    if perturb_speed:
        logging.info(f"{part}: adding speed-perturbed copies (factors {SPEED_FACTORS})")
        cuts = CutSet.from_cuts(list(cuts) + [c for factor in SPEED_FACTORS for c in cuts.perturb_speed(factor)])
    return cuts


def _extract(
    corpus: str,
    part: str,
    cuts,
    out: Path,
    output_dir: Path,
    extractor,
    num_jobs: int,
    executor: Optional[ProcessPoolExecutor],
) -> int:
    """Compute and store the features of `cuts`, write them to `out`; returns the number written."""
    from lhotse import LilcomChunkyWriter

    wanted = [c.id for c in cuts]
    cuts = cuts.compute_and_store_features(
        extractor=extractor,
        storage_path=output_dir / f"{corpus}_feats_{part}",
        num_jobs=num_jobs,
        executor=executor if num_jobs > 1 else None,
        storage_type=LilcomChunkyWriter,
    )
    # Lhotse drops cuts whose audio fails to load; name them instead of losing them quietly.
    done = {c.id for c in cuts}
    lost = [cid for cid in wanted if cid not in done]
    if lost:
        log_skipped(
            [SkippedItem(part, cid, "audio failed to load during feature extraction", "") for cid in lost],
            output_dir / f"{corpus}_fbank_skipped_{part}.tsv",
            f"{corpus} fbank {part}",
        )
    if not done:
        raise DataPrepError(f"Feature extraction produced no cuts for {corpus} {part}; see the log above")
    _write_atomic(cuts, out)
    logging.info(f"Wrote {out} ({len(done)} cuts)")
    return len(done)


# ----------------------------------------------------------------------------------------------
# Stage 3: tokens


def load_texts(manifest_dir: Path, corpus: str, part: str) -> List[Tuple[str, str]]:
    """(utterance id, transcript) pairs of a part, from its stage-1 supervision manifest.

    Reads the JSON lines directly: importing Lhotse (and torch) would triple the run time of
    the text-only stages.
    """
    path = _require_file(
        manifest_path(manifest_dir, corpus, "supervisions", part), "prepare.sh stage 1 (--stage 1 --stop-stage 1)"
    )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [(sup["id"], sup["text"]) for sup in map(json.loads, f)]


def train_bpe_model(lang_dir: Path, transcript: Path, vocab_size: int) -> None:
    """sentencepiece unigram with icefall's symbols `<blk>`=0, `<sos/eos>`=1, `<unk>`=2.

    Writes `lang_dir/bpe.model` and `lang_dir/tokens.txt`.
    """
    import sentencepiece as spm

    prefix = lang_dir / f"unigram_{vocab_size}"
    try:
        spm.SentencePieceTrainer.train(
            input=str(transcript),
            vocab_size=vocab_size,
            model_type="unigram",
            model_prefix=str(prefix),
            input_sentence_size=100000000,
            character_coverage=1.0,
            user_defined_symbols=["<blk>", "<sos/eos>"],
            unk_id=2,
            bos_id=-1,
            eos_id=-1,
            minloglevel=1,
        )
    except RuntimeError as e:
        raise DataPrepError(
            f"sentencepiece could not train a {vocab_size}-token model on {transcript}: {str(e).rstrip('.')}. "
            "The training text is too small for this vocabulary: pass a smaller --vocab-sizes "
            "(the error above names the largest possible value) or use a larger corpus."
        ) from e
    shutil.copyfile(f"{prefix}.model", lang_dir / "bpe.model")
    sp = spm.SentencePieceProcessor()
    sp.load(str(lang_dir / "bpe.model"))
    with open(lang_dir / "tokens.txt", "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)} {i}\n")


def _load_tokenizer(lang_dir: Path):
    from icefall_cif.tokenizer import Tokenizer

    try:
        return Tokenizer.from_lang_dir(lang_dir)
    except (FileNotFoundError, ValueError) as e:
        raise DataPrepError(str(e)) from e


def report_uncovered(lang_dir: Path, texts: Dict[str, List[Tuple[str, str]]]) -> int:
    """Log and list (in `lang_dir/oov_utterances.tsv`) utterances with characters outside the tokens.

    Returns how many utterances are affected. They are kept: scoring uses their true text, and
    the model can only produce `<unk>` for those characters.
    """
    tokenizer = _load_tokenizer(lang_dir)
    tsv = lang_dir / "oov_utterances.tsv"
    rows = []
    for part, pairs in texts.items():
        for utt_id, text in pairs:
            unknown = tokenizer.unknown_units(text)
            if unknown:
                rows.append((part, utt_id, "".join(sorted(set(unknown))), len(unknown)))
    with open(tsv, "w", encoding="utf-8") as f:
        f.write("part\tutt_id\tchars\tcount\n")
        f.writelines(f"{p}\t{u}\t{c}\t{n}\n" for p, u, c, n in rows)
    if rows:
        chars = Counter()
        for _, _, c, n in rows:
            chars.update(c)
        logging.warning(
            f"{len(rows)} utterance(s) contain {len(chars)} character(s) that are not in {lang_dir} "
            f"({''.join(sorted(chars))!r}); they map to <unk> and will count as errors in scoring. "
            f"They are listed in {tsv}. To cover them, add text containing them to the training data."
        )
        for p, u, c, n in rows[:MAX_LOGGED_ITEMS]:
            logging.warning(f"  {p}/{u}: {n} uncovered unit(s) {c!r}")
        if len(rows) > MAX_LOGGED_ITEMS:
            logging.warning(f"  ... and {len(rows) - MAX_LOGGED_ITEMS} more in {tsv}")
    else:
        logging.info(f"All dev/test characters are covered by {lang_dir}")
    return len(rows)


def _other_parts_texts(corpus: str, manifest_dir: Path) -> Dict[str, List[Tuple[str, str]]]:
    spec = get_corpus(corpus)
    return {p: load_texts(manifest_dir, corpus, p) for p in spec.parts if p != spec.train_part}


def prepare_bpe_lang(corpus: str, manifest_dir: Path, lang_dir: Path, vocab_size: int) -> None:
    """Stage 3 (BPE): `lang_dir/{transcript_words.txt,bpe.model,tokens.txt}` from the train transcripts."""
    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    spec = get_corpus(corpus)
    transcript = lang_dir / "transcript_words.txt"
    texts = load_texts(manifest_dir, corpus, spec.train_part)
    transcript.write_text("".join(f"{t}\n" for _, t in texts), encoding="utf-8")
    logging.info(f"Training a {vocab_size}-token unigram model on {len(texts)} transcripts")
    train_bpe_model(lang_dir, transcript, vocab_size)
    report_uncovered(lang_dir, _other_parts_texts(corpus, manifest_dir))


def prepare_char_lang(corpus: str, manifest_dir: Path, lang_dir: Path) -> None:
    """Stage 3 (characters): `lang_dir/tokens.txt` = `<blk> 0`, `<sos/eos> 1`, `<unk> 2`, then the
    train transcripts' characters in code-point order."""
    from icefall_cif.tokenizer import SPECIAL_SYMBOLS

    lang_dir = Path(lang_dir)
    lang_dir.mkdir(parents=True, exist_ok=True)
    spec = get_corpus(corpus)
    texts = load_texts(manifest_dir, corpus, spec.train_part)
    chars = sorted({ch for _, t in texts for ch in t if not ch.isspace()})
    with open(lang_dir / "tokens.txt", "w", encoding="utf-8") as f:
        for i, sym in enumerate(list(SPECIAL_SYMBOLS) + chars):
            f.write(f"{sym} {i}\n")
    (lang_dir / "text").write_text("".join(f"{t}\n" for _, t in texts), encoding="utf-8")
    logging.info(f"{lang_dir}/tokens.txt: {len(chars)} characters from {len(texts)} train transcripts")
    report_uncovered(lang_dir, _other_parts_texts(corpus, manifest_dir))


# ----------------------------------------------------------------------------------------------
# Stage 4: LM text


def prepare_lm_text(corpus: str, manifest_dir: Path, lm_dir: Path, lang_dirs: Sequence[Path]) -> None:
    """Stage 4: text for the fusion LM.

    Writes `lm_dir/{train,dev}_text.txt` (one transcript per line, normalized as the ASR training
    sees it) and, per lang dir, `lm_dir/<lang dir name>/{train,dev}_tokens.txt` (space-separated
    token ids of the same lines).
    """
    spec = get_corpus(corpus)
    lm_dir = Path(lm_dir)
    lm_dir.mkdir(parents=True, exist_ok=True)
    for role in ("train", "dev"):
        pairs = load_texts(manifest_dir, corpus, spec.splits[role])
        (lm_dir / f"{role}_text.txt").write_text("".join(f"{t}\n" for _, t in pairs), encoding="utf-8")
        for lang_dir in lang_dirs:
            tokenizer = _load_tokenizer(lang_dir)
            out = lm_dir / Path(lang_dir).name / f"{role}_tokens.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            ids = tokenizer.encode([t for _, t in pairs])
            out.write_text("".join(" ".join(map(str, seq)) + "\n" for seq in ids), encoding="utf-8")
            logging.info(f"Wrote {out} ({len(ids)} lines, {sum(map(len, ids))} tokens)")
        logging.info(f"Wrote {lm_dir / f'{role}_text.txt'} ({len(pairs)} lines)")


# ----------------------------------------------------------------------------------------------
# MUSAN


def _longer_than_5s(cut) -> bool:
    return cut.duration > 5


def prepare_musan(musan_dir: Path, manifest_dir: Path, output_dir: Path, num_jobs: int = 1) -> int:
    """MUSAN manifests (Lhotse's recipe) and `output_dir/musan_cuts.jsonl.gz`: 5-10 s windows with
    fbank, the noise pool of `--enable-musan`. Returns the number of cuts."""
    from lhotse import CutSet, LilcomChunkyWriter, combine
    from lhotse.recipes import prepare_musan as lhotse_prepare_musan

    musan_dir = Path(musan_dir)
    parts = [
        p for p in ("music", "speech", "noise")
        if (musan_dir / p).is_dir() and next((musan_dir / p).rglob("*.wav"), None) is not None
    ]
    if not parts:
        raise DataPrepError(
            f"--musan-dir {musan_dir}: no music/, speech/ or noise/ directory with .wav files "
            "(expected the openslr 17 layout musan/{music,speech,noise}/...)"
        )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / "musan_cuts.jsonl.gz"
    manifests = lhotse_prepare_musan(musan_dir, output_dir=manifest_dir, parts=parts, use_vocals=False)
    cuts = (
        CutSet.from_manifests(recordings=combine(m["recordings"] for m in manifests.values()))
        .resample(SAMPLING_RATE)
        .cut_into_windows(10.0)
        .filter(_longer_than_5s)
        .to_eager()
    )
    if len(cuts) == 0:
        raise DataPrepError(f"{musan_dir}: no recording is longer than 5 s; MUSAN cuts need 5-10 s windows")
    cuts = cuts.compute_and_store_features(
        extractor=get_fbank_extractor(),
        storage_path=output_dir / "musan_feats",
        num_jobs=num_jobs,
        storage_type=LilcomChunkyWriter,
    )
    _write_atomic(cuts, out)
    logging.info(f"Wrote {out} ({len(cuts)} cuts from {', '.join(parts)})")
    return len(cuts)


# ----------------------------------------------------------------------------------------------
# Command-line entry points used by egs/*/ASR/local/*.py


def _setup_logging(log_file: Optional[Path]) -> None:
    fmt = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
    handlers: List[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(format=fmt, level=logging.INFO, handlers=handlers, force=True)


def _run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], body: Callable) -> None:
    """Parse options, set up logging and turn a DataPrepError into a one-line error and exit 1."""
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "log_file", None))
    logging.info(f"{Path(sys.argv[0]).name} {vars(args)}")
    try:
        body(args)
    except DataPrepError as e:
        logging.error(str(e))
        sys.exit(1)


def _base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--log-file", type=Path, default=None, help="Also append the log to this file.")
    return parser


def corpus_main(corpus: str, argv: Optional[Sequence[str]] = None) -> None:
    """Stage 0: link --corpus-dir into --download-dir, or check what is already there."""
    spec = get_corpus(corpus)
    parser = _base_parser(f"Stage 0: check a {corpus} corpus and link it into download/.")
    parser.add_argument("--corpus-dir", type=Path, default=None, help=f"An existing corpus: {spec.layout}.")
    parser.add_argument("--download-dir", type=Path, default=Path("download"))

    def body(args):
        if args.corpus_dir is not None:
            link_corpus(corpus, args.corpus_dir, args.download_dir)
        found = args.download_dir / spec.download_subdir
        if not found.exists():
            raise DataPrepError(
                f"No {corpus} corpus in {found}. Pass --corpus-dir DIR (a local copy: {spec.layout}) "
                "or --synthetic 1 (generate a small one) to prepare.sh"
            )
        logging.info(f"{corpus} corpus OK: {find_corpus(corpus, found)}")

    _run_cli(parser, argv, body)


def manifests_main(corpus: str, argv: Optional[Sequence[str]] = None) -> None:
    spec = get_corpus(corpus)
    parser = _base_parser(f"Stage 1: Lhotse manifests for {corpus}, skipping (and listing) bad utterances.")
    parser.add_argument("--corpus-dir", type=Path, default=Path("download") / spec.download_subdir)
    parser.add_argument("--output-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--num-jobs", type=int, default=1)
    _run_cli(parser, argv, lambda a: prepare_manifests(corpus, a.corpus_dir, a.output_dir, a.num_jobs))


def fbank_main(corpus: str, argv: Optional[Sequence[str]] = None) -> None:
    import torch

    from icefall_cif.utils import str2bool

    parser = _base_parser(f"Stage 2: 80-dim fbank cuts for {corpus}.")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--num-jobs", type=int, default=1)
    parser.add_argument("--perturb-speed", type=str2bool, default=True,
                        help="Add 0.9x and 1.1x speed-perturbed copies of the train part.")
    # One thread per job: with several processes, intra-op threads only oversubscribe the cores.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    _run_cli(
        parser, argv,
        lambda a: compute_fbank(corpus, a.manifest_dir, a.output_dir, a.num_jobs, a.perturb_speed),
    )


def bpe_main(corpus: str, argv: Optional[Sequence[str]] = None) -> None:
    parser = _base_parser("Stage 3: sentencepiece unigram tokens (bpe.model, tokens.txt).")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--lang-dir", type=Path, required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    _run_cli(parser, argv, lambda a: prepare_bpe_lang(corpus, a.manifest_dir, a.lang_dir, a.vocab_size))


def char_main(corpus: str, argv: Optional[Sequence[str]] = None) -> None:
    parser = _base_parser("Stage 3: character tokens (tokens.txt).")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_char"))
    _run_cli(parser, argv, lambda a: prepare_char_lang(corpus, a.manifest_dir, a.lang_dir))


def lm_text_main(corpus: str, argv: Optional[Sequence[str]] = None) -> None:
    parser = _base_parser("Stage 4: LM training text and its token-id version per lang dir.")
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--lm-dir", type=Path, default=Path("data/lm"))
    parser.add_argument("--lang-dirs", type=Path, nargs="+", required=True)
    _run_cli(parser, argv, lambda a: prepare_lm_text(corpus, a.manifest_dir, a.lm_dir, a.lang_dirs))


def musan_main(argv: Optional[Sequence[str]] = None) -> None:
    import torch

    parser = _base_parser("MUSAN manifests and fbank cuts for noise augmentation (--enable-musan).")
    parser.add_argument("--musan-dir", type=Path, required=True)
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--output-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--num-jobs", type=int, default=1)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    _run_cli(parser, argv, lambda a: prepare_musan(a.musan_dir, a.manifest_dir, a.output_dir, a.num_jobs))
