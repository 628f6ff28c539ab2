"""teaching.py: one head, heads side by side and the small attention language model of lessons 3-4,
each equal to the definition it teaches and to the GPT's fused attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from slm_helpers.model import MLP, CausalSelfAttention, GPTConfig
from slm_helpers.teaching import (
    AttentionLM,
    Head,
    MultiHeadAttention,
    causal_mask,
    load_heads,
    masked_attention,
)

# float32 attention on the CPU: the explicit and fused paths differ only by rounding, ~1e-7 here.
ATOL = 1e-6


def _reference_head(x, wq, wk, wv):
    """One causal head written as loops over positions: the definition, nothing fused or masked."""
    B, T, _ = x.shape
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    out = torch.zeros(B, T, v.size(-1), dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            scores = torch.stack([q[b, t] @ k[b, s] for s in range(t + 1)]) / math.sqrt(k.size(-1))
            weights = torch.softmax(scores, dim=0)
            out[b, t] = sum(weights[s] * v[b, s] for s in range(t + 1))
    return out


def test_head_matches_the_loop_definition():
    torch.manual_seed(0)
    head = Head(n_embd=8, head_size=4, block_size=6).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    expected = _reference_head(x, head.query.weight, head.key.weight, head.value.weight)
    out, weights = head(x, return_weights=True)
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))


def test_masked_attention_with_equal_keys_averages_the_past():
    # Identical keys give identical scores: each position averages the values of positions 0..t.
    T = 4
    q, k = torch.randn(1, T, 3), torch.ones(1, T, 3)
    v = torch.arange(T, dtype=torch.float32).view(1, T, 1)
    out, weights = masked_attention(q, k, v, causal_mask(T))
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.5, 1.0, 1.5]))
    assert torch.allclose(weights[0, 2], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))


@pytest.mark.parametrize("B, T, C, H, block",
                         [(1, 1, 8, 1, 4), (2, 5, 16, 4, 8), (3, 16, 32, 2, 16), (2, 7, 12, 3, 9)])
def test_multi_head_attention_equals_causal_self_attention(B, T, C, H, block):
    torch.manual_seed(B * 100 + T)
    mha = MultiHeadAttention(C, H, block, dropout=0.0).eval()
    csa = CausalSelfAttention(GPTConfig(vocab_size=2, block_size=block, n_layer=1, n_head=H,
                                        n_embd=C,
                                        dropout=0.0)).eval()
    load_heads(csa, mha)
    x = torch.randn(B, T, C)
    expected = mha(x)
    assert csa.fused
    assert torch.allclose(csa(x), expected, atol=ATOL)  # fused scaled_dot_product_attention
    csa.fused = False
    assert torch.allclose(csa(x), expected, atol=ATOL)  # the explicit path
    weights = csa.weights(x)
    assert weights.shape == (B, H, T, T)
    for h, head in enumerate(mha.heads):  # head h of the fused module is teaching head h
        assert torch.allclose(weights[:, h], head(x, return_weights=True)[1], atol=ATOL)


def test_load_heads_with_bias():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, 8, dropout=0.0, bias=True).eval()
    csa = CausalSelfAttention(GPTConfig(vocab_size=2, block_size=8, n_layer=1, n_head=4, n_embd=16,
                                        dropout=0.0, bias=True)).eval()
    load_heads(csa, mha)
    x = torch.randn(2, 8, 16)
    assert torch.allclose(csa(x), mha(x), atol=ATOL)


@pytest.mark.parametrize("n_head, feed_forward", [(1, False), (4, True)])
def test_attention_lm(n_head, feed_forward):
    torch.manual_seed(0)
    model = AttentionLM(vocab_size=11, n_embd=16, block_size=8, n_head=n_head,
                        feed_forward=feed_forward).eval()
    assert model.block_size == 8
    assert isinstance(model.attention, Head if n_head == 1 else MultiHeadAttention)
    assert isinstance(model.feed_forward, MLP if feed_forward else torch.nn.Identity)
    idx = torch.randint(0, 11, (2, 8))
    targets = torch.randint(0, 11, (2, 8))
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 8, 11)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    assert torch.allclose(model(changed)[0][:, :-1], logits[:, :-1], atol=ATOL)  # causal
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
