"""Loss over a whole split, perplexity and bits per byte, against values worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from slm_helpers.bigram import BigramLanguageModel, CountingBigram
from slm_helpers.data import IGNORE_INDEX, ChatExamples
from slm_helpers.errors import SLMError
from slm_helpers.evaluate import Evaluation, _windows, estimate_loss, evaluate_text, split_loss
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.tokenizers import BPETokenizer, CharTokenizer


class Uniform(torch.nn.Module):
    """Every token equally likely: loss ln(V), perplexity V."""

    block_size = 4

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab_size) + self.anchor, None


def test_uniform_model_has_loss_ln_v_and_perplexity_v():
    tokenizer = CharTokenizer(list("abcdefgh"))
    result = evaluate_text(Uniform(8), tokenizer, "abcabcabhgfedcba")
    assert result.loss == pytest.approx(math.log(8))
    assert result.perplexity == pytest.approx(8)
    assert result.bits_per_token == pytest.approx(3)
    assert (result.tokens, result.bytes) == (15, 15)  # the first character is not scored
    assert result.bits_per_byte == pytest.approx(3)  # one byte per character


def test_bits_per_byte_counts_bytes_not_tokens():
    text = "the cat sat on the mat; the cat sat on the hat. " * 3
    tokenizer = BPETokenizer.train(text, 256 + 10, special_tokens=())
    ids = tokenizer.encode(text)
    result = evaluate_text(Uniform(tokenizer.vocab_size), tokenizer, text)
    n_bytes = len(text) - len(tokenizer.decode(ids[:1]))
    assert len(ids) < len(text) and (result.tokens, result.bytes) == (len(ids) - 1, n_bytes)
    # the bits of every scored token, spread over the bytes they stand for
    assert result.bits_per_byte == pytest.approx((len(ids) - 1) * math.log2(tokenizer.vocab_size)
                                                 / n_bytes)


def test_evaluation_numbers():
    e = Evaluation(loss=math.log(4), tokens=10, bytes=20)
    assert e.perplexity == pytest.approx(4) and e.bits_per_token == pytest.approx(2)
    assert e.tokens_per_byte == 0.5 and e.bits_per_byte == pytest.approx(1)
    assert set(e.as_dict()) == {"loss", "perplexity", "bits per token", "tokens per byte",
                                "bits per byte"}


@pytest.mark.parametrize("n, block, stride",
                         [(2, 4, 4), (10, 4, 4), (11, 4, 2), (30, 8, 3), (9, 8, 1)])
def test_windows_score_every_target_once(n, block, stride):
    scored = []
    for begin, end, new in _windows(n, block, stride):
        assert 0 < end - begin <= block and 0 < new <= end - begin
        scored += range(end - new + 1, end + 1)  # positions of the targets this window scores
    assert scored == list(range(1, n))


def test_bigram_loss_does_not_depend_on_windows():
    torch.manual_seed(0)
    model = BigramLanguageModel(6)
    ids = torch.randint(0, 6, (101,))
    exact = F.cross_entropy(model.logits_table(ids[:-1]), ids[1:]).item()
    for block_size, stride in ((1, 1), (7, 7), (7, 3), (64, 64)):
        loss, tokens = split_loss(model, ids, block_size=block_size, stride=stride, batch_size=5)
        assert tokens == 100 and loss == pytest.approx(exact, abs=1e-6)


def test_counting_bigram_as_a_module_matches_its_nll():
    ids = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(0))
    counting = CountingBigram.fit(ids, 5)
    model = BigramLanguageModel(5)
    with torch.no_grad():
        model.logits_table.weight.copy_(counting.probs.log())
    assert split_loss(model, ids, block_size=32)[0] == pytest.approx(counting.nll(ids), abs=1e-5)


def test_gpt_loss_matches_side_by_side_windows(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config).train()
    ids = torch.randint(0, 20, (8 * 5 + 1,))  # exactly five windows of block_size 8
    loss, tokens = split_loss(model, ids, batch_size=2)
    x, y = ids[:-1].view(5, 8), ids[1:].view(5, 8)
    model.eval()
    assert tokens == 40 and loss == pytest.approx(model(x, y)[1].item(), abs=1e-5)
    model.train()
    split_loss(model, ids)
    assert model.training  # restored
    longer_context, _ = split_loss(model, ids, stride=2)  # runs, and still scores 40 tokens
    assert split_loss(model, ids, stride=2)[1] == 40 and math.isfinite(longer_context)


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_strided_loss_gives_each_target_the_promised_context(tiny_config, stride):
    """Against a brute-force loop, one forward pass per target: windows start every ``stride``
    tokens and a target is scored by the first window that holds it, so target t (at position t of
    the text) sees the tokens from that window's start, k * stride with k the smallest such that
    k * stride + block_size >= t. With stride 1 that is the last block_size tokens before it."""
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    block = tiny_config.block_size
    ids = torch.randint(0, 20, (30,), generator=torch.Generator().manual_seed(1))
    nll = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = max(0, math.ceil((t - block) / stride)) * stride
            # the context the docstring promises
            assert t - begin >= (block - stride + 1 if t > block else t)
            logits = model(ids[None, begin:t])[0][0, -1]
            nll.append(F.cross_entropy(logits, ids[t]).item())
    loss, tokens = split_loss(model, ids, stride=stride, batch_size=4)
    assert tokens == len(ids) - 1
    assert loss == pytest.approx(sum(nll) / len(nll), abs=1e-5)


def test_bad_input_is_a_clear_error(tiny_config):
    model = GPT(tiny_config)
    with pytest.raises(SLMError, match="stride must be between 1 and block_size"):
        split_loss(model, torch.arange(10), stride=9)
    with pytest.raises(SLMError, match="at least two tokens"):
        split_loss(model, [3])


def test_bytes_of_a_first_token_that_splits_a_character():
    """GPT-2's byte-level BPE can start a text with part of a character: "☃" is three bytes, and the
    first token here holds two of them. Its bytes count, not the replacement character's."""
    from slm_helpers.tokenizers import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    text = "\u2603\u2603 and more"  # two snowmen
    ids = tokenizer.encode(text)
    first = tokenizer.decode_bytes(ids[:1])
    # two of the snowman's three bytes
    assert len(first) == 2 and "\ufffd" in tokenizer.decode(ids[:1])
    result = evaluate_text(Uniform(tokenizer.vocab_size), tokenizer, text)
    assert result.bytes == len(text.encode("utf-8")) - len(first)


