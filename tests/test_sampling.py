"""sampling.py: next-token distributions against hand computations, repeatable generation, option
errors."""

import math

import pytest
import torch
import torch.nn as nn

from slm_helpers.errors import SLMError
from slm_helpers.model import GPT
from slm_helpers.sampling import SamplingOptions, check_length, complete, generate, next_token_probs
from slm_helpers.tokenizers import CharTokenizer


def _softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


LOGITS = [1.0, 4.0, 3.0, 2.0]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0, 10.0])
def test_temperature_scales_the_logits(temperature):
    probs = next_token_probs(torch.tensor([LOGITS]), temperature=temperature)
    expected = _softmax([x / temperature for x in LOGITS])
    assert torch.allclose(probs, torch.tensor([expected]), atol=1e-6)


def test_lower_temperature_sharpens():
    sharp = next_token_probs(torch.tensor([LOGITS]), temperature=0.5)[0, 1]
    flat = next_token_probs(torch.tensor([LOGITS]), temperature=2.0)[0, 1]
    assert sharp > _softmax(LOGITS)[1] > flat


def test_temperature_zero_is_greedy():
    logits = torch.tensor([LOGITS, [0.5, -1.0, 0.0, 0.7]])
    probs = next_token_probs(logits, temperature=0)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))


def test_top_k_keeps_exactly_k():
    probs = next_token_probs(torch.tensor([LOGITS]), top_k=2)
    e4, e3 = math.exp(4), math.exp(3)  # the two largest logits, renormalised between themselves
    assert torch.allclose(probs, torch.tensor([[0.0, e4 / (e4 + e3), e3 / (e4 + e3), 0.0]]),
                          atol=1e-6)
    for k in (1, 2, 3, 4):
        assert (next_token_probs(torch.tensor([LOGITS]), top_k=k) > 0).sum() == k
    assert torch.equal(next_token_probs(torch.tensor([LOGITS]), top_k=1),
                       torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_top_k_beyond_the_vocabulary_keeps_everything():
    assert torch.allclose(next_token_probs(torch.tensor([LOGITS]), top_k=100),
                          torch.tensor([_softmax(LOGITS)]), atol=1e-6)


def test_top_k_with_temperature():
    probs = next_token_probs(torch.tensor([LOGITS]), top_k=3, temperature=0.5)
    expected = _softmax([4 / 0.5, 3 / 0.5, 2 / 0.5])
    assert torch.allclose(probs, torch.tensor([[0.0] + expected]), atol=1e-6)


@pytest.mark.parametrize("top_p, expected", [
    (0.8, [0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]),  # 0.5 < 0.8, 0.5 + 0.3 reaches 0.8: the first two
    (0.81, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),  # 0.8 falls short: a third token is needed
    (0.5, [1.0, 0.0, 0.0, 0.0]),  # the most likely token alone already has 0.5
    (0.05, [1.0, 0.0, 0.0, 0.0]),  # always at least one token
    (1.0, [0.5, 0.3, 0.15, 0.05]),  # no cut
])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, expected):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = next_token_probs(probs.log(), top_p=top_p)
    assert torch.allclose(out, torch.tensor([expected]), atol=1e-6)


def test_top_p_in_any_order_and_per_row():
    logits = torch.tensor([[0.15, 0.05, 0.3, 0.5], [0.25, 0.25, 0.25, 0.25]]).log()
    out = next_token_probs(logits, top_p=0.8)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.0, 0.3 / 0.8, 0.5 / 0.8]), atol=1e-6)
    # A flat row: 0.25, 0.5, 0.75 before the fourth token reaches 0.8 at the fourth: all four kept.
    assert torch.allclose(out[1], torch.full((4,), 0.25), atol=1e-6)


@pytest.mark.parametrize("options, match", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_option_errors(options, match):
    with pytest.raises(SLMError, match=match):
        if "max_new_tokens" in options:
            check_length(options["max_new_tokens"])
        else:
            SamplingOptions(**options)
    if "max_new_tokens" not in options:
        with pytest.raises(SLMError, match=match):
            next_token_probs(torch.tensor([LOGITS]), **options)


class NextLetter(nn.Module):
    """A stub model: after token i the logits strongly favour i + 1 (mod V). Records what it was
    fed."""

    block_size = 4

    def __init__(self, vocab_size=5):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen_lengths = []

    def forward(self, idx, targets=None, *, only_last=False):
        self.seen_lengths.append(idx.size(1))
        logits = 5.0 * nn.functional.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()
        return logits[:, -1:] if only_last else logits, None


def test_greedy_generation_follows_the_argmax_and_crops_the_context():
    model = NextLetter().train()
    out = generate(model, torch.tensor([[0, 1, 2, 3, 4, 0]]), 7, temperature=0)
    assert out.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2]]
    assert model.seen_lengths == [4] * 7  # a prompt longer than block_size is cropped from the left
    assert model.training  # the mode is restored


def test_generate_is_repeatable_with_a_seeded_generator(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = generate(model, prompt, 20, generator=torch.Generator().manual_seed(5))
    b = generate(model, prompt, 20, generator=torch.Generator().manual_seed(5))
    c = generate(model, prompt, 20, generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 23) and torch.equal(a[:, :3], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert generate(model, prompt, 0).shape == (2, 3)


def test_top_k_one_sampling_equals_greedy(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    prompt = torch.tensor([[1, 2, 3]])
    greedy = generate(model, prompt, 10, temperature=0)
    assert torch.equal(generate(model, prompt, 10, top_k=1,
                                generator=torch.Generator().manual_seed(9)), greedy)


def test_complete_returns_text():
    tok = CharTokenizer.from_text("\nabcd")  # ids: "\n" 0, a 1, b 2, c 3, d 4
    model = NextLetter(vocab_size=5)
    assert complete(model, tok, "ab", 4, temperature=0) == "abcd\na"
    # starts after a line break, not shown
    assert complete(model, tok, "", 3, temperature=0) == "abc"
    assert complete(model, tok, "ab", 6, seed=1) == complete(model, tok, "ab", 6, seed=1)
    with pytest.raises(SLMError, match="'z'"):
        complete(model, tok, "az", 3)
