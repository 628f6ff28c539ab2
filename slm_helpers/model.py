"""A GPT language model in one file, read top to bottom: config, attention, MLP, block, GPT.

By default it is GPT-2's architecture (pre-norm blocks, learned position embeddings, GELU, tied input
and output embeddings, GPT-2's initialisation), at any size ``GPTConfig`` describes. The switches of
lesson 11 turn it into today's recipe, one at a time: RMSNorm, rotary position embeddings (RoPE),
SwiGLU or ReLU² MLPs, QK-norm, grouped-query attention, untied embeddings, zero-initialised outputs.
Attention runs PyTorch's fused ``scaled_dot_product_attention``, or a written-out softmax(QK^T)V that
also returns the attention weights, for pictures. ``KVCache`` keeps each layer's keys and values so
that generation (lesson 9) costs one position of work per new token; with RoPE it slides past the
context instead of starting again.

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

CHOICES = {"norm": ("layernorm", "rmsnorm"), "position": ("learned", "rope"),
           "mlp": ("gelu", "swiglu", "relu2"), "init": ("gpt2", "zero-out")}


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
    # New (lesson 11): today's recipe, one switch per change. The defaults are GPT-2's, so lessons 3-10
    # and their checkpoints are unchanged.
    norm: str = "layernorm"  # "rmsnorm": scale by the root mean square only, no mean, no bias (Llama)
    position: str = "learned"  # "rope": rotate queries and keys by their position; scores see distances only
    rope_base: float = 10000.0  # the slowest rotation's wavelength, in tokens, is about 2π times this
    mlp: str = "gelu"  # "swiglu" (Llama; 2/3 the hidden width, same parameters) or "relu2" (relu(x)², the speedrun)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys: scores cannot blow up
    n_kv_head: int = 0  # grouped-query attention: this many key/value heads, each shared; 0: n_head
    tie_embeddings: bool = True  # False: the output layer gets its own matrix
    init: str = "gpt2"  # "zero-out": PyTorch's default init, with every layer's output projection (and an
    #                     untied head) at zero, so each block starts as the identity
    # New (lesson 12): what a released Llama states that the rules above would only guess.
    norm_eps: float | None = None  # the norms' epsilon; None: PyTorch's (LayerNorm 1e-5, RMSNorm the dtype's)
    mlp_hidden: int = 0  # the MLP's hidden width; 0: 4 * n_embd (SwiGLU: 8 * n_embd / 3)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise SLMError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise SLMError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise SLMError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise SLMError(f"GPTConfig.{name} must be one of {', '.join(map(repr, choices))}, "
                               f"got {getattr(self, name)!r}")
        if not (type(self.n_kv_head) is int and self.n_kv_head >= 0 and self.n_head % (self.n_kv_head or 1) == 0):
            raise SLMError(f"n_kv_head must divide n_head ({self.n_head}), each key/value head serving "
                           f"n_head / n_kv_head query heads (0: n_head); got {self.n_kv_head!r}")
        if not (isinstance(self.mlp_hidden, int) and not isinstance(self.mlp_hidden, bool) and self.mlp_hidden >= 0):
            raise SLMError(f"GPTConfig.mlp_hidden must be an int >= 0 (0: the usual width), got {self.mlp_hidden!r}")
        if self.norm_eps is not None and not (isinstance(self.norm_eps, (int, float)) and not isinstance(
                self.norm_eps, bool) and 0 < self.norm_eps < math.inf):
            raise SLMError(f"GPTConfig.norm_eps must be > 0 (or None for PyTorch's default), got {self.norm_eps!r}")
        if self.position == "rope" and self.head_size % 2:
            raise SLMError(f"RoPE rotates pairs of numbers: the head size n_embd / n_head must be even, "
                           f"got {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict:
        return asdict(self)


def causal_mask(block_size: int) -> torch.Tensor:
    """Lower-triangular boolean mask: position t may look at positions 0..t, never the future."""
    return torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))


def window_mask(query_start: int, n_queries: int, key_start: int, n_keys: int, window: int, device=None):
    """Which keys each query may see (True: visible), from their absolute positions: the query's own
    position and the ``window - 1`` before it, never a later one. Within the first ``window`` tokens
    this is ``causal_mask``; past them (RoPE models only) it is a band that slides with the query."""
    q = torch.arange(query_start, query_start + n_queries, device=device)[:, None]  # (Tq, 1)
    k = torch.arange(key_start, key_start + n_keys, device=device)[None, :]  # (1, Tk)
    return (k <= q) & (k > q - window)  # (Tq, Tk)


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

    A token's key and value depend only on the tokens up to it, so once computed they never change.
    The buffers are allocated once at ``block_size`` positions and filled from the left; ``length``
    says how many hold real data and ``position`` how many tokens the cache has seen (the position of
    the next one). ``GPT.new_cache`` makes one per layer.
    # New (lesson 12): ``reserve`` allocates fewer positions at first (a chat reply needs its prompt and
    its reply, not a real model's 8,192-token context); the buffers double when they fill, up to ``block_size``.

    # New (lesson 11): ``slide=True`` (RoPE models) lets it run past ``block_size`` tokens. The oldest
    keys and values are dropped and nothing is recomputed: every token then attends to itself and the
    ``block_size - 1`` tokens before it, at every layer, with the keys and values those tokens got
    when they were new. That is exactly sliding-window attention over the whole text (what
    ``GPT.forward`` computes on a sequence longer than ``block_size``), not the model rerun on the
    last ``block_size`` tokens. With learned positions a cache cannot slide: every position would shift.
    """

    def __init__(self, batch_size: int, n_head: int, block_size: int, head_size: int, device=None,
                 dtype=torch.float32, slide: bool = False, reserve: int | None = None):
        positions = block_size if reserve is None else max(1, min(reserve, block_size))
        self.k = torch.zeros(batch_size, n_head, positions, head_size, device=device, dtype=dtype)  # (B, nh, T, hs)
        self.v = torch.zeros_like(self.k)
        self.block_size = block_size
        self.length = 0
        self.position = 0
        self.slide = slide

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of the new positions after the cached ones; return all of them
        (the cached ones first). Their positions end at ``position``, which this call advances."""
        if self.length + k.size(2) > self.k.size(2) < self.block_size:  # grow the buffers, up to block_size
            grown = min(self.block_size, max(self.length + k.size(2), 2 * self.k.size(2)))
            self.k, self.v = (F.pad(t, (0, 0, 0, grown - t.size(2))) for t in (self.k, self.v))
        capacity, end = self.k.size(2), self.length + k.size(2)
        self.position += k.size(2)
        if end <= capacity:
            self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
            self.length = end
            return self.k[:, :, :end], self.v[:, :, :end]
        if not self.slide:
            raise SLMError(f"the KV cache holds {capacity} positions and {end} were asked for; with learned "
                           "positions, start a new cache (sampling does this for you)")
        # The new queries may still need the old keys, so all of them go into this call's attention;
        # the next token sees itself and the block_size - 1 before it, so that many are kept.
        keys, values = torch.cat([self.k[:, :, :self.length], k], dim=2), torch.cat([self.v[:, :, :self.length], v], 2)
        self.length = capacity - 1
        self.k[:, :, :self.length], self.v[:, :, :self.length] = keys[:, :, -self.length:], values[:, :, -self.length:]
        return keys, values

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (in that order): beam search continues some beams twice, others not at all."""
        self.k, self.v = self.k[index], self.v[index]


