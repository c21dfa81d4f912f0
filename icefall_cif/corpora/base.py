"""The interface a corpus module implements (:class:`Corpus`), and the data stages' error type."""
import abc
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Type

from icefall_cif.corpora.audit import CorpusAudit
from icefall_cif.corpora.layout import SynthLayout

# The roles every corpus fills with one of its parts; `splits` maps each to a part name.
ROLES = ("train", "dev", "test")


def normalize_unicode(text: str) -> str:
    """NFKC (full-width forms to ASCII, composed characters), format characters such as zero-width
    spaces and joiners removed, whitespace collapsed to single spaces."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return " ".join(text.split())


class DataPrepError(Exception):
    """A problem with the user's data or options; the message says what is wrong and what to do."""


class Corpus(abc.ABC):
    """Everything the data stages, the synthesizer and the recipes know about one corpus.

    A corpus module subclasses this, sets the class attributes, implements the methods and
    is registered with :func:`icefall_cif.corpora.register_corpus`.

    Attributes:
      name: the corpus's name for `--corpus`, `python -m icefall_cif.synth` and the recipes,
        and the prefix of every manifest and cut file (`<name>_cuts_<part>.jsonl.gz`).
      splits: role ("train", "dev", "test") -> part name in the corpus.
      test_sets: the parts the decode script scores, in its order.
      default_lang_dir: the token files the recipe trains with (`data/lang_bpe_500`, ...).
      download_subdir: the directory under `download/` that Lhotse's recipe takes as corpus_dir.
      linked_subdir: what stage 0 links there: "" links `download/<download_subdir>` to the
        corpus root itself; a name links `download/<download_subdir>/<name>` to that
        directory of the root (for corpora whose Lhotse corpus_dir is a parent directory).
      layout: how the real corpus is laid out, for error messages.
      synth_layout: the layout `icefall_cif.synth` writes its synthetic copy in.
    """

    name: str
    splits: Mapping[str, str]
    test_sets: Tuple[str, ...]
    default_lang_dir: str
    download_subdir: str
    linked_subdir: str = ""
    layout: str
    synth_layout: Type[SynthLayout]

    def normalize_text(self, text: str) -> str:
        """A transcript in the corpus's own conventions, applied when stage 1 reads it.

        The default is :func:`normalize_unicode`; corpus modules add their case and punctuation
        rules. Text already in the conventions comes back unchanged.
        """
        return normalize_unicode(text)

    @property
    def parts(self) -> List[str]:
        """The part names, in role order (train, dev, test)."""
        return [self.splits[role] for role in ROLES]

    @property
    def train_part(self) -> str:
        return self.splits["train"]

    @abc.abstractmethod
    def root(self, corpus_dir: Path) -> Path:
        """The corpus root (Lhotse's corpus_dir) for the directory a user passed, which may be
        the root or a directory the corpus's documentation also names (its parent, a child)."""

    @abc.abstractmethod
    def problems(self, root: Path) -> List[str]:
        """Every directory or file of the corpus's parts missing under `root` (empty: usable)."""

    @abc.abstractmethod
    def audit(self, root: Path, num_jobs: int = 1) -> CorpusAudit:
        """Pair each audio file of every part with its transcript and check both.

        Usable pairs go to `utterances[part]`; every other item (bad audio, missing or empty
        transcript, transcript without audio) goes to `skipped` with its reason. Audio is
        checked in `num_jobs` threads.
        """

    @abc.abstractmethod
    def write_view(self, audit: CorpusAudit, view: Path) -> None:
        """Write under `view` a tree in the corpus layout holding only the usable utterances of
        `audit` (audio as symlinks to the originals), for Lhotse's recipe to read."""

    @abc.abstractmethod
    def lhotse_manifests(self, view: Path, num_jobs: int = 1) -> Dict[str, Dict[str, Any]]:
        """Lhotse's recipe on `view`: part name -> {"recordings": RecordingSet,
        "supervisions": SupervisionSet} for every part."""
