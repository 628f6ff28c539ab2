"""Lesson 11's recipe: every GPTConfig switch against a definition written out here, the sliding KV
cache against sliding-window attention computed one query at a time, Muon against torch.optim, the
wsd schedule, time budgets, and the fast presets end to end. The defaults must stay GPT-2, so old
checkpoints still load."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slm_helpers.checkpoint import load_checkpoint, load_model, save_checkpoint
from slm_helpers.cli import main
from slm_helpers.config import load_config
from slm_helpers.errors import SLMError
from slm_helpers.evaluate import split_loss
from slm_helpers.kv_cache import KVCache
from slm_helpers.model import (
    GPT,
    MLP,
    MLPS,
    CausalSelfAttention,
    GPTConfig,
    NoPositions,
    ReLU2,
    Rotary,
    SwiGLU,
    attend,
    window_mask,
)
from slm_helpers.sampling import _NextLogits, beam_search, generate
from slm_helpers.speedrun import NOT_DISTINGUISHABLE, Race, loss_per_step, read_difference
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.train import TrainConfig, Trainer, lr_at

POEM = ("Twinkle, twinkle, little star,\nHow I wonder what you are!\n"
        "Up above the world so high,\nLike a diamond in the sky.\n\n")

# GPTConfig's fields before lesson 11: a checkpoint written then has only these in its model_config.
OLD_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias",
            "vocab_multiple")

# Every switch away from GPT-2 at once: the fast presets'
# model. Tests add grouped-query attention (n_kv_head).
MODERN = dict(position="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False,
              init="zero-out")


def config(**kwargs) -> GPTConfig:
    """A tiny GPT's config: 2 layers, 32 wide, 2 heads of 16, a context of 8 tokens, no dropout."""
    return GPTConfig(**{**dict(vocab_size=24, block_size=8, n_layer=2, n_head=2, n_embd=32,
                               dropout=0.0), **kwargs})


