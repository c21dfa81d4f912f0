"""Sentences of the synthetic corpora: random Zipf-weighted word sequences, and the hash that
decides which split may use a sentence."""
import hashlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

# A sentence may appear only in the split its hash names: 18/20 of sentence space is train,
# 1/20 dev, 1/20 test, so dev/test sentences never occur in train whatever its size.
_HASH_BUCKETS = 20
_BUCKET_SPLIT = {0: "dev", 1: "test"}

class SentenceSampler:
    """Random sentences from a fixed vocabulary with Zipf-weighted word choice.

    A sentence's length is drawn uniformly in [min_len, max_len] and counts words (English)
    or characters (Chinese, where words have 1-4 characters; the last word is drawn among
    those that still fit, so the length is exact).

    Args:
      words: the vocabulary.
      weights: (len(words),) probabilities, e.g. from `zipf_weights`.
      count_chars: measure length in characters instead of words.
    """

    def __init__(
        self,
        words: Sequence[str],
        weights: np.ndarray,
        min_len: int,
        max_len: int,
        count_chars: bool,
    ):
        self.words = list(words)
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
        while total < target:
            idx, cdf = self.tables[min(target - total, self.longest)]
            k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(idx) - 1)
            out.append(self.words[idx[k]])
            total += int(self.units[idx[k]])
        return out


def sentence_split(key: str) -> str:
    """The only split ("train", "dev" or "test") allowed to use a sentence (by its hash)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return _BUCKET_SPLIT.get(int.from_bytes(digest, "big") % _HASH_BUCKETS, "train")
