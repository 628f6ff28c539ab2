"""The interactive sampler and chat panels without a browser: set the controls, click, read the
output area.

These run on ipywidgets 7.7 (Google Colab's) and 8.x alike.
"""

import contextlib

import pytest
import torch

from slm_helpers.chat import Chat
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.sampling import SamplingOptions, complete
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.widgets import (
    ChatWidget,
    Sampler,
    next_token_distribution,
    plot_next_token_distribution,
    token_label,
)

PNG = b"\x89PNG"


@pytest.fixture
def sampler(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    # 20 characters, as the tiny model's vocabulary
    tokenizer = CharTokenizer(list("abcdefghij klmnopq\n!"))
    return Sampler(model, tokenizer, prompt="abc", max_new_tokens=12)


def text_of(output):
    return "".join(o["text"] for o in output.outputs)


def test_the_chart_is_drawn_at_once(sampler):
    assert bytes(sampler.chart.value).startswith(PNG)
    tokens = sampler.top_tokens()
    assert len(tokens) == 20 and sum(p for _, p in tokens) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p in tokens] == sorted((p for _, p in tokens), reverse=True)


def test_the_chart_follows_the_sliders(sampler):
    before = sampler.chart.value
    sampler.temperature.value = 0.0  # greedy: all the mass on one token
    assert sampler.chart.value != before
    assert sampler.top_tokens(2)[0][1] == 1.0 and sampler.top_tokens(2)[1][1] == 0.0
    sampler.temperature.value = 1.0
    sampler.top_k.value = 3
    assert sum(p > 0 for _, p in sampler.top_tokens()) == 3
    sampler.top_k.value = 0  # off
    sampler.top_p.value = 0.3
    kept = [p for _, p in sampler.top_tokens() if p > 0]
    assert 1 <= len(kept) < 20 and sum(kept) == pytest.approx(1.0, abs=1e-5)
    # the chart shows what the sampler would draw from
    own, probs = next_token_distribution(sampler.model, sampler.tokenizer, "abc", top_p=0.3)
    assert torch.allclose(probs, sampler.sampler)


def test_generate_writes_the_prompt_and_its_continuation(sampler):
    sampler.seed.value = 7
    sampler.button.click()
    first = text_of(sampler.output)
    assert first.startswith("abc") and len(first) == 3 + 12
    assert first == sampler.text
    assert first == complete(sampler.model, sampler.tokenizer, "abc", 12, seed=7, temperature=0.8)
    sampler.button.click()
    assert text_of(sampler.output) == first  # same seed, same text


def test_every_control_reaches_the_sampler(sampler):
    sampler.prompt.value = "hi"
    sampler.temperature.value = 0.0
    sampler.repetition_penalty.value = 1.5
    sampler.length.value = 5
    sampler.button.click()
    assert text_of(sampler.output) == complete(sampler.model, sampler.tokenizer, "hi", 5,
                                               temperature=0,
                                               repetition_penalty=1.5)
    sampler.temperature.value = 1.0
    sampler.num_beams.value = 3
    sampler.button.click()
    assert text_of(sampler.output) == complete(sampler.model, sampler.tokenizer, "hi", 5,
                                               num_beams=3,
                                               repetition_penalty=1.5)
    sampler.num_beams.value = 1
    sampler.seed.value = -1  # random: still runs


def test_the_default_seed_is_new_at_every_click_and_shown(sampler):
    assert sampler.seed.value == -1
    texts, seeds = set(), set()
    for _ in range(4):
        sampler.button.click()
        seed = int(sampler.seed_used.value.removeprefix("seed used: "))
        assert sampler.text == complete(sampler.model, sampler.tokenizer, "abc", 12, seed=seed,
                                        temperature=0.8)
        texts.add(sampler.text)
        seeds.add(seed)
    assert len(seeds) == 4 and len(texts) > 1  # a fresh sample per click, each one reproducible


def test_beam_search_greys_out_and_ignores_the_sampling_sliders(sampler):
    sampler.temperature.value, sampler.top_k.value, sampler.top_p.value = 0.3, 2, 0.5
    sampler.num_beams.value = 3
    assert sampler.temperature.disabled and sampler.top_k.disabled and sampler.top_p.disabled
    assert not sampler.repetition_penalty.disabled
    # The chart shows what beam search scores with: the model's own distribution.
    assert torch.allclose(sampler.sampler, sampler.own, atol=1e-6)
    sampler.button.click()
    assert sampler.text == complete(sampler.model, sampler.tokenizer, "abc", 12, num_beams=3)
    sampler.num_beams.value = 1
    assert not sampler.temperature.disabled