def randomized(cfg: GPTConfig, seed: int = 0, std: float = 0.2) -> GPT:
    """GPT(cfg) in eval mode with every matrix N(0, std) and every gain 1 + N(0, 0.1).

    Both inits are too tame for these checks: zero-out makes every block the identity, and GPT-2's
    std 0.02 leaves attention nearly uniform, so a wrong mask or rotation would hardly move the
    logits. At std 0.2 the scores spread over a few units and each logit is of size ~1-4."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            else:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    return model


# ---------------------------------------------------------------- defaults and config checks

def test_defaults_are_gpt2(tiny_config):
    c = GPTConfig()
    assert (c.norm, c.position, c.mlp, c.qk_norm, c.n_kv_head, c.tie_embeddings, c.init) == (
        "layernorm", "learned", "gelu", False, 0, True, "gpt2")
    assert c.kv_heads == c.n_head
    torch.manual_seed(0)
    model = GPT(tiny_config)  # the conftest's config sets none of the new fields
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 2 * tiny_config.n_layer + 1 and all(type(m) is nn.LayerNorm for m in norms)
    assert all(type(b.mlp) is MLP and b.mlp.c_fc.out_features == 4 * 16
               for b in model.transformer.h)
    assert model.transformer.wpe.weight.shape == (tiny_config.block_size,
                                                  16) and not model.reads_past_context
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(isinstance(m, Rotary) for m in model.modules())
    assert all(b.attn.c_attn.out_features == 3 * 16 and type(b.attn.q_norm) is nn.Identity
               for b in model.transformer.h)
    # GPT-2's init, not PyTorch's: N(0, 0.02) matrices
    # (320 numbers: the std estimate is within ~5%).
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_a_model_config_from_before_lesson_11_still_loads(tmp_path, tiny_config):
    old = {k: v for k, v in tiny_config.to_dict().items() if k in OLD_KEYS}
    assert set(tiny_config.to_dict()) - set(old)  # the new fields really are missing from it
    assert GPTConfig(**old) == tiny_config
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(20)])
    save_checkpoint({"model": model.state_dict(), "model_config": old,
                     "tokenizer": tokenizer.to_dict(), "step": 3},
                    tmp_path / "old.pt")
    loaded, _, _ = load_model(tmp_path / "old.pt")
    idx = torch.randint(0, 20, (2, 8))
    assert loaded.config == tiny_config and torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize("kwargs, named", [
    (dict(norm="batchnorm"), "GPTConfig.norm"),
    (dict(mlp="tanh"), "GPTConfig.mlp"),
    (dict(position="alibi"), "GPTConfig.position"),
    (dict(init="x"), "GPTConfig.init"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),  # 3 does not divide 4
    (dict(n_head=4, n_kv_head=8), "n_kv_head"),  # more key/value heads than query heads
    (dict(n_kv_head=-1), "n_kv_head"),
    (dict(n_embd=6, n_head=2, position="rope"), "head size"),  # head size 3: RoPE rotates pairs
])
def test_config_validation_names_the_field(kwargs, named):
    with pytest.raises(SLMError, match=named):
        config(**kwargs)
    config(n_embd=6, n_head=2)  # an odd head size is fine with learned positions


@pytest.mark.parametrize("kwargs, named", [
    (dict(optimizer="sgd"), "optimizer"),
    (dict(schedule="linear"), "schedule"),
    (dict(cooldown=0.0), "cooldown"),
    (dict(cooldown=1.5), "cooldown"),
    # one message covers these three; the value given names the culprit
    (dict(time_budget=-1.0), r"time_budget=-1\.0"),
    (dict(muon_lr=0.0), r"muon_lr=0\.0"),
    (dict(embedding_lr=-0.1), r"embedding_lr=-0\.1"),
])
def test_train_config_validation_of_the_new_fields(kwargs, named):
    with pytest.raises(SLMError, match=named):
        TrainConfig(**kwargs)


# ---------------------------------------------------------------- RMSNorm

def test_rmsnorm_everywhere_and_its_formula():
    cfg = config(norm="rmsnorm", n_layer=3)
    model = GPT(cfg)
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 2 * cfg.n_layer + 1 and all(type(m) is nn.RMSNorm for m in norms)
    assert all(getattr(m, "bias", None) is None and m.weight.shape == (cfg.n_embd,) for m in norms)
    norm = model.transformer.h[1].ln_2
    with torch.no_grad():
        norm.weight.copy_(torch.randn(cfg.n_embd))
    # Small inputs: mean(x²) ~ 1e-6, so eps (float32's,
    # 1.2e-7) changes the result by ~6%; a norm with
    # LayerNorm's eps 1e-5 (or 1e-6), or one that subtracted the mean, would be far off.
    x = torch.randn(3, 5, cfg.n_embd) * 1e-3
    eps = torch.finfo(torch.float32).eps
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    assert torch.allclose(norm(x), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- RoPE

def _rotate_with_complex_numbers(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """Pair i of x is the complex number x[..., i] + 1j·x[..., i + hs/2]; at position p it is
    multiplied by exp(1j·p·base^(-2i/hs)). Computed in float64, independently of Rotary."""
    hs = x.size(-1)
    z = torch.complex(x[..., :hs // 2].double(), x[..., hs // 2:].double())
    p = torch.arange(start, start + x.size(-2), dtype=torch.float64)[:, None]
    theta = base ** (-2 * torch.arange(hs // 2, dtype=torch.float64) / hs)
    z = z * torch.polar(torch.ones_like(p * theta), p * theta)
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize("head_size, base, start",
                         [(8, 10000.0, 0), (16, 10000.0, 37), (6, 500.0, 3)])
def test_rotary_is_a_complex_rotation(head_size, base, start):
    torch.manual_seed(head_size)
    x = torch.randn(2, 3, 9, head_size)  # (B, n_head, T, head_size)
    rotated = Rotary(head_size, base)(x, start)
    # float32 angles up to 45 rad and their cos/sin: ~1e-6 off the float64 reference
    assert torch.allclose(rotated.double(), _rotate_with_complex_numbers(x, start, base), atol=1e-5)
    # a rotation keeps every pair's length, so every vector's norm
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    pairs = lambda t: t[..., :head_size // 2] ** 2 + t[..., head_size // 2:] ** 2  # noqa: E731
    assert torch.allclose(pairs(rotated), pairs(x), rtol=1e-4, atol=1e-6)


def test_rotated_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    rotary = Rotary(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    score = lambda p, s: (rotary(q, p) * rotary(k, s)).sum().item()  # noqa: E731
    for p, s in [(5, 2), (0, 7), (13, 13)]:
        for d in (1, 29, 300):
            # scores of size ~3 with float32 angles up to 313 rad: measured 6e-6 at most
            assert score(p + d, s + d) == pytest.approx(score(p, s), abs=3e-5)
    # a different distance is a different score
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


@pytest.mark.parametrize("kwargs", [dict(), dict(MODERN, n_head=4, n_kv_head=2)])
def test_a_rope_gpt_sees_distances_not_positions(kwargs):
    model = randomized(config(**{"position": "rope", **kwargs}))
    idx = torch.randint(0, 24, (2, 8))
    cache = model.new_cache(2)
    for layer in cache:
        layer.position = 1000  # the same tokens, 1000 places later
    shifted = model(idx, cache=cache)[0]
    # measured: 5e-5 at most (float32 angles near 1000 rad are rounded to ~6e-5)
    assert torch.allclose(shifted, model(idx)[0], atol=2e-4)


# ---------------------------------------------------------------- the sliding KV cache

def sliding_window_reference(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits of ``idx`` when token t attends to tokens max(0, t - block_size + 1) .. t at every
    layer: each query's softmax written out, one position at a time. The pieces (Linear layers,
    norms, MLP, rotation from position 0) are the model's own modules."""
    c = model.config
    nh, nkv, hs = c.n_head, c.kv_heads, c.head_size
    x = model.transformer.wte(idx)
    B, T, C = x.shape
    for block in model.transformer.h:
        attn = block.attn
        q, k, v = attn.c_attn(block.ln_1(x)).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q, k, v = (t.view(B, T, -1, hs).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        if c.qk_norm:
            q, k = F.rms_norm(q, (hs,)), F.rms_norm(k, (hs,))
        q, k = attn.rotary(q, 0), attn.rotary(k, 0)
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        y = torch.empty_like(q)
        for t in range(T):
            first = max(0, t - c.block_size + 1)
            # (B, nh, 1, keys)
            scores = q[:, :, t:t + 1] @ k[:, :, first:t + 1].transpose(-2, -1) / math.sqrt(hs)
            y[:, :, t] = (scores.softmax(-1) @ v[:, :, first:t + 1])[:, :, 0]
        x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.transformer.ln_f(x))[..., :c.vocab_size]


