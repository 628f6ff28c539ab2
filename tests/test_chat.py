"""chat.py: the ChatML text equals the file's Jinja template (and transformers'
apply_chat_template, live or as tests/data/tiny_llama_reference.json committed it), replies stream
until <|im_end|>, a Chat keeps its history (a reply cut short included), and a chat too long for the
context is refused before any forward pass. On a tiny random Llama (tests/tiny_gguf.py)."""

import copy
import json

import jinja2
import pytest
import torch
from pretrained_reference import (
    TINY_REFERENCE,
    file_sha256,
    hf_chat_reference,
    hf_tokenizer,
    transformers_unusable,
)
from tiny_gguf import SMOLLM2_CHAT_TEMPLATE, write_tiny_llama

import slm_helpers.chat as chat_module
from slm_helpers.chat import (
    Chat,
    chat_ids,
    chat_text,
    check_messages,
    default_system,
    reply_stream,
    training_pair,
)
from slm_helpers.errors import SLMError
from slm_helpers.pretrained import load_pretrained
from slm_helpers.sampling import SamplingOptions, generate

# ChatML without a default system message (as Qwen's older templates): chat_text adds none.
PLAIN_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CHATS = {
    "one message": [{"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [{"role": "user", "content": "Hi!"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Name 3 colors.\nJust the names."}],
    "own system": [{"role": "system", "content": "You are a pirate."},
                   {"role": "user", "content": "Hello"}],
}
IM_START, IM_END = 1, 2  # the tiny vocabulary's ids, as SmolLM2's
# the tiny vocabulary's 200 merges make long prompts: SmolLM2's default system line is 50 tokens
CONTEXT = 256


STALE = "tests/data/tiny_llama_reference.json is stale: run tests/pretrained_reference.py tiny"


def write_chat_file(path):
    return write_tiny_llama(path, tied=False,
                            metadata={"llama.context_length": ("add_uint32", CONTEXT)}).path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_chat_file(tmp_path_factory.mktemp("chat") / "tiny.gguf")


@pytest.fixture(scope="module")
def committed_chats():
    return json.loads(TINY_REFERENCE.read_text(encoding="utf-8"))["chat"]


@pytest.fixture(scope="module")
def hf_chats(tiny_path):
    """transformers' ChatML text and ids of each chat, now; skipped where it is unusable."""
    reason = transformers_unusable()
    if reason:
        pytest.skip(reason)
    return hf_chat_reference(hf_tokenizer(tiny_path), CHATS)


@pytest.fixture(scope="module")
def reference_chats(request, tiny_path, committed_chats):
    """transformers' ChatML text and ids: live where it is usable, else as committed (then for this
    very file only)."""
    if transformers_unusable():
        assert file_sha256(tiny_path) == committed_chats["file_sha256"], \
            f"the chat tests' tiny file is not the one the JSON describes: {STALE}"
        return committed_chats["chats"]
    return request.getfixturevalue("hf_chats")


@pytest.fixture(scope="module")
def loaded(tiny_path):
    return load_pretrained(tiny_path)


def render(template, messages):
    return jinja2.Template(template).render(messages=messages, add_generation_prompt=True)


# ----- the prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize("template", [SMOLLM2_CHAT_TEMPLATE, PLAIN_CHATML],
                         ids=["smollm2", "no-default-system"])
@pytest.mark.parametrize("name", CHATS)
def test_chat_text_equals_the_jinja_template(template, name):
    text = chat_text(CHATS[name], template)
    assert text == render(template, CHATS[name])
    assert text.endswith("<|im_start|>assistant\n")
    default = "You are a helpful AI assistant named SmolLM"
    assert (default in text) == (template == SMOLLM2_CHAT_TEMPLATE and name != "own system")


def test_default_system_comes_from_the_template():
    smollm = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert default_system(SMOLLM2_CHAT_TEMPLATE) == smollm
    assert default_system(PLAIN_CHATML) is None
    for template in (None, "", "{{ messages }}", "[INST] {{ message['content'] }} [/INST]"):
        with pytest.raises(SLMError, match="no ChatML chat template"):
            default_system(template)


def test_chat_ids_and_text_equal_transformers_apply_chat_template(loaded, reference_chats):
    _, tokenizer = loaded
    assert sorted(reference_chats) == sorted(CHATS), STALE
    for name, messages in CHATS.items():
        assert chat_text(messages, tokenizer.chat_template) == reference_chats[name]["text"], name
        assert chat_ids(tokenizer, messages) == reference_chats[name]["ids"], name


def test_the_committed_chats_are_what_transformers_says_now(committed_chats, hf_chats):
    assert committed_chats["chats"] == hf_chats, STALE


