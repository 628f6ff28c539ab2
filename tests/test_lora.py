"""LoRA adapters: a fresh one changes nothing, only A and B learn, merging and saving keep it."""

import copy

import pytest
import torch
import torch.nn as nn

from slm_helpers.errors import SLMError
from slm_helpers.lora import (
    LoRALinear,
    add_lora,
    load_adapter,
    lora_layers,
    merge_lora,
    remove_lora,
    save_adapter,
)
from slm_helpers.model import GPT, GPTConfig

SHAPE = dict(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, dropout=0.0,
             bias=False, norm="rmsnorm", position="rope", mlp="swiglu")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**SHAPE)).eval()


def trained(model: GPT, rank: int = 4) -> GPT:
    """``model`` with adapters whose B is no longer zero, as after some training."""
    add_lora(model, rank=rank, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.05)
    return model


def test_a_fresh_adapter_changes_nothing(model):
    idx = torch.randint(0, 40, (2, 10))
    before = model(idx)[0]
    names = add_lora(model, rank=4, alpha=8)
    assert names == [f"transformer.h.{i}.attn.{n}" for i in range(2) for n in ("c_attn", "c_proj")]
    assert torch.equal(model(idx)[0], before)
    linear = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    assert torch.equal(LoRALinear(linear, rank=2, alpha=4)(x), linear(x))


def test_the_update_is_scaled_low_rank(model):
    layer = LoRALinear(nn.Linear(6, 5, bias=False), rank=2, alpha=3)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ (layer.base.weight + 1.5 * layer.lora_B @ layer.lora_A).T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.merged()(x), expected, atol=1e-6)


def test_only_the_adapters_learn(model):
    trained(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B, for c_attn and c_proj, in 2 layers
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # rank * (in + out) per layer; c_attn makes q (32), k and v (2 heads of 8 each): 64 outputs
    assert n_trainable == 2 * 4 * ((32 + 64) + (32 + 32))
    idx = torch.randint(0, 40, (2, 10))
    model(idx, targets=idx)[1].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name


def test_merged_and_unmerged_give_the_same_logits(model):
    idx = torch.randint(0, 40, (2, 10))
    trained(model)
    adapted = model(idx)[0]
    merged = merge_lora(copy.deepcopy(model))
    assert not lora_layers(merged)
    assert (merged(idx)[0] - adapted).abs().max() <= 1e-5
    without = remove_lora(copy.deepcopy(model))(idx)[0]
    assert not torch.allclose(adapted, without, atol=1e-3)  # the adapter matters


def test_remove_gives_the_pretrained_model_back(model):
    idx = torch.randint(0, 40, (2, 10))
    before = model(idx)[0]
    assert torch.equal(remove_lora(trained(model))(idx)[0], before)


def test_save_and_load_reproduce_the_logits(model, tmp_path):
    fresh = copy.deepcopy(model)
    idx = torch.randint(0, 40, (2, 10))
    trained(model)
    path = save_adapter(model, tmp_path / "adapter.pt")
    assert path.stat().st_size < 50_000  # the adapters only, not the model
    assert load_adapter(fresh, path) == list(lora_layers(model))
    assert torch.equal(fresh(idx)[0], model(idx)[0])


def test_bad_adapters_and_settings_are_one_line_errors(model, tmp_path):
    path = save_adapter(trained(copy.deepcopy(model)), tmp_path / "adapter.pt")
    other = GPT(GPTConfig(**{**SHAPE, "n_embd": 48}))
    with pytest.raises(SLMError, match="another shape"):
        load_adapter(other, path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SLMError, match="truncated"):
        load_adapter(copy.deepcopy(model), truncated)
    with pytest.raises(SLMError, match="does not exist"):
        load_adapter(copy.deepcopy(model), tmp_path / "missing.pt")
    for rank in (0, -1, 2.5, True):
        with pytest.raises(SLMError, match="rank must be an integer >= 1"):
            add_lora(copy.deepcopy(model), rank=rank)
    with pytest.raises(SLMError, match="alpha must be a number > 0"):
        add_lora(copy.deepcopy(model), alpha=0)
    with pytest.raises(SLMError, match="nothing to adapt"):
        add_lora(copy.deepcopy(model), targets=("wte",))
    with pytest.raises(SLMError, match="adapters already"):
        add_lora(trained(copy.deepcopy(model)))