def decode(model: GPT, idx: torch.Tensor, chunk: int):
    """Logits of ``idx`` fed through one cache ``chunk`` tokens at a time; and the cache."""
    cache = model.new_cache(idx.size(0))
    parts = [model(idx[:, s:s + chunk], cache=cache)[0] for s in range(0, idx.size(1), chunk)]
    return torch.cat(parts, dim=1), cache


def test_one_token_grouped_query_attention_takes_any_layout_of_the_fused_output(monkeypatch):
    """torch 2.4's CPU kernel returns its (B, heads, T, hs) output laid out as (B, T, heads, hs);
    the one-token grouped-query path must not assume it contiguous (a .view failed on torch 2.4)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 1, 8, generator=g)  # 6 query heads in 2 groups of 3, one new token
    k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(2))
    expected, _ = attend(q, k, v, start=4, window=16, fused=False)
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: fused(
        *a, **kw).transpose(1, 2).contiguous().transpose(1, 2))  # torch 2.4's layout
    y, _ = attend(q, k, v, start=4, window=16)
    assert y.shape == (2, 6, 1, 8) and (y - expected).abs().max() <= 1e-6


def test_within_the_context_the_cache_is_the_full_forward():
    model = randomized(config(**MODERN, n_head=4, n_kv_head=2))
    idx = torch.randint(0, 24, (2, 8))
    stepped, cache = decode(model, idx, 1)
    assert torch.allclose(stepped, model(idx)[0], atol=1e-5)
    assert [layer.length for layer in cache] == [8,
                                                 8] and [layer.position for layer in cache] == [8,
                                                                                                8]


# A RoPE GPT with GPT-2's other parts; the modern one with grouped-query attention (2 query heads
# per key/value head), once with the fused kernel and
# once with the written-out softmax (and SwiGLU).
SLIDING = {
    "rope": (dict(position="rope", n_layer=3), True),
    "modern-gqa": (dict(MODERN, n_layer=3, n_head=4, n_kv_head=2), True),
    "modern-gqa-explicit": (dict(MODERN, n_layer=3, n_head=4, n_kv_head=2, mlp="swiglu"), False),
}


@pytest.mark.parametrize("name", SLIDING)
def test_past_the_context_the_cache_computes_sliding_window_attention(name):
    kwargs, fused = SLIDING[name]
    model = randomized(config(**kwargs))
    model.set_fused_attention(fused)
    idx = torch.randint(0, 24, (2, 5 * 8))  # five contexts long
    expected = sliding_window_reference(model, idx)
    # logits of size ~4; measured: 8e-6 at most everywhere below (float32 rounding)
    # the uncached forward slides its window too
    assert torch.allclose(model(idx)[0], expected, atol=2e-5)
    for chunk in (1, 3, 7, 8, 13):
        logits, cache = decode(model, idx, chunk)
        assert torch.allclose(logits, expected, atol=2e-5), f"chunks of {chunk}"
        # however long the text, the cache stays at block_size positions
        assert all(layer.k.size(2) == layer.v.size(2) == 8 and layer.length <= 8 for layer in cache)
        assert all(layer.position == 40 and layer.k.size(1) == model.config.kv_heads
                   for layer in cache)
    # Uncached sampling reruns the last n_layer * (block_size - 1) + 1 tokens: exactly what the last
    # token's logits can depend on. One token fewer changes them (measured: by 1e-3 to 7e-2).
    reach = model.config.n_layer * (8 - 1) + 1
    assert torch.allclose(model(idx[:, -reach:])[0][:, -1], expected[:, -1], atol=2e-5)
    assert (model(idx[:, -reach + 1:])[0][:, -1] - expected[:, -1]).abs().max() > 2e-4


def test_window_mask():
    assert torch.equal(window_mask(0, 4, 0, 4, 8), torch.ones(4, 4, dtype=torch.bool).tril())
    mask = window_mask(10, 2, 5, 7, 4)  # queries at 10, 11; keys at 5..11; a window of 4
    assert mask.tolist() == [[False, False, True, True, True, True, False],
                             [False, False, False, True, True, True, True]]


def test_learned_positions_cannot_slide():
    model = randomized(config())
    cache = model.new_cache(1)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(SLMError, match="longer than the model's context"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    assert not cache[0].slide
    layer = KVCache(1, 2, 4, 8)  # the cache itself refuses too
    layer.append(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8))
    with pytest.raises(SLMError, match="holds 4 positions and 5 were asked for"):
        layer.append(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))


def test_a_sliding_cache_keeps_the_newest_keys():
    layer = KVCache(1, 1, 4, 1, slide=True)
    seen = [layer.append(torch.full((1, 1, 3, 1), float(s)) + torch.arange(3.0).view(1, 1, 3, 1),
                         torch.zeros(1, 1, 3, 1))[0].flatten().tolist() for s in (0, 3, 6)]
    # positions 0..8 hold keys 0..8: each call returns the
    # kept keys and the new ones, then keeps the last 3
    assert seen == [[0, 1, 2], [0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]]
    assert layer.length == 3 and layer.position == 9 and layer.k.flatten()[:3].tolist() == [6, 7, 8]


# ---------------------------------------------------------------- sampling from a RoPE model

@pytest.fixture(scope="module")
def rope_model():
    return randomized(config(**MODERN, n_head=4, n_kv_head=2), seed=3, std=0.3)


def test_greedy_generation_past_the_context(rope_model):
    idx = torch.randint(0, 24, (2, 5), generator=torch.Generator().manual_seed(0))
    cached = generate(rope_model, idx, 30, temperature=0)  # 35 tokens, the context is 8
    assert torch.equal(generate(rope_model, idx, 30, temperature=0, use_cache=False), cached)
    seq = idx  # the definition: the argmax of the whole sequence's last logits, one token at a time
    for _ in range(30):
        seq = torch.cat([seq, rope_model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)
    assert cached[:, 8:].unique().numel() > 3  # the check means something: not one token repeated


def test_next_logits_past_the_context(rope_model):
    """What every sampler asks for: the logits after the last token. Uncached, the model reruns the
    last n_layer * (block_size - 1) + 1 tokens; cached, it feeds only the new ones. Both are the
    whole text's."""
    idx = torch.randint(0, 24, (2, 42), generator=torch.Generator().manual_seed(2))
    for use_cache in (False, True):
        next_logits = _NextLogits(rope_model, use_cache)
        for length in (40, 41, 42):  # a prompt five contexts long at once, then one token at a time
            assert torch.allclose(next_logits(idx[:, :length]),
                                  rope_model(idx[:, :length])[0][:, -1], atol=2e-5)


