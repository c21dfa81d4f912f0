"""Shared by test_train.py and test_decode.py: a tiny prepared corpus and tiny trained models.

The test modules load this file as a pytest plugin (`pytest_plugins = ["recipe_fixtures"]`), so
each session fixture is built at most once per session, whichever module asks first:

- :func:`tiny_corpus`: `prepare.sh --synthetic 1` stages 0-3 on 12/3/3 utterances, with two BPE
  vocabularies (64 for the models, 40 for the wrong-vocabulary checks);
- :func:`tiny_model`: a ~0.4 M-parameter cif_ce_ar model trained for 2 epochs in this process
  (fixed seed, `--num-workers 0`), with batch checkpoints every 2 batches;
- :func:`ddp_model`: a cif_transducer trained for 1 epoch by `train.py --world-size 2` (gloo),
  cut ids of every batch logged per rank (`--log-level debug`);
- :func:`ngram_lm`: a 3-gram token LM of the training transcripts, for the fusion checks.
"""
import logging
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRI = REPO / "egs" / "librispeech" / "ASR"
NUM_UTTS = {"train": 12, "dev": 3, "test": 3}
VOCAB_SIZE = 64
OTHER_VOCAB_SIZE = 40

# A Zipformer of two 48-dim stacks, small decoders: one training batch takes well under a second.
TINY_ENCODER = [
    "--encoder-config", "tiny", "--num-encoder-layers", "1,1", "--downsampling-factor", "1,2",
    "--encoder-dim", "48,48", "--feedforward-dim", "96,96", "--num-heads", "2,2",
    "--encoder-unmasked-dim", "32,32", "--cnn-module-kernel", "15,15", "--cif-hidden-dim", "32",
]
CE_AR_MODEL = TINY_ENCODER + [
    "--decoder-type", "cif_ce_ar", "--ce-decoder-dim", "32", "--ce-decoder-layers", "1", "--ce-decoder-heads", "2",
]
TRANSDUCER_MODEL = TINY_ENCODER + ["--decoder-type", "cif_transducer", "--decoder-dim", "32", "--joiner-dim", "32"]


@dataclass
class Corpus:
    """A prepared recipe directory (data/fbank, data/lang_bpe_*)."""

    root: Path

    @property
    def manifest_dir(self) -> Path:
        return self.root / "data" / "fbank"

    @property
    def lang_dir(self) -> Path:
        return self.root / "data" / f"lang_bpe_{VOCAB_SIZE}"

    @property
    def other_lang_dir(self) -> Path:
        return self.root / "data" / f"lang_bpe_{OTHER_VOCAB_SIZE}"

    def data_options(self, max_duration: float = 10.0) -> List[str]:
        return [
            "--manifest-dir", str(self.manifest_dir), "--lang-dir", str(self.lang_dir),
            "--max-duration", str(max_duration), "--num-workers", "0", "--num-threads", "1",
        ]


@dataclass
class TrainedModel:
    """A finished training run: its exp dir and the options it was trained with."""

    corpus: Corpus
    exp_dir: Path
    model_options: List[str]
    train_options: List[str]
    output: str = ""

    @property
    def train_log(self) -> str:
        return "".join(p.read_text() for p in sorted((self.exp_dir / "log").glob("log-train-*")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(script: str, args: List[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run zipformer_cif/<script> of the LibriSpeech recipe with this interpreter; fail with its output."""
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextmanager
def preserved_logging() -> Iterator[None]:
    """The training/decoding loops reconfigure the root logger; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run from the recipe directory, as icefall scripts do: cut files name features relative to it."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def train_in_process(args: List[str], corpus: "Corpus") -> None:
    """`train.py ARGS` run from the corpus' recipe directory, in this process (single process)."""
    from recipe import RECIPE

    from icefall_cif import training

    with working_dir(corpus.root), preserved_logging():
        training.launch(training.get_parser(RECIPE).parse_args(args), RECIPE)


def decode_in_process(args: List[str], corpus: "Corpus") -> Dict[str, float]:
    """`decode.py ARGS` run from the corpus' recipe directory, in this process; {test set: error rate}."""
    from recipe import RECIPE

    from icefall_cif.decode import loop

    with working_dir(corpus.root), preserved_logging():
        return loop.run_decoding(loop.get_parser(RECIPE).parse_args(args), RECIPE)


def tiny_train_options(corpus: Corpus, exp_dir: Path) -> List[str]:
    """Options of the reference run (tiny_model) and of its interrupted twin in test_train."""
    return CE_AR_MODEL + corpus.data_options() + [
        "--exp-dir", str(exp_dir), "--num-epochs", "2", "--seed", "7",
        "--save-every-n", "2", "--keep-last-k", "2", "--average-period", "1", "--log-interval", "1",
        "--base-lr", "0.05", "--warmup-batches", "2",
    ]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("libri_tiny")
    for name in ("prepare.sh", "local", "shared"):
        (root / name).symlink_to(LIBRI / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["./prepare.sh", "--stage", "0", "--stop-stage", "3", "--synthetic", "1",
         "--synth-num-train-utts", str(NUM_UTTS["train"]), "--synth-num-dev-utts", str(NUM_UTTS["dev"]),
         "--synth-num-test-utts", str(NUM_UTTS["test"]), "--perturb-speed", "0", "--num-jobs", "1",
         "--vocab-sizes", f"{VOCAB_SIZE} {OTHER_VOCAB_SIZE}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise AssertionError(f"prepare.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return Corpus(root)


@pytest.fixture(scope="session")
def tiny_model(tiny_corpus: Corpus, tmp_path_factory) -> TrainedModel:
    exp_dir = tmp_path_factory.mktemp("tiny_model") / "exp"
    options = tiny_train_options(tiny_corpus, exp_dir)
    train_in_process(options, tiny_corpus)
    return TrainedModel(tiny_corpus, exp_dir, CE_AR_MODEL, options)


@pytest.fixture(scope="session")
def ddp_model(tiny_corpus: Corpus, tmp_path_factory) -> TrainedModel:
    exp_dir = tmp_path_factory.mktemp("ddp_model") / "exp"
    options = TRANSDUCER_MODEL + tiny_corpus.data_options(max_duration=6.0) + [
        "--exp-dir", str(exp_dir), "--num-epochs", "1", "--world-size", "2", "--master-port", str(free_port()),
        "--log-level", "debug", "--log-interval", "1", "--average-period", "1", "--warm-step", "2",
    ]
    proc = run_script("train.py", options, cwd=tiny_corpus.root)
    return TrainedModel(tiny_corpus, exp_dir, TRANSDUCER_MODEL, options, proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def ngram_lm(tiny_corpus: Corpus, tmp_path_factory) -> Path:
    from lhotse import load_manifest

    from icefall_cif.lm import estimate_kneser_ney
    from icefall_cif.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_lang_dir(tiny_corpus.lang_dir)
    cuts = load_manifest(tiny_corpus.manifest_dir / "librispeech_cuts_train-clean-100.jsonl.gz")
    sentences = tokenizer.encode([c.supervisions[0].text for c in cuts])
    path = tmp_path_factory.mktemp("lm") / "ngram_3gram.arpa"
    estimate_kneser_ney(sentences, tokenizer.vocab_size, order=3).save_arpa(path)
    return path


def copy_exp_dir(model: TrainedModel, dest: Path, names: List[str]) -> Path:
    """A new exp dir holding copies of some of `model`'s checkpoint files."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(model.exp_dir / name, dest / name)
    return dest