def test_bad_prompt_shows_one_line_error_instead_of_raising(sampler):
    sampler.prompt.value = "abc?"  # "?" is not in the vocabulary
    error = text_of(sampler.output)
    assert (error.startswith("error: ") and "not in the vocabulary" in error
            and error.count("\n") == 1)
    assert bytes(sampler.chart.value) == b""
    sampler.button.click()  # does not raise either
    assert text_of(sampler.output) == error
    sampler.prompt.value = "abc"  # fixed: the error goes, the chart comes back
    assert sampler.output.outputs == () and bytes(sampler.chart.value).startswith(PNG)


def test_static_picture_helpers(sampler):
    own, probs = next_token_distribution(sampler.model, sampler.tokenizer, "abc", temperature=0.5,
                                         top_k=5)
    ax = plot_next_token_distribution(own, probs, sampler.tokenizer, top=8)
    assert len(ax.get_xticklabels()) == 8
    assert token_label(sampler.tokenizer, sampler.tokenizer.encode(" ")[0]) == "\u2423"
    assert token_label(sampler.tokenizer, sampler.tokenizer.encode("\n")[0]) == "\u21b5"


def displayed(panel, monkeypatch) -> dict:
    """What ``panel`` sends to the notebook when displayed: one raw mime bundle of its widget."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data,
                        raw=False: shown.append((data, raw)))
    panel._ipython_display_()
    (data, raw), = shown
    assert raw and data["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.ui.model_id
    return data


def test_display_sends_the_panel(sampler, monkeypatch):
    assert displayed(sampler, monkeypatch)["text/plain"].startswith("Sampler panel")


# ---------------------------------------------------------------- lesson 12's chat panel

CHAT_SYSTEM = "Be kind."
CHAT_TEMPLATE = (  # SmolLM2's ChatML template, with a short default system line
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + CHAT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% "
    "endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chat_model():
    """A tiny random GPT and a byte-level BPE tokenizer with ChatML's special tokens and a chat
    template."""
    from slm_helpers.tokenizers import BPETokenizer

    text = ("Twinkle, twinkle, little star,\nHow I wonder what you are!\n"
            "Up above the world so high,\n") * 5
    tokenizer = BPETokenizer.train(text, 256 + 20 + 3,
                                   special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2,
                          n_embd=16,
                          dropout=0.0))
    return model, tokenizer


def greedy_reply(chat_model, *messages, max_new_tokens, system=None, **settings):
    """What Chat answers to the last of ``messages`` after the others, greedily."""
    chat = Chat(*chat_model, system=system, temperature=0, max_new_tokens=max_new_tokens,
                **settings)
    for message in messages:
        reply = "".join(chat.send(message))
    return reply


def make_panel(chat_model, **kwargs):
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_new_tokens", 12)
    return ChatWidget(*chat_model, **kwargs)


class Hook:
    """A forward pre-hook on the model: ``action`` runs at its ``at``-th forward pass (in the reply
    thread)."""

    def __init__(self, model, at, action):
        self.calls, self.at, self.action = 0, at, action
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.calls == self.at:
            self.action()

    def remove(self):
        self.handle.remove()


def test_chat_panel_shows_each_reply_and_keeps_the_history(chat_model):
    panel = make_panel(chat_model)
    assert panel.temperature.value == 0 and panel.length.value == 12 and panel.stop_button.disabled
    panel.message.value = "Hi there"
    panel.send_button.click()
    panel.reply_thread.join()
    first = greedy_reply(chat_model, "Hi there", max_new_tokens=12)
    assert len(first) >= 5  # a reply to compare, not an empty one
    assert panel.history == [{"role": "user", "content": "Hi there"},
                             {"role": "assistant", "content": first}]
    assert panel.transcript() == f"You: Hi there\nAssistant: {first}"
    assert panel.message.value == "" and not panel.busy and panel.error is None
    assert (not panel.send_button.disabled and panel.stop_button.disabled
            and panel.status.value == "")
    # The second message is answered with the first exchange in the chat.
    second = panel.send("How are you?", wait=True)
    assert second == greedy_reply(chat_model, "Hi there", "How are you?", max_new_tokens=12)
    assert panel.transcript() == (f"You: Hi there\nAssistant: {first}\n"
                                  f"You: How are you?\nAssistant: {second}")
    assert len(panel.history) == 4


def test_chat_panel_turns_are_distinguishable_and_escaped(chat_model):
    panel = make_panel(chat_model, system="Say <b>hi</b>.")
    panel.send("a < b & c", wait=True)
    system, user, assistant = panel.output.outputs
    assert system["data"]["text/plain"] == "System: Say <b>hi</b>."
    assert "Say &lt;b&gt;hi&lt;/b&gt;." in system["data"]["text/html"]
    assert "You:" in user["data"]["text/html"] and "a &lt; b &amp; c" in user["data"]["text/html"]
    assert "Assistant:" in assistant["data"]["text/html"]
    assert len({turn["data"]["text/html"].split("<b ")[1].split(">")[0]
                for turn in (system, user, assistant)}) == 3


def test_every_slider_reaches_the_chat(chat_model):
    panel = make_panel(chat_model)
    sent = []
    send = panel.chat.send
    panel.chat.send = lambda message, options, **kwargs: sent.append((options,
                                                                      kwargs)) or send(message,
                                                                                       options,
                                                                                                 **kwargs)
    panel.temperature.value, panel.top_k.value, panel.top_p.value = 0.7, 3, 0.5
    panel.repetition_penalty.value, panel.length.value = 1.2, 7
    panel.send("Hi", wait=True)
    assert sent[-1] == (SamplingOptions(temperature=0.7, top_k=3, top_p=0.5,
                                        repetition_penalty=1.2),
                        {"max_new_tokens": 7})
    panel.reset()
    # top-k 1 at temperature 1 is greedy decoding: the options are those the reply was written with
    panel.temperature.value, panel.top_k.value, panel.top_p.value = 1.0, 1, 1.0
    assert panel.send("Hi", wait=True) == greedy_reply(chat_model, "Hi", max_new_tokens=7,
                                                       repetition_penalty=1.2)
    assert sent[-1][0] == SamplingOptions(temperature=1.0, top_k=1, top_p=None,
                                          repetition_penalty=1.2)


def test_stop_ends_a_long_reply_early_and_the_partial_reply_stays(chat_model):
    model, _ = chat_model
    panel = make_panel(chat_model, max_new_tokens=60)
    full = greedy_reply(chat_model, "Hi", max_new_tokens=60)
    # Stop pressed while the reply's third token is worked out
    hook = Hook(model, 3, panel.stop_button.click)
    pieces = []  # (forward passes so far, piece) for each piece of the reply
    send = panel.chat.send

    def counted(*args, **kwargs):
        reply = send(*args, **kwargs)

        def each():
            with contextlib.closing(reply):
                for piece in reply:
                    pieces.append((hook.calls, piece))
                    yield piece
        return each()

    panel.chat.send = counted
    try:
        panel.send("Hi", wait=True)
    finally:
        hook.remove()
    partial = panel.history[-1]["content"]
    assert 0 < len(partial) < len(full) - 10 and full.startswith(partial)
    # The panel stops at the first piece after Stop: a byte-level model's token may be part of a
    # character, which waits for the rest, so a piece can
    # take a few tokens. No forward pass runs after it.
    assert partial == "".join(piece for _, piece in pieces)
    assert [calls >= 3 for calls, _ in pieces].count(True) == 1 and hook.calls == pieces[-1][0]
    assert panel.transcript() == f"You: Hi\nAssistant: {partial}"
    assert panel.status.value.startswith("stopped") and panel.error is None
    assert not panel.busy and not panel.send_button.disabled and panel.stop_button.disabled
    # the next reply is a whole one, written after the stopped one
    chat = Chat(*chat_model, temperature=0, max_new_tokens=60)
    chat.history = list(panel.history)
    assert panel.send("More", wait=True) == "".join(chat.send("More")) and panel.status.value == ""


def test_a_second_send_while_a_reply_is_written_is_refused(chat_model):
    import threading

    model, _ = chat_model
    panel = make_panel(chat_model)
    release = threading.Event()
    # the reply thread waits inside its second forward pass
    hook = Hook(model, 2, lambda: release.wait(30))
    try:
        panel.send("Hi")
        assert panel.busy and panel.send_button.disabled and not panel.stop_button.disabled
        panel.message.value = "Again"
        panel.send_button.click()
        assert panel.status.value == ChatWidget.busy_message and panel.message.value == "Again"
        assert panel.send("Again") is None
    finally:
        release.set()
        panel.reply_thread.join()
        hook.remove()
    assert panel.history == [{"role": "user", "content": "Hi"},
                             {"role": "assistant",
                              "content": greedy_reply(chat_model, "Hi", max_new_tokens=12)}]
    assert panel.status.value == ""
    panel.send_button.click()  # now it goes
    panel.reply_thread.join()
    assert panel.history[2] == {"role": "user", "content": "Again"} and panel.message.value == ""


def test_reset_empties_the_history_and_stops_a_reply(chat_model):
    import threading

    model, _ = chat_model
    panel = make_panel(chat_model, system="Be brief.")
    panel.send("Hi", wait=True)
    panel.reset_button.click()
    assert panel.history == [{"role": "system",
                              "content": "Be brief."}] and panel.transcript() == "System: Be brief."
    # during a reply: it stops, and the chat is empty
    started = threading.Event()
    hook = Hook(model, 2, started.set)
    try:
        panel.send("Hi")
        assert started.wait(30)
        panel.reset_button.click()
    finally:
        hook.remove()
    assert not panel.reply_thread.is_alive() and not panel.busy
    assert panel.history == [{"role": "system",
                              "content": "Be brief."}] and panel.transcript() == "System: Be brief."
    assert panel.send("Hi", wait=True) == greedy_reply(chat_model, "Hi", system="Be brief.",
                                                       max_new_tokens=12)


def error_of(panel):
    last = panel.output.outputs[-1]
    assert last["output_type"] == "stream" and last["name"] == "stderr"
    return last["text"]


def test_bad_settings_show_one_line_errors(chat_model):
    panel = make_panel(chat_model)
    assert panel.length.max == 256  # the model's context
    panel.length.value = 256  # the prompt and 256 new tokens cannot fit in 256 positions
    panel.message.value = "Hi"
    panel.send_button.click()
    error = error_of(panel)
    assert error.startswith("error: the chat is") and "beyond the model's context of 256" in error
    assert error.count("\n") == 1 and panel.error == error.strip()
    # nothing was sent
    assert panel.reply_thread is None and panel.history == [] and panel.message.value == "Hi"
    panel.length.value = 10  # fixed: the error goes
    panel.send_button.click()
    panel.reply_thread.join()
    assert panel.error is None and panel.output.outputs[-1]["output_type"] == "display_data"
    # the chat grows until the next message no longer fits
    for _ in range(10):
        if panel.send("Tell me more about the little star", wait=True) is None:
            break
    assert "beyond the model's context" in error_of(panel) and panel.error.startswith("error: the "
                                                                                      "chat is")
    panel.reset()
    assert panel.error is None and panel.output.outputs == ()


def test_an_error_in_the_reply_thread_shows_in_the_panel(chat_model):
    model, _ = chat_model
    panel = make_panel(chat_model)

    def fail():
        raise RuntimeError("out of memory\nsecond line of details")

    hook = Hook(model, 3, fail)
    try:
        panel.send("Hi", wait=True)
    finally:
        hook.remove()
    assert error_of(panel) == "error: RuntimeError: out of memory\n"
    assert not panel.busy and not panel.send_button.disabled and panel.stop_button.disabled
    assert panel.status.value == ""
    partial = panel.history[-1]["content"]  # the two tokens written before the error stay
    assert greedy_reply(chat_model, "Hi",
                        max_new_tokens=12).startswith(partial) and len(panel.history) == 2
    assert panel.send("Again", wait=True) and panel.error is None


def test_chat_panel_needs_a_chat_template(chat_model):
    from slm_helpers.errors import SLMError

    model, tokenizer = chat_model
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(SLMError, match="no ChatML chat template") as err:
            ChatWidget(model, tokenizer)
    finally:
        tokenizer.chat_template = template
    assert "\n" not in str(err.value)


def test_chat_panel_display(chat_model, monkeypatch):
    assert displayed(make_panel(chat_model), monkeypatch)["text/plain"].startswith("Chat panel")
