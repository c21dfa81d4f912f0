"""Token n-gram LM: interpolated Kneser-Ney estimation, ARPA files, batched next-token scoring.

Tokens are the ASR model's token ids (0..V-1). Following icefall, one id (`<sos/eos>`, 1)
serves as both sentence markers: as the first element of an n-gram's context it is `<s>`,
as the predicted token it is `</s>`. It never occurs inside a sentence, so the two uses
cannot be confused. Every id 0..V-1 is an event of the distribution (blank and `<unk>`
included, they only get the uniform floor unless seen), so each next-token distribution sums
to 1 over the model's vocabulary.

Estimation (Chen & Goodman's interpolated Kneser-Ney, one discount per order):

    p_k(w | h) = max(a_k(h w) - D_k, 0) / a_k(h .)  +  gamma_k(h) * p_{k-1}(w | h'),
    gamma_k(h) = D_k * N1+(h .) / a_k(h .),            p_0(w) = 1 / V,

where h' drops the oldest token of h; the adjusted count a_k is the raw count at the highest
order and for n-grams starting with `<s>`, and the number of distinct left neighbours
N1+(. g) otherwise; D_k = n1 / (n1 + 2 n2) from the count-of-counts of a_k. An unseen
context h falls back to p_{k-1}(w | h'). Because gamma_k(h) is exactly the mass left for
unseen followers, the interpolated model is an ARPA back-off model with
bow(h) = gamma_k(h): writing and reading ARPA loses nothing but float precision.

Queries run on the back-off tables; whole next-token distributions (V,) are built per
context as tensors and cached, which is what beam-search fusion needs.
"""
import logging
import math
from collections import Counter, OrderedDict, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

Ngram = Tuple[int, ...]

_LN10 = math.log(10.0)
# ARPA's "impossible" log10 probability (used for <s> as an event, and here for unknown words).
_ARPA_ZERO_LOG10 = -99.0


