"""Tests for icefall_cif/lm (n-gram and RNN LMs) and egs/.../local/train_lm.py.

The n-gram LM is checked against numbers worked out by hand on a three-sentence corpus and
against a naive float64 evaluation of the interpolated Kneser-Ney recursion written here.
"""
import importlib.util
import math
import random
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
import torch

from icefall_cif.lm import (
    NgramLm,
    estimate_kneser_ney,
    load_lm,
    load_rnn_lm,
    save_rnn_lm,
    select_lm_state,
    train_rnn_lm,
    where_lm_state,
)
from icefall_cif.lm.ngram import kneser_ney_discount
from icefall_cif.lm.rnn_lm import RnnLm

REPO = Path(__file__).resolve().parents[1]
SOS = 1  # <sos/eos>
A, B, C = 3, 4, 5
TINY_CORPUS = [[A, B], [A, C], [A, B]]
TINY_V = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The shared 2-core machine is oversubscribed; OpenMP spinning makes tiny LSTMs ~1000x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_corpus(seed: int, num: int = 60, vocab_size: int = 10) -> List[List[int]]:
    rng = random.Random(seed)
    return [[rng.randint(2, vocab_size - 1) for _ in range(rng.randint(0, 7))] for _ in range(num)]


# ---------------------------------------------------------------------- n-gram: hand-computed
def test_kneser_ney_matches_hand_computed_values():
    # Bigram events: <s> a x3, a b x2, a c x1, b </s> x2, c </s> x1 (top order: raw counts).
    # Unigram continuation counts N1+(. w): a 1 (<s>), b 1 (a), c 1 (a), </s> 2 (b, c); sum 5,
    # 4 types. With D = 0.5 at both orders and V = 6:
    #   p1(w) = max(N1+(. w) - 0.5, 0) / 5 + 0.5 * 4 / 5 / 6       -> a, b, c: 1/6; </s>: 11/30;
    #                                                                 blank, <unk>: 1/15
    #   p(a | <s>) = (3 - .5) / 3 + (.5 * 1 / 3) * 1/6              = 31/36
    #   p(b | a)   = (2 - .5) / 3 + (.5 * 2 / 3) * 1/6              = 5/9
    #   p(</s> | b) = (2 - .5) / 2 + (.5 * 1 / 2) * 11/30           = 101/120
    #   p(c | b)   = 0 + (.5 * 1 / 2) * 1/6                         = 1/24   (unseen: back-off)
    lm = estimate_kneser_ney(TINY_CORPUS, TINY_V, order=2, discounts=[0.5, 0.5])
    expected = {
        ((), A): 1 / 6,
        ((), SOS): 11 / 30,
        ((), 0): 1 / 15,
        ((SOS,), A): 31 / 36,
        ((A,), B): 5 / 9,
        ((B,), SOS): 101 / 120,
        ((B,), C): 1 / 24,
    }
    for (context, token), p in expected.items():
        if context:
            got = math.exp(lm.token_log_prob(context, token))
        else:
            got = lm.next_log_probs([[]])[0, token].exp().item()
        assert got == pytest.approx(p, rel=1e-6), (context, token)


def test_default_discounts_follow_count_of_counts():
    # Bigram counts {3, 2, 1, 2, 1}: n1 = 2, n2 = 2 -> D2 = 2 / (2 + 4) = 1/3.
    # Unigram continuation counts {1, 1, 1, 2}: n1 = 3, n2 = 1 -> D1 = 3 / 5.
    # p1(b) = (1 - .6) / 5 + .6 * 4 / 5 / 6 = 0.16;  p(b | a) = (2 - 1/3) / 3 + (1/3 * 2/3) * 0.16.
    assert kneser_ney_discount([3, 2, 1, 2, 1]) == pytest.approx(1 / 3)
    assert kneser_ney_discount([1, 1, 1, 2]) == pytest.approx(3 / 5)
    assert kneser_ney_discount([1, 1, 3]) == 0.5  # n2 = 0: the formula gives 1, we fall back
    lm = estimate_kneser_ney(TINY_CORPUS, TINY_V, order=2)
    assert math.exp(lm.token_log_prob([A], B)) == pytest.approx((5 / 3) / 3 + (2 / 9) * 0.16, rel=1e-6)


