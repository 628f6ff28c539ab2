"""model.py: config checks, the GPT's shape, init, attention maps and errors (the teaching pieces
against it: test_teaching.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from slm_helpers.errors import SLMError
from slm_helpers.model import GPT, MLP, MLPS, GPTConfig
from slm_helpers.teaching import causal_mask, masked_attention

# float32 attention on the CPU: the explicit and fused paths differ only by rounding, ~1e-7 here.
ATOL = 1e-6


@pytest.mark.parametrize("kwargs, key", [
    (dict(n_embd=30, n_head=4), "divisible"),
    (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(block_size=2.5), "block_size"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(mlp_hidden=-1), "mlp_hidden"),
    (dict(mlp_hidden=96.0), "mlp_hidden"),
    (dict(mlp_hidden=True), "mlp_hidden"),
    (dict(mlp_hidden="96"), "mlp_hidden"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(norm_eps=-1e-5), "norm_eps"),
    (dict(norm_eps="1e-5"), "norm_eps"),
    (dict(norm_eps=float("nan")), "norm_eps"),
])
def test_config_validation(kwargs, key):
    with pytest.raises(SLMError, match=key):
        GPTConfig(**kwargs)


def test_fused_and_explicit_paths_agree_in_a_gpt(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (3, 8))
    fused = model(idx)[0]
    model.set_fused_attention(False)
    assert not any(block.attn.fused for block in model.transformer.h)
    assert torch.allclose(model(idx)[0], fused, atol=ATOL)


def test_weight_tying(tiny_config):
    model = GPT(tiny_config)
    assert model.transformer.wte.weight is model.lm_head.weight
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    with torch.no_grad():
        model.lm_head.weight[3, 5] = 7.0
    assert model.transformer.wte.weight[3, 5].item() == 7.0


@pytest.mark.parametrize("bias", [False, True])
def test_num_params_hand_formula(bias):
    V, T, L, C = 65, 32, 3, 48
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C, bias=bias))
    # per block: c_attn 3C*C, attn c_proj C*C, c_fc 4C*C,
    # mlp c_proj 4C*C = 12 C^2, plus two LayerNorm gains.
    per_block = 12 * C * C + 2 * C
    final_ln = C
    # biases: c_attn 3C, c_proj C, c_fc 4C, c_proj C; LayerNorm biases 2C per block, C at the end
    if bias:
        per_block += 3 * C + C + 4 * C + C + 2 * C
        final_ln += C
    total = V * C + T * C + L * per_block + final_ln  # wte counted once: lm_head shares it
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - T * C


def test_gpt2_scaled_init():
    torch.manual_seed(0)
    L, C = 4, 64
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=L, n_head=4, n_embd=C))
    proj = torch.cat([p.flatten() for n,
                      p in model.named_parameters() if n.endswith("c_proj.weight")])
    other = torch.cat([p.flatten() for n, p in model.named_parameters()
                       if n.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight"))])
    # attention and MLP output projections of every block
    assert proj.numel() == L * (C * C + 4 * C * C)
    # The sample std of n normal draws has relative standard
    # error ~ 1/sqrt(2n): < 0.3% here, so 3% is ~10 SE.
    expected = 0.02 / math.sqrt(2 * L)
    assert proj.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(proj.mean().item()) < 5 * expected / math.sqrt(proj.numel())
    assert other.std().item() == pytest.approx(0.02, rel=0.03)
    for n, p in model.named_parameters():
        if n.endswith("ln_1.weight") or n.endswith("ln_f.weight"):
            assert torch.equal(p, torch.ones_like(p))


def test_forward_shapes_loss_and_context_limit(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, 20, (2, 8))
    targets = torch.randint(0, 20, (2, 8))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 8, 20)
    # Small init: logits have std ~ 0.02 * sqrt(n_embd) ~ 0.08, so on targets unrelated to the input
    # the loss is within a hair of ln(V). (Not targets ==
    # idx: tied weights favour repeating the input token.)
    assert loss.item() == pytest.approx(math.log(20), abs=0.05)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 20), targets.view(-1)))
    assert model(idx[:, :3])[0].shape == (2, 3, 20)
    assert model(idx)[1] is None
    with pytest.raises(SLMError, match="longer than the model's context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_gpt_is_causal(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    idx = torch.randint(0, 20, (1, 8))
    changed = idx.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 20
    a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :5], b[:, :5])  # the future cannot change the past
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_attention_maps(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    idx = torch.randint(0, 20, (3, 6))
    maps = model.attention_maps(idx)
    assert maps.shape == (2, 3, 2, 6, 6)  # (n_layer, B, n_head, T, T)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 3, 2, 6), atol=1e-6)
    assert torch.equal(maps.triu(1), torch.zeros_like(maps))
    # softmax never gives exactly 0 to a visible position
    assert (maps[..., causal_mask(6)] > 0).all()
    # Layer 0's map is the first block's attention of the embedded, normalised input.
    block = model.transformer.h[0]
    x = model.transformer.wte(idx) + model.transformer.wpe(idx)
    assert torch.allclose(maps[0],
                          masked_attention(*block.attn.project(block.ln_1(x)), causal_mask(6))[1],
                          atol=ATOL)


def test_attention_maps_ignore_dropout_in_training_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    assert model.training
    maps = model.attention_maps(torch.randint(0, 20, (1, 8)))
    assert torch.allclose(maps.sum(-1), torch.ones(1, 1, 2, 8), atol=1e-6)


def test_feed_forward_is_per_position():
    torch.manual_seed(0)
    ff = MLP(GPTConfig(n_embd=8, n_head=1)).eval()
    x = torch.randn(2, 5, 8)
    assert torch.allclose(ff(x)[:, 2], ff(x[:, 2:3])[:, 0], atol=ATOL)
    assert ff.c_fc.out_features == 32


# ----- lesson 12: what a released model states instead of the rules (mlp_hidden, norm_eps) -------


@pytest.mark.parametrize("mlp, usual",
                         [("gelu", 4 * 48), ("relu2", 4 * 48), ("swiglu", 8 * 48 // 3)])
def test_mlp_hidden_sets_the_width(mlp, usual):
    idx = torch.randint(0, 10, (2, 4))
    for hidden, width in ((0, usual), (100, 100), (7, 7)):
        torch.manual_seed(0)
        config = GPTConfig(vocab_size=10, block_size=4, n_layer=2, n_head=2, n_embd=48, dropout=0.0,
                           mlp=mlp,
                           mlp_hidden=hidden)
        model = GPT(config).eval()
        for block in model.transformer.h:
            assert block.mlp.c_fc.weight.shape == ((2 if mlp == "swiglu" else 1) * width, 48)
            assert block.mlp.c_proj.weight.shape == (48, width)
        assert model(idx)[0].shape == (2, 4, 10)
    ff = MLPS[mlp](GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=2, n_embd=48,
                             mlp_hidden=100)).eval()
    x = torch.randn(3, 48)
    h = ff.c_fc(x)
    act = (F.silu(h[:, :100]) * h[:, 100:] if mlp == "swiglu"
           else F.gelu(h) if mlp == "gelu" else F.relu(h).square())
    # the gate is the first half of c_fc's rows
    assert torch.allclose(ff(x), ff.c_proj(act), atol=ATOL)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_eps_reaches_every_norm(norm):
    shape = dict(vocab_size=10, block_size=4, n_layer=3, n_head=2, n_embd=16, dropout=0.0,
                 norm=norm)
    model, default = GPT(GPTConfig(**shape, norm_eps=1e-2)), GPT(GPTConfig(**shape))
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))]
    assert len(norms) == 2 * 3 + 1 and all(m.eps == 1e-2 for m in norms)
    # None: RMSNorm's own, the dtype's machine epsilon
    usual = 1e-5 if norm == "layernorm" else None
    assert all(m.eps == usual for m in default.modules()
               if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)))
    x = 0.05 * torch.randn(2, 16)  # small: an epsilon of 1e-2 matters
    ln = model.transformer.ln_f
    with torch.no_grad():
        ln.weight.copy_(torch.randn(16))
    centred = x - x.mean(-1, keepdim=True) if norm == "layernorm" else x
    expected = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-2) * ln.weight
    assert torch.allclose(ln(x), expected, atol=1e-6)


@pytest.mark.parametrize("eps", [True, float("inf")])
def test_norm_eps_must_be_a_finite_number(eps):
    with pytest.raises(SLMError, match="norm_eps"):
        GPTConfig(norm_eps=eps)