def test_beam_search_past_the_context(rope_model):
    idx = torch.randint(0, 24, (1, 5), generator=torch.Generator().manual_seed(1))
    ids, score = beam_search(rope_model, idx, 20, num_beams=3)
    uncached_ids, uncached_score = beam_search(rope_model, idx, 20, num_beams=3, use_cache=False)
    assert ids.shape == (1, 25) and torch.equal(ids, uncached_ids)
    assert score == pytest.approx(uncached_score, abs=1e-4)
    # the score is the sequence's own log-probability
    # under the model, per new token (length_penalty 1)
    logprobs = rope_model(ids)[0][0, 4:-1].log_softmax(-1).gather(-1, ids[0, 5:, None]).sum().item()
    assert score == pytest.approx(logprobs / 20, abs=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_keep_is_refused_where_the_window_never_restarts(rope_model, use_cache):
    """keep only moves where a learned-position window restarts; a RoPE model's slides, so a keep
    there would change nothing, and saying so beats ignoring it."""
    idx = torch.randint(0, 24, (1, 5), generator=torch.Generator().manual_seed(0))
    for keep in (4, rope_model.block_size):
        with pytest.raises(SLMError, match=f"keep={keep} applies to learned positions only"):
            generate(rope_model, idx, 10, temperature=0, use_cache=use_cache, keep=keep)
        with pytest.raises(SLMError, match="leave keep unset"):
            beam_search(rope_model, idx, 10, num_beams=2, use_cache=use_cache, keep=keep)


# ---------------------------------------------------------------- MLPs, QK-norm, GQA

def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("n_embd", [48, 96])
def test_swiglu_and_relu2(n_embd):
    torch.manual_seed(0)
    shape = GPTConfig(n_embd=n_embd, n_head=1, dropout=0.0)
    gelu, swiglu, relu2 = (MLPS[kind](shape) for kind in ("gelu", "swiglu", "relu2"))
    # 2/3 the width, three matrices
    assert abs(_params(swiglu) - _params(gelu)) <= 0.01 * _params(gelu)
    assert _params(relu2) == _params(gelu)
    x = torch.randn(2, 5, n_embd)
    gate, value = swiglu.c_fc(x).chunk(2, dim=-1)
    assert torch.allclose(swiglu(x), swiglu.c_proj(gate * torch.sigmoid(gate) * value), atol=1e-6)
    assert torch.allclose(relu2(x), relu2.c_proj(relu2.c_fc(x).clamp(min=0) ** 2), atol=1e-6)
    assert torch.allclose(gelu(x), gelu.c_proj(F.gelu(gelu.c_fc(x))), atol=1e-6)
    assert all(type(b.mlp) is SwiGLU for b in GPT(config(mlp="swiglu")).transformer.h)
    assert all(type(b.mlp) is ReLU2 for b in GPT(config(mlp="relu2")).transformer.h)


@pytest.mark.parametrize("n_kv_head", [0, 2])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(n_kv_head):
    for qk_norm in (True, False):
        torch.manual_seed(0)
        attn = CausalSelfAttention(config(n_head=4, n_kv_head=n_kv_head, qk_norm=qk_norm,
                                          position="rope")).eval()
        x = torch.randn(2, 8, 32)
        before = attn(x)
        with torch.no_grad():
            attn.c_attn.weight[:32 + attn.n_kv_head * 8] *= 7  # the query rows and the key rows
        if qk_norm:
            assert torch.allclose(attn(x), before, atol=1e-5)
        else:
            assert not torch.allclose(attn(x), before, atol=1e-2)


def test_grouped_query_attention_is_attention_with_shared_heads():
    gqa = randomized(config(position="rope", qk_norm=True, n_head=4, n_kv_head=2))
    mha = GPT(config(position="rope", qk_norm=True, n_head=4)).eval()
    hs = 8
    state = gqa.state_dict()
    for i in range(2):
        # rows: 4 query heads, 2 key heads, 2 value heads
        w = state[f"transformer.h.{i}.attn.c_attn.weight"]
        q, k, v = w.split([4 * hs, 2 * hs, 2 * hs])
        k, v = (t.view(2, hs, 32).repeat_interleave(2, dim=0).reshape(4 * hs, 32) for t in (k, v))
        # key/value head j for queries 2j, 2j+1
        state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    idx = torch.randint(0, 24, (2, 8))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)
    def nbytes(cache):
        return sum(t.numel() * t.element_size() for layer in cache for t in (layer.k, layer.v))
    assert gqa.new_cache(3)[0].k.shape == (3, 2, 8, hs)
    assert nbytes(gqa.new_cache(3)) * 2 == nbytes(mha.new_cache(3))
    assert _params(gqa) < _params(mha)


