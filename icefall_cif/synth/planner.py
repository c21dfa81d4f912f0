"""The plan of a synthetic corpus: which voices go to which split, who the speakers are, and
the deterministic, endless stream of utterances (text, speaker, file) of each split.

Every random choice is drawn from a generator seeded by (seed, what, split, index), so the
plan for a seed does not depend on how many utterances are rendered, nor by how many workers.
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from icefall_cif.corpora.layout import SynthLayout
from icefall_cif.synth.config import SPLITS, SynthConfig
from icefall_cif.synth.espeak import voice_spec
from icefall_cif.synth.render import UttJob
from icefall_cif.synth.text import BigramChain, SentenceSampler, sentence_split
from icefall_cif.wordlists import chinese_words, english_words, zipf_weights

# Stream codes for np.random.default_rng([seed, stream, ...]): each kind of choice has its
# own generator so that adding, say, noise does not change the sentences. Stream 4 is the
# layouts' ids (icefall_cif.corpora.layout.RNG_IDS).
_RNG_VOICES, _RNG_SPEAKER, _RNG_TEXT, _RNG_UTT, _RNG_CHAIN = range(5)
_SPLIT_CODE = {split: i for i, split in enumerate(SPLITS)}
_MAX_SENTENCE_TRIES = 20000


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: one espeak-ng voice, variant, rate and pitch."""

    speaker_id: str
    split: str
    voice: str
    variant: str
    rate: int
    pitch: int

    @property
    def espeak_voice(self) -> str:
        return voice_spec(self.voice, self.variant)

    @property
    def sex(self) -> str:
        return "F" if self.variant.startswith("f") else "M"


@dataclass
class PlannedUtt:
    """One utterance of the plan: where it goes, who says what, and the job that renders it."""

    split: str
    utt_id: str
    speaker: Speaker
    chapter: Optional[int]
    transcript: str
    job: UttJob


def partition_voices(
    voices: Sequence[str], variants: Sequence[str], held_out: Optional[int], seed: int
) -> Dict[str, List[Tuple[str, str]]]:
    """Split the (voice, variant) pairs into disjoint train / dev / test sets.

    Args:
      held_out: pairs reserved for each of dev and test; None: 15% of the pairs (at least 1).
    Returns:
      {"train": [...], "dev": [...], "test": [...]}, each a list of (voice, variant).
    """
    pairs = [(v, var) for v in voices for var in variants]
    if held_out is None:
        held_out = max(1, round(0.15 * len(pairs)))
    if 2 * held_out >= len(pairs):
        raise ValueError(
            f"{len(pairs)} voice/variant pairs cannot hold out {held_out} for dev and {held_out} "
            "for test and keep some for train; add --voices/--variants or lower --held-out-voices"
        )
    order = np.random.default_rng([seed, _RNG_VOICES]).permutation(len(pairs))
    shuffled = [pairs[i] for i in order]
    return {
        "dev": shuffled[:held_out],
        "test": shuffled[held_out : 2 * held_out],
        "train": shuffled[2 * held_out :],
    }


class Planner:
    """The deterministic, endless stream of utterances of each split."""

    def __init__(
        self,
        layout: SynthLayout,
        config: SynthConfig,
        voices: Sequence[str],
        espeak_bin: str,
    ):
        self.layout, self.config, self.espeak_bin = layout, config, espeak_bin
        self.pairs = partition_voices(voices, config.variants, config.held_out_voices, config.seed)
        words = (
            english_words(config.vocab_size)
            if layout.lang == "en"
            else chinese_words(config.vocab_size)
        )
        weights = zipf_weights(words, layout.lang, config.zipf_exponent)
        # One language for all splits: the chain depends on the seed only.
        chain = (
            BigramChain(weights, config.bigram_successors, np.random.default_rng([config.seed, _RNG_CHAIN]))
            if config.bigram_successors > 0
            else None
        )
        self.sampler = SentenceSampler(
            words, weights, config.min_words, config.max_words, count_chars=layout.lang == "zh", chain=chain
        )

    def speaker(self, split: str, k: int) -> Speaker:
        """The k-th speaker of `split`: the next voice/variant pair, a random rate and pitch."""
        pairs = self.pairs[split]
        # Cycling through the (already shuffled) pairs uses every voice before repeating one.
        voice, variant = pairs[k % len(pairs)]
        rng = np.random.default_rng([self.config.seed, _RNG_SPEAKER, _SPLIT_CODE[split], k])
        rate = int(rng.integers(self.config.rate_range[0], self.config.rate_range[1] + 1))
        pitch = int(rng.integers(self.config.pitch_range[0], self.config.pitch_range[1] + 1))
        return Speaker(self.layout.speaker_id(split, k), split, voice, variant, rate, pitch)

    def sentences(self, split: str) -> Iterator[List[str]]:
        """Endless distinct sentences (word lists) that `split` may use.

        Raises:
          ValueError when no new one turns up: the vocabulary and lengths allow too few.
        """
        rng = np.random.default_rng([self.config.seed, _RNG_TEXT, _SPLIT_CODE[split]])
        seen: Set[str] = set()
        while True:
            for _ in range(_MAX_SENTENCE_TRIES):
                words = self.sampler(rng)
                key = self.layout.sentence_key(words)
                if key not in seen and sentence_split(key) == split:
                    seen.add(key)
                    yield words
                    break
            else:
                raise ValueError(
                    f"Could not find a new {split} sentence after {_MAX_SENTENCE_TRIES} tries "
                    f"({len(seen)} so far): the vocabulary and lengths allow too few distinct "
                    "sentences; raise --vocab-size or --max-words"
                )

    def utterances(self, split: str) -> Iterator[PlannedUtt]:
        """Endless utterances of `split`, each speaker saying the next `utts_per_speaker`
        (dev/test: `eval_utts_per_speaker`) sentences."""
        per_speaker = (
            self.config.utts_per_speaker if split == "train" else self.config.eval_utts_per_speaker
        )
        speaker = None
        for i, words in enumerate(self.sentences(split)):
            k, u = divmod(i, per_speaker)
            if u == 0:
                speaker = self.speaker(split, k)
            utt_id, path, chapter = self.layout.utterance(speaker, u)
            job = UttJob(
                path=str(path),
                speak_text=self.layout.speak_text(words),
                voice=speaker.espeak_voice,
                rate=speaker.rate,
                pitch=speaker.pitch,
                entropy=(self.config.seed, _RNG_UTT, _SPLIT_CODE[split], i),
                noise_snr_db=self.config.noise_snr_db,
                audio_format=self.layout.audio_format,
                espeak_bin=self.espeak_bin,
            )
            yield PlannedUtt(split, utt_id, speaker, chapter, self.layout.transcript(words), job)
