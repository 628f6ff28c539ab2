"""A GPT language model in one file, plus the teaching pieces the lessons build it from.

Lessons 3-5 build attention one idea at a time: ``Head`` (one head, written out in full),
``MultiHeadAttention`` (several heads side by side) and ``FeedForward``. ``GPT`` uses the same
ideas in their fast form: ``CausalSelfAttention`` computes every head with one matrix multiply
and PyTorch's fused ``scaled_dot_product_attention``. ``CausalSelfAttention.load_heads`` copies
the weights of a teaching ``MultiHeadAttention`` into it, which is how the notebooks and tests
prove that the two compute the same thing.

``KVCache`` (lesson 9) makes generation fast: it keeps the keys and values of the tokens already
seen, so each new token costs one position of work instead of a pass over the whole context.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMError


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


def masked_attention(q, k, v, mask, dropout: nn.Module | None = None):
    """Attention written out: scores, causal mask, softmax, weighted sum. Returns (output, weights).

    There may be fewer queries than keys (generation with a KV cache): the queries are then the
    last positions, and their rows of the mask are the bottom ones.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # 1/sqrt(d) keeps softmax from saturating
    Tq, Tk = q.size(-2), k.size(-2)
    scores = scores.masked_fill(~mask[Tk - Tq:Tk, :Tk], float("-inf"))
    weights = F.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v, weights


# ---------------------------------------------------------------- teaching pieces (lessons 3-5)

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
        out, weights = masked_attention(self.query(x), self.key(x), self.value(x), self.mask, self.dropout)
        return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Several heads side by side, their outputs concatenated and mixed by a projection."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.heads = nn.ModuleList(Head(n_embd, n_embd // n_head, block_size, dropout) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(torch.cat([head(x) for head in self.heads], dim=-1)))


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
        self.feed_forward = FeedForward(n_embd, dropout) if feed_forward else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, only_last: bool = False):
        """Logits (B, T, vocab_size) and the loss if ``targets`` are given; ``only_last``: see ``GPT.forward``."""
        T = idx.size(1)
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(T, device=idx.device))
        x = self.attention(x)  # (B, T, n_embd)
        if only_last:
            x = x[:, -1:]  # the feed-forward layer and lm_head work per position
        logits = self.lm_head(self.feed_forward(x))
        return logits, language_model_loss(logits, targets, only_last)


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor | None, only_last: bool = False):
    """Mean cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T); None without targets."""
    if targets is None:
        return None
    if only_last:
        raise SLMError("only_last=True computes the last position's logits only, so it gives no loss; "
                       "drop it when you pass targets")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@contextmanager
def eval_mode(model: nn.Module):
    """Run a block with ``model`` in eval mode (no dropout), then put back the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- the GPT

class KVCache:
    """The keys and values every layer has computed so far, for fast generation.

    A token's key and value depend only on the tokens up to it, so once computed they never change
    (as long as positions do not shift). Without a cache, generating each token re-runs the model
    over the whole context; with it, the model runs on the new token only and attends to the
    stored keys and values. The buffers are allocated once at full size (``block_size``) and
    filled from the left; ``length`` says how many positions hold real data.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled, the same in every layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store ``layer``'s keys and values of the new positions after the cached ones; return all of them."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (in that order): beam search continues some beams twice, others not at all."""
        self.k, self.v = self.k[:, index], self.v[:, index]


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
        self.fused = True  # False: the explicit path, which also returns the weights for pictures

    def forward(self, x: torch.Tensor, return_weights: bool = False, cache: KVCache | None = None,
                layer: int = 0):
        B, T, C = x.shape
        # (B, T, 3C) -> three tensors of shape (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        past = 0
        if cache is not None:  # x holds only the new positions: attend to the cached ones too
            past = cache.length
            k, v = cache.update(layer, k, v)
        weights = None
        if self.fused and not return_weights:
            # The T queries are the last T of past + T positions. With nothing cached the mask is the
            # usual triangle; one new token may see everything; otherwise take the triangle's bottom rows.
            mask = None if past == 0 or T == 1 else self.mask[past:past + T, :past + T]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0 and T > 1,
                                               dropout_p=self.attn_dropout.p if self.training else 0.0)
        else:
            y, weights = masked_attention(q, k, v, self.mask, self.attn_dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        y = self.resid_dropout(self.c_proj(y))
        return (y, weights) if return_weights else y

    @torch.no_grad()
    def load_heads(self, mha: MultiHeadAttention) -> None:
        """Copy a teaching ``MultiHeadAttention``'s weights in, so both compute the same function."""
        for part, name in enumerate(("query", "key", "value")):
            stacked = torch.cat([getattr(head, name).weight for head in mha.heads], dim=0)
            self.c_attn.weight[part * stacked.size(0):(part + 1) * stacked.size(0)].copy_(stacked)
        if self.c_attn.bias is not None:  # teaching heads have no q/k/v bias: the same function needs zeros
            self.c_attn.bias.zero_()
        self.c_proj.load_state_dict(mha.proj.state_dict())


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config.n_embd, config.dropout, config.bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        # The residual stream carries x through unchanged; each sub-layer only adds a correction,
        # so gradients reach the first layer undiminished however deep the stack is.
        x = x + self.attn(self.ln_1(x), cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


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

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for generating ``batch_size`` sequences with this model."""
        weight = self.lm_head.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                *, only_last: bool = False):
        """Logits (B, T, vocab_size) for every position of ``idx``, and the loss if ``targets`` are given.

        ``only_last=True`` gives the last position's logits only, (B, 1, vocab_size): all generation
        needs, as in nanoGPT. With a 50,257-way output layer the logits of the other positions would be
        most of the cost of a long prompt. Training and evaluation keep every position.
        With a ``cache``, ``idx`` holds only the tokens after the cached ones: they sit at positions
        ``cache.length`` onwards, and their keys and values are added to the cache.
        """
        T = idx.size(1)
        x = self.transformer.drop(self._embed(idx, past=cache.length if cache is not None else 0))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
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
                y, weights = block.attn(block.ln_1(x), return_weights=True)
                maps.append(weights)
                x = x + y
                x = x + block.mlp(block.ln_2(x))
        return torch.stack(maps)

    def _embed(self, idx: torch.Tensor, past: int = 0) -> torch.Tensor:
        """Token plus position embeddings of ``idx``, whose tokens sit at positions ``past`` onwards."""
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise SLMError(f"sequence of {past + T} tokens is longer than the model's context "
                           f"(block_size={self.config.block_size}); crop it to the last {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)
