"""AISHELL-1 (openslr 33): its parts, directory tree, audit, Lhotse recipe and synthetic layout.

The tree: `data_aishell/wav/{train,dev,test}/<speaker>/<utt>.wav` and one transcript file
for all parts, `data_aishell/transcript/aishell_transcript_v0.8.txt` (`<utt-id> <words>`,
words separated by spaces). Lhotse's corpus_dir is the directory holding `data_aishell/`.
"""
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from icefall_cif.corpora.audit import CorpusAudit, SkippedItem, Utterance, check_candidates, read_text_lines
from icefall_cif.corpora.base import Corpus, normalize_unicode
from icefall_cif.corpora.layout import SynthLayout

if TYPE_CHECKING:
    from icefall_cif.synth.planner import PlannedUtt, Speaker

SPLITS = {"train": "train", "dev": "dev", "test": "test"}
DATA_DIR = "data_aishell"
WAV_DIR = Path(DATA_DIR) / "wav"
# Relative to the corpus root, like WAV_DIR.
AISHELL_TRANSCRIPT = Path(DATA_DIR) / "transcript" / "aishell_transcript_v0.8.txt"


class AishellLayout(SynthLayout):
    """The synthetic AISHELL-1: WAV files of speakers named as in the real corpus, one
    transcript file."""

    lang = "zh"
    subdir = DATA_DIR
    audio_format = "WAV"
    parts = SPLITS
    # The real corpus's speaker ranges: train S0002-S0723, dev S0724-S0763, test S0764-S0916.
    _ID_RANGES = {"train": (2, 724), "dev": (724, 764), "test": (764, 917)}

    def lhotse_corpus_dir(self) -> Path:
        return self.out_dir

    def speaker_id(self, split: str, k: int) -> str:
        lo, hi = self._ID_RANGES[split]
        if lo + k >= hi:
            raise ValueError(
                f"AISHELL-1's {split} speaker ids S{lo:04d}-S{hi - 1:04d} are used up; raise "
                "--utts-per-speaker / --eval-utts-per-speaker for a larger corpus"
            )
        return f"S{lo + k:04d}"

    def utterance(self, speaker: "Speaker", u: int) -> Tuple[str, Path, Optional[int]]:
        utt_id = f"BAC009{speaker.speaker_id}W{u + 1:04d}"
        path = self.out_dir / WAV_DIR / self.parts[speaker.split] / speaker.speaker_id / f"{utt_id}.wav"
        return utt_id, path, None

    def transcript(self, words: Sequence[str]) -> str:
        return " ".join(words)

    def speak_text(self, words: Sequence[str]) -> str:
        return "".join(words)

    def sentence_key(self, words: Sequence[str]) -> str:
        # Lhotse removes the spaces between words, so two segmentations are one sentence.
        return "".join(words)

    def write_transcripts(self, utts: List["PlannedUtt"], seconds: Dict[str, float]) -> None:
        path = self.out_dir / AISHELL_TRANSCRIPT
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = sorted(f"{u.utt_id} {u.transcript}\n" for u in utts)
        path.write_text("".join(lines), encoding="utf-8")


class Aishell(Corpus):
    name = "aishell"
    splits = SPLITS
    test_sets = ("test", "dev")
    default_lang_dir = "data/lang_char"
    download_subdir = "aishell"
    linked_subdir = DATA_DIR
    layout = (
        "data_aishell/wav/{train,dev,test}/<speaker>/<utt>.wav plus "
        "data_aishell/transcript/aishell_transcript_v0.8.txt (openslr 33)"
    )
    synth_layout = AishellLayout

    def root(self, corpus_dir: Path) -> Path:
        """The directory holding `data_aishell/`: `corpus_dir`, or its parent when it is `data_aishell/`."""
        return corpus_dir.parent if corpus_dir.name == DATA_DIR else corpus_dir

    def problems(self, root: Path) -> List[str]:
        problems = []
        wav_dir = root / WAV_DIR
        transcript = root / AISHELL_TRANSCRIPT
        if not transcript.is_file():
            problems.append(f"missing transcript file {transcript}")
        for part in self.parts:
            part_dir = wav_dir / part
            if not part_dir.is_dir():
                hint = ""
                if next(wav_dir.glob("*.tar.gz"), None) is not None:
                    hint = (
                        f" ({wav_dir} holds the per-speaker .tar.gz archives of the openslr download: "
                        f"extract them first: cd {wav_dir} && for f in *.tar.gz; do tar xzf $f; done)"
                    )
                problems.append(f"missing directory {part_dir}{hint}")
            elif next(part_dir.rglob("*.wav"), None) is None:
                problems.append(f"no *.wav audio under {part_dir}")
        return problems

    def normalize_text(self, text: str) -> str:
        """AISHELL's conventions: half-width forms (NFKC) and no punctuation (`，` and `。`
        removed, not turned into spaces: Mandarin text has no word breaks to keep)."""
        text = "".join(ch for ch in normalize_unicode(text) if not unicodedata.category(ch).startswith("P"))
        return " ".join(text.split())

    def audit(self, root: Path, num_jobs: int = 1) -> CorpusAudit:
        """Pair every `.wav` with its line in the transcript file and check both; transcript
        lines without audio are listed with part "-"."""
        audit = CorpusAudit()
        transcript = root / AISHELL_TRANSCRIPT
        texts = {
            utt_id: audit.normalized(text, self.normalize_text(text)) for _, utt_id, text in read_text_lines(transcript)
        }
        seen = set()
        for part in self.parts:
            candidates = []
            for path in sorted((root / WAV_DIR / part).rglob("*.wav")):
                utt_id = path.stem
                seen.add(utt_id)
                if utt_id not in texts:
                    audit.skipped.append(
                        SkippedItem(part, utt_id, f"missing transcript: no line for it in {transcript}", str(path))
                    )
                elif not texts[utt_id]:
                    audit.skipped.append(
                        SkippedItem(part, utt_id, f"empty transcript: its line in {transcript} has no text", str(path))
                    )
                else:
                    candidates.append(Utterance(utt_id, path, texts[utt_id], path.parent.name))
            audit.utterances[part] = check_candidates(part, candidates, num_jobs, audit)
        # The real transcript file lists some utterances that were never released: expected, listed in the TSV.
        for utt_id in sorted(set(texts) - seen):
            audit.skipped.append(SkippedItem("-", utt_id, "transcript line without audio", ""))
        return audit

    def write_view(self, audit: CorpusAudit, view: Path) -> None:
        lines = []
        for part, utts in audit.utterances.items():
            for u in utts:
                d = view / WAV_DIR / part / u.speaker
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{u.utt_id}.wav").symlink_to(u.audio.absolute())
                lines.append(f"{u.utt_id} {u.text}\n")
        transcript = view / AISHELL_TRANSCRIPT
        transcript.parent.mkdir(parents=True, exist_ok=True)
        transcript.write_text("".join(lines), encoding="utf-8")

    def lhotse_manifests(self, view: Path, num_jobs: int = 1) -> Dict[str, Dict[str, Any]]:
        from lhotse.recipes import prepare_aishell

        return prepare_aishell(view)
