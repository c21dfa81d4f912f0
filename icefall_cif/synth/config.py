"""What to synthesize (:class:`SynthConfig`) and what was synthesized (:class:`SynthSummary`)."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from icefall_cif.synth.espeak import VARIANTS

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesize; equal configs (and espeak-ng builds) give identical corpora.

    Sizes: a split gets `num_<split>_utts` utterances when that is set, otherwise utterances
    until its audio reaches `<split>_hours` (train: `hours`).
    """

    hours: float = 1.0
    dev_hours: float = 0.1
    test_hours: float = 0.1
    num_train_utts: Optional[int] = None
    num_dev_utts: Optional[int] = None
    num_test_utts: Optional[int] = None
    vocab_size: int = 1000
    min_words: int = 5
    max_words: int = 20
    zipf_exponent: float = 1.0
    # 0: independent words; K > 0: a random bigram language (synth.text.BigramChain).
    bigram_successors: int = 0
    seed: int = 0
    # Mild by default: it fills espeak-ng's digital silence, and barely masks the speech.
    noise_snr_db: Optional[Tuple[float, float]] = (30.0, 50.0)
    voices: Optional[Tuple[str, ...]] = None
    variants: Tuple[str, ...] = VARIANTS
    held_out_voices: Optional[int] = None
    rate_range: Tuple[int, int] = (140, 190)
    pitch_range: Tuple[int, int] = (25, 75)
    utts_per_speaker: int = 20
    eval_utts_per_speaker: int = 8
    utts_per_chapter: int = 10

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        checks = [
            (
                self.hours >= 0 and self.dev_hours >= 0 and self.test_hours >= 0,
                "hours must be >= 0",
            ),
            (
                all(
                    n is None or n >= 0
                    for n in (self.num_train_utts, self.num_dev_utts, self.num_test_utts)
                ),
                "utterance counts must be >= 0",
            ),
            (
                1 <= self.min_words <= self.max_words,
                f"need 1 <= --min-words <= --max-words, got {self.min_words}, {self.max_words}",
            ),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (
                0 <= self.bigram_successors <= self.vocab_size,
                f"--bigram-successors must lie in [0, --vocab-size {self.vocab_size}], got {self.bigram_successors}",
            ),
            (
                self.noise_snr_db is None or self.noise_snr_db[0] <= self.noise_snr_db[1],
                f"--noise-snr-db needs LOW <= HIGH, got {self.noise_snr_db}",
            ),
            (
                80 <= self.rate_range[0] <= self.rate_range[1] <= 450,
                f"--rate-range must lie in [80, 450] words/min, got {self.rate_range}",
            ),
            (
                0 <= self.pitch_range[0] <= self.pitch_range[1] <= 99,
                f"--pitch-range must lie in [0, 99], got {self.pitch_range}",
            ),
            (
                min(self.utts_per_speaker, self.eval_utts_per_speaker, self.utts_per_chapter) >= 1,
                "utterances per speaker/chapter must be >= 1",
            ),
            (
                self.utts_per_speaker <= 9999 and self.eval_utts_per_speaker <= 9999,
                "at most 9999 utterances per speaker",
            ),
            (
                self.held_out_voices is None or self.held_out_voices >= 1,
                "--held-out-voices must be >= 1",
            ),
            (len(self.variants) >= 1, "need at least one variant"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def split_size(self, split: str) -> Tuple[Optional[int], float]:
        """(utterance count or None, target seconds) for `split`."""
        count = {
            "train": self.num_train_utts,
            "dev": self.num_dev_utts,
            "test": self.num_test_utts,
        }[split]
        hours = {"train": self.hours, "dev": self.dev_hours, "test": self.test_hours}[split]
        return count, hours * 3600.0

    def to_json(self) -> Dict[str, object]:
        """A JSON-able dict (tuples become lists), stored next to the corpus."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class SplitSummary:
    """One split as written: its part name, utterances, speakers and seconds of audio."""

    part: str
    num_utterances: int
    num_speakers: int
    seconds: float


@dataclass
class SynthSummary:
    """What was written. `lhotse_corpus_dir` is the corpus_dir Lhotse's prepare_* expects."""

    corpus: str
    lhotse_corpus_dir: str
    splits: Dict[str, SplitSummary]
    speakers: Dict[str, Dict[str, object]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Dict) -> "SynthSummary":
        splits = {k: SplitSummary(**v) for k, v in d["splits"].items()}
        return cls(d["corpus"], d["lhotse_corpus_dir"], splits, d.get("speakers", {}))

    def __str__(self) -> str:
        parts = [
            f"{s.part}: {s.num_utterances} utts, {s.seconds / 3600:.3f} h, {s.num_speakers} spk"
            for s in self.splits.values()
        ]
        return f"{self.corpus} at {self.lhotse_corpus_dir} -- " + "; ".join(parts)
