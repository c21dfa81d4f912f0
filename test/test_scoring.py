"""Tests for icefall_cif/scoring.py: counts against kaldialign, icefall file formats, readers."""
import io
import logging
import random
import re
from collections import Counter

import kaldialign
import pytest

from icefall_cif.scoring import (
    compute_cer_units,
    compute_error_stats,
    read_recogs,
    read_wer_summary,
    save_results,
    store_transcripts,
    write_error_stats,
)


def _random_results(seed: int, n: int = 60):
    rng = random.Random(seed)
    vocab = ["A", "B", "C", "DON'T", "E", "*", 'SAY"HI"']
    results = []
    for i in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 9))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 4)):  # random edits so that errors of every kind occur
            op = rng.choice(["ins", "del", "sub"])
            if op == "ins":
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
            elif hyp and op == "del":
                hyp.pop(rng.randrange(len(hyp)))
            elif hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
        results.append((f"utt-{i}", ref, hyp))
    results.append(("utt-empty-hyp", ["A", "B"], []))
    return results


def _kaldialign_totals(results, sclite_mode=False):
    totals = Counter()
    for _, ref, hyp in results:
        d = kaldialign.edit_distance(ref, hyp, sclite_mode=sclite_mode)
        totals.update({k: d[k] for k in ("ins", "del", "sub", "total", "ref_len")})
    return totals


