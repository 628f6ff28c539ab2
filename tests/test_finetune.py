"""Lesson 13's fine-tuning, end to end on a tiny random Llama GGUF (no download): the loss counts
the reply only, LoRA lowers it, the command line resumes bit for bit, adapters load for chat."""

import argparse
import json

import pytest
import torch
from test_chat_cli import _assert_one_line_error
from tiny_gguf import write_tiny_llama

import slm_helpers.cli
import slm_helpers.train
from slm_helpers.chat import Chat, training_pair
from slm_helpers.cli import main
from slm_helpers.data import IGNORE_INDEX, ChatExamples
from slm_helpers.finetune import (
    LORA_ALPHA,
    LORA_RANK,
    LORA_TARGETS,
    cost_in_fresh_process,
    finetune_config,
    finetune_trainer,
    task_pairs,
)
from slm_helpers.lora import add_lora, load_adapter, lora_layers, save_adapter
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.pretrained import load_pretrained
from slm_helpers.tasks import json_extraction


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf",
                            metadata={"llama.context_length": ("add_uint32", 256)}).path
    return path


def _run(capsys, *argv):
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_loss_counts_the_reply_and_its_end_marker_only(tiny):
    _, tokenizer = load_pretrained(tiny)
    messages = [{"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue, of course."}]
    prompt, reply = training_pair(tokenizer, messages)
    x, y = ChatExamples([(prompt, reply)],
                        seq_len=len(prompt) + len(reply) + 3).batch(torch.tensor([0]))
    counted = y[0][y[0] != IGNORE_INDEX].tolist()
    # exactly the reply, then its end
    assert tokenizer.decode(counted) == "Blue, of course.<|im_end|>"
    first = (y[0] != IGNORE_INDEX).nonzero()[0].item()
    # the reply's first token is predicted from the prompt's last
    assert x[0, first].item() == prompt[-1]


def test_a_few_lora_steps_lower_the_training_loss(tiny):
    torch.manual_seed(0)
    model, tokenizer = load_pretrained(tiny)
    cfg = finetune_config(steps=12, eval_interval=12, eval_iters=2, batch_size=4,
                          learning_rate=1e-2)
    trainer = finetune_trainer(model, tokenizer, n_train=64, n_val=8, cfg=cfg)
    pairs = task_pairs(tokenizer, json_extraction(64))
    assert trainer.seq_len == max(len(p) + len(r) for p, r in pairs) - 1
    history = trainer.fit(progress=False)
    assert history[-1]["train"] < 0.8 * history[0]["train"]
    assert all(p.requires_grad == ("lora_" in name) for name, p in model.named_parameters())
    wrapped = {name.rsplit(".", 1)[0] for name in lora_layers(model)}  # 'transformer.h.0.mlp', ...
    assert len(lora_layers(model)) == len(LORA_TARGETS) * len(model.transformer.h)
    assert {name.split(".")[-1] for name in wrapped} == {"attn", "mlp"}


def test_the_command_line_defaults_are_the_packages():
    finetune = argparse.ArgumentParser()
    slm_helpers.cli._finetune_parser(finetune)
    args = finetune.parse_args(["--out", "x"])
    assert (args.rank, args.alpha) == (LORA_RANK, LORA_ALPHA)