def test_chat_ids_write_the_markers_as_special_tokens(loaded):
    _, tokenizer = loaded
    ids = chat_ids(tokenizer, CHATS["multi-turn"])  # the default system line, then three messages
    assert ids[0] == IM_START and ids.count(IM_START) == 5 and ids.count(IM_END) == 4
    opening = tokenizer.encode("<|im_start|>assistant\n", allowed_special="all")
    assert ids[-len(opening):] == opening and opening[0] == IM_START
    assert tokenizer.decode(ids) == chat_text(CHATS["multi-turn"], tokenizer.chat_template)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("Hello", "non-empty list"),
    ([{"role": "bot", "content": "Hi"}], "each message needs a role"),
    ([{"role": "user", "content": 3}], "str content"),
    ([{"role": "user"}], "each message needs a role"),
    (["Hello"], "each message needs a role"),
])
def test_bad_messages(messages, match):
    with pytest.raises(SLMError, match=match):
        check_messages(messages)


# ----- replies ------------------------------------------------------------------------------


def scripted(monkeypatch, ids, drawn):
    """Make reply_stream's sampler yield ``ids``, one by one, recording each token drawn and its
    closing."""
    def token_stream(model, idx, max_new_tokens, options=None, **kwargs):
        def tokens():
            try:
                for i in ids:
                    drawn.append(i)
                    yield torch.tensor([[i]])
            finally:
                drawn.append("closed")
        return tokens()
    monkeypatch.setattr(chat_module, "token_stream", token_stream)


def test_a_reply_stops_at_im_end(loaded, monkeypatch):
    model, tokenizer = loaded
    answer = tokenizer.encode("Paris, 2024.")
    drawn = []
    scripted(monkeypatch, answer + [IM_END] + tokenizer.encode(" more text"), drawn)
    pieces = list(reply_stream(model, tokenizer, CHATS["one message"], 30))
    assert "".join(pieces) == "Paris, 2024." and len(pieces) > 1  # streamed, piece by piece
    # nothing drawn after <|im_end|>, and the sampler closed
    assert drawn == answer + [IM_END, "closed"]


def test_a_greedy_reply_is_the_greedy_continuation_until_im_end(loaded):
    model, tokenizer = loaded
    messages = CHATS["one message"]
    prompt = torch.tensor([chat_ids(tokenizer, messages)])
    new = generate(model, prompt, 20, temperature=0)[0, prompt.size(1):].tolist()
    # A copy of the model whose <|im_end|> row is a little ahead of the 4th new token's row (a token
    # not written before it): its greedy reply is the first three tokens, then <|im_end|>.
    at = next(i for i in range(3, 20) if new[i] not in new[:i] and new[i] != IM_END)
    ending = copy.deepcopy(model)
    with torch.no_grad():
        ending.lm_head.weight[IM_END] = 1.01 * ending.lm_head.weight[new[at]]
    stopped = generate(ending, prompt, at + 1, temperature=0)[0, prompt.size(1):].tolist()
    assert stopped == new[:at] + [IM_END]
    assert ("".join(reply_stream(ending, tokenizer, messages, 20, temperature=0))
            == tokenizer.decode(new[:at]))
    if IM_END not in new:
        assert ("".join(reply_stream(model, tokenizer, messages, 20, temperature=0))
                == tokenizer.decode(new))


def test_a_reply_reserves_only_its_prompt_and_new_tokens(loaded, monkeypatch):
    model, tokenizer = loaded
    reserved = []
    new_cache = model.new_cache

    def spy(batch, reserve=None):
        reserved.append(reserve)
        return new_cache(batch, reserve)
    monkeypatch.setattr(model, "new_cache", spy)
    "".join(reply_stream(model, tokenizer, CHATS["one message"], 7, temperature=0))
    assert reserved == [len(chat_ids(tokenizer, CHATS["one message"])) + 7]


def test_a_chat_too_long_for_the_context_is_refused_before_any_forward_pass(loaded):
    model, tokenizer = loaded
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        long = [{"role": "user", "content": "word " * CONTEXT}]
        with pytest.raises(SLMError, match=r"the chat is \d+ tokens .* beyond the model's "
                                           r"context of 256") as e:
            reply_stream(model, tokenizer, long, 10)  # raised when called, not at the first piece
        assert "\n" not in str(e.value)
        short = [{"role": "user", "content": "Hi"}]
        length = len(chat_ids(tokenizer, short))
        with pytest.raises(SLMError, match=f"reply may take {CONTEXT - length + 1} more"):
            reply_stream(model, tokenizer, short, CONTEXT - length + 1)
        chat = Chat(model, tokenizer, temperature=0)
        with pytest.raises(SLMError, match="beyond the model's context"):
            chat.send("word " * CONTEXT)
        # the longest reply that fits is accepted
        reply_stream(model, tokenizer, short, CONTEXT - length)
        assert chat.history == [] and calls == []
        "".join(reply_stream(model, tokenizer, short, 1, temperature=0))
        assert calls  # the hook does see forward passes
    finally:
        hook.remove()


