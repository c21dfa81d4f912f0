"""The interface of a synthetic corpus's layout: where `icefall_cif.synth` writes each audio
file of a corpus and how it writes the transcript files, exactly as the real corpus does.

Each corpus module subclasses :class:`SynthLayout` and names the class in its corpus's
`synth_layout`; the synthesizer looks it up through the registry (`icefall_cif.corpora`).
This module imports nothing of `icefall_cif.synth`, so the data stages load without it.
"""
import abc
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from icefall_cif.synth.config import SynthConfig
    from icefall_cif.synth.planner import PlannedUtt, Speaker

# Stream code of the layouts' random ids in np.random.default_rng([seed, code, ...]); codes 0-3
# are the planner's (icefall_cif.synth.planner), so ids and text draw independent numbers.
RNG_IDS = 4


class SynthLayout(abc.ABC):
    """File names and transcript files of one real corpus, for its synthetic copy.

    Attributes (set by each subclass):
      lang: "en" or "zh": which espeak-ng voices and word list speak the corpus.
      subdir: the directory under the output directory that holds the corpus.
      audio_format: soundfile format of the audio files ("FLAC", "WAV").
      parts: role ("train", "dev", "test") -> part name, as the corpus's `splits`.
    """

    lang: str
    subdir: str
    audio_format: str
    parts: Mapping[str, str]

    def __init__(self, out_dir: Path, config: "SynthConfig"):
        self.out_dir, self.config = out_dir, config
        self.corpus_dir = out_dir / self.subdir

    def id_rng(self, *key: int) -> np.random.Generator:
        """The generator of the layout's ids for `key` (e.g. a speaker), seeded by the corpus seed."""
        return np.random.default_rng([self.config.seed, RNG_IDS, *key])

    @abc.abstractmethod
    def lhotse_corpus_dir(self) -> Path:
        """The corpus_dir that Lhotse's prepare_<corpus> expects."""

    @abc.abstractmethod
    def speaker_id(self, split: str, k: int) -> str:
        """The id of the k-th speaker of `split`, unique over all splits.

        Raises:
          ValueError naming the options to change when the corpus's id range is used up.
        """

    @abc.abstractmethod
    def utterance(self, speaker: "Speaker", u: int) -> Tuple[str, Path, Optional[int]]:
        """(utterance id, audio path, chapter or None) of speaker's u-th utterance."""

    @abc.abstractmethod
    def transcript(self, words: Sequence[str]) -> str:
        """The sentence as the corpus's transcript files write it."""

    @abc.abstractmethod
    def speak_text(self, words: Sequence[str]) -> str:
        """The sentence as given to espeak-ng."""

    def sentence_key(self, words: Sequence[str]) -> str:
        """The text that identifies a sentence for the held-out check."""
        return " ".join(words)

    @abc.abstractmethod
    def write_transcripts(self, utts: List["PlannedUtt"], seconds: Dict[str, float]) -> None:
        """Write the transcript (and speaker) files of the kept utterances; `seconds` maps
        each utterance id to its audio duration."""