class Rotary(nn.Module):
    """# New (lesson 11): rotary position embeddings (RoPE, Su et al. 2021).

    Each head's vector is cut into pairs of numbers, and pair i of the token at position p is rotated
    by the angle p·θ_i, with θ_i = base^(-2i / head_size): fast turns for the first pairs, slow for the
    last. A rotation keeps lengths, and rotating a query by p·θ and a key by s·θ leaves their dot product
    depending on (p - s)·θ only: attention sees how far apart two tokens are, never where they are.
    """

    def __init__(self, head_size: int, base: float = 10000.0):
        super().__init__()
        self.head_size, self.base = head_size, base
        self.cos = self.sin = torch.empty(0)  # (positions, head_size / 2): a table, made once and grown when needed

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``x`` (B, n_head, T, head_size) rotated as the tokens at positions ``start`` .. ``start + T - 1``."""
        end = start + x.size(-2)
        if self.cos.size(0) < end or self.cos.device != x.device:
            self._make_tables(max(end, 2 * self.cos.size(0)), x.device)
        cos, sin = self.cos[start:end].to(x.dtype), self.sin[start:end].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # pair i is (x1[i], x2[i])
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def _make_tables(self, positions: int, device) -> None:
        inv_freq = self.base ** -(torch.arange(0, self.head_size, 2, device=device).float() / self.head_size)
        angles = torch.arange(positions, device=device, dtype=torch.float32)[:, None] * inv_freq  # (T, hs / 2)
        self.cos, self.sin = angles.cos(), angles.sin()


class CausalSelfAttention(nn.Module):
    """All heads at once: one Linear makes q, k and v for every head; the fused kernel does the rest."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        self.window = config.block_size  # the most tokens a query sees, itself included
        # With grouped-query attention (n_kv_head < n_head) the keys and values are narrower than the queries.
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_size, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = Rotary(self.head_size, config.rope_base) if config.position == "rope" else None
        self.qk_norm = config.qk_norm
        self.fused = True  # False: always the written-out path (GPT.set_fused_attention switches every layer)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, need_weights: bool = False):
        """(output (B, T, C), attention weights (B, n_head, T, keys) or None). The weights are
        computed only when asked for, by the written-out path. With a ``cache``, ``x`` holds only
        the new positions; they attend to the cached ones too."""
        B, T, C = x.shape
        sizes = (self.n_head * self.head_size, self.n_kv_head * self.head_size, self.n_kv_head * self.head_size)
        q, k, v = (t.view(B, T, -1, self.head_size).transpose(1, 2)  # (B, heads, T, head_size)
                   for t in self.c_attn(x).split(sizes, dim=2))
        if self.qk_norm:  # New: each head's query and key get unit RMS, so a score is at most head_size / sqrt(hs)
            q, k = F.rms_norm(q, (self.head_size,)), F.rms_norm(k, (self.head_size,))
        start = cache.position if cache is not None else 0  # the absolute position of x's first token
        if self.rotary is not None:  # New: positions enter here, as rotations, instead of being added to x
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, n_kv_head, keys, head_size), the cached positions first
        if self.n_kv_head < self.n_head:  # New: each key/value head serves n_head / n_kv_head query heads
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
        key_start = start + T - k.size(2)
        plain_causal = key_start == start and T <= self.window  # no cache (or an empty one), within the context
        everything = T == 1 and k.size(2) <= self.window  # one new token may see every cached key
        weights = None
        if self.fused and not need_weights:
            mask = None if plain_causal or everything else window_mask(start, T, key_start, k.size(2), self.window,
                                                                        x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=plain_causal and T > 1,
                                               dropout_p=self.attn_dropout.p if self.training else 0.0)
        else:
            mask = window_mask(start, T, key_start, k.size(2), self.window, x.device)
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # (B, n_head, T, keys)
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
    """Per-position MLP: attention gathers information, this layer thinks about it.

    # New (lesson 11): ``kind`` "relu2" squares a ReLU (the speedrun's); "swiglu" multiplies a SiLU
    gate with a second projection (Llama's), and takes 2/3 of the hidden width so that its three
    matrices hold as many parameters as GELU's two.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False, kind: str = "gelu", hidden: int = 0):
        super().__init__()
        self.kind = kind
        hidden = hidden or (8 * n_embd // 3 if kind == "swiglu" else 4 * n_embd)
        self.c_fc = nn.Linear(n_embd, 2 * hidden if kind == "swiglu" else hidden, bias=bias)  # swiglu: gate and value
        self.gelu = nn.GELU() if kind == "gelu" else None
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


def make_norm(config: GPTConfig, size: int | None = None) -> nn.Module:
    """GPT-2's LayerNorm, or (New, lesson 11) RMSNorm: x / rms(x) * gain, with no mean and no bias."""
    size = size or config.n_embd
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=config.norm_eps)
    return nn.LayerNorm(size, eps=config.norm_eps or 1e-5, bias=config.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = FeedForward(config.n_embd, config.dropout, config.bias, config.mlp, config.mlp_hidden)

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
        # RoPE models have no position table: positions are rotations inside attention.
        positions = {"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.position == "learned" else {}
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            **positions,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying: reading a token in and writing it out use one matrix, which saves
            # vocab_size * n_embd parameters and trains better on small data.
            self.transformer.wte.weight = self.lm_head.weight
        if config.init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2's scaled init: each block adds two residual contributions; shrinking their output
            # projections by 1/sqrt(2 * n_layer) keeps the residual stream's variance from growing with depth.
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        else:  # New: "zero-out" keeps PyTorch's init (embeddings N(0, 1), Linear uniform with std 1/sqrt(3 fan_in))
            # and zeroes the biases and what writes into the residual stream: every block starts as the identity; the
            # first steps train the embeddings and the head, then the blocks grow in.
            for name, p in self.named_parameters():
                untied_head = name == "lm_head.weight" and not config.tie_embeddings
                if name.endswith(("c_proj.weight", ".bias")) or untied_head:
                    nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def slides(self) -> bool:
        """True when the model can read past ``block_size`` tokens (RoPE: attention then slides)."""
        return self.config.position == "rope"

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the lookup tables: the position embeddings, and the token
        embeddings when untied (tied, they are also the output layer and count once, as weights that
        do real work)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            lookups = [m for name, m in self.transformer.items()
                       if name == "wpe" or (name == "wte" and not self.config.tie_embeddings)]
            n -= sum(m.weight.numel() for m in lookups)
        return n

    def set_fused_attention(self, fused: bool) -> None:
        """PyTorch's fused attention kernel (True) or the written-out softmax(QK^T)V, in every layer."""
        for block in self.transformer.h:
            block.attn.fused = fused

    def new_cache(self, batch_size: int = 1, reserve: int | None = None) -> list[KVCache]:
        """An empty KV cache per layer, for generating ``batch_size`` sequences with this model; ``reserve``
        positions are allocated at first (default: ``block_size``), more as they are needed."""
        c, weight = self.config, self.lm_head.weight
        return [KVCache(batch_size, c.kv_heads, c.block_size, c.head_size, weight.device, weight.dtype, self.slides,
                        reserve) for _ in range(c.n_layer)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None,
                *, only_last: bool = False):
        """Logits (B, T, vocab_size) for every position of ``idx``, and the loss if ``targets`` are given.

        ``only_last=True`` gives the last position's logits only, (B, 1, vocab_size): all generation
        needs, as in nanoGPT. With a 50,257-way output layer the logits of the other positions would be
        most of the cost of a long prompt. Training and evaluation keep every position.
        With a ``cache`` (``new_cache``), ``idx`` holds only the tokens after the cached ones: they sit
        at positions ``cache[0].position`` onwards, and each layer appends their keys and values.
        A RoPE model reads sequences longer than ``block_size``: each token attends to the last ``block_size``.
        """
        x = self.transformer.drop(self._embed(idx, past=cache[0].position if cache else 0))  # (B, T, n_embd)
        for block, layer_cache in zip(self.transformer.h, cache or [None] * len(self.transformer.h)):
            x, _ = block(x, layer_cache)
        if only_last:
            x = x[:, -1:]  # (B, 1, n_embd): the norm and lm_head work per position
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
        """Token plus position embeddings of ``idx``, whose tokens sit at positions ``past`` onwards
        (RoPE models: token embeddings only)."""
        if self.slides:
            return self.transformer.wte(idx)  # (B, T, n_embd)
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise SLMError(f"sequence of {past + T} tokens is longer than the model's context "
                           f"(block_size={self.config.block_size}); crop it to the last {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)  # (T,)
        return self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, n_embd)
