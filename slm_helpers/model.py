"""A GPT language model in one file, read top to bottom: config, attention, MLP, block, GPT.

By default it is GPT-2's architecture (pre-norm blocks, learned position embeddings, GELU, tied
input and output embeddings, GPT-2's initialisation), at any size ``GPTConfig`` describes. The
switches of lesson 11 turn it into today's recipe, one at a time: RMSNorm, rotary position
embeddings (RoPE), SwiGLU or ReLU² MLPs, QK-norm, grouped-query attention, untied embeddings,
zero-initialised outputs. Each switch is read once, in ``__init__``, to pick a part (the tables
``NORMS``, ``MLPS``, ``INITS``); no ``forward`` looks at the config again. With every switch on it
is the Llama architecture, which is how lesson 12 loads a released model into it.

Attention runs PyTorch's fused ``scaled_dot_product_attention``, or the same softmax(QK^T)V written
out (``masked_attention``, which lesson 3 builds). The KV cache of generation is in ``kv_cache.py``.

What it leaves out: the teaching pieces that lessons 3 and 4 build this from, one head at a time
(``Head``, ``MultiHeadAttention``, ``AttentionLM``), live in ``teaching.py``, which builds on this
file; nothing here imports it. Dropout and the loss are the only training extras. The names of the
parameters are nanoGPT's (``wte``, ``ln_1``, ``c_attn``...), which are GPT-2's, so its weights map
1:1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMError
from .kv_cache import KVCache
from .utils import eval_mode


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256  # longest context the model sees, in tokens
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    # biases in Linear and LayerNorm; without them GPTs train as well and a bit faster
    bias: bool = False
    # Round the embedding and output layer up to a multiple of this many rows: GPU tensor cores are
    # fastest on multiples of 64 (GPT-2's 50,257 -> 50,304). The extra rows are never predicted.
    vocab_multiple: int = 1
    # New (lesson 11): today's recipe, one switch per change. The defaults are GPT-2's, so lessons
    # 3-10 and their checkpoints are unchanged.
    # "rmsnorm": scale by the root mean square only, no mean, no bias (Llama)
    norm: str = "layernorm"
    # "rope": rotate queries and keys by their position; scores see distances only
    position: str = "learned"
    # the slowest rotation's wavelength, in tokens, is about 2π times this
    rope_base: float = 10000.0
    # "swiglu" (Llama; 2/3 the hidden width, same parameters) or "relu2" (relu(x)², the speedrun)
    mlp: str = "gelu"
    qk_norm: bool = False  # RMS-normalise each head's queries and keys: scores cannot blow up
    n_kv_head: int = 0  # grouped-query attention: this many key/value heads, each shared; 0: n_head
    tie_embeddings: bool = True  # False: the output layer gets its own matrix
    # "zero-out": PyTorch's default init, with every layer's output projection (and an untied
    # head) at zero, so each block starts as the identity
    init: str = "gpt2"
    # New (lesson 12): what a released Llama states that the rules above would only guess.
    # the norms' epsilon; None: PyTorch's (LayerNorm 1e-5, RMSNorm the dtype's)
    norm_eps: float | None = None
    mlp_hidden: int = 0  # the MLP's hidden width; 0: 4 * n_embd (SwiGLU: 8 * n_embd / 3)

    def __post_init__(self):
        for name, least in dict(vocab_size=1, block_size=1, n_layer=1, n_head=1, n_embd=1,
                                vocab_multiple=1, n_kv_head=0, mlp_hidden=0).items():
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
                raise SLMError(f"GPTConfig.{name} must be an integer >= {least}, got {value!r}")
        if self.n_embd % self.n_head or self.n_head % (self.n_kv_head or 1):
            raise SLMError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}), "
                           f"and n_head by n_kv_head ({self.n_kv_head}, 0: n_head): each key/value "
                           "head serves a group")
        if not 0 <= self.dropout < 1:
            raise SLMError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        eps = self.norm_eps
        if eps is not None and not (isinstance(eps, (int, float)) and not isinstance(eps, bool)
                                    and 0 < eps < math.inf):
            raise SLMError("GPTConfig.norm_eps must be a number > 0 (or None for PyTorch's "
                           f"default), got {eps!r}")
        for name, table in dict(norm=NORMS, position=POSITIONS, mlp=MLPS, init=INITS).items():
            if getattr(self, name) not in table:
                raise SLMError(f"GPTConfig.{name} must be one of {', '.join(map(repr, table))}, "
                               f"got {getattr(self, name)!r}")
        if self.position == "rope" and self.head_size % 2:
            raise SLMError("RoPE rotates pairs of numbers: the head size n_embd / n_head must be "
                           f"even, got {self.head_size}")

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


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor | None, only_last=False):
    """Mean cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T); None without targets.
    Targets equal to -100 (PyTorch's ``ignore_index``) are left out: prompt positions in
    fine-tuning."""
    if targets is None:
        return None
    if only_last:
        raise SLMError("only_last=True computes the last position's logits only, so it gives no "
                       "loss; drop it when you pass targets")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ---------------------------------------------------------------- attention

def window_mask(query_start: int, n_queries: int, key_start: int, n_keys: int, window: int,
                device=None):
    """Which keys each query may see (True: visible), from their absolute positions: the query's own
    position and the ``window - 1`` before it, never a later one. Within the first ``window`` tokens
    this is the causal mask; past them (RoPE models only) it is a band that slides with the
    query."""
    q = torch.arange(query_start, query_start + n_queries, device=device)[:, None]  # (Tq, 1)
    k = torch.arange(key_start, key_start + n_keys, device=device)[None, :]  # (1, Tk)
    return (k <= q) & (k > q - window)  # (Tq, Tk)


def masked_attention(q, k, v, mask, dropout: nn.Module | None = None):
    """Attention written out: scores, mask, softmax, weighted sum. Returns (output, weights).

    ``mask`` (Tq, Tk) says which keys each query may see. There may be fewer queries than keys
    (generation with a KV cache): the queries are then the last positions.
    """
    # dividing by sqrt(d) keeps the scores' spread near 1, so softmax does not saturate
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # (..., Tq, Tk)
    weights = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (dropout(weights) if dropout is not None else weights) @ v, weights


def attend(q, k, v, start: int, window: int, fused: bool = True, dropout: nn.Module | None = None):
    """softmax(QK^T / sqrt(d))V for queries at positions ``start`` onwards over the keys that end
    with them, each query seeing at most ``window`` keys: (output (B, n_head, Tq, hs), weights or
    None).

    The one place that chooses how: PyTorch's fused kernel (weights never materialised) or the
    written-out ``masked_attention``; no mask at all when the plain causal one or "everything" will
    do.
    """
    (B, n_head, T, hs), (n_kv_head, n_keys) = q.shape, k.shape[1:3]
    key_start = start + T - n_keys
    everything = T == 1 and n_keys <= window  # one new token may see every cached key
    p = dropout.p if dropout is not None and dropout.training else 0.0
    # New (lesson 11): each key/value head serves n_head / n_kv_head query heads
    if n_kv_head < n_head:
        # one token: its query heads of a group become that group's rows, no copy of k, v
        if fused and everything:
            y = F.scaled_dot_product_attention(q.reshape(B, n_kv_head, -1, hs), k, v, dropout_p=p)
            # reshape, not view: torch 2.4's CPU kernel returns y non-contiguous
            return y.reshape(B, n_head, 1, hs), None
        k, v = (t.repeat_interleave(n_head // n_kv_head, dim=1) for t in (k, v))
    if not fused:
        return masked_attention(q, k, v, window_mask(start, T, key_start, n_keys, window, q.device),
                                dropout)
    causal = key_start == start and T <= window  # no cache (or an empty one), within the context
    mask = None if causal or everything else window_mask(start, T, key_start, n_keys, window,
                                                         q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T > 1,
                                          dropout_p=p), None


class Rotary(nn.Module):
    """# New (lesson 11): rotary position embeddings (RoPE, Su et al. 2021).

    Each head's vector is cut into pairs of numbers, and pair i of the token at position p is
    rotated by the angle p·θ_i, with θ_i = base^(-2i / head_size): fast turns for the first pairs,
    slow for the last. A rotation keeps lengths, and rotating a query by p·θ and a key by s·θ leaves
    their dot product depending on (p - s)·θ only: attention sees how far apart two tokens are,
    never where they are. Pair i is (x[i], x[i + head_size/2]): the two halves, as Hugging Face's
    Llama pairs them.
    """

    def __init__(self, head_size: int, base: float = 10000.0):
        super().__init__()
        self.head_size, self.base = head_size, base
        # (positions, head_size / 2): a table, made once and grown when needed
        self.cos = self.sin = torch.empty(0)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``x`` (B, n_head, T, head_size) rotated as the tokens at positions ``start`` .. ``start +
        T - 1``."""
        end = start + x.size(-2)
        if self.cos.size(0) < end or self.cos.device != x.device:
            self._make_tables(max(end, 2 * self.cos.size(0)), x.device)
        cos, sin = self.cos[start:end].to(x.dtype), self.sin[start:end].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # pair i is (x1[i], x2[i])
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def _make_tables(self, positions: int, device) -> None:
        inv_freq = self.base ** -(torch.arange(0, self.head_size, 2, device=device).float()
                                  / self.head_size)
        # (T, hs / 2)
        angles = torch.arange(positions, device=device, dtype=torch.float32)[:, None] * inv_freq
        self.cos, self.sin = angles.cos(), angles.sin()


class NoRotation(nn.Module):
    """Learned positions are added to the input instead: attention leaves queries and keys as they
    are."""

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x


class CausalSelfAttention(nn.Module):
    """All heads at once: one Linear makes q, k and v for every head; the fused kernel does the
    rest."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.kv_heads
        # window: the most tokens a query sees, itself included
        self.head_size, self.window = config.head_size, config.block_size
        # With grouped-query attention (n_kv_head < n_head) the keys and values are narrower than
        # the queries.
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_size,
                                bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # New (lesson 11): each head's queries and keys get unit RMS, so a score is at most
        # sqrt(head_size).
        self.q_norm, self.k_norm = (nn.RMSNorm(self.head_size, elementwise_affine=False)
                                    if config.qk_norm else nn.Identity() for _ in "qk")
        self.rotary = (Rotary(self.head_size, config.rope_base) if config.position == "rope"
                       else NoRotation())
        # False: the written-out attention (GPT.set_fused_attention switches every layer)
        self.fused = True

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C). With a ``cache``, ``x`` holds only the new positions; they attend
        to the cached ones too."""
        # the absolute position of x's first token
        start = cache.position if cache is not None else 0
        q, k, v = self.project(x, start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, n_kv_head, keys, head_size), the cached positions first
        # (B, n_head, T, head_size)
        y, _ = attend(q, k, v, start, self.window, self.fused, self.attn_dropout)
        # heads side by side again
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(x.shape)))

    def project(self, x: torch.Tensor, start: int = 0):
        """Queries (B, n_head, T, hs), keys and values (B, n_kv_head, T, hs) of tokens at ``start``
        onwards."""
        B, T, _ = x.shape
        sizes = [n * self.head_size for n in (self.n_head, self.n_kv_head, self.n_kv_head)]
        q, k, v = (t.view(B, T, -1, self.head_size).transpose(1, 2)
                   for t in self.c_attn(x).split(sizes, dim=2))
        return self.rotary(self.q_norm(q), start), self.rotary(self.k_norm(k), start), v

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights (B, n_head, T, T) of ``x``, written out: for pictures, not for
        speed."""
        return attend(*self.project(x), 0, self.window, fused=False)[1]


# ---------------------------------------------------------------- MLP and block

class MLP(nn.Module):
    """Per-position MLP: attention gathers information, this layer thinks about it (GPT-2: GELU, 4x
    wide)."""

    # how many of c_fc's outputs make one hidden unit (SwiGLU: two, a gate and a value)
    projections = 1

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden or self.default_hidden(config.n_embd)
        self.c_fc = nn.Linear(config.n_embd, self.projections * hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    default_hidden = staticmethod(lambda n_embd: 4 * n_embd)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class ReLU2(MLP):
    """# New (lesson 11): relu(x)², the speedrun's: as cheap as ReLU, and smooth at the top."""

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h).square()


