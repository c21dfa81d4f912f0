"""Is one system's error rate really lower than another's? Paired bootstrap over utterances.

The demo's test sets hold ~100 utterances (~1,300 words), so a 1-2 point WER difference
between two methods can be chance. Bisani and Ney's paired bootstrap (ICASSP 2004) resamples
the utterances with replacement, both systems on the same draw, and reads the spread of the
difference off the resamples:

    >>> a = {"u1": (2, 10), "u2": (0, 10)}    # cut id -> (errors, reference units)
    >>> b = {"u1": (3, 10), "u2": (1, 10)}
    >>> c = paired_bootstrap(a, b, num_samples=1000)
    >>> c.rate_a, c.rate_b, c.difference
    (10.0, 20.0, -10.0)
    >>> c.prob_a_better    # every resample has fewer errors for a
    1.0
"""
from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

import numpy as np

from icefall_cif.scoring import Result, compute_error_stats

# cut id -> (errors, reference length) of one system on one test set
UtteranceErrors = Dict[str, Tuple[int, int]]


def utterance_errors(results: Iterable[Result], compute_CER: bool = False) -> UtteranceErrors:
    """Per-utterance error counts (ins + del + sub) and reference lengths, as compute_error_stats counts them.

    Args:
      results: `(cut_id, ref, hyp)` tuples (e.g. from scoring.read_recogs).
      compute_CER: count characters instead of words.
    """
    out: UtteranceErrors = {}
    for cut_id, ref, hyp in results:
        if cut_id in out:
            raise ValueError(f"utterance {cut_id} appears twice; a recogs file holds each cut once")
        stats = compute_error_stats([(cut_id, ref, hyp)], compute_CER=compute_CER)
        out[cut_id] = (stats.num_errors, stats.ref_len)
    return out


@dataclass
class Comparison:
    """Error rates in percent of systems a and b on the same utterances, and the bootstrap's verdict.

    difference = rate_a - rate_b (negative: a is better); low / high bound its 95% interval
    over the resamples; prob_a_better is the share of resamples where a makes fewer errors.
    """

    rate_a: float
    rate_b: float
    difference: float
    low: float
    high: float
    prob_a_better: float
    num_utterances: int


def paired_bootstrap(a: UtteranceErrors, b: UtteranceErrors, num_samples: int = 10000, seed: int = 0) -> Comparison:
    """Paired bootstrap of rate_a - rate_b over the utterances both systems decoded.

    Args:
      a, b: per-utterance (errors, reference length) of the two systems (`utterance_errors`);
        they must cover the same cut ids with the same reference lengths.
      num_samples: resamples of the utterance set.
      seed: of numpy's generator, so that a comparison can be re-run exactly.
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(
            f"the systems decoded different utterances: {len(only_a)} only in a (e.g. {only_a[:3]}), "
            f"{len(only_b)} only in b (e.g. {only_b[:3]}); compare results of the same test set"
        )
    if not a:
        raise ValueError("no utterances to compare")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ids = sorted(a)
    for cut_id in ids:
        if a[cut_id][1] != b[cut_id][1]:
            raise ValueError(
                f"utterance {cut_id} has a reference of {a[cut_id][1]} units in a and {b[cut_id][1]} in b; "
                "both files must score the same references"
            )
    errors_a = np.array([a[i][0] for i in ids], dtype=np.int64)
    errors_b = np.array([b[i][0] for i in ids], dtype=np.int64)
    ref_lens = np.array([a[i][1] for i in ids], dtype=np.int64)
    if ref_lens.sum() == 0:
        raise ValueError("the references contain no words, so the error rates are undefined")
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(num_samples, len(ids)))
    sample_a, sample_b, sample_refs = errors_a[draws].sum(1), errors_b[draws].sum(1), ref_lens[draws].sum(1)
    differences = 100.0 * (sample_a - sample_b) / np.maximum(sample_refs, 1)
    low, high = np.percentile(differences, [2.5, 97.5])
    rate_a = 100.0 * errors_a.sum() / ref_lens.sum()
    rate_b = 100.0 * errors_b.sum() / ref_lens.sum()
    return Comparison(
        rate_a=round(float(rate_a), 2),
        rate_b=round(float(rate_b), 2),
        difference=round(float(rate_a - rate_b), 2),
        low=round(float(low), 2),
        high=round(float(high), 2),
        prob_a_better=float((sample_a < sample_b).mean()),
        num_utterances=len(ids),
    )
