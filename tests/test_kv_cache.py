"""The KV cache: cached generation computes what uncached generation computes, only faster."""

import pytest
import torch

from slm_helpers.bigram import BigramLanguageModel
from slm_helpers.errors import SLMError
from slm_helpers.kv_cache import KVCache
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.sampling import beam_search, generate
from slm_helpers.teaching import AttentionLM


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()  # block_size 8


def test_cached_logits_equal_uncached(model):
    idx = torch.randint(0, 20, (3, 8))
    full = model(idx)[0]
    cache = model.new_cache(3)
    parts = [model(idx[:, :3], cache=cache)[0]]  # a prompt of 3 tokens at once
    parts += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(3, 6)]  # then one at a time
    parts.append(model(idx[:, 6:], cache=cache)[0])  # and two more together
    assert [layer.length for layer in cache] == [8, 8]  # each layer advanced its own length
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_cache_in_the_explicit_attention_path(model):
    idx = torch.randint(0, 20, (2, 8))
    fused = model(idx)[0]
    for block in model.transformer.h:
        block.attn.fused = False  # the written-out attention, with fewer queries than keys
    cache = model.new_cache(2)
    parts = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:7], cache=cache)[0],
             model(idx[:, 7:], cache=cache)[0]]
    assert torch.allclose(torch.cat(parts, dim=1), fused, atol=1e-5)


def test_a_full_cache_refuses_more_tokens(model):
    cache = model.new_cache(1)
    model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(SLMError, match="longer than the model's context"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_cache_shape_append_and_reorder(model):
    cache = model.new_cache(batch_size=2)
    # one per layer: batch, heads, block_size, head size
    assert len(cache) == 2 and cache[0].k.shape == (2, 2, 8, 8)
    layer = KVCache(batch_size=2, n_head=2, block_size=8, head_size=4)
    k, v = torch.ones(2, 2, 3, 4), torch.full((2, 2, 3, 4), 2.0)
    all_k, all_v = layer.append(k, v)
    assert layer.length == 3 and torch.equal(all_k, k) and torch.equal(all_v, v)
    all_k, _ = layer.append(k[:, :, :1] * 5, v[:, :, :1])
    assert layer.length == 4 and all_k.shape == (2, 2, 4, 4) and all_k[:, :, 3].eq(5).all()
    layer.k[1] = 7.0
    layer.reorder(torch.tensor([1, 1, 0]))
    assert layer.k.shape[0] == 3 and layer.k[:2].eq(7).all() and layer.k[2, :, 0].eq(1).all()


@pytest.mark.parametrize("prompt_length", [1, 5, 12])  # 12: a prompt longer than the context
def test_greedy_generation_is_the_same_with_and_without_cache(model, prompt_length):
    idx = torch.randint(0, 20, (2, prompt_length))
    uncached = generate(model, idx, 30, temperature=0, use_cache=False)  # 30 >> block_size 8
    assert torch.equal(generate(model, idx, 30, temperature=0), uncached)


def test_sampling_with_a_seed_is_the_same_with_and_without_cache(model):
    idx = torch.randint(0, 20, (1, 3))
    draw = lambda **kw: generate(model, idx, 25, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    assert torch.equal(draw(use_cache=True), draw(use_cache=False))


def test_keep_rebuilds_over_fewer_tokens(model):
    """keep=k: once the context is full, the model sees the last k tokens, then k+1, ... up to
    block_size."""
    idx = torch.randint(0, 20, (1, 2))
    keep, block = 3, model.block_size
    out = generate(model, idx, 20, temperature=0, keep=keep)
    # the same rule, written out without a cache
    seq, start = idx, 0
    for _ in range(20):
        if seq.size(1) - start > block:
            start = seq.size(1) - keep
        logits = model(seq[:, start:])[0][:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    assert torch.equal(generate(model, idx, 20, temperature=0, keep=keep, use_cache=False), seq)
    with pytest.raises(SLMError, match="keep must be between 1 and"):
        generate(model, idx, 5, keep=block + 1)


def test_beam_search_is_the_same_with_and_without_cache(model):
    idx = torch.randint(0, 20, (1, 3))
    cached = beam_search(model, idx, 20, num_beams=3)
    uncached = beam_search(model, idx, 20, num_beams=3, use_cache=False)
    assert torch.equal(cached[0], uncached[0]) and cached[1] == pytest.approx(uncached[1], abs=1e-4)


def test_models_without_a_cache_still_generate():
    torch.manual_seed(0)
    for model in (BigramLanguageModel(20), AttentionLM(20, 16, block_size=8, n_head=2)):
        out = generate(model, torch.zeros(1, 1, dtype=torch.long), 12, temperature=0)
        assert out.shape == (1, 13)


def test_generation_restores_training_mode(model):
    model.train()
    generate(model, torch.zeros(1, 1, dtype=torch.long), 3)
    assert model.training


def test_cache_follows_the_model_dtype(tiny_config):
    model = GPT(tiny_config).double().eval()
    assert model.new_cache(1)[0].k.dtype == torch.float64
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 10, temperature=0)
    assert torch.equal(out,
                       generate(model, torch.zeros(1, 1, dtype=torch.long), 10, temperature=0,
                                use_cache=False))


def test_bigger_model_logits_within_1e_5():
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=3, n_head=4, n_embd=64,
                          dropout=0.0)).eval()
    idx = torch.randint(0, 65, (1, 32))
    cache = model.new_cache(1)
    steps = [model(idx[:, :1], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0]
                                                   for t in range(1, 32)]
    assert (torch.cat(steps, dim=1) - model(idx)[0]).abs().max() < 1e-5


