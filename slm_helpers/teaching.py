"""The pieces lessons 3 and 4 build a GPT from, one idea at a time, every step in the open.

``masked_attention`` (from model.py, where the written-out path uses it too) is attention written
out; ``Head`` is one head of it; ``MultiHeadAttention`` puts several side by side; ``AttentionLM``
is the small language model of lessons 3-4 (embeddings, attention, optionally an MLP, no residuals
or normalisation yet). ``model.py`` computes the same things in their fast form, and the lessons
prove it: ``load_heads`` copies a ``MultiHeadAttention``'s weights into a ``CausalSelfAttention``,
and both give the same numbers.

What it leaves out: everything that is only about speed (the fused kernel, the KV cache); those are
in ``model.py`` and ``kv_cache.py``, which never import this file.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .model import MLP, CausalSelfAttention, GPTConfig, language_model_loss, masked_attention

__all__ = ["AttentionLM", "Head", "MultiHeadAttention", "causal_mask", "load_heads",
           "masked_attention"]


def causal_mask(block_size: int) -> torch.Tensor:
    """Lower-triangular boolean mask: position t may look at positions 0..t, never the future."""
    return torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))


class Head(nn.Module):
    """One head of causal self-attention, every step in the open."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("mask", causal_mask(block_size), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        T = x.size(1)
        out, weights = masked_attention(self.query(x), self.key(x), self.value(x),
                                        self.mask[:T, :T], self.dropout)
        return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Several heads side by side, their outputs concatenated and mixed by a projection."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0,
                 bias: bool = False):
        super().__init__()
        self.heads = nn.ModuleList(Head(n_embd, n_embd // n_head, block_size, dropout)
                                   for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(torch.cat([head(x) for head in self.heads], dim=-1)))


class AttentionLM(nn.Module):
    """The models of lessons 3-4: embeddings, one attention layer, optionally a feed-forward layer.

    ``n_head=1`` is a single ``Head``; more heads make a ``MultiHeadAttention``. No residual
    connections or normalisation yet: lesson 5 shows why a deeper stack needs them.
    """

    def __init__(self, vocab_size: int, n_embd: int, block_size: int, n_head: int = 1,
                 feed_forward: bool = False, dropout: float = 0.0):
        super().__init__()
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.attention = (Head(n_embd, n_embd, block_size, dropout) if n_head == 1
                          else MultiHeadAttention(n_embd, n_head, block_size, dropout))
        self.feed_forward = MLP(GPTConfig(n_embd=n_embd, n_head=1,
                                          dropout=dropout)) if feed_forward else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                only_last: bool = False):
        """Logits (B, T, vocab_size) and the loss if ``targets`` are given; ``only_last``: see
        ``GPT.forward``."""
        T = idx.size(1)
        # (B, T, n_embd)
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(T, device=idx.device))
        x = self.attention(x)
        if only_last:
            x = x[:, -1:]  # the feed-forward layer and lm_head work per position
        logits = self.lm_head(self.feed_forward(x))  # (B, T, vocab_size)
        return logits, language_model_loss(logits, targets, only_last)


@torch.no_grad()
def load_heads(attn: CausalSelfAttention, mha: MultiHeadAttention) -> None:
    """Copy the weights of lesson 4's ``MultiHeadAttention`` (``mha.heads[h].query/key/value``,
    ``mha.proj``) into ``attn``, so both compute the same function."""
    for part, name in enumerate(("query", "key", "value")):
        stacked = torch.cat([getattr(head, name).weight for head in mha.heads], dim=0)  # (C, C)
        attn.c_attn.weight[part * stacked.size(0):(part + 1) * stacked.size(0)].copy_(stacked)
    # teaching heads have no q/k/v bias: the same function needs zeros
    if attn.c_attn.bias is not None:
        attn.c_attn.bias.zero_()
    attn.c_proj.load_state_dict(mha.proj.state_dict())