class NgramLm:
    """A back-off n-gram LM over token ids with the LM state API of `icefall_cif.lm`.

    Attributes:
      vocab_size: V, the number of token ids (events are 0..V-1).
      order: n.
      sos_id, eos_id: both `sos_eos_id`.
    """

    def __init__(
        self,
        vocab_size: int,
        order: int,
        log_probs: Sequence[Dict[Ngram, float]],
        backoffs: Sequence[Dict[Ngram, float]],
        sos_eos_id: int = 1,
        unk_log_prob: float = _ARPA_ZERO_LOG10 * _LN10,
        cache_size: int = 20000,
    ):
        """
        Args:
          vocab_size: number of token ids.
          order: n (>= 1).
          log_probs: `order` dicts; dict k maps (k+1)-grams (context..., token) to the natural
            log-probability of token given the context.
          backoffs: `order` dicts; dict k maps (k+1)-token contexts to their natural log
            back-off weight (the last dict is normally empty).
          sos_eos_id: the `<sos/eos>` id.
          unk_log_prob: natural log-prob of an id that has no unigram entry (only happens
            with ARPA files not written by this class).
          cache_size: how many next-token distributions (each V floats) to keep.
        """
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if len(log_probs) != order or len(backoffs) != order:
            raise ValueError(
                f"expected {order} log_probs and backoffs dicts (one per order), "
                f"got {len(log_probs)} and {len(backoffs)}"
            )
        if not 0 <= sos_eos_id < vocab_size:
            raise ValueError(f"sos_eos_id {sos_eos_id} is outside the vocabulary 0..{vocab_size - 1}")
        self.vocab_size = vocab_size
        self.order = order
        self.sos_id = self.eos_id = sos_eos_id
        self.unk_log_prob = unk_log_prob
        self.log_probs = [dict(d) for d in log_probs]
        self.backoffs = [dict(d) for d in backoffs]
        self.device = torch.device("cpu")

        # Explicit followers of every context, as tensors, to build distributions quickly.
        followers: Dict[Ngram, Tuple[List[int], List[float]]] = defaultdict(lambda: ([], []))
        for table in self.log_probs[1:]:
            for gram, lp in table.items():
                entry = followers[gram[:-1]]
                entry[0].append(gram[-1])
                entry[1].append(lp)
        self._followers = {
            ctx: (torch.tensor(toks, dtype=torch.int64), torch.tensor(lps, dtype=torch.float32))
            for ctx, (toks, lps) in followers.items()
        }
        self._known_contexts = set(self._followers)
        for table in self.backoffs:
            self._known_contexts.update(table)

        unigram = torch.full((vocab_size,), unk_log_prob, dtype=torch.float32)
        for (w,), lp in self.log_probs[0].items():
            if not 0 <= w < vocab_size:
                raise ValueError(f"unigram token id {w} is outside the vocabulary 0..{vocab_size - 1}")
            unigram[w] = lp
        self._unigram = unigram
        self._cache: "OrderedDict[Ngram, torch.Tensor]" = OrderedDict()
        self._cache_size = cache_size

    # ------------------------------------------------------------------ scalar queries
    def token_log_prob(self, context: Sequence[int], token: int) -> float:
        """Natural log p(token | context) by ARPA back-off.

        Args:
          context: the preceding ids, oldest first, starting with `sos_id` for a sentence
            start; only the last `order - 1` are used.
          token: the predicted id (`eos_id` for the sentence end).
        """
        ctx = tuple(context[max(len(context) - self.order + 1, 0) :]) if self.order > 1 else ()
        acc = 0.0
        while True:
            lp = self.log_probs[len(ctx)].get(ctx + (token,))
            if lp is not None:
                return acc + lp
            if not ctx:
                return acc + self.unk_log_prob
            acc += self.backoffs[len(ctx) - 1].get(ctx, 0.0)
            ctx = ctx[1:]

    def sentence_log_prob(self, tokens: Sequence[int], eos: bool = True) -> float:
        """Natural log-prob of a whole sentence given `<s>` (and ending with `</s>` if `eos`)."""
        history = [self.sos_id]
        total = 0.0
        for tok in list(tokens) + ([self.eos_id] if eos else []):
            total += self.token_log_prob(history, tok)
            history.append(tok)
        return total

    # ------------------------------------------------------------------ distributions
    def _reduce(self, context: Ngram) -> Ngram:
        """The longest suffix of `context` the model knows (whose distribution is the same)."""
        while context and context not in self._known_contexts:
            context = context[1:]
        return context

    def _dist(self, context: Ngram) -> torch.Tensor:
        """(V,) natural log next-token distribution of a reduced context (cached)."""
        cached = self._cache.get(context)
        if cached is not None:
            self._cache.move_to_end(context)
            return cached
        if not context:
            dist = self._unigram.to(self.device)
        else:
            dist = self._dist(self._reduce(context[1:])) + self.backoffs[len(context) - 1].get(context, 0.0)
            explicit = self._followers.get(context)
            if explicit is not None:
                dist = dist.clone()
                dist[explicit[0].to(self.device)] = explicit[1].to(self.device)
        self._cache[context] = dist
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return dist

    def next_log_probs(self, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Next-token log-probs for several contexts.

        Args:
          contexts: B id sequences (oldest first; `sos_id` first at a sentence start).
        Returns:
          (B, V) natural log-probs on `self.device`.
        """
        keep = self.order - 1
        rows = [
            self._dist(self._reduce(tuple(c[max(len(c) - keep, 0) :]) if keep > 0 else ())) for c in contexts
        ]
        if not rows:
            return torch.zeros(0, self.vocab_size, device=self.device)
        return torch.stack(rows)

    # ------------------------------------------------------------------ LM state API
    def to(self, device: Union[str, torch.device]) -> "NgramLm":
        """Put the distributions it returns on `device` (the tables stay in Python)."""
        self.device = torch.device(device)
        self._cache.clear()
        return self

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> Tuple[torch.Tensor, ...]:
        """State after `<s>` for `batch_size` rows.

        Returns:
          (log_probs (B, V), contexts (B, order-1) int64): the next-token distribution and
          the last order-1 ids, left-padded with -1 ("no token").
        """
        device = self.device if device is None else torch.device(device)
        if device != self.device:
            self.to(device)
        keep = max(self.order - 1, 0)
        contexts = torch.full((batch_size, keep), -1, dtype=torch.int64, device=device)
        if keep > 0:
            contexts[:, -1] = self.sos_id
        log_probs = self._dist(self._reduce((self.sos_id,) if keep > 0 else ())).expand(batch_size, -1)
        return log_probs.contiguous(), contexts

    def advance(self, state: Tuple[torch.Tensor, ...], tokens: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Append one token per row.

        Args:
          state: from `init_state` / `advance`, B rows.
          tokens: (B,) int64 ids.
        Returns:
          the new state.
        """
        _, contexts = state
        if contexts.size(1) > 0:
            contexts = torch.cat([contexts[:, 1:], tokens.view(-1, 1).to(contexts)], dim=1)
        rows = [[t for t in row if t >= 0] for row in contexts.tolist()]
        return self.next_log_probs(rows), contexts

    def score_sequences(
        self, seqs: Sequence[Sequence[int]], device: Optional[torch.device] = None
    ) -> torch.Tensor:
        """(B,) natural log-probs of whole sentences, `</s>` included."""
        device = self.device if device is None else device
        return torch.tensor([self.sentence_log_prob(s) for s in seqs], dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ ARPA
    def _word(self, token: int, position: int, length: int) -> str:
        if token == self.sos_id:
            if position == length - 1:
                return "</s>"
            if position == 0:
                return "<s>"
            raise ValueError(f"<sos/eos> id {token} inside an n-gram; the model is corrupt")
        return str(token)

    def save_arpa(self, path: Union[str, Path]) -> None:
        """Write the model as an ARPA file (log10 values; words are token ids, `<s>`, `</s>`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sos_bow = self.backoffs[0].get((self.sos_id,)) if self.order > 1 else None
        counts = [len(t) for t in self.log_probs]
        counts[0] += 1  # the <s> line
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for k, n in enumerate(counts, 1):
                f.write(f"ngram {k}={n}\n")
            for k in range(self.order):
                f.write(f"\n\\{k + 1}-grams:\n")
                lines = []
                if k == 0:
                    bow = "" if sos_bow is None else f"\t{sos_bow / _LN10:.7f}"
                    lines.append(f"{_ARPA_ZERO_LOG10:.7f}\t<s>{bow}")
                for gram in sorted(self.log_probs[k]):
                    words = " ".join(self._word(t, i, len(gram)) for i, t in enumerate(gram))
                    line = f"{self.log_probs[k][gram] / _LN10:.7f}\t{words}"
                    bow = self.backoffs[k].get(gram) if gram[-1] != self.eos_id else None
                    if bow is not None:
                        line += f"\t{bow / _LN10:.7f}"
                    lines.append(line)
                f.write("\n".join(lines) + "\n")
            f.write("\n\\end\\\n")
        logging.info(f"Wrote {path} (order {self.order}, n-grams per order {counts})")

    @classmethod
    def load_arpa(
        cls, path: Union[str, Path], vocab_size: Optional[int] = None, sos_eos_id: int = 1
    ) -> "NgramLm":
        """Read an ARPA file whose words are token ids (plus `<s>`, `</s>`, optionally `<unk>`).

        Args:
          path: the ARPA file (`save_arpa`'s, or e.g. kenlm's lmplz run on token-id text).
          vocab_size: V; default: largest id + 1.
          sos_eos_id: the id `<s>` and `</s>` map to.
        """
        path = Path(path)
        log_probs: List[Dict[Ngram, float]] = []
        backoffs: List[Dict[Ngram, float]] = []
        unk_log_prob = _ARPA_ZERO_LOG10 * _LN10
        order = 0
        section = None
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = "data"
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    order = int(line[1:].split("-")[0])
                    while len(log_probs) < order:
                        log_probs.append({})
                        backoffs.append({})
                    section = "grams"
                    continue
                if section == "data":
                    if not line.startswith("ngram "):
                        raise ValueError(f"{path}:{lineno}: expected 'ngram K=COUNT' in \\data\\, got {line!r}")
                    continue
                if section != "grams":
                    raise ValueError(f"{path}:{lineno}: text outside any ARPA section: {line!r}")
                fields = line.split()
                if len(fields) not in (order + 1, order + 2):
                    raise ValueError(
                        f"{path}:{lineno}: a {order}-gram line needs log10-prob, {order} words and an "
                        f"optional back-off weight, got {line!r}"
                    )
                words = fields[1 : order + 1]
                lp = float(fields[0]) * _LN10
                if "<unk>" in words:
                    if words == ["<unk>"]:
                        unk_log_prob = lp
                    continue
                gram = tuple(cls._word_to_id(w, sos_eos_id, path, lineno) for w in words)
                if words[-1] != "<s>":
                    log_probs[order - 1][gram] = lp
                if len(fields) == order + 2 and words[-1] != "</s>":
                    backoffs[order - 1][gram] = float(fields[-1]) * _LN10
        if order == 0:
            raise ValueError(f"{path}: no n-gram sections found; is this an ARPA file?")
        max_id = max(max(g) for table in log_probs for g in table) if any(log_probs) else sos_eos_id
        if vocab_size is None:
            vocab_size = max(max_id, sos_eos_id) + 1
        elif max_id >= vocab_size:
            raise ValueError(
                f"{path} uses token id {max_id} but vocab_size is {vocab_size}; use the lang dir it was trained for"
            )
        return cls(vocab_size, order, log_probs, backoffs, sos_eos_id=sos_eos_id, unk_log_prob=unk_log_prob)

    @staticmethod
    def _word_to_id(word: str, sos_eos_id: int, path: Path, lineno: int) -> int:
        if word in ("<s>", "</s>"):
            return sos_eos_id
        if word.isdigit():
            return int(word)
        raise ValueError(
            f"{path}:{lineno}: word {word!r} is not a token id; this LM must be trained on token ids "
            "(local/train_lm.py --lm-type ngram writes such files)"
        )


def check_token_sequences(
    seqs: Sequence[Sequence[int]], vocab_size: int, sos_eos_id: int = 1, blank_id: int = 0
) -> None:
    """Raise ValueError if an LM training sentence holds blank, `<sos/eos>` or out-of-range ids."""
    for i, s in enumerate(seqs):
        bad = sorted({t for t in s if t in (sos_eos_id, blank_id) or not 0 <= t < vocab_size})
        if bad:
            raise ValueError(
                f"training sentence {i} contains id(s) {bad}: ids must be in 0..{vocab_size - 1} and not "
                f"blank ({blank_id}) or <sos/eos> ({sos_eos_id}); was it encoded with this lang dir?"
            )


def kneser_ney_discount(adjusted_counts: Iterable[int]) -> float:
    """D = n1 / (n1 + 2 n2) from count-of-counts; 0.5 when n1 or n2 is 0 (the formula degenerates)."""
    histogram = Counter(adjusted_counts)
    n1, n2 = histogram.get(1, 0), histogram.get(2, 0)
    if n1 == 0 or n2 == 0:
        return 0.5
    return n1 / (n1 + 2 * n2)


def estimate_kneser_ney(
    sentences: Iterable[Sequence[int]],
    vocab_size: int,
    order: int = 3,
    sos_eos_id: int = 1,
    blank_id: int = 0,
    discounts: Optional[Sequence[float]] = None,
) -> NgramLm:
    """Estimate an interpolated Kneser-Ney n-gram LM (see the module docstring).

    Args:
      sentences: token-id sequences, one per utterance, without `<sos/eos>` or blank.
      vocab_size: V of the ASR model's tokens.
      order: n.
      sos_eos_id, blank_id: the special ids (rejected inside sentences).
      discounts: `order` fixed discounts (unigram first) in (0, 1); default: D_k from counts.
    Returns:
      the model.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if discounts is not None and (len(discounts) != order or not all(0 < d < 1 for d in discounts)):
        raise ValueError(f"discounts must be {order} values in (0, 1) (unigram first), got {list(discounts)}")
    sents = [tuple(int(t) for t in s) for s in sentences]
    check_token_sequences(sents, vocab_size, sos_eos_id, blank_id)

    # counts[k]: raw counts of (k+1)-grams whose last token is an event (never the leading <s>).
    counts: List[Counter] = [Counter() for _ in range(order)]
    for s in sents:
        padded = (sos_eos_id,) + s + (sos_eos_id,)
        for end in range(1, len(padded)):
            for k in range(min(order, end + 1)):
                counts[k][padded[end - k : end + 1]] += 1

    adjusted: List[Dict[Ngram, int]] = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(counts[order - 1])
    for k in range(order - 2, -1, -1):
        left_neighbours: Counter = Counter(gram[1:] for gram in counts[k + 1])
        for gram, c in counts[k].items():
            starts_with_sos = len(gram) >= 2 and gram[0] == sos_eos_id
            # n-grams at the sentence start have no left neighbour to count.
            adjusted[k][gram] = c if starts_with_sos else left_neighbours[gram]

    if discounts is None:
        discounts = [kneser_ney_discount(adjusted[k].values()) for k in range(order)]
    logging.info(f"Kneser-Ney discounts per order: {[round(d, 4) for d in discounts]}")

    # Unigrams, interpolated with the uniform distribution.
    d1 = discounts[0]
    total = sum(adjusted[0].values())
    probs1: Dict[Ngram, float] = {}
    if total == 0:
        for w in range(vocab_size):
            probs1[(w,)] = 1.0 / vocab_size
    else:
        floor = d1 * len(adjusted[0]) / total / vocab_size
        for w in range(vocab_size):
            probs1[(w,)] = max(adjusted[0].get((w,), 0) - d1, 0.0) / total + floor
    probs: List[Dict[Ngram, float]] = [probs1]
    bows: List[Dict[Ngram, float]] = [dict() for _ in range(order)]

    def lower_prob(context: Ngram, w: int) -> float:
        """Interpolated p_{k+1}(w | context) for a context of length k, by back-off."""
        acc = 1.0
        while True:
            p = probs[len(context)].get(context + (w,))
            if p is not None:
                return acc * p
            acc *= bows[len(context) - 1].get(context, 1.0)
            context = context[1:]

    for k in range(1, order):
        dk = discounts[k]
        ctx_total: Counter = Counter()
        ctx_types: Counter = Counter()
        for gram, a in adjusted[k].items():
            ctx_total[gram[:-1]] += a
            ctx_types[gram[:-1]] += 1
        for ctx, c in ctx_total.items():
            bows[k - 1][ctx] = dk * ctx_types[ctx] / c
        table: Dict[Ngram, float] = {}
        for gram, a in adjusted[k].items():
            ctx = gram[:-1]
            table[gram] = (a - dk) / ctx_total[ctx] + bows[k - 1][ctx] * lower_prob(ctx[1:], gram[-1])
        probs.append(table)

    return NgramLm(
        vocab_size,
        order,
        [{g: math.log(p) for g, p in t.items()} for t in probs],
        [{g: math.log(b) for g, b in t.items()} for t in bows],
        sos_eos_id=sos_eos_id,
    )
