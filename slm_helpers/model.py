"""A GPT language model in one file, read top to bottom: config, attention, MLP, block, GPT.

It is GPT-2's architecture (pre-norm blocks, learned position embeddings, GELU, tied input and
output embeddings, GPT-2's initialisation), at any size ``GPTConfig`` describes. Attention runs
PyTorch's fused ``scaled_dot_product_attention``, or a written-out softmax(QK^T)V that also returns
the attention weights, for pictures. ``KVCache`` keeps each layer's keys and values so that
generation (lesson 9) costs one position of work per new token.

What it leaves out: the teaching pieces that lessons 3 and 4 build this from, one head at a time
(``Head``, ``MultiHeadAttention``, ``AttentionLM``), live in ``teaching.py``, which builds on this
file; nothing here imports it. Dropout inside attention and the loss are the only training extras.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMError
from .utils import eval_mode


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # longest context the model sees, in tokens
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = False  # biases in Linear and LayerNorm; without them GPTs train as well and a bit faster
    # Round the embedding and output layer up to a multiple of this many rows: GPU tensor cores are
    # fastest on multiples of 64 (GPT-2's 50,257 -> 50,304). The extra rows are never predicted.
    vocab_multiple: int = 1

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise SLMError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise SLMError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise SLMError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict:
        return asdict(self)


def causal_mask(block_size: int) -> torch.Tensor:
    """Lower-triangular boolean mask: position t may look at positions 0..t, never the future."""
    return torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor | None, only_last: bool = False):
    """Mean cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T); None without targets."""
    if targets is None:
        return None
    if only_last:
        raise SLMError("only_last=True computes the last position's logits only, so it gives no loss; "
                       "drop it when you pass targets")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ---------------------------------------------------------------- attention

class KVCache:
    """One attention layer's keys and values of the tokens seen so far, for fast generation.

    A token's key and value depend only on the tokens up to it, so once computed they never change
    (as long as positions do not shift). The buffers are allocated once at full size and filled from
    the left; ``length`` says how many positions hold real data. ``GPT.new_cache`` makes one per layer.
    """

    def __init__(self, batch_size: int, n_head: int, block_size: int, head_size: int, device=None,
                 dtype=torch.float32):
        self.k = torch.zeros(batch_size, n_head, block_size, head_size, device=device, dtype=dtype)  # (B, nh, T, hs)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of the new positions after the cached ones; return all of them."""
        end = self.length + k.size(2)
        self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (in that order): beam search continues some beams twice, others not at all."""
        self.k, self.v = self.k[index], self.v[index]


class CausalSelfAttention(nn.Module):
    """All heads at once: one Linear makes q, k and v for every head; the fused kernel does the rest."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.register_buffer("mask", causal_mask(config.block_size), persistent=False)
        self.fused = True  # False: always the written-out path (GPT.set_fused_attention switches every layer)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, need_weights: bool = False):
        """(output (B, T, C), attention weights (B, n_head, T, past + T) or None). The weights are
        computed only when asked for, by the written-out path. With a ``cache``, ``x`` holds only
        the new positions; they attend to the cached ones too."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, head_size)
                   for t in self.c_attn(x).split(C, dim=2))
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.append(k, v)  # (B, n_head, past + T, head_size)
        # The T queries are the last T of past + T positions: their rows of the causal mask are the bottom ones.
        mask = self.mask[past:past + T, :past + T]
        weights = None
        if self.fused and not need_weights:
            # With nothing cached the mask is the usual triangle; one new token may see everything.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if past == 0 or T == 1 else mask,
                                               is_causal=past == 0 and T > 1,
                                               dropout_p=self.attn_dropout.p if self.training else 0.0)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (B, n_head, T, past + T)
            weights = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            y = self.attn_dropout(weights) @ v  # (B, n_head, T, head_size)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y)), weights

    @torch.no_grad()
    def load_heads(self, mha: nn.Module) -> None:
        """Copy the weights of lesson 4's ``MultiHeadAttention`` (``mha.heads[h].query/key/value``,
        ``mha.proj``) in, so both compute the same function."""
        for part, name in enumerate(("query", "key", "value")):
            stacked = torch.cat([getattr(head, name).weight for head in mha.heads], dim=0)  # (C, C)
            self.c_attn.weight[part * stacked.size(0):(part + 1) * stacked.size(0)].copy_(stacked)
        if self.c_attn.bias is not None:  # teaching heads have no q/k/v bias: the same function needs zeros
            self.c_attn.bias.zero_()
        self.c_proj.load_state_dict(mha.proj.state_dict())


# ---------------------------------------------------------------- MLP and block

class FeedForward(nn.Module):
    """Per-position MLP: attention gathers information, this layer thinks about it."""

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config.n_embd, config.dropout, config.bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, need_weights: bool = False):
        """(new x, this layer's attention weights or None)."""
        # The residual stream carries x through unchanged; each sub-layer only adds a correction,
        # so gradients reach the first layer undiminished however deep the stack is.
        y, weights = self.attn(self.ln_1(x), cache, need_weights)
        x = x + y
        return x + self.mlp(self.ln_2(x)), weights


# ---------------------------------------------------------------- the GPT

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out use one matrix, which saves
        # vocab_size * n_embd parameters and trains better on small data.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two residual contributions; shrinking their output
        # projections by 1/sqrt(2 * n_layer) keeps the residual stream's variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (token embeddings are
        shared with the output layer, so they count once, as weights that do real work)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def set_fused_attention(self, fused: bool) -> None:
        """PyTorch's fused attention kernel (True) or the written-out softmax(QK^T)V, in every layer."""
        for block in self.transformer.h:
            block.attn.fused = fused

    def new_cache(self, batch_size: int = 1) -> list[KVCache]:
        """An empty KV cache per layer, for generating ``batch_size`` sequences with this model."""
        c, weight = self.config, self.lm_head.weight
        return [KVCache(batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, weight.device, weight.dtype)
                for _ in range(c.n_layer)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                *, only_last: bool = False):
        """Logits (B, T, vocab_size) for every position of ``idx``, and the loss if ``targets`` are given.

        ``only_last=True`` gives the last position's logits only, (B, 1, vocab_size): all generation
        needs, as in nanoGPT. With a 50,257-way output layer the logits of the other positions would be
        most of the cost of a long prompt. Training and evaluation keep every position.
        With a ``cache`` (``new_cache``), ``idx`` holds only the tokens after the cached ones: they sit
        at positions ``cache[0].length`` onwards, and each layer appends their keys and values.
        """
        x = self.transformer.drop(self._embed(idx, past=cache[0].length if cache else 0))  # (B, T, n_embd)
        for block, layer_cache in zip(self.transformer.h, cache or [None] * len(self.transformer.h)):
            x, _ = block(x, layer_cache)
        if only_last:
            x = x[:, -1:]  # (B, 1, n_embd): LayerNorm and lm_head work per position
        # The padding rows of a rounded-up vocabulary are cut off: never sampled, never in a loss.
        logits = self.lm_head(self.transformer.ln_f(x))[..., :self.config.vocab_size]  # (B, T, vocab_size)
        return logits, language_model_loss(logits, targets, only_last)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head for ``idx``: shape (n_layer, B, n_head, T, T).

        Always computed as in evaluation (no dropout), whatever mode the model is in."""
        maps = []
        with eval_mode(self):
            x = self._embed(idx)
            for block in self.transformer.h:
                x, weights = block(x, need_weights=True)
                maps.append(weights)
        return torch.stack(maps)

    def _embed(self, idx: torch.Tensor, past: int = 0) -> torch.Tensor:
        """Token plus position embeddings of ``idx``, whose tokens sit at positions ``past`` onwards."""
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise SLMError(f"sequence of {past + T} tokens is longer than the model's context "
                           f"(block_size={self.config.block_size}); crop it to the last {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)  # (T,)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, n_embd)
