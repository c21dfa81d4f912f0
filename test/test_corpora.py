"""The corpus registry (icefall_cif.corpora): the built-in corpora's facts, its errors, and a
corpus registered from outside the library that the data stages and the synthesizer handle
with no code of their own for it."""
import gzip
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import soundfile as sf

from icefall_cif import data_prep, synth
from icefall_cif.corpora import CORPORA, Corpus, DataPrepError, SynthLayout, get_corpus, register_corpus
from icefall_cif.corpora.aishell import Aishell
from icefall_cif.corpora.audit import CorpusAudit, SkippedItem, Utterance, check_candidates, read_text_lines

requires_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

# What the recipes (egs/<corpus>/ASR) and prepare.sh rely on.
EXPECTED = {
    "librispeech": dict(
        splits={"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"},
        test_sets=("test-clean", "dev-clean"),
        default_lang_dir="data/lang_bpe_500",
        download_subdir="LibriSpeech",
    ),
    "aishell": dict(
        splits={"train": "train", "dev": "dev", "test": "test"},
        test_sets=("test", "dev"),
        default_lang_dir="data/lang_char",
        download_subdir="aishell",
    ),
}


def test_registry_lists_the_builtin_corpora():
    assert set(EXPECTED) <= set(CORPORA)
    assert all(isinstance(c, Corpus) and c.name == name for name, c in CORPORA.items())
    # data_prep's names are the registry's, not a copy.
    assert data_prep.CORPORA is CORPORA and data_prep.get_corpus is get_corpus


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(DataPrepError, match="Unknown corpus 'nope'; known corpora: ") as err:
        get_corpus("nope")
    assert all(name in str(err.value) for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_corpus_facts(name):
    corpus = get_corpus(name)
    for attr, value in EXPECTED[name].items():
        assert getattr(corpus, attr) == value, attr
    assert corpus.parts == list(EXPECTED[name]["splits"].values())
    assert corpus.train_part == EXPECTED[name]["splits"]["train"]
    # The synthetic copy has the real corpus's part names.
    assert dict(corpus.synth_layout.parts) == EXPECTED[name]["splits"]


def test_register_rejects_an_incomplete_corpus():
    class Duplicate(Aishell):
        pass

    with pytest.raises(ValueError, match="'aishell' is already registered"):
        register_corpus(Duplicate)

    class NoDev(Duplicate):
        name = "nodev"
        splits = {"train": "train", "test": "test"}

    with pytest.raises(ValueError, match="NoDev.splits must map exactly the roles"):
        register_corpus(NoDev)
    assert "nodev" not in CORPORA


# ----------------------------------------------------------------------------------------------
# A third corpus, defined here: `<root>/<part>/<speaker>/<utt>.wav` and `<root>/<part>/text`.

TINY_SPLITS = {"train": "tr", "dev": "dv", "test": "ts"}


class TinyLayout(SynthLayout):
    lang = "en"
    subdir = "tiny"
    audio_format = "WAV"
    parts = TINY_SPLITS

    def lhotse_corpus_dir(self) -> Path:
        return self.corpus_dir

    def speaker_id(self, split: str, k: int) -> str:
        return f"{split}{k}"

    def utterance(self, speaker, u: int) -> Tuple[str, Path, Optional[int]]:
        utt_id = f"{speaker.speaker_id}_{u}"
        return utt_id, self.corpus_dir / self.parts[speaker.split] / speaker.speaker_id / f"{utt_id}.wav", None

    def transcript(self, words: Sequence[str]) -> str:
        return " ".join(words)

    def speak_text(self, words: Sequence[str]) -> str:
        return " ".join(words)

    def write_transcripts(self, utts, seconds: Dict[str, float]) -> None:
        for role, part in self.parts.items():
            lines = sorted(f"{u.utt_id} {u.transcript}\n" for u in utts if u.split == role)
            (self.corpus_dir / part / "text").write_text("".join(lines), encoding="utf-8")


class Tiny(Corpus):
    name = "tiny"
    splits = TINY_SPLITS
    test_sets = ("ts",)
    default_lang_dir = "data/lang_char"
    download_subdir = "tiny"
    layout = "<part>/<speaker>/<utt>.wav plus <part>/text"
    synth_layout = TinyLayout

    def root(self, corpus_dir: Path) -> Path:
        return corpus_dir

    def problems(self, root: Path) -> List[str]:
        return [f"missing file {root / p / 'text'}" for p in self.parts if not (root / p / "text").is_file()]

    def audit(self, root: Path, num_jobs: int = 1) -> CorpusAudit:
        audit = CorpusAudit()
        for part in self.parts:
            texts = {utt: text for _, utt, text in read_text_lines(root / part / "text")}
            candidates = []
            for path in sorted((root / part).rglob("*.wav")):
                if texts.get(path.stem):
                    candidates.append(Utterance(path.stem, path, texts[path.stem], path.parent.name))
                else:
                    audit.skipped.append(SkippedItem(part, path.stem, "missing transcript", str(path)))
            audit.utterances[part] = check_candidates(part, candidates, num_jobs, audit)
        return audit

    def write_view(self, audit: CorpusAudit, view: Path) -> None:
        for part, utts in audit.utterances.items():
            (view / part).mkdir(parents=True)
            for u in utts:
                (view / part / f"{u.utt_id}.wav").symlink_to(u.audio.absolute())
            (view / part / "text").write_text("".join(f"{u.utt_id} {u.speaker} {u.text}\n" for u in utts))

    def lhotse_manifests(self, view: Path, num_jobs: int = 1) -> Dict[str, Dict]:
        from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

        manifests = {}
        for part in self.parts:
            recordings, supervisions = [], []
            for _, utt, rest in read_text_lines(view / part / "text"):
                speaker, text = rest.split(maxsplit=1)
                rec = Recording.from_file(view / part / f"{utt}.wav", recording_id=utt)
                recordings.append(rec)
                supervisions.append(SupervisionSegment(utt, utt, 0.0, rec.duration, text=text, speaker=speaker))
            manifests[part] = {
                "recordings": RecordingSet.from_recordings(recordings),
                "supervisions": SupervisionSet.from_segments(supervisions),
            }
        return manifests


@pytest.fixture
def tiny():
    register_corpus(Tiny)
    yield get_corpus("tiny")
    del CORPORA["tiny"]


def read_supervisions(manifest_dir: Path, part: str) -> Dict[str, str]:
    path = data_prep.manifest_path(manifest_dir, "tiny", "supervisions", part)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {s["id"]: s["text"] for s in map(json.loads, f)}


def test_data_stages_handle_a_registered_corpus(tiny, tmp_path):
    corpus_dir = tmp_path / "src"
    audio = (0.3 * np.sin(np.arange(8000) / 5)).astype("float32")
    for part in tiny.parts:
        (corpus_dir / part / "spk").mkdir(parents=True)
        for utt in ("a", "b"):
            sf.write(corpus_dir / part / "spk" / f"{part}{utt}.wav", audio, 16000, subtype="PCM_16")
        # Utterance "b" has no transcript line: skipped and listed.
        (corpus_dir / part / "text").write_text(f"{part}a words of {part}\n")

    with pytest.raises(DataPrepError, match=f"not a usable tiny corpus: missing file {tmp_path / 'tr' / 'text'}"):
        data_prep.find_corpus("tiny", tmp_path)
    link = data_prep.link_corpus("tiny", corpus_dir, tmp_path / "download")
    assert link == tmp_path / "download" / "tiny" and link.resolve() == corpus_dir.resolve()

    manifests = tmp_path / "manifests"
    audit = data_prep.prepare_manifests("tiny", link, manifests)
    assert sorted(item.utt_id for item in audit.skipped) == ["dvb", "trb", "tsb"]
    for part in tiny.parts:
        assert read_supervisions(manifests, part) == {f"{part}a": f"words of {part}"}

    data_prep.prepare_char_lang("tiny", manifests, tmp_path / "lang")
    tokens = [line.split()[0] for line in (tmp_path / "lang" / "tokens.txt").read_text().splitlines()]
    assert tokens[3:] == sorted(set("wordsoftr"))


def test_synth_command_line_offers_a_registered_corpus(tiny):
    assert synth.get_parser().parse_args(["tiny", "out"]).corpus == "tiny"


@requires_espeak
def test_synth_writes_a_registered_corpus_that_the_data_stages_read(tiny, tmp_path):
    summary = synth.synthesize(
        "tiny", tmp_path, num_train_utts=2, num_dev_utts=1, num_test_utts=1,
        utts_per_speaker=2, eval_utts_per_speaker=1, noise_snr_db=None, num_jobs=1, progress=False,
    )
    assert summary.lhotse_corpus_dir == str(tmp_path / "tiny")
    assert {s.part: s.num_utterances for s in summary.splits.values()} == {"tr": 2, "dv": 1, "ts": 1}
    assert sorted(p.name for p in (tmp_path / "tiny" / "tr").rglob("*.wav")) == ["train0_0.wav", "train0_1.wav"]

    data_prep.prepare_manifests("tiny", tmp_path / "tiny", tmp_path / "manifests")
    for part in tiny.parts:
        lines = (tmp_path / "tiny" / part / "text").read_text(encoding="utf-8").splitlines()
        assert read_supervisions(tmp_path / "manifests", part) == dict(line.split(" ", 1) for line in lines)