# ----------------------------------------------------------------
# untied embeddings and zero-out init

def test_untied_embeddings_and_zero_out_init():
    cfg = config(vocab_size=20, vocab_multiple=16, tie_embeddings=False)
    tied, untied = GPT(config(vocab_size=20, vocab_multiple=16)), GPT(cfg)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    # every row of the padded vocabulary gets its own output weights
    assert untied.num_params(non_embedding=False) - tied.num_params(non_embedding=False) == 32 * 32
    assert cfg.padded_vocab_size * cfg.n_embd == 32 * 32
    # by default the lookup tables (wpe, an untied wte) do not count
    assert untied.num_params() == tied.num_params()
    idx, targets = torch.randint(0, 20, (4, 8)), torch.randint(0, 20, (4, 8))
    torch.manual_seed(0)
    zero = GPT(config(vocab_size=20, vocab_multiple=16, tie_embeddings=False, init="zero-out"))
    zeroed = [name for name, p in zero.named_parameters() if not p.any()]
    assert sorted(zeroed) == sorted(["lm_head.weight"] + [f"transformer.h.{i}.{part}.c_proj.weight"
                                                          for i in range(2)
                                                          for part in ("attn", "mlp")])
    logits, loss = zero(idx, targets)
    # uniform
    assert logits.shape == (4, 8, 20) and loss.item() == pytest.approx(math.log(20), abs=1e-5)
    # PyTorch's N(0, 1)
    assert zero.transformer.wte.weight.std().item() == pytest.approx(1.0, rel=0.2)
    # tied, the head is the embedding: zeroing it would zero the embeddings too
    torch.manual_seed(0)
    zero_tied = GPT(config(vocab_size=20, init="zero-out"))
    assert (zero_tied.lm_head.weight is zero_tied.transformer.wte.weight
            and zero_tied.lm_head.weight.abs().min() > 0)
    assert all(not b.attn.c_proj.weight.any() and not b.mlp.c_proj.weight.any()
               for b in zero_tied.transformer.h)
    assert abs(zero_tied(idx, targets)[1].item() - math.log(20)) > 0.1


