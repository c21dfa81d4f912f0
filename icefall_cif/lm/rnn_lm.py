"""A small LSTM language model over the ASR tokens, its training, and the LM state API.

Like icefall's `rnn_lm`, a sentence is fed as `<sos/eos> w1 .. wn` and trained to predict
`w1 .. wn <sos/eos>`; the same id marks both ends.
"""
import logging
import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from icefall_cif.checkpoint import load_safely
from icefall_cif.lm.ngram import check_token_sequences


class RnnLm(nn.Module):
    """Embedding -> LSTM -> linear over the token vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        hidden_dim: int = 512,
        num_layers: int = 2,
        dropout: float = 0.1,
        sos_eos_id: int = 1,
    ):
        """
        Args:
          vocab_size: V, the ASR model's number of tokens.
          embedding_dim, hidden_dim, num_layers: LSTM shape.
          dropout: on embeddings, between LSTM layers and before the output layer.
          sos_eos_id: the id starting and ending every sentence.
        """
        super().__init__()
        if not 0 <= sos_eos_id < vocab_size:
            raise ValueError(f"sos_eos_id {sos_eos_id} is outside the vocabulary 0..{vocab_size - 1}")
        self.config = dict(
            vocab_size=vocab_size,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            dropout=dropout,
            sos_eos_id=sos_eos_id,
        )
        self.vocab_size = vocab_size
        self.sos_id = self.eos_id = sos_eos_id
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.LSTM(
            embedding_dim,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)

    def forward(
        self, x: torch.Tensor, state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
          x: (N, L) int64 input ids.
          state: LSTM (h, c), each (num_layers, N, hidden_dim); None = zeros.
        Returns:
          logits (N, L, V) for the token after each input, and the final (h, c).
        """
        h, new_state = self.rnn(self.dropout(self.embedding(x)), state)
        return self.output(self.dropout(h)), new_state

    # ------------------------------------------------------------------ LM state API
    def _state_from(self, logits: torch.Tensor, hc: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        # The search code indexes every state tensor on dim 0, so the LSTM's layer-first
        # (h, c) are stored batch-first.
        return logits.log_softmax(dim=-1), hc[0].transpose(0, 1), hc[1].transpose(0, 1)

    @torch.no_grad()
    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> Tuple[torch.Tensor, ...]:
        """State after `<sos/eos>` for `batch_size` rows.

        Returns:
          (log_probs (B, V), h (B, num_layers, H), c (B, num_layers, H)).
        """
        device = self.output.weight.device if device is None else device
        x = torch.full((batch_size, 1), self.sos_id, dtype=torch.int64, device=device)
        logits, hc = self(x)
        return self._state_from(logits[:, 0], hc)

    @torch.no_grad()
    def advance(self, state: Tuple[torch.Tensor, ...], tokens: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Feed one token per row.

        Args:
          state: from `init_state` / `advance`, B rows.
          tokens: (B,) int64.
        Returns:
          the new state.
        """
        _, h, c = state
        hc = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())
        logits, hc = self(tokens.view(-1, 1), hc)
        return self._state_from(logits[:, 0], hc)

    def _batch(self, seqs: Sequence[Sequence[int]], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, L+1) inputs `<sos> w..` and targets `w.. <eos>` padded with -100."""
        width = max((len(s) for s in seqs), default=0) + 1
        x = torch.full((len(seqs), width), self.sos_id, dtype=torch.int64)
        y = torch.full((len(seqs), width), -100, dtype=torch.int64)
        for i, s in enumerate(seqs):
            x[i, 1 : len(s) + 1] = torch.tensor(s, dtype=torch.int64)
            y[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
            y[i, len(s)] = self.eos_id
        return x.to(device), y.to(device)

    @torch.no_grad()
    def score_sequences(
        self, seqs: Sequence[Sequence[int]], device: Optional[torch.device] = None
    ) -> torch.Tensor:
        """(B,) natural log-probs of whole sentences, `<sos/eos>` at the end included."""
        device = self.output.weight.device if device is None else device
        if not seqs:
            return torch.zeros(0, device=device)
        x, y = self._batch(seqs, self.output.weight.device)
        logp = self(x)[0].log_softmax(dim=-1)
        tok = logp.gather(2, y.clamp(min=0).unsqueeze(2)).squeeze(2)
        return (tok * (y >= 0)).sum(dim=1).to(device)

    @torch.no_grad()
    def perplexity(self, seqs: Sequence[Sequence[int]], batch_size: int = 64) -> float:
        """exp(-sum log p / number of predicted tokens), `<sos/eos>` counted as a token."""
        total, count = 0.0, 0
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            total += float(self.score_sequences(chunk).sum())
            count += sum(len(s) + 1 for s in chunk)
        return math.exp(-total / max(count, 1))


def train_rnn_lm(
    train: Sequence[Sequence[int]],
    vocab_size: int,
    valid: Optional[Sequence[Sequence[int]]] = None,
    embedding_dim: int = 256,
    hidden_dim: int = 512,
    num_layers: int = 2,
    dropout: float = 0.1,
    num_epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_grad_norm: float = 5.0,
    seed: int = 42,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> Tuple[RnnLm, List[Dict[str, float]]]:
    """Train an `RnnLm` with Adam on token-id sentences.

    Args:
      train: sentences of token ids (no blank / `<sos/eos>`).
      vocab_size: V.
      valid: optional held-out sentences, scored after each epoch.
      embedding_dim, hidden_dim, num_layers, dropout: model shape.
      num_epochs, batch_size, lr, max_grad_norm: optimisation.
      seed: shuffling and initialisation.
      device: where to train.
      progress: show a tqdm bar over batches.
    Returns:
      the model (eval mode) and one dict per epoch with "train_ppl" (running perplexity of
      the epoch's batches) and, with `valid`, "valid_ppl".
    """
    check_token_sequences(train, vocab_size)
    if valid is not None:
        check_token_sequences(valid, vocab_size)
    if not train:
        raise ValueError("no training sentences given")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = torch.device(device)
    model = RnnLm(vocab_size, embedding_dim, hidden_dim, num_layers, dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    order = list(range(len(train)))
    for epoch in range(1, num_epochs + 1):
        model.train()
        rng.shuffle(order)
        total_loss, total_tokens = 0.0, 0
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc=f"RNN LM epoch {epoch}", disable=not progress, leave=False):
            x, y = model._batch([train[i] for i in order[start : start + batch_size]], device)
            logits, _ = model(x)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1), ignore_index=-100, reduction="sum")
            num_tokens = int((y >= 0).sum())
            optimizer.zero_grad()
            (loss / num_tokens).backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            total_loss += float(loss.detach())
            total_tokens += num_tokens
        model.eval()
        stats = {"train_ppl": math.exp(total_loss / total_tokens)}
        if valid:
            stats["valid_ppl"] = model.perplexity(valid)
        history.append(stats)
        logging.info(f"RNN LM epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    model.eval()
    return model, history


def save_rnn_lm(model: RnnLm, path: Union[str, Path]) -> None:
    """Save config and weights (load with `load_rnn_lm`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "model": model.state_dict()}, path)
    logging.info(f"Wrote {path}")


def load_rnn_lm(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> RnnLm:
    """Load a model written by `save_rnn_lm`, in eval mode on `device`."""
    checkpoint = load_safely(path)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model" not in checkpoint:
        raise ValueError(f"{path} is not an RNN LM written by save_rnn_lm / local/train_lm.py --lm-type rnn")
    model = RnnLm(**checkpoint["config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
