"""LibriSpeech (openslr 12): its parts, directory tree, audit, Lhotse recipe and synthetic layout.

The tree: `LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` with one
`<speaker>-<chapter>.trans.txt` (`<utt-id> <UPPER CASE TEXT>` lines) per chapter.
"""
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from icefall_cif.corpora.audit import CorpusAudit, SkippedItem, Utterance, check_candidates, read_text_lines
from icefall_cif.corpora.base import Corpus, normalize_unicode
from icefall_cif.corpora.layout import SynthLayout

if TYPE_CHECKING:
    from icefall_cif.synth.config import SynthConfig
    from icefall_cif.synth.planner import PlannedUtt, Speaker

SPLITS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
SUBDIR = "LibriSpeech"


class LibriSpeechLayout(SynthLayout):
    """The synthetic LibriSpeech: FLAC files, chapters of `utts_per_chapter` utterances, one
    `.trans.txt` per chapter and a `SPEAKERS.TXT` naming each speaker's espeak-ng voice."""

    lang = "en"
    subdir = SUBDIR
    audio_format = "FLAC"
    parts = SPLITS
    # Disjoint pools of numeric speaker ids, like the real corpus's 2-4 digit ids.
    _ID_POOLS = {"train": (0, 7000), "dev": (7000, 8493), "test": (8493, 9986)}

    def __init__(self, out_dir: Path, config: "SynthConfig"):
        super().__init__(out_dir, config)
        self._ids = self.id_rng().permutation(np.arange(14, 10000))

    def lhotse_corpus_dir(self) -> Path:
        return self.corpus_dir

    def speaker_id(self, split: str, k: int) -> str:
        lo, hi = self._ID_POOLS[split]
        if lo + k >= hi:
            raise ValueError(
                f"{split} needs more than {hi - lo} LibriSpeech speaker ids; raise "
                "--utts-per-speaker / --eval-utts-per-speaker"
            )
        return str(self._ids[lo + k])

    def _chapters(self, speaker: "Speaker") -> np.ndarray:
        per_speaker = (
            self.config.utts_per_speaker
            if speaker.split == "train"
            else self.config.eval_utts_per_speaker
        )
        n = -(-per_speaker // self.config.utts_per_chapter)
        rng = self.id_rng(int(speaker.speaker_id))
        return rng.integers(100, 200000) + np.cumsum(rng.integers(1, 3000, size=n))

    def utterance(self, speaker: "Speaker", u: int) -> Tuple[str, Path, Optional[int]]:
        chapter = int(self._chapters(speaker)[u // self.config.utts_per_chapter])
        spk = speaker.speaker_id
        utt_id = f"{spk}-{chapter}-{u % self.config.utts_per_chapter:04d}"
        path = self.corpus_dir / self.parts[speaker.split] / spk / str(chapter) / f"{utt_id}.flac"
        return utt_id, path, chapter

    def transcript(self, words: Sequence[str]) -> str:
        return " ".join(words).upper()

    def speak_text(self, words: Sequence[str]) -> str:
        # Lowercase, because espeak-ng spells out some all-capital words as acronyms.
        return " ".join(words)

    def write_transcripts(self, utts: List["PlannedUtt"], seconds: Dict[str, float]) -> None:
        chapters: Dict[Tuple[str, str, int], List["PlannedUtt"]] = {}
        for utt in utts:
            chapters.setdefault((utt.split, utt.speaker.speaker_id, utt.chapter), []).append(utt)
        for (split, spk, chapter), group in chapters.items():
            path = self.corpus_dir / self.parts[split] / spk / str(chapter) / f"{spk}-{chapter}.trans.txt"
            lines = sorted(f"{u.utt_id} {u.transcript}\n" for u in group)
            path.write_text("".join(lines), encoding="utf-8")
        minutes: Dict[str, float] = {}
        speakers: Dict[str, "Speaker"] = {}
        for utt in utts:
            spk = utt.speaker.speaker_id
            speakers[spk] = utt.speaker
            minutes[spk] = minutes.get(spk, 0.0) + seconds[utt.utt_id] / 60
        lines = [
            "; Synthetic speakers written by icefall_cif.synth: espeak-ng voice, rate (words/min)"
            " and pitch\n",
            ";ID  |SEX| SUBSET           |MINUTES| NAME\n",
        ]
        for spk in sorted(speakers, key=int):
            s = speakers[spk]
            lines.append(
                f"{spk:<5}| {s.sex} | {self.parts[s.split]:<17}| {minutes[spk]:5.2f} | "
                f"{s.espeak_voice} rate {s.rate} pitch {s.pitch}\n"
            )
        (self.corpus_dir / "SPEAKERS.TXT").write_text("".join(lines), encoding="utf-8")


class LibriSpeech(Corpus):
    name = "librispeech"
    splits = SPLITS
    test_sets = ("test-clean", "dev-clean")
    default_lang_dir = "data/lang_bpe_500"
    download_subdir = SUBDIR
    layout = (
        "LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac plus one "
        "<speaker>-<chapter>.trans.txt per chapter (openslr 12)"
    )
    synth_layout = LibriSpeechLayout

    def root(self, corpus_dir: Path) -> Path:
        """`corpus_dir` itself, or its `LibriSpeech/` when it has one (the untarred download)."""
        return corpus_dir / SUBDIR if (corpus_dir / SUBDIR).is_dir() else corpus_dir

    def problems(self, root: Path) -> List[str]:
        problems = []
        for part in self.parts:
            part_dir = root / part
            if not part_dir.is_dir():
                problems.append(f"missing directory {part_dir}")
            elif next(part_dir.rglob("*.trans.txt"), None) is None:
                problems.append(f"no *.trans.txt transcripts under {part_dir}")
            elif next(part_dir.rglob("*.flac"), None) is None:
                problems.append(f"no *.flac audio under {part_dir}")
        return problems

    def normalize_text(self, text: str) -> str:
        """LibriSpeech's conventions: upper case ASCII letters and apostrophes. Accents are
        dropped (`É` -> `E`); other punctuation becomes a word break."""
        text = unicodedata.normalize("NFKD", normalize_unicode(text))
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn").upper()
        text = "".join(" " if unicodedata.category(ch).startswith("P") and ch != "'" else ch for ch in text)
        return " ".join(text.split())

    def audit(self, root: Path, num_jobs: int = 1) -> CorpusAudit:
        """Pair every `.flac` with its line in its chapter's `.trans.txt` and check both, per part."""
        audit = CorpusAudit()
        for part in self.parts:
            part_dir = root / part
            texts: Dict[str, Tuple[str, Path]] = {}
            for trans in sorted(part_dir.rglob("*.trans.txt")):
                for _, utt_id, text in read_text_lines(trans):
                    texts[utt_id] = (audit.normalized(text, self.normalize_text(text)), trans)
            audio = {p.name[: -len(".flac")]: p for p in sorted(part_dir.rglob("*.flac"))}
            candidates = []
            for utt_id, path in audio.items():
                if len(utt_id.split("-")) != 3:
                    reason = "bad utterance id: LibriSpeech ids are <speaker>-<chapter>-<utt>"
                    audit.skipped.append(SkippedItem(part, utt_id, reason, str(path)))
                elif utt_id not in texts:
                    audit.skipped.append(
                        SkippedItem(part, utt_id, "missing transcript: no line for it in any *.trans.txt", str(path))
                    )
                elif not texts[utt_id][0]:
                    audit.skipped.append(
                        SkippedItem(
                            part, utt_id, f"empty transcript: its line in {texts[utt_id][1]} has no text", str(path)
                        )
                    )
                else:
                    candidates.append(Utterance(utt_id, path, texts[utt_id][0], utt_id.split("-")[0]))
            for utt_id, (_, trans) in texts.items():
                if utt_id not in audio:
                    audit.skipped.append(
                        SkippedItem(part, utt_id, f"missing audio: {trans} lists it but there is no {utt_id}.flac", "")
                    )
            audit.utterances[part] = check_candidates(part, candidates, num_jobs, audit)
        return audit

    def write_view(self, audit: CorpusAudit, view: Path) -> None:
        for part, utts in audit.utterances.items():
            chapters: Dict[Path, List[Utterance]] = defaultdict(list)
            for u in utts:
                speaker, chapter, _ = u.utt_id.split("-")
                chapters[view / part / speaker / chapter].append(u)
            for d, chapter_utts in chapters.items():
                d.mkdir(parents=True, exist_ok=True)
                lines = []
                for u in chapter_utts:
                    (d / f"{u.utt_id}.flac").symlink_to(u.audio.absolute())
                    lines.append(f"{u.utt_id} {u.text}\n")
                (d / f"{d.parent.name}-{d.name}.trans.txt").write_text("".join(lines), encoding="utf-8")

    def lhotse_manifests(self, view: Path, num_jobs: int = 1) -> Dict[str, Dict[str, Any]]:
        from lhotse.recipes import prepare_librispeech

        return prepare_librispeech(view, dataset_parts=self.parts, num_jobs=num_jobs)
