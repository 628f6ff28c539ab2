"""Bigram models: counts, probabilities, NLL, and the counting == neural equivalence of lesson 2."""

import math
from pathlib import Path

import pytest
import torch

from slm_helpers.bigram import BigramLanguageModel, CountingBigram
from slm_helpers.errors import SLMError
from slm_helpers.tokenizers import CharTokenizer

SHAKESPEARE = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"


def test_counts_equal_a_python_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (500,), generator=g)
    expected = [[0] * 7 for _ in range(7)]
    for a, b in zip(ids.tolist(), ids.tolist()[1:]):
        expected[a][b] += 1
    model = CountingBigram.fit(ids, 7)
    assert model.counts.tolist() == expected
    assert model.vocab_size == 7 and model.counts.sum() == 499


def test_probs_rows_sum_to_one():
    ids = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(1))
    for smoothing in (1.0, 0.1):
        probs = CountingBigram.fit(ids, 11, smoothing).probs
        assert torch.allclose(probs.sum(1), torch.ones(11), atol=1e-6)
        assert (probs > 0).all()  # smoothing: no pair is impossible


def test_nll_hand_computation():
    # ids 0 0 0 1, vocabulary of 2, add-one smoothing: after
    # 0 come (0, 0, 1) -> counts [2, 1] -> [3, 2] / 5.
    model = CountingBigram.fit(torch.tensor([0, 0, 0, 1]), 2, smoothing=1.0)
    assert model.counts.tolist() == [[2, 1], [0, 0]]
    assert torch.allclose(model.probs, torch.tensor([[0.6, 0.4], [0.5, 0.5]]))
    expected = -(2 * math.log(0.6) + math.log(0.4)) / 3
    assert model.nll(torch.tensor([0, 0, 0, 1])) == pytest.approx(expected, abs=1e-6)
    # On other text: 1 -> 0 has probability 0.5, 0 -> 1 has 0.4.
    assert model.nll(torch.tensor([1, 0, 1])) == pytest.approx(-(math.log(0.5) + math.log(0.4)) / 2,
                                                               abs=1e-6)


def test_generate_follows_a_deterministic_chain():
    # 0 -> 1 -> 2 -> 0 always
    model = CountingBigram.fit(torch.tensor([0, 1, 2] * 5 + [0]), 3, smoothing=0.0)
    assert model.generate(1, 7) == [1, 2, 0, 1, 2, 0, 1, 2]


def test_generate_is_repeatable_with_a_seed():
    model = CountingBigram.fit(torch.randint(0, 5, (200,),
                                             generator=torch.Generator().manual_seed(2)), 5)
    a = model.generate(0, 50, torch.Generator().manual_seed(3))
    b = model.generate(0, 50, torch.Generator().manual_seed(3))
    assert a == b and len(a) == 51 and all(0 <= i < 5 for i in a)


def test_fit_needs_two_tokens():
    with pytest.raises(SLMError, match="two tokens"):
        CountingBigram.fit(torch.tensor([3]), 5)


def test_neural_bigram_with_log_count_table_has_the_same_nll():
    """The lesson's point: a table of logits equal to log P(next | current) IS the counting
    model."""
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text))
    counting = CountingBigram.fit(ids, tok.vocab_size)
    neural = BigramLanguageModel(tok.vocab_size)
    with torch.no_grad():
        neural.logits_table.weight.copy_(counting.probs.log())
    logits, loss = neural(ids[None, :-1], ids[None, 1:])
    assert logits.shape == (1, len(ids) - 1, tok.vocab_size)
    assert loss.item() == pytest.approx(counting.nll(ids), abs=1e-5)
    assert loss.item() < math.log(tok.vocab_size)  # better than guessing uniformly


def test_neural_bigram_trains_towards_the_counting_nll():
    ids = torch.randint(0, 6, (2000,), generator=torch.Generator().manual_seed(4))
    ids = torch.where(ids < 3, ids, (torch.roll(ids, 1) + 1) % 6)  # some structure to learn
    target = CountingBigram.fit(ids, 6, smoothing=0.01).nll(ids)
    torch.manual_seed(0)
    model = BigramLanguageModel(6)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    x, y = ids[None, :-1], ids[None, 1:]
    for _ in range(100):
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Full-batch training converges to the maximum-likelihood
    # table, which the counts give in closed form.
    assert model(x, y)[1].item() == pytest.approx(target, abs=0.005)
    assert model(x)[1] is None
