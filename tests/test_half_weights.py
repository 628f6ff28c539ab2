"""Float16 weights for decoding on a CPU: the same model as float16-rounded float32 weights, in half
the bytes."""

import copy

import pytest
import torch
import torch.nn as nn

from slm_helpers.errors import SLMError
from slm_helpers.half_weights import HalfLinear, half_weights
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.sampling import generate


@pytest.fixture
def models():
    """A small Llama-shaped GPT (tied head, grouped-query attention) and its float16 twin."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       dropout=0.0, bias=False, norm="rmsnorm", position="rope", mlp="swiglu",
                       tie_embeddings=True)
    model = GPT(config).eval()
    return model, half_weights(copy.deepcopy(model))


def rounded(model: GPT) -> GPT:
    """``model`` with every Linear weight rounded to float16 and kept in float32."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight = nn.Parameter(m.weight.detach().half().float())
    return model


def test_every_linear_is_replaced_and_frozen(models):
    model, half = models
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(half.get_submodule(name), HalfLinear) for name in linears)
    assert all(half.get_submodule(name).weight.dtype == torch.float16 for name in linears)
    # Only the embedding and the norms are parameters still, in float32; the Linears' weights are
    # buffers.
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    assert (sum(p.numel() for p in half.parameters())
            < sum(p.numel() for p in model.parameters()) // 4)
    assert half.transformer.wte.weight.dtype == torch.float32
    assert all(layer.k.dtype == torch.float32 for layer in half.new_cache(1, reserve=4))


def test_a_prompt_gives_the_logits_of_rounded_float32_weights(models):
    model, half = models
    idx = torch.randint(0, 50, (2, 12))
    assert torch.equal(half(idx)[0], rounded(model)(idx)[0])  # many positions: float32 arithmetic


def test_one_token_is_computed_in_float16():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(1, 1, 64)
    expected = nn.functional.linear(x.half(), linear.weight.half()).float() + linear.bias
    assert torch.equal(HalfLinear(linear)(x), expected)
    assert HalfLinear(linear)(x).dtype == torch.float32


def test_cached_decoding_stays_close_to_float32(models):
    model, half = models
    prompt = torch.randint(0, 50, (1, 5))
    torch.manual_seed(1)
    ours = generate(half, prompt, 20, temperature=0)
    # the same greedy tokens
    assert torch.equal(ours, generate(rounded(model), prompt, 20, temperature=0))
    cache, ref_cache = half.new_cache(1), model.new_cache(1)
    half(prompt, cache=cache), model(prompt, cache=ref_cache)
    step = torch.tensor([[7]])
    difference = (half(step, cache=cache)[0] - model(step, cache=ref_cache)[0]).abs().max().item()
    assert 0 < difference < 5e-3  # float16 rounding shows, and stays small


def test_refuses_a_model_that_is_not_float32(models):
    model, _ = models
    with pytest.raises(SLMError, match="float32 model"):
        half_weights(copy.deepcopy(model).to(torch.bfloat16))