# True: c_proj's bias writes into the residual stream too
@pytest.mark.parametrize("bias", [False, True])
def test_zero_out_blocks_start_as_the_identity(bias):
    torch.manual_seed(0)
    model = GPT(config(**MODERN, bias=bias))
    x = torch.randn(2, 8, 32)
    for block in model.transformer.h:
        assert torch.equal(block(x), x)  # nothing is written into the residual stream yet


# ---------------------------------------------------------------- schedule and time budget

def test_wsd_schedule():
    cfg = TrainConfig(schedule="wsd", warmup_iters=10, max_iters=110, cooldown=0.5,
                      learning_rate=1e-2, min_lr=0.0)
    assert lr_at(0, cfg) == pytest.approx(1e-2 / 11) and lr_at(9,
                                                               cfg) == pytest.approx(1e-2 * 10 / 11)
    assert all(lr_at(s, cfg) == pytest.approx(1e-2) for s in range(10, 61))  # flat until half way
    # linear
    assert lr_at(85, cfg) == pytest.approx(5e-3) and lr_at(100, cfg) == pytest.approx(2e-3)
    assert lr_at(110, cfg) == pytest.approx(0.0, abs=1e-12) and lr_at(500,
                                                                      cfg) == pytest.approx(0.0,
                                                                                            abs=1e-12)
    cooling = [lr_at(s, cfg) for s in range(60, 111)]
    # a straight line
    assert all(a - b == pytest.approx(2e-4) for a, b in zip(cooling, cooling[1:]))
    short = TrainConfig(schedule="wsd", warmup_iters=10, max_iters=110, cooldown=0.2,
                        learning_rate=1e-2, min_lr=1e-3)
    # the last 20%
    assert lr_at(90, short) == pytest.approx(1e-2) and lr_at(100, short) == pytest.approx(5.5e-3)
    assert lr_at(110, short) == pytest.approx(1e-3)  # down to min_lr
    timed = TrainConfig(schedule="wsd", warmup_iters=10, max_iters=110, cooldown=0.5,
                        learning_rate=1e-2,
                        min_lr=0.0, time_budget=100.0)
    # the clock, not the step, says where the run is
    assert lr_at(500, timed, 25.0) == pytest.approx(1e-2)
    assert lr_at(500, timed, 75.0) == pytest.approx(5e-3)
    assert lr_at(500, timed, 100.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(500, timed, 250.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(5, timed, 90.0) == pytest.approx(1e-2 * 6 / 11)  # warmup still counts steps
    cosine = TrainConfig(warmup_iters=0, max_iters=100, learning_rate=1e-2, min_lr=1e-3,
                         time_budget=10.0)
    assert lr_at(3, cosine, 5.0) == pytest.approx(5.5e-3)  # half way by the clock: cos(pi / 2) = 0


def test_fit_stops_when_the_time_budget_is_spent():
    tok = CharTokenizer.from_text(POEM)
    data = torch.tensor(tok.encode(POEM * 10))
    torch.manual_seed(0)
    model = GPT(config(vocab_size=tok.vocab_size, **MODERN))
    cfg = TrainConfig(max_iters=1000, time_budget=1.0, optimizer="muon", schedule="wsd",
                      warmup_iters=2,
                      min_lr=1e-4, learning_rate=1e-2, eval_interval=100_000, eval_iters=2,
                      batch_size=4)
    trainer = Trainer(model, data[:900], data[900:], cfg, tokenizer=tok)
    clock = []  # the training seconds before each step
    step = trainer.train_step
    trainer.train_step = lambda: clock.append(trainer.train_seconds) or step()
    history = trainer.fit(progress=False)
    assert trainer.train_seconds >= 1.0 and trainer.out_of_time
    # every step began inside the budget: none after it
    assert all(seconds < 1.0 for seconds in clock)
    assert len(clock) == trainer.step < cfg.max_iters
    # evaluated at the start and at the very end
    assert [h["step"] for h in history] == [0, trainer.step]
    # annealed to min_lr, as the clock ran out
    assert trainer.lr == history[-1]["lr"] == pytest.approx(1e-4)


# ---------------------------------------------------------------- the fast presets, end to end

@pytest.mark.parametrize("preset", ["shakespeare-char-cpu-fast", "shakespeare-char-fast"])
def test_fast_presets(preset):
    run = load_config(preset)
    assert (run.model.position, run.model.norm, run.train.optimizer) == ("rope", "rmsnorm", "muon")
    assert run.train.time_budget > 0 and run.train.schedule == "wsd"
    model = GPT(run.gpt_config(65))
    assert model.reads_past_context and isinstance(model.transformer.wpe, NoPositions)
    assert not any(name.startswith("transformer.wpe") for name in model.state_dict())
    assert all(type(m) is nn.RMSNorm for m in model.modules()
               if isinstance(m, (nn.LayerNorm, nn.RMSNorm)))


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """shakespeare-char-cpu-fast, shrunk, trained for one second through the command line."""
    tmp = tmp_path_factory.mktemp("fast")
    (tmp / "poem.txt").write_text(POEM * 20, encoding="utf-8")
    sets = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.block_size=16",
            "train.time_budget=1",
            "train.eval_interval=5", "train.eval_iters=2", "train.batch_size=4",
            # a guard: if the budget were ignored, the run would end (failing) here
            "train.max_iters=1000"]
    rc = main(["train", "--preset", "shakespeare-char-cpu-fast", "--data", str(tmp / "poem.txt"),
               *[arg for s in sets for arg in ("--set", s)], "--out", str(tmp / "run"), "--device",
               "cpu"])
    assert rc == 0
    return tmp


def test_fast_preset_end_to_end(fast_run, capsys):
    state = load_checkpoint(fast_run / "run" / "last.pt")
    assert state["train_seconds"] >= 1.0 and state["history"][-1]["step"] == state["step"] < 1000
    vocab_size = state["model_config"]["vocab_size"]
    # zero-out: uniform at first
    assert state["history"][0]["val"] == pytest.approx(math.log(vocab_size), abs=1e-4)
    model, tokenizer, _ = load_model(fast_run / "run" / "best.pt")
    c = model.config
    assert (c.position, c.norm, c.mlp, c.qk_norm, c.tie_embeddings, c.init) == (
        "rope", "rmsnorm", "relu2", True, False, "zero-out")
    assert (c.n_layer, c.n_embd, c.block_size) == (2, 32, 16) and model.lm_head.weight.any()
    ids = tokenizer.encode(POEM * 3)
    loss, count = split_loss(model, ids)
    # learned something in one second
    assert count == len(ids) - 1 and loss < math.log(tokenizer.vocab_size)
    # a RoPE model reads windows longer than its context
    longer, _ = split_loss(model, ids, block_size=40)
    assert math.isfinite(longer)
    capsys.readouterr()
    outputs = []
    for extra in ([], ["--no-cache"], ["--num-beams", "2"], ["--num-beams", "2", "--no-cache"]):
        rc = main(["sample", "--checkpoint", str(fast_run / "run" / "best.pt"), "--prompt",
                   "Twinkle",
                   # 47 > 16 tokens
                   "--max-new-tokens", "40", "--temperature", "0", "--device", "cpu", *extra])
        out, err = capsys.readouterr()
        assert (rc == 0 and err == "" and out.startswith("Twinkle")
                and len(out) == len("Twinkle") + 40 + 1)
        outputs.append(out)
    # the cache changes the speed, not the text
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3]