def test_bad_reply_settings(loaded):
    model, tokenizer = loaded
    for kwargs, match in ((dict(num_beams=2), "num_beams must be 1"),
                          (dict(seed=1.5), "seed must be an integer"),
                          (dict(temperature=-1), "temperature"),
                          (dict(colour="red"), "unknown sampling option")):
        with pytest.raises(SLMError, match=match):
            reply_stream(model, tokenizer, CHATS["one message"], 5, **kwargs)
    with pytest.raises(SLMError, match="max_new_tokens"):
        reply_stream(model, tokenizer, CHATS["one message"], -1)


# ----- Chat ---------------------------------------------------------------------------------


def reply(model, tokenizer, messages, n=12, **settings):
    return "".join(reply_stream(model, tokenizer, messages, n, **settings))


def test_chat_keeps_the_history_and_sends_it_each_turn(loaded):
    model, tokenizer = loaded
    chat = Chat(model, tokenizer, temperature=0, max_new_tokens=12)
    first = "".join(chat.send("Hello"))
    assert first == reply(model, tokenizer, [{"role": "user", "content": "Hello"}], temperature=0)
    assert chat.history == [{"role": "user", "content": "Hello"},
                            {"role": "assistant", "content": first}]
    second = "".join(chat.send("And then?"))
    # the whole history, sent again
    assert second == reply(model, tokenizer, chat.history[:3], temperature=0)
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.history[2:] == [{"role": "user", "content": "And then?"},
                                {"role": "assistant", "content": second}]
    chat.reset()
    assert chat.history == []


def test_a_chat_with_its_own_system_message(loaded):
    model, tokenizer = loaded
    chat = Chat(model, tokenizer, system="Answer in French.", temperature=0, max_new_tokens=8)
    answer = "".join(chat.send("Hello"))
    expected = [{"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Hello"}]
    assert answer == reply(model, tokenizer, expected, 8, temperature=0)
    assert chat.history == [*expected, {"role": "assistant", "content": answer}]
    chat.reset()
    assert chat.history == expected[:1]  # the system message stays


def test_a_reply_cut_short_stays_in_the_history(loaded):
    model, tokenizer = loaded
    chat = Chat(model, tokenizer, temperature=0, max_new_tokens=30)
    full = reply(model, tokenizer, [{"role": "user", "content": "Hello"}], 30, temperature=0)
    pieces = chat.send("Hello")
    got = next(pieces) + next(pieces)
    assert full.startswith(got) and len(got) < len(full)
    pieces.close()  # the reader stops reading
    assert chat.history == [{"role": "user", "content": "Hello"},
                            {"role": "assistant", "content": got}]
    pieces = chat.send("Again")
    got = next(pieces)
    with pytest.raises(KeyboardInterrupt):
        pieces.throw(KeyboardInterrupt)  # Ctrl-C while a reply is written
    assert chat.history[-2:] == [{"role": "user", "content": "Again"},
                                 {"role": "assistant", "content": got}]


def test_sampled_replies_follow_the_chat_options_and_the_seed(loaded):
    model, tokenizer = loaded
    settings = dict(temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.3)
    chat = Chat(model, tokenizer, max_new_tokens=10, **settings)
    first = "".join(chat.send("Hello", seed=7))
    assert first == reply(model, tokenizer, [{"role": "user", "content": "Hello"}], 10, seed=7,
                          **settings)
    chat.reset()
    assert "".join(chat.send("Hello", seed=7)) == first
    chat.reset()
    # options for one message
    greedy = "".join(chat.send("Hello", SamplingOptions(temperature=0), seed=7))
    assert greedy == reply(model, tokenizer, [{"role": "user", "content": "Hello"}], 10,
                           temperature=0)


def test_chat_refuses_bad_input_at_once(loaded):
    model, tokenizer = loaded
    with pytest.raises(SLMError, match="a message must be a str"):
        Chat(model, tokenizer).send(["Hello"])
    plain = copy.copy(tokenizer)
    plain.chat_template = None
    with pytest.raises(SLMError, match="no ChatML chat template"):
        Chat(model, plain)  # said when the chat is made, not at its first message
    with pytest.raises(SLMError, match="top_p"):
        Chat(model, tokenizer, top_p=2.0)
    with pytest.raises(SLMError, match="max_new_tokens"):
        Chat(model, tokenizer, max_new_tokens=-5)


def test_a_training_pair_is_the_chat_as_the_model_reads_it(loaded):
    _, tokenizer = loaded
    messages = [{"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."}]
    prompt, reply = training_pair(tokenizer, messages)
    assert prompt == chat_ids(tokenizer, messages[:1])  # what the model reads at chat time
    whole = chat_text(messages[:1], tokenizer.chat_template) + "Blue.<|im_end|>"
    assert prompt + reply == tokenizer.encode(whole, allowed_special="all")
    # the reply, and the end marker that stops it
    assert tokenizer.decode(reply) == "Blue.<|im_end|>"
    for bad in (messages[:1], messages[1:], [*messages, {"role": "user", "content": "And?"}]):
        with pytest.raises(SLMError, match="ends with the assistant's reply"):
            training_pair(tokenizer, bad)
