"""Tests for icefall_cif/significance.py and tools/compare_wer.py."""
import doctest
import random
import subprocess
import sys
from pathlib import Path

import kaldialign
import numpy as np
import pytest

import icefall_cif.significance as significance
from icefall_cif.scoring import compute_cer_units, store_transcripts
from icefall_cif.significance import paired_bootstrap, utterance_errors

REPO = Path(__file__).resolve().parent.parent


def random_system(seed: int, n: int = 40):
    rng = random.Random(seed)
    refs = {f"u{i}": [rng.choice("ABCDE") for _ in range(rng.randint(1, 12))] for i in range(n)}
    hyps = {}
    for cut_id, ref in refs.items():
        hyp = list(ref)
        for _ in range(rng.randint(0, 3)):
            if hyp and rng.random() < 0.5:
                hyp[rng.randrange(len(hyp))] = rng.choice("ABCDEF")
            else:
                hyp.insert(rng.randint(0, len(hyp)), "F")
        hyps[cut_id] = hyp
    return refs, hyps


def test_the_docstring_example():
    assert doctest.testmod(significance).failed == 0


def test_utterance_errors_equal_kaldialign_on_words_and_characters():
    refs, hyps = random_system(1)
    words = utterance_errors([(i, refs[i], hyps[i]) for i in refs])
    for cut_id, ref in refs.items():
        assert words[cut_id] == (kaldialign.edit_distance(ref, hyps[cut_id])["total"], len(ref))
    chars = utterance_errors([("c", "你好 世界", "你好界")], compute_CER=True)
    assert chars["c"] == (kaldialign.edit_distance(compute_cer_units("你好 世界"), list("你好界"))["total"], 4)


def test_the_bootstrap_equals_a_loop_over_its_resamples():
    refs, hyps_a = random_system(2)
    _, hyps_b = random_system(3)
    a = utterance_errors([(i, refs[i], hyps_a[i]) for i in refs])
    b = utterance_errors([(i, refs[i], hyps_b[i]) for i in refs])
    c = paired_bootstrap(a, b, num_samples=500, seed=7)

    ids = sorted(a)
    draws = np.random.default_rng(7).integers(0, len(ids), size=(500, len(ids)))
    differences, a_better = [], 0
    for row in draws:
        ea = sum(a[ids[k]][0] for k in row)
        eb = sum(b[ids[k]][0] for k in row)
        words = sum(a[ids[k]][1] for k in row)
        differences.append(100.0 * (ea - eb) / words)
        a_better += ea < eb
    assert c.low == round(float(np.percentile(differences, 2.5)), 2)
    assert c.high == round(float(np.percentile(differences, 97.5)), 2)
    assert c.prob_a_better == a_better / 500
    total = sum(v[1] for v in a.values())
    assert c.rate_a == round(100.0 * sum(v[0] for v in a.values()) / total, 2)
    assert c.difference == round(100.0 * (sum(v[0] for v in a.values()) - sum(v[0] for v in b.values())) / total, 2)
    assert c.low <= c.difference <= c.high


def test_equal_systems_differ_by_nothing_and_a_clearly_better_one_is_told_apart():
    refs, hyps = random_system(4)
    a = utterance_errors([(i, refs[i], hyps[i]) for i in refs])
    same = paired_bootstrap(a, a)
    assert (same.difference, same.low, same.high, same.prob_a_better) == (0.0, 0.0, 0.0, 0.0)
    perfect = utterance_errors([(i, refs[i], refs[i]) for i in refs])
    c = paired_bootstrap(perfect, a)
    assert c.rate_a == 0.0 and c.high < 0 and c.prob_a_better > 0.99


def test_mismatched_inputs_are_errors_that_say_which():
    a = {"u1": (1, 5), "u2": (0, 4)}
    with pytest.raises(ValueError, match="1 only in a"):
        paired_bootstrap(a, {"u1": (1, 5)})
    with pytest.raises(ValueError, match="utterance u2 has a reference of 4 units in a and 3 in b"):
        paired_bootstrap(a, {"u1": (1, 5), "u2": (0, 3)})
    with pytest.raises(ValueError, match="num_samples"):
        paired_bootstrap(a, a, num_samples=0)
    with pytest.raises(ValueError, match="u1 appears twice"):
        utterance_errors([("u1", ["A"], ["A"]), ("u1", ["B"], ["B"])])


def test_compare_wer_reads_recogs_files(tmp_path):
    refs, hyps = random_system(5)
    store_transcripts(tmp_path / "recogs-a.txt", [(i, refs[i], hyps[i]) for i in refs])
    store_transcripts(tmp_path / "recogs-b.txt", [(i, refs[i], refs[i]) for i in refs])
    store_transcripts(tmp_path / "recogs-c.txt", [(i, refs[i], refs[i]) for i in list(refs)[:5]])
    tool = [sys.executable, str(REPO / "tools" / "compare_wer.py"), "--num-samples", "200"]
    out = subprocess.run(tool + [str(tmp_path / "recogs-a.txt"), str(tmp_path / "recogs-b.txt")],
                         capture_output=True, text=True, check=True).stdout
    a = utterance_errors([(i, refs[i], hyps[i]) for i in refs])
    c = paired_bootstrap(a, utterance_errors([(i, refs[i], refs[i]) for i in refs]), 200)
    assert out.startswith(f"A {c.rate_a:.2f} B 0.00: A - B {c.difference:+.2f} [{c.low:+.2f}, {c.high:+.2f}]")
    bad = subprocess.run(tool + [str(tmp_path / "recogs-a.txt"), str(tmp_path / "recogs-c.txt")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "recogs-c.txt" in bad.stderr and "only in a" in bad.stderr
    missing = subprocess.run(tool + [str(tmp_path / "recogs-a.txt"), str(tmp_path / "recogs-x.txt")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot read" in missing.stderr and "recogs-x.txt" in missing.stderr
    assert "Traceback" not in missing.stderr
