"""Fixed vocabularies for the synthetic corpora, ranked by real-world word frequency.

The lists come from the `wordfreq` package (no download), filtered to what a read-speech
corpus transcript can hold and what espeak-ng pronounces as a word:

* English: lowercase letters with inner apostrophes (``don't``); single letters other than
  "a" and "i" and vowel-less abbreviations ("mr", "tv") are dropped because espeak-ng spells
  them out letter by letter, which no real LibriSpeech transcript would show as one word.
* Chinese: words of CJK unified ideographs only (no digits, Latin or punctuation).

Both lists keep wordfreq's rank order, so `english_words(1000)` is the 1000 most frequent
usable words, and `zipf_weights` turns their frequencies into sampling probabilities. The
frequencies are read from wordfreq's table directly (`get_frequency_dict`), because its
`word_frequency` would re-tokenize Chinese and needs `jieba` for that.
"""

import functools
import re
from typing import List, Sequence, Tuple

import numpy as np

# Upper bound on how deep into wordfreq's ranking we look; far larger than any sensible
# vocabulary for a synthetic corpus, and the lists are cached after the first call.
_MAX_RANK = 50000

_ENGLISH_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_CJK_WORD = re.compile(r"[\u4e00-\u9fff]+")
_VOWEL = re.compile(r"[aeiouy]")


def _is_english_word(word: str) -> bool:
    if not _ENGLISH_WORD.fullmatch(word):
        return False
    if len(word) == 1:
        return word in ("a", "i")
    return _VOWEL.search(word) is not None


@functools.lru_cache(maxsize=None)
def _ranked(lang: str) -> Tuple[str, ...]:
    try:
        from wordfreq import top_n_list
    except ImportError as e:
        raise ImportError(
            "The synthetic corpora take their vocabulary from the `wordfreq` package; "
            "install it with `pip install wordfreq`."
        ) from e
    keep = _is_english_word if lang == "en" else _CJK_WORD.fullmatch
    return tuple(w for w in top_n_list(lang, _MAX_RANK) if keep(w))


def _top(lang: str, vocab_size: int) -> List[str]:
    ranked = _ranked(lang)
    if not 1 <= vocab_size <= len(ranked):
        raise ValueError(
            f"vocab_size={vocab_size} is out of range for language '{lang}': wordfreq offers "
            f"{len(ranked)} usable words; choose a --vocab-size between 1 and {len(ranked)}."
        )
    return list(ranked[:vocab_size])


def english_words(vocab_size: int) -> List[str]:
    """The `vocab_size` most frequent usable English words, lowercase, most frequent first."""
    return _top("en", vocab_size)


def chinese_words(vocab_size: int) -> List[str]:
    """The `vocab_size` most frequent Chinese words made only of CJK characters."""
    return _top("zh", vocab_size)


def zipf_weights(words: Sequence[str], lang: str, exponent: float = 1.0) -> np.ndarray:
    """Sampling probabilities proportional to `frequency(word) ** exponent`.

    Args:
      words: the vocabulary, e.g. from `english_words`.
      lang: wordfreq language code, "en" or "zh".
      exponent: 1.0 reproduces the natural (Zipfian) word distribution; smaller values
        flatten it towards uniform (0.0), which gives rare words more training examples.
    Returns:
      (len(words),) float64 array summing to 1.
    """
    from wordfreq import get_frequency_dict

    if exponent < 0:
        raise ValueError(f"zipf exponent must be >= 0, got {exponent}")
    table = get_frequency_dict(lang)
    freqs = np.array([table.get(w, 0.0) for w in words], dtype=np.float64)
    if np.any(freqs <= 0):
        missing = [w for w, f in zip(words, freqs) if f <= 0][:5]
        raise ValueError(f"wordfreq has no frequency for {missing}; cannot weight them")
    weights = freqs**exponent
    return weights / weights.sum()
