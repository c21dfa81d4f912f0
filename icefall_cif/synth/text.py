"""Sentences of the synthetic corpora: random Zipf-weighted word sequences (independent words,
or a random bigram language), and the hash that decides which split may use a sentence."""
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# A sentence may appear only in the split its hash names: 18/20 of sentence space is train,
# 1/20 dev, 1/20 test, so dev/test sentences never occur in train whatever its size.
_HASH_BUCKETS = 20
_BUCKET_SPLIT = {0: "dev", 1: "test"}

class BigramChain:
    """A random bigram language: word i is followed by one of `num_successors` fixed words.

    Independent words (the default corpora) give a decoder's label context nothing to learn
    across words, which is where attention decoders and transducers gain over CTC on real
    speech; this table gives it something. Word i's successors are drawn without replacement
    with probabilities proportional to the square roots of the unigram weights (frequent words
    follow more often; drawn with the weights themselves, the chain reaches only 346 of 500
    English words in an hour of sentences, too few types for a 500-token BPE model), and the
    j-th of them is chosen with probability proportional to 1 / (j + 1).

    Example: 3 words, num_successors 2: `successors` (3, 2) might be [[1, 0], [0, 2], [0, 1]],
    and `probs` is [2/3, 1/3] for every word.

    Args:
      weights: (V,) unigram probabilities.
      num_successors: K, 1 <= K <= V.
      rng: the generator the table is drawn from (fixed per corpus seed).
    """

    def __init__(self, weights: np.ndarray, num_successors: int, rng: np.random.Generator):
        vocab = len(weights)
        if not 1 <= num_successors <= vocab:
            raise ValueError(f"--bigram-successors must lie in [1, {vocab}] (the vocabulary), got {num_successors}")
        flattened = np.sqrt(weights) / np.sqrt(weights).sum()
        self.successors = np.stack(
            [rng.choice(vocab, size=num_successors, replace=False, p=flattened) for _ in range(vocab)]
        )  # (V, K)
        probs = 1.0 / np.arange(1, num_successors + 1)
        self.probs = probs / probs.sum()


class SentenceSampler:
    """Random sentences from a fixed vocabulary with Zipf-weighted word choice.

    A sentence's length is drawn uniformly in [min_len, max_len] and counts words (English)
    or characters (Chinese, where words have 1-4 characters; the last word is drawn among
    those that still fit, so the length is exact).

    Args:
      words: the vocabulary.
      weights: (len(words),) probabilities, e.g. from `zipf_weights`.
      count_chars: measure length in characters instead of words.
      chain: draw each word after the first from the previous word's successors (among those
        that fit the remaining length; none fits: from the unigram weights). None: every word
        independently from the unigram weights.
    """

    def __init__(
        self,
        words: Sequence[str],
        weights: np.ndarray,
        min_len: int,
        max_len: int,
        count_chars: bool,
        chain: Optional[BigramChain] = None,
    ):
        self.words = list(words)
        self.chain = chain
        self.min_len, self.max_len = min_len, max_len
        units = np.array([len(w) if count_chars else 1 for w in self.words])
        if not np.any(units == 1):
            raise ValueError(
                "the vocabulary needs single-character words to fill sentences exactly"
            )
        # tables[r]: (indices, cumulative weights) of the words no longer than r units.
        self.tables: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        for r in range(1, int(units.max()) + 1):
            idx = np.flatnonzero(units <= r)
            self.tables[r] = (idx, np.cumsum(weights[idx]))
        self.longest = int(units.max())
        self.units = units

    def __call__(self, rng: np.random.Generator) -> List[str]:
        target = int(rng.integers(self.min_len, self.max_len + 1))
        out: List[str] = []
        total = 0
        previous = -1
        while total < target:
            previous = self._next_word(previous, target - total, rng)
            out.append(self.words[previous])
            total += int(self.units[previous])
        return out

    def _next_word(self, previous: int, room: int, rng: np.random.Generator) -> int:
        """The index of a word of at most `room` units after word `previous` (-1: none yet)."""
        if self.chain is not None and previous >= 0:
            candidates = self.chain.successors[previous]
            fits = self.units[candidates] <= room
            if fits.any():
                cdf = np.cumsum(self.chain.probs[fits])
                k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), int(fits.sum()) - 1)
                return int(candidates[fits][k])
        idx, cdf = self.tables[min(room, self.longest)]
        k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(idx) - 1)
        return int(idx[k])


def sentence_split(key: str) -> str:
    """The only split ("train", "dev" or "test") allowed to use a sentence (by its hash)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return _BUCKET_SPLIT.get(int.from_bytes(digest, "big") % _HASH_BUCKETS, "train")
