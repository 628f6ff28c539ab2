"""What GPUs and Macs need, checked on the CPU.

- Apple's MPS has no float64: every path a lesson runs on the model's device (training, evaluation,
  every sampling strategy with and without the KV cache, beam search, attention maps, the widget,
  and lesson 12's GGUF loader and chat) runs here under a dispatch mode that fails on any float64
  tensor operation.
- Generation asks the model for the last position's logits only (``only_last``), and gets the same
  tokens as with the logits of every position.
- A vocabulary rounded up to a multiple of 64 (tensor-core shapes) changes no logit, loss or sample:
  the padding rows are never predicted.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from tiny_gguf import write_tiny_llama
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from slm_helpers.bigram import BigramLanguageModel, CountingBigram
from slm_helpers.chat import Chat
from slm_helpers.checkpoint import load_model
from slm_helpers.evaluate import evaluate_text, split_loss
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.pretrained import load_pretrained
from slm_helpers.sampling import beam_search, complete, generate, stream
from slm_helpers.teaching import AttentionLM
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.train import TrainConfig, Trainer
from slm_helpers.widgets import Sampler

# Float64 that is deliberately on the CPU, by the name of the function that makes it: the counting
# bigram's statistics are computed once, on the CPU, before any model exists.
ALLOWED_FLOAT64 = {("slm_helpers.bigram", "__init__")}


class NoFloat64(TorchDispatchMode):
    """Raise on any tensor operation that takes or makes a float64 tensor, except in
    ALLOWED_FLOAT64."""

    def __init__(self, allowed=ALLOWED_FLOAT64):
        super().__init__()
        self.allowed = allowed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = tree_leaves((args, kwargs, out))
        if any((isinstance(t, torch.Tensor) and t.dtype == torch.float64) or t is torch.float64
               for t in leaves):
            if not self._allowed_caller():
                raise AssertionError(f"float64 in {func}: Apple's MPS has no float64")
        return out

    def _allowed_caller(self) -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if (frame.f_globals.get("__name__"), frame.f_code.co_name) in self.allowed:
                return True
            frame = frame.f_back
        return False


TEXT = "Twinkle, twinkle, little star,\nHow I wonder what you are!\n" * 30


@pytest.fixture
def chars():
    return CharTokenizer.from_text(TEXT)


def test_the_guard_catches_float64():
    x = torch.ones(3)
    with pytest.raises(AssertionError, match="float64"), NoFloat64():
        x.double().sum()
    with pytest.raises(AssertionError, match="float64"), NoFloat64():
        torch.zeros(2, dtype=torch.float64)
    with pytest.raises(AssertionError, match="float64"), NoFloat64(allowed=set()):
        CountingBigram.fit(torch.tensor([1, 2, 1, 2]), 3)
    with NoFloat64():  # allowed by name, and float32 is fine
        CountingBigram.fit(torch.tensor([1, 2, 1, 2]), 3)
        (x * 2).sum().item()


def test_every_lesson_path_runs_without_float64(chars, tmp_path):
    ids = torch.tensor(chars.encode(TEXT))
    train, val = ids[:1400], ids[1400:]
    config = GPTConfig(vocab_size=chars.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16,
                       dropout=0.1)
    cfg = TrainConfig(max_iters=6, batch_size=4, eval_interval=3, eval_iters=2, warmup_iters=2,
                      grad_accum=2)
    with NoFloat64():
        torch.manual_seed(0)
        model = GPT(config)
        trainer = Trainer(model, train, val, cfg, tokenizer=chars, out_dir=tmp_path)
        trainer.fit(progress=False)  # training steps, evaluations, checkpoints
        model, tokenizer, _ = load_model(tmp_path / "best.pt")
        evaluate_text(model, tokenizer, TEXT[:300])
        split_loss(model, ids[:200], stride=4)
        prompt = torch.tensor([chars.encode("Twinkle")])
        for use_cache in (True, False):
            for options in ({"temperature": 0}, {"temperature": 0.8}, {"top_k": 3}, {"top_p": 0.9},
                            {"repetition_penalty": 1.3}, {"keep": 8}):
                generate(model, prompt, 20, use_cache=use_cache,
                         generator=torch.Generator().manual_seed(0), **options)
            beam_search(model, prompt, 12, num_beams=3, use_cache=use_cache)
        "".join(stream(model, tokenizer, "How", 20, stop="\n", seed=1))
        complete(model, tokenizer, "How", 10, num_beams=2, stop="!")
        model.attention_maps(prompt)
        sampler = Sampler(model, tokenizer, prompt="Twin", max_new_tokens=8)
        for control, value in ((sampler.temperature, 0.5), (sampler.top_k, 4), (sampler.top_p, 0.8),
                               (sampler.repetition_penalty, 1.2), (sampler.num_beams, 2)):
            control.value = value  # each redraws the chart
        sampler.button.click()
        sampler.prompt.value = "How I"
        # The small models of lessons 2-4 sample through the same code.
        for small in (BigramLanguageModel(chars.vocab_size),
                      AttentionLM(chars.vocab_size, 16, 16, n_head=2)):
            complete(small, tokenizer, "How", 10, seed=0)
            evaluate_text(small, tokenizer, TEXT[:100])
    assert sampler.text.startswith("How I") or sampler.text.startswith("Twin")


def test_the_gguf_loader_and_a_chat_run_without_float64(tmp_path):
    context = {"llama.context_length": ("add_uint32", 256)}
    path = write_tiny_llama(tmp_path / "tiny.gguf", tied=False, metadata=context).path
    with NoFloat64():
        # dequantizing every tensor type, the rotary tables
        model, tokenizer = load_pretrained(path)
        chat = Chat(model, tokenizer, temperature=0, max_new_tokens=6)
        "".join(chat.send("Hello"))
        for options in ({"temperature": 0.8, "top_k": 20}, {"temperature": 1.0, "top_p": 0.9},
                        {"temperature": 0.7, "top_k": 40, "top_p": 0.95,
                         "repetition_penalty": 1.3}):
            sampled = Chat(model, tokenizer, max_new_tokens=6, **options)
            "".join(sampled.send("Hello", seed=0))
            "".join(sampled.send("And then?", seed=1))
    assert len(chat.history) == 2 and len(sampled.history) == 4


# ---------------------------------------------------------------- the last position's logits only

@pytest.mark.parametrize("make", [
    lambda v: GPT(GPTConfig(vocab_size=v, block_size=16, n_layer=2, n_head=2, n_embd=16,
                            dropout=0.0)),
    lambda v: AttentionLM(v, 16, 16, n_head=2, feed_forward=True),
    lambda v: BigramLanguageModel(v),
], ids=["GPT", "AttentionLM", "bigram"])
def test_only_last_gives_the_last_row_of_the_full_logits(make):
    torch.manual_seed(0)
    model = make(20).eval()
    idx = torch.randint(0, 20, (3, 9))
    full, _ = model(idx)
    last, loss = model(idx, only_last=True)
    assert last.shape == (3, 1, 20) and loss is None
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="only_last"):
        model(idx, idx, only_last=True)


def reference_greedy(model, idx, n):
    """Greedy decoding written out with the logits of every position: the crop, the full forward."""
    for _ in range(n):
        logits = model(idx[:, -model.block_size:])[0][:, -1]
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx


def test_generation_with_last_logits_only_gives_the_same_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=12, n_layer=2, n_head=2, n_embd=24,
                          dropout=0.0)).eval()
    prompt = torch.randint(0, 30, (2, 5))
    expected = reference_greedy(model, prompt, 25)  # past the context: the plain crop
    for use_cache in (True, False):
        assert torch.equal(generate(model, prompt, 25, temperature=0, use_cache=use_cache),
                           expected)
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(out[0].shape[1]))
    generate(model, torch.randint(0, 30, (1, 10)), 3, temperature=0)
    assert calls == [1, 1, 1]  # the prefill of 10 tokens too returns one position of logits


# ----------------------------------------------------------------
# a vocabulary padded to a multiple of 64

def padded_and_plain(vocab_size=65):
    """Two GPTs computing the same function: one with the vocabulary rounded up to 128 rows, whose
    extra rows are made large enough to win every argmax if they were ever predicted."""
    shape = dict(vocab_size=vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    torch.manual_seed(0)
    padded = GPT(GPTConfig(**shape, vocab_multiple=64)).eval()
    plain = GPT(GPTConfig(**shape)).eval()
    with torch.no_grad():
        padded.lm_head.weight[vocab_size:] = 100.0
        state = {k: (v[:vocab_size] if v.shape[0] == padded.config.padded_vocab_size else v)
                 for k, v in padded.state_dict().items()}
    plain.load_state_dict(state)
    return padded, plain


def test_padded_vocabulary_changes_no_logit_loss_or_sample():
    padded, plain = padded_and_plain()
    assert padded.config.padded_vocab_size == 128 and padded.lm_head.weight.shape == (128, 16)
    assert GPTConfig(vocab_size=50257, vocab_multiple=64).padded_vocab_size == 50304
    idx = torch.randint(0, 65, (2, 16))
    (a, loss_a), (b, loss_b) = padded(idx, idx), plain(idx, idx)
    assert a.shape == b.shape == (2, 16, 65)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(loss_a, F.cross_entropy(b.flatten(0, 1), idx.flatten()))
    ids = torch.randint(0, 65, (300,))
    assert split_loss(padded, ids) == pytest.approx(split_loss(plain, ids), rel=1e-6)
    prompt = idx[:1, :4]
    for options in ({"temperature": 0}, {"temperature": 1.0}, {"top_p": 0.9}):
        out = generate(padded, prompt, 30, generator=torch.Generator().manual_seed(1), **options)
        assert torch.equal(out,
                           generate(plain, prompt, 30, generator=torch.Generator().manual_seed(1),
                                    **options))
        assert out.max() < 65
    assert torch.equal(beam_search(padded, prompt, 10, num_beams=3)[0],
                       beam_search(plain, prompt, 10, num_beams=3)[0])


def test_checkpoints_from_before_vocab_multiple_still_resume(chars, tmp_path):
    ids = torch.tensor(chars.encode(TEXT))
    config = GPTConfig(vocab_size=chars.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8,
                       dropout=0.0)
    cfg = TrainConfig(max_iters=4, batch_size=2, eval_interval=2, eval_iters=1, warmup_iters=1)
    trainer = Trainer(GPT(config), ids[:1400], ids[1400:], cfg, tokenizer=chars, out_dir=tmp_path)
    trainer.fit(max_iters=2, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["model_config"]["vocab_multiple"]  # as written before the field existed
    resumed = Trainer(GPT(config), ids[:1400], ids[1400:], cfg, tokenizer=chars)
    resumed.load_state_dict(state)
    assert resumed.step == 2