# ---------------------------------------------------------------------- n-gram: naive reference
def reference_kneser_ney(sentences: Sequence[Sequence[int]], vocab_size: int, order: int):
    """p(w | context) straight from the interpolated Kneser-Ney definition, float64."""
    padded = [(SOS,) + tuple(s) + (SOS,) for s in sentences]
    # Every n-gram (k = 1..order) whose last token is predicted (not the leading <s>).
    raw: Dict[int, Counter] = {k: Counter() for k in range(1, order + 1)}
    for s in padded:
        for j in range(1, len(s)):
            for k in range(1, order + 1):
                if j - k + 1 >= 0:
                    raw[k][s[j - k + 1 : j + 1]] += 1

    def adjusted(gram: Tuple[int, ...]) -> int:
        k = len(gram)
        if k == order or (k >= 2 and gram[0] == SOS):
            return raw[k][gram]
        return len({g[0] for g in raw[k + 1] if g[1:] == gram})

    def discount(k: int) -> float:
        values = [adjusted(g) for g in raw[k]]
        return kneser_ney_discount(values)

    discounts = {k: discount(k) for k in range(1, order + 1)}

    def prob(context: Tuple[int, ...], w: int) -> float:
        context = context[max(len(context) - (order - 1), 0) :] if order > 1 else ()
        k = len(context) + 1
        if k == 1:
            counts = {g[0]: adjusted(g) for g in raw[1]}
            total = sum(counts.values())
            d = discounts[1]
            return max(counts.get(w, 0) - d, 0) / total + d * len(counts) / total / vocab_size
        followers = {g[-1]: adjusted(g) for g in raw[k] if g[:-1] == context}
        if not followers:
            return prob(context[1:], w)
        total = sum(followers.values())
        d = discounts[k]
        return max(followers.get(w, 0) - d, 0) / total + d * len(followers) / total * prob(context[1:], w)

    return prob


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_naive_reference(order):
    corpus = random_corpus(seed=order)
    V = 10
    lm = estimate_kneser_ney(corpus, V, order=order)
    ref = reference_kneser_ney(corpus, V, order)
    contexts = [[SOS], [SOS, 3], [3, 4], [5, 6, 7], [SOS, 9, 9, 9], [2, 2]] + [[SOS] + s for s in corpus[:4]]
    dists = lm.next_log_probs(contexts).double()
    for context, dist in zip(contexts, dists):
        expected = torch.tensor([ref(tuple(context), w) for w in range(V)], dtype=torch.float64)
        torch.testing.assert_close(dist.exp(), expected, rtol=1e-5, atol=1e-7)
        for w in (3, SOS, 0):
            assert math.exp(lm.token_log_prob(context, w)) == pytest.approx(expected[w].item(), rel=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_ngram_distributions_sum_to_one(order):
    lm = estimate_kneser_ney(random_corpus(seed=10 + order), 10, order=order)
    contexts = [[SOS], [SOS, 3, 4], [9, 8, 7, 6], [2], [SOS, 5, 5, 5, 5, 5]]
    sums = lm.next_log_probs(contexts).double().exp().sum(dim=1)
    torch.testing.assert_close(sums, torch.ones(len(contexts), dtype=torch.float64), rtol=0, atol=1e-6)


def test_ngram_sentence_scores_sum_to_one_over_all_short_sentences():
    # With a 3-token text vocabulary, sentences of length <= 8 cover almost all probability mass;
    # the remaining mass is the probability of not having ended after 8 tokens.
    vocab_size = 5  # 0 blank, 1 <sos/eos>, 2 <unk>, 3, 4
    lm = estimate_kneser_ney([[3, 4], [4], [3, 3, 4], [2, 3]], vocab_size, order=3)
    total = 0.0
    frontier: List[Tuple[List[int], float]] = [([], 0.0)]
    for _ in range(8):
        next_frontier = []
        for seq, lp in frontier:
            total += math.exp(lp + lm.token_log_prob([SOS] + seq, SOS))
            for w in (0, 2, 3, 4):
                next_frontier.append((seq + [w], lp + lm.token_log_prob([SOS] + seq, w)))
        frontier = next_frontier
    remaining = sum(math.exp(lp) for _, lp in frontier)
    assert total + remaining == pytest.approx(1.0, abs=1e-9)
    assert total > 0.9


def test_arpa_round_trip(tmp_path):
    lm = estimate_kneser_ney(random_corpus(seed=3), 10, order=3)
    path = tmp_path / "lm.arpa"
    lm.save_arpa(path)
    loaded = NgramLm.load_arpa(path)
    assert (loaded.vocab_size, loaded.order) == (10, 3)
    contexts = [[SOS], [SOS, 3], [4, 5], [9, 9], [SOS, 2, 7, 8]]
    torch.testing.assert_close(loaded.next_log_probs(contexts), lm.next_log_probs(contexts), rtol=0, atol=1e-6)
    path2 = tmp_path / "again.arpa"
    loaded.save_arpa(path2)
    assert path2.read_text() == path.read_text()

    text = path.read_text()
    for k in (1, 2, 3):
        declared = int(text.split(f"ngram {k}=")[1].split()[0])
        section = text.split(f"\\{k}-grams:\n")[1].split("\n\n")[0].strip().splitlines()
        assert declared == len(section)
    assert "\t<s>\t" in text and "</s>" in text


def test_arpa_reader_rejects_words_and_reads_unk(tmp_path):
    bad = tmp_path / "words.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.5\thello\n-0.5\t</s>\n\n\\end\\\n")
    with pytest.raises(ValueError, match="not a token id"):
        NgramLm.load_arpa(bad)
    good = tmp_path / "unk.arpa"
    good.write_text("\\data\\\nngram 1=4\n\n\\1-grams:\n-1.0\t<unk>\n-99\t<s>\t0\n-0.3\t</s>\n-0.5\t3\n\n\\end\\\n")
    lm = NgramLm.load_arpa(good)
    assert lm.vocab_size == 4
    # id 2 has no entry: it gets <unk>'s probability, as kenlm treats unknown words.
    assert lm.token_log_prob([SOS], 2) == pytest.approx(-1.0 * math.log(10))
    assert lm.token_log_prob([SOS], 3) == pytest.approx(-0.5 * math.log(10))