def _section(text: str, header: str):
    """Lines of one errs-file section, up to the next blank line."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 1
    out = []
    for line in lines[start:]:
        if not line:
            break
        out.append(line)
    return out


@pytest.mark.parametrize("sclite_mode", [False, True])
def test_counts_equal_kaldialign_edit_distance(sclite_mode):
    for seed in range(5):
        results = _random_results(seed)
        expected = _kaldialign_totals(results, sclite_mode)
        stats = compute_error_stats(results, sclite_mode=sclite_mode)
        assert (stats.num_ins, stats.num_del, stats.num_sub) == (
            expected["ins"],
            expected["del"],
            expected["sub"],
        )
        assert stats.num_errors == expected["total"]
        assert stats.ref_len == expected["ref_len"]
        assert stats.num_corr == expected["ref_len"] - expected["del"] - expected["sub"]


def test_errs_file_numbers_and_tables():
    results = _random_results(123)
    expected = _kaldialign_totals(results)
    f = io.StringIO()
    wer = write_error_stats(f, "test-set", results, enable_log=False)
    text = f.getvalue()
    lines = text.split("\n")

    rate = 100.0 * expected["total"] / expected["ref_len"]
    assert wer == pytest.approx(rate, abs=0.005)
    assert lines[0] == f"%WER = {rate:.2f}"
    m = re.fullmatch(
        r"Errors: (\d+) insertions, (\d+) deletions, (\d+) substitutions, "
        r"over (\d+) reference words \((\d+) correct\)",
        lines[1],
    )
    assert m is not None, lines[1]
    ins, dels, subs, ref_len, corr = map(int, m.groups())
    assert (ins, dels, subs, ref_len) == (
        expected["ins"],
        expected["del"],
        expected["sub"],
        expected["ref_len"],
    )
    assert corr == ref_len - dels - subs
    assert lines[2] == (
        f"%WER {rate:.2f}% [ {expected['total']} / {expected['ref_len']}, "
        f"{expected['ins']} ins, {expected['del']} del, {expected['sub']} sub ]"
    )

    # The tables add up to the totals.
    sub_lines = _section(text, "SUBSTITUTIONS:")
    assert sum(int(line.split()[0]) for line in sub_lines) == expected["sub"]
    assert sum(int(line.split()[0]) for line in _section(text, "DELETIONS:")) == expected["del"]
    assert sum(int(line.split()[0]) for line in _section(text, "INSERTIONS:")) == expected["ins"]
    counts = [line.split("   ") for line in _section(text, "PER-WORD STATS:")]
    ref_counts = {w: int(c.split()[2]) for w, c in counts}
    hyp_counts = {w: int(c.split()[3]) for w, c in counts}
    assert ref_counts == {k: v for k, v in Counter(w for _, r, _ in results for w in r).items()}
    assert hyp_counts == {k: v for k, v in Counter(w for _, _, h in results for w in h).items()}

    per_utt = _section(text, "PER-UTT DETAILS:")
    assert [line.split(":\t")[0] for line in per_utt] == [r[0] for r in results]


def test_per_utterance_alignment_format():
    results = [
        (
            "edison",
            "THE ASSOCIATION OF EDISON ILLUMINATING COMPANIES".split(),
            "THE ASSOCIATION OF ADDISON ILLUMINATING COMPANIES".split(),
        ),
        ("sir", "FOR THE FIRST DAY SIR I THINK".split(), "FOR THE FIRST DAY I THINK".split()),
        ("merged", "A B C D".split(), "A X D".split()),
        ("inserted", "A B".split(), "A B Z".split()),
    ]
    f = io.StringIO()
    write_error_stats(f, "x", results, enable_log=False)
    per_utt = _section(f.getvalue(), "PER-UTT DETAILS:")
    assert per_utt == [
        "edison:\tTHE ASSOCIATION OF (EDISON->ADDISON) ILLUMINATING COMPANIES",
        "sir:\tFOR THE FIRST DAY (SIR->*) I THINK",
        "merged:\tA (B C->X) D",
        "inserted:\tA B (*->Z)",
    ]


def test_star_token_is_a_word_not_epsilon():
    results = [("u", ["*", "A"], ["A"]), ("v", ["B"], ["*", "B"])]
    stats = compute_error_stats(results)
    assert (stats.num_ins, stats.num_del, stats.num_sub) == (1, 1, 0)
    assert stats.dels == {"*": 1} and stats.ins == {"*": 1}


def test_compute_cer_units_splits_chinese_characters():
    assert compute_cer_units("你好 世界") == ["你", "好", "世", "界"]
    assert compute_cer_units(["你好", "世界"]) == ["你", "好", "世", "界"]
    assert compute_cer_units(" 甚至\t出现 ") == ["甚", "至", "出", "现"]


def test_cer_equals_kaldialign_on_characters():
    results = [
        ("a", ["甚至", "出现", "交易"], ["甚至", "出", "交易", "几乎"]),
        ("b", ["一二三"], ["一", "三", "四"]),
    ]
    expected = Counter()
    for _, ref, hyp in results:
        d = kaldialign.edit_distance(list("".join(ref)), list("".join(hyp)))
        expected.update({k: d[k] for k in ("ins", "del", "sub", "total", "ref_len")})
    f = io.StringIO()
    cer = write_error_stats(f, "aishell", results, enable_log=False, compute_CER=True)
    assert cer == pytest.approx(100.0 * expected["total"] / expected["ref_len"], abs=0.005)
    stats = compute_error_stats(results, compute_CER=True)
    assert (stats.num_ins, stats.num_del, stats.num_sub, stats.ref_len) == (
        expected["ins"],
        expected["del"],
        expected["sub"],
        expected["ref_len"],
    )
    # the caller's results are not rewritten into characters
    assert results[0][1] == ["甚至", "出现", "交易"]


def test_save_results_files_round_trip(tmp_path, caplog):
    good = [("u2", ["A", "B"], ["A", "B"]), ("u1:x", ["DON'T", 'SAY"HI"'], ["DON'T", "SAY"])]
    bad = [("u2", ["A", "B"], ["A"]), ("u1:x", ["DON'T", 'SAY"HI"'], [])]
    with caplog.at_level(logging.INFO):
        wers = save_results(
            tmp_path / "res", "test-clean", {"beam_4": bad, "greedy": good}, suffix="-epoch-3"
        )
    assert wers == {"greedy": pytest.approx(25.0), "beam_4": pytest.approx(75.0)}

    res = tmp_path / "res"
    for key, results in (("greedy", good), ("beam_4", bad)):
        recogs = read_recogs(res / f"recogs-test-clean-{key}-epoch-3.txt")
        assert recogs == sorted(results)
        assert (res / f"errs-test-clean-{key}-epoch-3.txt").read_text().startswith("%WER = ")
    summary_file = res / "wer-summary-test-clean-epoch-3.txt"
    assert summary_file.read_text().split("\n")[0] == "settings\tWER"
    summary = read_wer_summary(summary_file)
    assert list(summary.items()) == [("greedy", 25.0), ("beam_4", 75.0)]
    assert "greedy\t25.0\tbest for test-clean" in caplog.text


def test_recogs_format_is_icefall(tmp_path):
    path = tmp_path / "recogs.txt"
    store_transcripts(path, [("cut-1", ["HELLO", "WORLD"], ["HELLO"])])
    assert path.read_text() == "cut-1:\tref=['HELLO', 'WORLD']\ncut-1:\thyp=['HELLO']\n"
    store_transcripts(path, [("c", "你好 世界", ["你好"])], char_level=True)
    assert read_recogs(path) == [("c", ["你", "好", "世", "界"], ["你", "好"])]


def test_cer_summary_header(tmp_path):
    wers = save_results(tmp_path, "test", {"greedy": [("a", ["一二"], ["一"])]}, compute_CER=True)
    assert wers == {"greedy": 50.0}
    assert (tmp_path / "wer-summary-test.txt").read_text() == "settings\tCER\ngreedy\t50.0\n"
    assert read_recogs(tmp_path / "recogs-test-greedy.txt") == [("a", ["一", "二"], ["一"])]


def test_reader_and_input_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("cut-1:\thyp=['A']\n")
    with pytest.raises(ValueError, match="does not follow its ref"):
        read_recogs(bad)
    bad.write_text("not a recogs line\n")
    with pytest.raises(ValueError, match="expected"):
        read_recogs(bad)
    bad.write_text("WER\n")
    with pytest.raises(ValueError, match="not a wer-summary file"):
        read_wer_summary(bad)
    with pytest.raises(TypeError, match="lists of words"):
        write_error_stats(io.StringIO(), "x", [("u", "A B", "A")], enable_log=False)
    with pytest.raises(ValueError, match="no words"):
        write_error_stats(io.StringIO(), "x", [("u", [], ["A"])], enable_log=False)


def test_fire_count_summary_and_file(tmp_path):
    from icefall_cif.scoring import fire_count_summary, write_fire_counts

    diffs = [0, -1, -1, 2, 0, -3]
    summary = write_fire_counts(tmp_path / "fires.txt", diffs)
    assert summary == fire_count_summary(diffs)
    assert summary["utterances"] == 6 and summary["exact"] == pytest.approx(2 / 6)
    assert summary["mean"] == pytest.approx(-0.5) and summary["mean_abs"] == pytest.approx(7 / 6)
    lines = (tmp_path / "fires.txt").read_text().splitlines()
    assert lines[0] == "CIF fires - reference tokens over 6 utterances: mean -0.500, mean |.| 1.167, exact 33.3%"
    assert lines[2:] == ["-3\t1", "-1\t2", "+0\t2", "+2\t1"]
    assert fire_count_summary([])["utterances"] == 0