def test_finetune_resumes_bit_for_bit_and_chat_takes_the_adapter(tiny, tmp_path, capsys,
                                                                 monkeypatch):
    # a large alpha, so that 8 steps at lesson 13's learning rate change the tiny model's reply
    args = ["finetune", "--gguf", tiny, "--steps", 8, "--alpha", 64, "--test-examples", 4,
            "--device", "cpu"]
    rc, out, err = _run(capsys, *args, "--out", tmp_path / "straight")
    assert rc == 0, err
    assert "adapter:" in out and "exact match on 4 held-out examples" in out
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["trainable_params"] < summary["params"] / 10

    calls = {"n": 0}
    train_step = slm_helpers.train.Trainer.train_step

    # Ctrl-C during step 6, after the checkpoints of steps 2 and 4 (eval_interval 2)
    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return train_step(self)

    monkeypatch.setattr(slm_helpers.train.Trainer, "train_step", interrupted)
    rc, _, err = _run(capsys, *args, "--out", tmp_path / "stopped")
    assert rc == 130 and "--resume" in err
    monkeypatch.undo()
    calls["n"] = 0

    def counted(self):
        calls["n"] += 1
        return train_step(self)

    monkeypatch.setattr(slm_helpers.train.Trainer, "train_step", counted)
    rc, _, err = _run(capsys, *args, "--out", tmp_path / "stopped", "--resume")
    assert rc == 0, err
    assert calls["n"] == 4  # steps 5 to 8: it went on from the checkpoint of step 4
    straight, resumed = (torch.load(tmp_path / run / "adapter.pt")
                         for run in ("straight", "stopped"))
    assert straight["lora"].keys() == resumed["lora"].keys()
    assert all(torch.equal(straight["lora"][k], resumed["lora"][k]) for k in straight["lora"])

    # chat --adapter: the reply of the model with the adapter on
    model, tokenizer = load_pretrained(tiny)
    load_adapter(model, tmp_path / "straight" / "adapter.pt")
    expected = "".join(Chat(model, tokenizer, max_new_tokens=6, temperature=0).send("Hi"))
    base, _ = load_pretrained(tiny)
    assert "".join(Chat(base, tokenizer, max_new_tokens=6, temperature=0).send("Hi")) != expected
    rc, out, err = _run(capsys, "chat", "--gguf", tiny, "--adapter",
                        tmp_path / "straight" / "adapter.pt",
                        "--prompt", "Hi", "--temperature", 0, "--max-new-tokens", 6)
    assert rc == 0 and out == expected + "\n", err
    assert len(lora_layers(model)) == len(LORA_TARGETS) * model.config.n_layer


def test_bad_input_is_one_line(tiny, tmp_path, capsys):
    for rank in (0, -2):
        _assert_one_line_error(*_run(capsys, "finetune", "--gguf", tiny, "--out", tmp_path / "r",
                                     "--rank", rank)[::2],
                               "rank must be an integer >= 1")
    _assert_one_line_error(*_run(capsys, "finetune", "--gguf", tiny, "--out", tmp_path / "t",
                                 "--task", "poems")[::2],
                           "unknown --task 'poems'")
    _assert_one_line_error(*_run(capsys, "finetune", "--gguf", tiny, "--out", tmp_path / "n",
                                 "--resume")[::2],
                           "nothing to resume")
    model, _ = load_pretrained(tiny)
    wider = GPT(GPTConfig(**{**model.config.to_dict(), "n_embd": 2 * model.config.n_embd}))
    add_lora(wider)
    save_adapter(wider, tmp_path / "wider.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not an adapter at all")
    for bad, fragment in ((tmp_path / "missing.pt", "does not exist"),
                          (tmp_path / "wider.pt", "another shape"),
                          (tmp_path / "garbage.pt", "truncated or not an adapter")):
        _assert_one_line_error(*_run(capsys, "chat", "--gguf", tiny, "--adapter", bad, "--prompt",
                                     "Hi")[::2],
                               fragment)


def test_each_kind_is_measured_in_a_process_of_its_own(tiny):
    lora, full = (cost_in_fresh_process(kind, steps=2, gguf=tiny) for kind in (False, True))
    assert lora["steps"] == full["steps"] == 2 and lora["exact_match"] is None
    assert (full["trainable_params"] == full["params"]
            and lora["trainable_params"] < full["params"] / 10)
    # AdamW keeps two float32 moments per trained number
    assert (full["optimizer_state_mb"] * 2**20 >= 2 * 4 * full["params"]
            > lora["optimizer_state_mb"] * 2**20)
    # a tiny model: the imports set the peak, and it varies by more than training adds to it
    assert lora["peak_memory_mb"] > 0 and full["peak_memory_mb"] > 0


def test_the_peak_is_the_fresh_process_own_not_its_parents(tiny):
    """A child of a big process (a notebook's kernel) must not report the parent's peak: Linux keeps
    ru_maxrss across fork and exec, so the child reads its own high-water mark instead."""
    ballast = bytearray(1536 * 2**20)  # 1.5 GB in this process, touched so that it is resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    cost = cost_in_fresh_process(False, steps=1, gguf=tiny)
    assert cost["peak_memory_mb"] < 1200, cost  # the tiny model's process: imports and little else
    del ballast