class SwiGLU(MLP):
    """# New (lesson 11): Llama's MLP. A SiLU gate multiplies a second projection; 2/3 of the hidden
    width, so that its three matrices (gate, value, out) hold as many parameters as GELU's two."""

    projections = 2  # c_fc's rows: the gate's, then the value's

    default_hidden = staticmethod(lambda n_embd: 8 * n_embd // 3)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        gate, value = h.chunk(2, dim=-1)
        return F.silu(gate) * value


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        # ln_*: nanoGPT's names for the norms, whichever kind they are
        self.ln_1, self.attn = make_norm(config), CausalSelfAttention(config)
        self.ln_2, self.mlp = make_norm(config), MLPS[config.mlp](config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        # The residual stream carries x through unchanged; each sub-layer only adds a correction,
        # so gradients reach the first layer undiminished however deep the stack is.
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------- positions, norms, inits

class LearnedPositions(nn.Embedding):
    """GPT-2's position embeddings: a learned vector per position, added to each token's
    embedding."""

    def forward(self, idx: torch.Tensor, past: int = 0) -> torch.Tensor:
        T, n = idx.size(1), self.num_embeddings
        if past + T > n:
            raise SLMError(f"sequence of {past + T} tokens is longer than the model's context "
                           f"(block_size={n}); crop it to the last {n}")
        return super().forward(torch.arange(past, past + T, device=idx.device))  # (T, n_embd)


class NoPositions(nn.Module):
    """# New (lesson 11): with RoPE nothing is added to the input: positions are rotations inside
    attention."""

    def forward(self, idx: torch.Tensor, past: int = 0) -> float:
        return 0.0


def make_norm(config: GPTConfig) -> nn.Module:
    """GPT-2's LayerNorm, or (New, lesson 11) RMSNorm: x / rms(x) * gain, with no mean and no
    bias."""
    return NORMS[config.norm](config)


def init_gpt2(model: GPT) -> None:
    """GPT-2's init: every weight N(0, 0.02), biases zero, and each block's two output projections
    shrunk by 1/sqrt(2 * n_layer), so that the residual stream's variance does not grow with
    depth."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * model.config.n_layer))


def init_zero_out(model: GPT) -> None:
    """# New (lesson 11): PyTorch's own init (embeddings N(0, 1), Linear uniform with std 1/sqrt(3
    fan_in)), with the biases and everything that writes into the residual stream at zero: every
    block starts as the identity; the first steps train the embeddings and the head, then the blocks
    grow in."""
    for name, p in model.named_parameters():
        untied_head = name == "lm_head.weight" and not model.config.tie_embeddings
        if name.endswith(("c_proj.weight", ".bias")) or untied_head:
            nn.init.zeros_(p)


# Each switch of GPTConfig picks one part.
NORMS = {"layernorm": lambda c: nn.LayerNorm(c.n_embd, eps=c.norm_eps or 1e-5, bias=c.bias),
         "rmsnorm": lambda c: nn.RMSNorm(c.n_embd, eps=c.norm_eps)}
POSITIONS = {"learned": lambda c: LearnedPositions(c.block_size, c.n_embd),
             "rope": lambda c: NoPositions()}
MLPS = {"gelu": MLP, "swiglu": SwiGLU, "relu2": ReLU2}
INITS = {"gpt2": init_gpt2, "zero-out": init_zero_out}


# ---------------------------------------------------------------- the GPT

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # made first, so a seed gives the weights it always gave
        positions = POSITIONS[config.position](config)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd), wpe=positions,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)), ln_f=make_norm(config)))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying: reading a token in and writing it out use one matrix, which saves
            # vocab_size * n_embd parameters and trains better on small data.
            self.transformer.wte.weight = self.lm_head.weight
        INITS[config.init](self)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def reads_past_context(self) -> bool:
        """True for RoPE models: scores see distances only, so attention can slide past
        ``block_size`` tokens (and the KV cache with it); learned positions stop at
        ``block_size``."""
        return isinstance(self.transformer.wpe, NoPositions)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the lookup tables: the position embeddings, and the
        token embeddings when untied (tied, they are also the output layer and count once, as
        weights that do real work)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.transformer.wpe.parameters())
            n -= 0 if self.config.tie_embeddings else self.transformer.wte.weight.numel()
        return n

    def set_fused_attention(self, fused: bool) -> None:
        """PyTorch's fused attention kernel (True) or the written-out softmax(QK^T)V, in every
        layer."""
        for block in self.transformer.h:
            block.attn.fused = fused

    def new_cache(self, batch_size: int = 1, reserve: int | None = None) -> list[KVCache]:
        """An empty KV cache per layer, for generating ``batch_size`` sequences with this model;
        ``reserve`` positions are allocated at first (default: ``block_size``), more as they are
        needed."""
        # float32 even where the Linears hold float16 weights
        c, weight = self.config, self.transformer.wte.weight
        return [KVCache(batch_size, c.kv_heads, c.block_size, c.head_size, weight.device,
                        weight.dtype, self.reads_past_context, reserve) for _ in range(c.n_layer)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: list[KVCache] | None = None, *, only_last: bool = False):
        """Logits (B, T, vocab_size) for every position of ``idx``, and the loss if ``targets`` are
        given.

        ``only_last=True`` gives the last position's logits only, (B, 1, vocab_size): all generation
        needs, as in nanoGPT. With a 50,257-way output layer the logits of the other positions would
        be most of the cost of a long prompt. Training and evaluation keep every position.
        With a ``cache`` (``new_cache``), ``idx`` holds only the tokens after the cached ones: they
        sit at positions ``cache[0].position`` onwards, and each layer appends their keys and
        values. A RoPE model reads sequences longer than ``block_size``: each token attends to the
        last ``block_size``.
        """
        past = cache[0].position if cache else 0
        # (B, T, n_embd)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(idx, past))
        for block, layer_cache in zip(self.transformer.h, cache or [None] * self.config.n_layer):
            x = block(x, layer_cache)
        x = x[:, -1:] if only_last else x  # (B, 1, n_embd): the norm and lm_head work per position
        # The padding rows of a rounded-up vocabulary are cut off: never sampled, never in a loss.
        # (B, T, vocab_size)
        logits = self.lm_head(self.transformer.ln_f(x))[..., :self.config.vocab_size]
        return logits, language_model_loss(logits, targets, only_last)

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head for ``idx``: shape (n_layer, B, n_head, T, T).

        Always computed as in evaluation (no dropout), whatever mode the model is in."""
        maps = []
        with eval_mode(self):
            x = self.transformer.wte(idx) + self.transformer.wpe(idx)
            for block in self.transformer.h:
                maps.append(block.attn.weights(block.ln_1(x)))
                x = block(x)
        return torch.stack(maps)
