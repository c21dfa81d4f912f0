"""Word / character error rates and icefall's result files.

Alignment and counts come from kaldialign, so every number here equals
`kaldialign.edit_distance` on the same (ref, hyp) pairs. The files keep icefall's formats, so
scripts written for icefall's `exp/` directories read ours unchanged:

- `recogs-<set>-<key><suffix>.txt`: two lines per utterance,
  `<cut_id>:\\tref=['W1', 'W2']` and `<cut_id>:\\thyp=['W1']`;
- `errs-<set>-<key><suffix>.txt`: `%WER = 12.34`, the error counts, per-utterance
  alignments and the SUBSTITUTIONS / DELETIONS / INSERTIONS / PER-WORD STATS tables;
- `wer-summary-<set><suffix>.txt`: `settings\\tWER` (or `CER`) followed by one
  `<key>\\t<rate>` line per decoding setting, best first.
"""
import ast
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, TextIO, Tuple, Union

import kaldialign

Pathlike = Union[str, Path]
# (cut_id, reference tokens, hypothesis tokens)
Result = Tuple[str, List[str], List[str]]

# What icefall prints for the empty side of an insertion or a deletion.
ERR = "*"

_RECOG_LINE = re.compile(r"^(?P<cut_id>.*):\t(?P<side>ref|hyp)=(?P<text>.*)$")


def compute_cer_units(text: Union[str, Sequence[str]]) -> List[str]:
    """Split a transcript into the units CER counts: every character that is not whitespace.

    Args:
      text: a string, or a list of words / characters (joined without separator first,
        as icefall does, so `["你好", "世界"]` and `"你好 世界"` give the same units).
    Returns:
      The list of characters, e.g. `["你", "好", "世", "界"]`.
    """
    if not isinstance(text, str):
        text = "".join(text)
    return [c for c in text if not c.isspace()]