# ----- lesson 12: a cache that reserves fewer positions and grows ------------------------------


def test_a_reserved_cache_starts_small_and_doubles_up_to_block_size():
    layer = KVCache(batch_size=2, n_head=2, block_size=20, head_size=4, reserve=3)
    assert layer.k.shape == layer.v.shape == (2, 2, 3, 4)
    keys, values, sizes = [], [], []
    for n in (2, 1, 1, 3, 5, 6, 2):  # 20 positions in all
        k, v = torch.randn(2, 2, n, 4), torch.randn(2, 2, n, 4)
        keys.append(k)
        values.append(v)
        all_k, all_v = layer.append(k, v)
        sizes.append(layer.k.size(2))
        assert torch.equal(all_k, torch.cat(keys, 2)) and torch.equal(all_v, torch.cat(values, 2))
        assert layer.v.size(2) == sizes[-1] and layer.length == layer.position == sum(t.size(2)
                                                                                      for t in keys)
    assert sizes == [3, 3, 6, 12, 12, 20, 20]  # doubled when full, never past block_size
    with pytest.raises(SLMError, match="holds 20 positions and 21 were asked for"):
        layer.append(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    jump = KVCache(1, 1, 16, 4, reserve=2)
    # doubling is not enough: as many as needed
    jump.append(torch.ones(1, 1, 9, 4), torch.ones(1, 1, 9, 4))
    assert jump.k.size(2) == 9 and jump.k[0, 0, :9].eq(1).all()
    assert [KVCache(1, 1, 16, 4, reserve=r).k.size(2) for r in (None, 0, 1, 16, 100)] == [16, 1, 1,
                                                                                          16, 16]


@pytest.mark.parametrize("position, steps",
                         [("learned", (3, 1, 1, 1, 2)), ("rope", (5, 1, 1, 3, 1, 7, 1, 1, 4, 1))])
def test_a_reserved_cache_gives_the_logits_of_a_full_one(position, steps):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
                       dropout=0.0,
                       position=position, norm="rmsnorm", mlp="swiglu")
    model = GPT(config).eval()
    idx = torch.randint(0, 20, (2, sum(steps)))  # rope: 25 tokens, sliding past the context of 8
    small, full = model.new_cache(2, reserve=2), model.new_cache(2)
    assert small[0].k.size(2) == 2 and full[0].k.size(2) == 8
    start = 0
    with torch.no_grad():
        for n in steps:
            chunk = idx[:, start:start + n]
            assert torch.equal(model(chunk, cache=small)[0],
                               model(chunk, cache=full)[0]), f"at token {start}"
            start += n
    assert all(layer.k.size(2) == 8 for layer in small)  # grown to block_size, never beyond
    assert [layer.position for layer in small] == [layer.position for layer in full] == [start] * 2


def test_generation_reserves_the_prompt_and_the_new_tokens(model, monkeypatch):
    made = []
    new_cache = model.new_cache

    def spy(batch, reserve=None):
        made.append(new_cache(batch, reserve))
        return made[-1]
    monkeypatch.setattr(model, "new_cache", spy)
    idx = torch.randint(0, 20, (1, 3))
    out = generate(model, idx, 4, temperature=0)
    assert [layer.k.size(2) for layer in made[0]] == [7, 7]  # 3 + 4 of block_size 8
    assert torch.equal(out, generate(model, idx, 4, temperature=0, use_cache=False))