# ----------------------------------------------------------------
# estimate_loss: the trainer's quick measure

def test_estimate_loss_is_repeatable_and_leaves_no_trace(poem_text):
    tok = CharTokenizer.from_text(poem_text)
    data = torch.tensor(tok.encode(poem_text))
    train, val = data[:400], data[400:]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16,
                          dropout=0.1))
    rng_before = torch.get_rng_state()
    a = estimate_loss(model, {"train": train, "val": val}, batch_size=4, block_size=8, eval_iters=3,
                      seed=5)
    b = estimate_loss(model, {"train": train, "val": val}, batch_size=4, block_size=8, eval_iters=3,
                      seed=5)
    assert a == b and set(a) == {"train", "val"}
    # measuring does not change what training draws
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training  # mode restored


def test_estimate_loss_of_chat_examples_counts_only_the_replies():
    """Targets at prompt positions are IGNORE_INDEX: changing a prompt's last token changes what the
    model reads but not which tokens are scored, and a reply made of the prompt token scores like
    it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    source = ChatExamples([([1, 2, 3], [4, 5])], seq_len=8)
    x, y = source.batch(torch.tensor([0]))
    assert (y != IGNORE_INDEX).sum() == 2
    logits = model(x)[0]
    expected = F.cross_entropy(logits[0, 2:4], torch.tensor([4, 5]))
    loss = estimate_loss(model, {"val": source}, batch_size=1, block_size=8, eval_iters=1)["val"]
    assert loss == pytest.approx(expected.item(), rel=1e-6)