@dataclass
class ErrorStats:
    """Error counts of a test set, as kaldialign counts them.

    `subs`, `ins`, `dels` count each (ref -> hyp) substitution / inserted word / deleted word;
    `words[w]` is `[correct, substituted as ref, substituted as hyp, inserted, deleted]`.
    """

    num_ins: int = 0
    num_del: int = 0
    num_sub: int = 0
    num_corr: int = 0
    ref_len: int = 0
    subs: Dict[Tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    ins: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dels: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    words: Dict[str, List[int]] = field(default_factory=lambda: defaultdict(lambda: [0] * 5))

    @property
    def num_errors(self) -> int:
        return self.num_ins + self.num_del + self.num_sub

    @property
    def error_rate(self) -> float:
        """Errors per reference unit in percent, rounded to 2 decimals like icefall."""
        if self.ref_len == 0:
            raise ValueError(
                "The references contain no words, so the error rate is undefined; "
                "check that the test set has non-empty transcripts."
            )
        return float("%.2f" % (100.0 * self.num_errors / self.ref_len))


def _eps_for(pairs: Sequence[Result]) -> str:
    """An epsilon symbol that no reference or hypothesis token equals.

    A token `*` in the data would otherwise be counted as an insertion or deletion.
    """
    vocab = {w for _, ref, hyp in pairs for w in (*ref, *hyp)}
    eps = ERR
    while eps in vocab:
        eps = f"<eps{eps}>"
    return eps


def _to_units(results: Iterable[Result], compute_CER: bool) -> List[Result]:
    """Check the result tuples and, for CER, split both sides into characters."""
    out = []
    for item in results:
        if len(item) != 3:
            raise ValueError(
                f"Each result must be (cut_id, ref_words, hyp_words); got {item!r}"
            )
        cut_id, ref, hyp = item
        if compute_CER:
            ref, hyp = compute_cer_units(ref), compute_cer_units(hyp)
        elif isinstance(ref, str) or isinstance(hyp, str):
            raise TypeError(
                f"{cut_id}: ref and hyp must be lists of words, not strings; "
                "split them with str.split() (or pass compute_CER=True for characters)."
            )
        out.append((cut_id, list(ref), list(hyp)))
    return out


def compute_error_stats(
    results: Iterable[Result], compute_CER: bool = False, sclite_mode: bool = False
) -> ErrorStats:
    """Align every (ref, hyp) pair with kaldialign and count the errors.

    Args:
      results: `(cut_id, ref_words, hyp_words)` tuples.
      compute_CER: count characters (without spaces) instead of words.
      sclite_mode: kaldialign's sclite costs (ins/del 3, sub 4) instead of 1/1/1.
    Returns:
      The totals and the per-word tables of the whole set.
    """
    pairs = _to_units(results, compute_CER)
    eps = _eps_for(pairs)
    stats = ErrorStats()
    for _, ref, hyp in pairs:
        stats.ref_len += len(ref)
        for ref_word, hyp_word in kaldialign.align(ref, hyp, eps, sclite_mode=sclite_mode):
            if ref_word == eps:
                stats.num_ins += 1
                stats.ins[hyp_word] += 1
                stats.words[hyp_word][3] += 1
            elif hyp_word == eps:
                stats.num_del += 1
                stats.dels[ref_word] += 1
                stats.words[ref_word][4] += 1
            elif ref_word != hyp_word:
                stats.num_sub += 1
                stats.subs[(ref_word, hyp_word)] += 1
                stats.words[ref_word][1] += 1
                stats.words[hyp_word][2] += 1
            else:
                stats.num_corr += 1
                stats.words[ref_word][0] += 1
    return stats


def _merged_alignment(
    ref: List[str], hyp: List[str], eps: str, sclite_mode: bool
) -> List[Tuple[str, str]]:
    """The alignment with each run of consecutive errors merged into one `(ref->hyp)` group.

    Reading `(A B->C)` is easier than `(A->*) (B->C)`; icefall prints the same grouping.
    """
    groups: List[Tuple[List[str], List[str]]] = []
    prev_is_error = False
    for r, h in kaldialign.align(ref, hyp, eps, sclite_mode=sclite_mode):
        is_error = r != h
        if is_error and prev_is_error:
            groups[-1][0].append(r)
            groups[-1][1].append(h)
        else:
            groups.append(([r], [h]))
        prev_is_error = is_error
    merged = []
    for rs, hs in groups:
        rs = [w for w in rs if w != eps]
        hs = [w for w in hs if w != eps]
        merged.append((" ".join(rs) if rs else ERR, " ".join(hs) if hs else ERR))
    return merged


def write_error_stats(
    f: TextIO,
    test_set_name: str,
    results: List[Result],
    enable_log: bool = True,
    compute_CER: bool = False,
    sclite_mode: bool = False,
) -> float:
    """Write icefall's `errs-*.txt` report for one test set and return its error rate.

    The report holds the rate, the error counts, each utterance's alignment
    (`THE (EDISON->ADDISON) COMPANY`), then the SUBSTITUTIONS, DELETIONS, INSERTIONS and
    PER-WORD STATS tables, most frequent first.

    Args:
      f: an open text file.
      test_set_name: shown in the log line, e.g. `test-clean-greedy_search`.
      results: `(cut_id, ref_words, hyp_words)` tuples; not modified.
      enable_log: also log `%WER 12.34% [ 292 / 2366, 23 ins, 57 del, 212 sub ]`.
      compute_CER: score characters (whitespace ignored) instead of words.
      sclite_mode: kaldialign's sclite costs.
    Returns:
      The error rate in percent, rounded to 2 decimals (icefall's return value).
    """
    pairs = _to_units(results, compute_CER)
    stats = compute_error_stats(pairs, sclite_mode=sclite_mode)
    rate = stats.error_rate
    summary = (
        f"%WER {rate:.2f}% [ {stats.num_errors} / {stats.ref_len}, "
        f"{stats.num_ins} ins, {stats.num_del} del, {stats.num_sub} sub ]"
    )
    if enable_log:
        logging.info(f"[{test_set_name}] {summary}")

    print(f"%WER = {rate:.2f}", file=f)
    print(
        f"Errors: {stats.num_ins} insertions, {stats.num_del} deletions, "
        f"{stats.num_sub} substitutions, over {stats.ref_len} reference "
        f"words ({stats.num_corr} correct)",
        file=f,
    )
    print(summary, file=f)
    print(
        "Search below for sections starting with PER-UTT DETAILS:, "
        "SUBSTITUTIONS:, DELETIONS:, INSERTIONS:, PER-WORD STATS:",
        file=f,
    )

    print("", file=f)
    print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
    eps = _eps_for(pairs)
    for cut_id, ref, hyp in pairs:
        ali = _merged_alignment(ref, hyp, eps, sclite_mode)
        text = " ".join(r if r == h else f"({r}->{h})" for r, h in ali)
        print(f"{cut_id}:\t{text}", file=f)

    print("", file=f)
    print("SUBSTITUTIONS: count ref -> hyp", file=f)
    for count, (ref, hyp) in sorted(((v, k) for k, v in stats.subs.items()), reverse=True):
        print(f"{count}   {ref} -> {hyp}", file=f)

    print("", file=f)
    print("DELETIONS: count ref", file=f)
    for count, ref in sorted(((v, k) for k, v in stats.dels.items()), reverse=True):
        print(f"{count}   {ref}", file=f)

    print("", file=f)
    print("INSERTIONS: count hyp", file=f)
    for count, hyp in sorted(((v, k) for k, v in stats.ins.items()), reverse=True):
        print(f"{count}   {hyp}", file=f)

    print("", file=f)
    print("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp", file=f)
    for _, word, counts in sorted(
        ((sum(v[1:]), k, v) for k, v in stats.words.items()), reverse=True
    ):
        corr, ref_sub, hyp_sub, n_ins, n_del = counts
        tot_errs = ref_sub + hyp_sub + n_ins + n_del
        ref_count, hyp_count = corr + ref_sub + n_del, corr + hyp_sub + n_ins
        print(f"{word}   {corr} {tot_errs} {ref_count} {hyp_count}", file=f)
    return rate


def store_transcripts(
    filename: Pathlike, texts: Iterable[Result], char_level: bool = False
) -> None:
    """Write icefall's `recogs-*.txt`: a `ref=` and a `hyp=` line per utterance.

    Args:
      filename: the output file.
      texts: `(cut_id, ref, hyp)` tuples; ref/hyp are lists of words (written as Python
        lists) or plain strings (written as they are).
      char_level: write both sides as lists of characters (whitespace dropped), which is
        what AISHELL's recogs files hold.
    """
    with open(filename, "w", encoding="utf8") as f:
        for cut_id, ref, hyp in texts:
            if char_level:
                ref, hyp = compute_cer_units(ref), compute_cer_units(hyp)
            print(f"{cut_id}:\tref={ref}", file=f)
            print(f"{cut_id}:\thyp={hyp}", file=f)


def _parse_transcript(text: str) -> Union[str, List[str]]:
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, list):
            return value
    return text