# ---------------------------------------------------------- reading an ablation against its noise

def _race(losses, steps, seconds=30.0):
    """A Race with evaluations evenly spread over ``seconds`` (no trainer: only its numbers)."""
    times = [seconds * (i + 1) / len(losses) for i in range(len(losses))]
    return Race("run", list(zip(times, losses)), steps, 1.0, trainer=None)


def test_loss_per_step_is_the_last_fall_per_second_times_seconds_per_step():
    # from 2.0 at 15 s to 1.7 at 30 s: 0.02 per second; 90 steps in 30 s: 1/3 s per step
    assert loss_per_step(_race([2.0, 1.7], steps=90)) == pytest.approx(0.02 / 3)
    assert loss_per_step(_race([1.7, 1.8], steps=90)) == 0.0  # a rising loss: no step effect
    assert loss_per_step(_race([1.7], steps=90)) == math.inf  # one evaluation: no slope to read


def test_read_difference_one_rule_for_every_row():
    final = _race([2.0, 1.7], steps=90)  # 0.02/3 per step
    # 0.05 lower, same steps, spread 0.03: lower
    reading = read_difference(_race([2.0, 1.65], steps=90), final, spread=0.03)
    assert reading.verdict == "lower" and reading.difference == pytest.approx(-0.05)
    assert reading.margin == pytest.approx(0.03)
    # 0.05 higher with 18 steps fewer, both falling 0.02/3 per step at the end: 18 * 0.02/3 = 0.12
    # of step effect, plus the spread
    reading = read_difference(_race([1.99, 1.75], steps=72), final, spread=0.03)
    assert reading.margin == pytest.approx(0.03 + 18 * 0.02 / 3)
    assert reading.verdict == NOT_DISTINGUISHABLE and reading.difference == pytest.approx(0.05)
    assert read_difference(_race([2.0, 1.9], steps=90), final, spread=0.03).verdict == "higher"
    # within the spread
    assert read_difference(_race([2.0, 1.72], steps=90), final,
                           spread=0.03).verdict == NOT_DISTINGUISHABLE
    # one evaluation and different steps: nothing can be told apart; same steps: the spread decides
    assert read_difference(_race([1.0], steps=80), final, spread=0.0).verdict == NOT_DISTINGUISHABLE
    assert read_difference(_race([1.0], steps=90), final, spread=0.03).verdict == "lower"
    with pytest.raises(SLMError, match="spread"):
        read_difference(final, final, spread=-0.1)
