"""Bigram language models: the next token depends on the current token only (lesson 2).

Two ways to the same model: count which token follows which (``CountingBigram``), or learn a
table of logits by gradient descent (``BigramLanguageModel``). With enough training, the
learned table converges to the smoothed log counts and the two negative log-likelihoods agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import SLMError
from .model import language_model_loss


class CountingBigram:
    """P(next | current) estimated from counts, with add-``smoothing`` so no pair has probability
    0."""

    def __init__(self, counts: torch.Tensor, smoothing: float = 1.0):
        self.counts = counts
        self.smoothing = smoothing
        smoothed = counts.double() + smoothing
        self.probs = (smoothed / smoothed.sum(dim=1, keepdim=True)).float()

    @classmethod
    def fit(cls, ids: torch.Tensor, vocab_size: int, smoothing: float = 1.0) -> CountingBigram:
        if len(ids) < 2:
            raise SLMError("need at least two tokens to count a bigram")
        pairs = ids[:-1] * vocab_size + ids[1:]  # each (current, next) pair as one flat index
        counts = torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size,
                                                                               vocab_size)
        return cls(counts, smoothing)

    @property
    def vocab_size(self) -> int:
        return self.counts.shape[0]

    def nll(self, ids: torch.Tensor) -> float:
        """Average negative log-likelihood (nats per token) of ``ids`` under the model."""
        return -self.probs[ids[:-1], ids[1:]].log().mean().item()

    def generate(self, start: int, max_new_tokens: int,
                 generator: torch.Generator | None = None) -> list[int]:
        out = [start]
        for _ in range(max_new_tokens):
            out.append(torch.multinomial(self.probs[out[-1]], 1, generator=generator).item())
        return out


class BigramLanguageModel(nn.Module):
    """A neural bigram: row ``i`` of one embedding table holds the logits of the token after
    ``i``."""

    block_size = 1  # it only ever looks at the last token

    def __init__(self, vocab_size: int):
        super().__init__()
        self.logits_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                only_last: bool = False):
        """Logits (B, T, V) and the loss if ``targets`` are given; ``only_last``: see
        ``GPT.forward``."""
        logits = self.logits_table(idx[:, -1:] if only_last else idx)  # (B, T, V)
        return logits, language_model_loss(logits, targets, only_last)