def test_training_sentences_are_validated():
    with pytest.raises(ValueError, match="blank"):
        estimate_kneser_ney([[3, 0, 4]], 10)
    with pytest.raises(ValueError, match="lang dir"):
        estimate_kneser_ney([[3, 12]], 10)
    with pytest.raises(ValueError, match="sos/eos"):
        train_rnn_lm([[3, SOS]], 10, num_epochs=1)


# ---------------------------------------------------------------------- state API (both LMs)
def step_scores(lm, seqs: List[List[int]]) -> torch.Tensor:
    """Sentence log-probs by feeding all rows token by token through the state API, with rows
    of different lengths frozen by where_lm_state and the batch shuffled by select_lm_state."""
    B = len(seqs)
    state = lm.init_state(B, torch.device("cpu"))
    perm = torch.randperm(B)
    state = select_lm_state(state, perm)
    rows = [seqs[i] for i in perm.tolist()]
    total = torch.zeros(B, dtype=torch.float64)
    for j in range(max(len(s) for s in rows) + 1):
        tok = torch.tensor([s[j] if j < len(s) else SOS for s in rows])
        present = torch.tensor([j <= len(s) for s in rows])
        total += torch.where(present, state[0].gather(1, tok.unsqueeze(1)).squeeze(1).double(), 0.0)
        state = where_lm_state(present, lm.advance(state, tok), state)
    out = torch.empty_like(total)
    out[perm] = total
    return out


def small_rnn_lm(vocab_size: int = 10, seed: int = 0) -> RnnLm:
    torch.manual_seed(seed)
    return RnnLm(vocab_size, embedding_dim=8, hidden_dim=16, num_layers=2, dropout=0.0).eval()