def read_recogs(
    filename: Pathlike,
) -> List[Tuple[str, Union[str, List[str]], Union[str, List[str]]]]:
    """Read a file written by `store_transcripts` back into `(cut_id, ref, hyp)` tuples.

    Lists come back as lists of str, plain-string transcripts as str.
    """
    out = []
    pending = None
    with open(filename, encoding="utf8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            m = _RECOG_LINE.match(line)
            if m is None:
                raise ValueError(
                    f"{filename}:{lineno}: expected '<cut_id>:\\tref=[...]' or "
                    f"'<cut_id>:\\thyp=[...]', got {line!r}"
                )
            cut_id, side, text = m["cut_id"], m["side"], _parse_transcript(m["text"])
            if side == "ref":
                if pending is not None:
                    raise ValueError(f"{filename}:{lineno}: ref of {pending[0]} has no hyp line")
                pending = (cut_id, text)
            else:
                if pending is None or pending[0] != cut_id:
                    raise ValueError(
                        f"{filename}:{lineno}: hyp of {cut_id} does not follow its ref line"
                    )
                out.append((cut_id, pending[1], text))
                pending = None
    if pending is not None:
        raise ValueError(f"{filename}: ref of {pending[0]} has no hyp line")
    return out


def read_wer_summary(filename: Pathlike) -> Dict[str, float]:
    """Read a `wer-summary-*.txt` file into `{setting: rate}`, in file order (best first)."""
    with open(filename, encoding="utf8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not lines or lines[0] not in ("settings\tWER", "settings\tCER"):
        raise ValueError(
            f"{filename} is not a wer-summary file: its first line must be "
            f"'settings\\tWER' or 'settings\\tCER'"
        )
    out = {}
    for line in lines[1:]:
        key, _, value = line.rpartition("\t")
        if not key:
            raise ValueError(f"{filename}: expected '<setting>\\t<rate>', got {line!r}")
        out[key] = float(value)
    return out


def save_results(
    res_dir: Pathlike,
    test_set_name: str,
    results_dict: Dict[str, List[Result]],
    compute_CER: bool = False,
    suffix: str = "",
) -> Dict[str, float]:
    """Score every decoding setting of one test set and write icefall's three result files.

    Writes `recogs-<set>-<key><suffix>.txt`, `errs-<set>-<key><suffix>.txt` per key and
    `wer-summary-<set><suffix>.txt` for all keys (ascending rate), and logs the best setting.
    `suffix` is appended verbatim, so pass e.g. `"-epoch-30-avg-9"`.

    Args:
      res_dir: output directory (created if missing).
      test_set_name: e.g. `test-clean`.
      results_dict: decoding setting (e.g. `greedy_search`, `beam_size_4`) -> results.
      compute_CER: score characters (AISHELL) instead of words.
      suffix: appended to every file name.
    Returns:
      setting -> error rate in percent.
    """
    res_dir = Path(res_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    rates: Dict[str, float] = {}
    for key, results in results_dict.items():
        results = sorted(results, key=lambda r: r[0])
        recogs = res_dir / f"recogs-{test_set_name}-{key}{suffix}.txt"
        store_transcripts(recogs, results, char_level=compute_CER)
        logging.info(f"The transcripts are stored in {recogs}")

        errs = res_dir / f"errs-{test_set_name}-{key}{suffix}.txt"
        with open(errs, "w", encoding="utf8") as f:
            rates[key] = write_error_stats(
                f, f"{test_set_name}-{key}", results, enable_log=True, compute_CER=compute_CER
            )
        logging.info(f"Wrote detailed error stats to {errs}")

    ranked = sorted(rates.items(), key=lambda kv: kv[1])
    metric = "CER" if compute_CER else "WER"
    summary = res_dir / f"wer-summary-{test_set_name}{suffix}.txt"
    with open(summary, "w", encoding="utf8") as f:
        print(f"settings\t{metric}", file=f)
        for key, rate in ranked:
            print(f"{key}\t{rate}", file=f)

    lines = [f"For {test_set_name}, {metric} of different settings are:"]
    for i, (key, rate) in enumerate(ranked):
        lines.append(f"{key}\t{rate}" + (f"\tbest for {test_set_name}" if i == 0 else ""))
    logging.info("\n".join(lines))
    return rates


def fire_count_summary(differences: Sequence[int]) -> Dict[str, float]:
    """How far the CIF layer's fire counts are from the reference token counts.

    Args:
      differences: per utterance, (number of CIF vectors at inference) - (reference tokens).
    Returns:
      {"utterances", "mean" (signed), "mean_abs", "exact" (fraction with difference 0)}.
    """
    n = len(differences)
    if n == 0:
        return {"utterances": 0, "mean": float("nan"), "mean_abs": float("nan"), "exact": float("nan")}
    return {
        "utterances": n,
        "mean": sum(differences) / n,
        "mean_abs": sum(abs(d) for d in differences) / n,
        "exact": sum(d == 0 for d in differences) / n,
    }


def write_fire_counts(filename: Pathlike, differences: Sequence[int]) -> Dict[str, float]:
    """Write the summary and the histogram of (fires - reference tokens) to `filename`.

    The file: one summary line, then `difference<TAB>utterances` lines in increasing order.
    Returns the summary (:func:`fire_count_summary`).
    """
    summary = fire_count_summary(differences)
    histogram: Dict[int, int] = defaultdict(int)
    for d in differences:
        histogram[d] += 1
    with open(filename, "w", encoding="utf-8") as f:
        f.write(
            f"CIF fires - reference tokens over {summary['utterances']} utterances: mean {summary['mean']:+.3f}, "
            f"mean |.| {summary['mean_abs']:.3f}, exact {100 * summary['exact']:.1f}%\n"
        )
        f.write("difference\tutterances\n")
        for d in sorted(histogram):
            f.write(f"{d:+d}\t{histogram[d]}\n")
    return summary
