#!/usr/bin/env python3
"""Compare two decodings of the same test set: error rates, their difference and its 95% interval.

Paired bootstrap over utterances (icefall_cif/significance.py). Reads decode.py's
recogs-*.txt files; each further file is compared with the first:

    tools/compare_wer.py exp/greedy_search/recogs-test-clean-greedy_search-epoch-7-avg-3-use-averaged-model.txt \\
        exp/ctc_greedy_search/recogs-test-clean-ctc_greedy_search-epoch-7-avg-3-use-averaged-model.txt

prints, per pair (here the CTC-cut demo model of RESULTS.md, test-clean):

    A 25.68 B 23.11: A - B +2.58 [+0.46, +4.64], P(A better) 0.008, 101 utterances  (B = recogs-...)

The difference is computed from the unrounded rates. A 95% interval that contains 0 means the
test set cannot tell the two apart.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icefall_cif.scoring import read_recogs  # noqa: E402
from icefall_cif.significance import UtteranceErrors, paired_bootstrap, utterance_errors  # noqa: E402


def load(path: Path, cer: bool) -> UtteranceErrors:
    """Per-utterance errors of one recogs file; a missing or malformed file ends the run naming it."""
    try:
        return utterance_errors(read_recogs(path), compute_CER=cer)
    except (OSError, ValueError) as e:
        sys.exit(f"compare_wer.py: cannot read {path}: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recogs", type=Path, nargs="+", help="recogs-*.txt files; the first is A, each other B.")
    parser.add_argument("--cer", action="store_true", help="Count characters (AISHELL) instead of words.")
    parser.add_argument("--num-samples", type=int, default=10000, help="Bootstrap resamples.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the resampling.")
    args = parser.parse_args()
    if len(args.recogs) < 2:
        parser.error("give at least two recogs files: the first is compared with each of the others")
    first = load(args.recogs[0], args.cer)
    for other in args.recogs[1:]:
        try:
            c = paired_bootstrap(first, load(other, args.cer), args.num_samples, args.seed)
        except ValueError as e:
            sys.exit(f"{args.recogs[0]} vs {other}: {e}")
        print(f"A {c.rate_a:.2f} B {c.rate_b:.2f}: A - B {c.difference:+.2f} [{c.low:+.2f}, {c.high:+.2f}], "
              f"P(A better) {c.prob_a_better:.3f}, {c.num_utterances} utterances  (B = {other.name})")


if __name__ == "__main__":
    main()