@pytest.mark.parametrize("kind", ["ngram", "rnn"])
def test_state_api_matches_sentence_scores(kind):
    seqs = [[3, 4, 5], [], [9], [2, 2, 7, 8, 3], [6, 6]]
    lm = estimate_kneser_ney(random_corpus(seed=5), 10, order=3) if kind == "ngram" else small_rnn_lm()
    stepped = step_scores(lm, seqs)
    whole = lm.score_sequences(seqs).double()
    torch.testing.assert_close(stepped, whole, rtol=1e-5, atol=1e-5)
    if kind == "ngram":
        expected = torch.tensor([lm.sentence_log_prob(s) for s in seqs], dtype=torch.float64)
        torch.testing.assert_close(stepped, expected, rtol=1e-5, atol=1e-5)
    state = lm.init_state(3, torch.device("cpu"))
    torch.testing.assert_close(state[0].double().exp().sum(1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- RNN LM
def test_rnn_lm_perplexity_falls_during_training():
    corpus = [s for s in random_corpus(seed=7, num=40) if s]
    torch.manual_seed(0)
    before = RnnLm(10, embedding_dim=16, hidden_dim=32, num_layers=1, dropout=0.0).eval().perplexity(corpus)
    model, history = train_rnn_lm(
        corpus, 10, embedding_dim=16, hidden_dim=32, num_layers=1, dropout=0.0,
        num_epochs=30, batch_size=8, lr=1e-2, progress=False,
    )
    after = model.perplexity(corpus)
    # An untrained LM is close to uniform over 10 ids; the data has 8 text ids plus </s>.
    assert before > 7.0
    assert after < 0.8 * before
    assert history[-1]["train_ppl"] < 0.8 * history[0]["train_ppl"]
    # perplexity() against the definition, summed token by token through the state API.
    naive = math.exp(-step_scores(model, corpus).sum().item() / sum(len(s) + 1 for s in corpus))
    assert after == pytest.approx(naive, rel=1e-4)


def test_rnn_lm_save_load_round_trip(tmp_path):
    lm = small_rnn_lm(seed=3)
    save_rnn_lm(lm, tmp_path / "rnn.pt")
    loaded = load_lm("rnn", tmp_path / "rnn.pt")
    seqs = [[3, 4], [5, 6, 7, 8]]
    torch.testing.assert_close(loaded.score_sequences(seqs), lm.score_sequences(seqs))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an RNN LM"):
        load_rnn_lm(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown LM type"):
        load_lm("transformer", tmp_path / "rnn.pt")


# ---------------------------------------------------------------------- train_lm.py
def _load_train_lm_cli():
    path = REPO / "egs" / "librispeech" / "ASR" / "local" / "train_lm.py"
    spec = importlib.util.spec_from_file_location("train_lm_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_lm_cli(tmp_path):
    cli = _load_train_lm_cli()
    lang = tmp_path / "lang_char"
    lang.mkdir()
    symbols = ["<blk>", "<sos/eos>", "<unk>", "a", "b", "c", "d"]
    (lang / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)))
    (tmp_path / "text.txt").write_text("abc\nabd\ncab\nab\n")
    (tmp_path / "ids.txt").write_text("3 4 5\n3 4 6\n5 3 4\n3 4\n")

    from_text = cli.main(["--lm-type", "ngram", "--order", "2", "--lang-dir", str(lang),
                          "--train-text", str(tmp_path / "text.txt"), "--out-dir", str(tmp_path / "t")])
    from_ids = cli.main(["--lm-type", "ngram", "--order", "2", "--lang-dir", str(lang),
                         "--train-text", str(tmp_path / "ids.txt"), "--out-dir", str(tmp_path / "i")])
    assert from_text.name == "ngram_2gram.arpa"
    assert from_text.read_text() == from_ids.read_text()
    lm = load_lm("ngram", from_ids)
    assert lm.vocab_size == len(symbols)
    assert math.exp(lm.token_log_prob([3], 4)) > 0.5  # "a" is mostly followed by "b"

    rnn = cli.main(["--lm-type", "rnn", "--lang-dir", str(lang), "--train-text", str(tmp_path / "ids.txt"),
                    "--out-dir", str(tmp_path / "r"), "--num-epochs", "2", "--embedding-dim", "8",
                    "--hidden-dim", "8", "--num-layers", "1"])
    assert rnn.name == "rnn_lm.pt" and load_lm("rnn", rnn).vocab_size == len(symbols)

    (tmp_path / "bad.txt").write_text("3 4 x\n")
    with pytest.raises(ValueError, match="--input-format text"):
        cli.main(["--lm-type", "ngram", "--lang-dir", str(lang), "--train-text", str(tmp_path / "bad.txt"),
                  "--input-format", "ids", "--out-dir", str(tmp_path / "b")])
