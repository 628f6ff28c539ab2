"""Fine-tuning a pretrained chat model on a task: LoRA adapters, or every weight (lesson 13).

The course's ``Trainer`` does the training; this file prepares it. The task's examples become chats
(``chat.training_pair``) whose prompt tokens are left out of the loss (``data.ChatExamples``), the
model gets adapters (``lora.add_lora``) or trains whole, and ``finetune_config`` holds the settings
each kind needs. ``summary`` measures what a run cost and what it learned.

What it leaves out: mixing general chat data into the training set, the usual way to forget less;
packing several short examples into one row (each row here is one example, padded).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

from .chat import training_pair
from .data import ChatExamples
from .errors import SLMError
from .lora import EVERY_LINEAR, add_lora, lora_layers
from .tasks import TASKS, greedy_matches
from .train import TrainConfig, Trainer

# Peak learning rates. An adapter starts at zero and has few numbers to move: it takes a large rate.
# Full fine-tuning moves every pretrained weight; at the adapter's rate it would overwrite what the
# model knows (and exaggerate what it forgets), so it gets the rates models are fine-tuned with.
# Each learned the task best in lesson 13's 60 steps while forgetting least: LoRA at 2e-3 scored
# the same as at 1e-3 and forgot five times as much; full fine-tuning at 1e-4 scored lower.
LORA_LR, FULL_LR = 1e-3, 5e-5
# Adapters on every Linear of every block at rank 4: 0.75% of SmolLM2's parameters. Attention's two
# layers alone at rank 8 (0.48%) learned the format as well, but spelled unseen names worse.
LORA_RANK, LORA_ALPHA, LORA_TARGETS = 4, 8.0, EVERY_LINEAR


def task_pairs(tokenizer, examples) -> list[tuple[list[int], list[int]]]:
    """A task's examples as (prompt ids, reply ids) chat pairs: one user message, the answer."""
    return [training_pair(tokenizer, [{"role": "user", "content": e.prompt},
                                      {"role": "assistant", "content": e.answer}])
            for e in examples]


def finetune_config(full: bool = False, steps: int = 60, **changes) -> TrainConfig:
    """Lesson 13's training settings for LoRA (``full=False``) or full fine-tuning; ``changes``
    override any TrainConfig field."""
    lr = FULL_LR if full else LORA_LR
    settings = dict(max_iters=steps, batch_size=8, learning_rate=lr, min_lr=lr / 10, warmup_iters=5,
                    weight_decay=0.0, eval_interval=max(1, steps // 4), eval_iters=4, seed=0,
                    trainable_only=not full)
    return TrainConfig(**{**settings, **changes})


def finetune_trainer(model, tokenizer, *, task: str = "json", full: bool = False,
                     rank: int = LORA_RANK, alpha: float = LORA_ALPHA,
                     targets: tuple[str, ...] = LORA_TARGETS,
                     cfg: TrainConfig | None = None, n_train: int = 2000,
                     n_val: int = 32, out_dir: str | Path | None = None, device="cpu") -> Trainer:
    """A Trainer that fine-tunes ``model`` on ``task``'s training examples, scored on ``n_val``
    more of them (same phrasings, other examples). With LoRA unless ``full``: adapters of ``rank``
    and ``alpha`` on the ``targets`` layers are added, unless the model has some already (added by
    hand, or loaded)."""
    if task not in TASKS:
        raise SLMError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    cfg = cfg or finetune_config(full)
    if not full and not lora_layers(model):
        add_lora(model, rank=rank, alpha=alpha, targets=targets)
    make = TASKS[task]
    train = task_pairs(tokenizer, make(n_train, "train"))
    val = task_pairs(tokenizer, make(n_val, "train", seed=1))
    seq_len = cfg.seq_len or max(len(p) + len(r) for p, r in train + val) - 1
    cfg = dataclasses.replace(cfg, seq_len=seq_len)
    return Trainer(model, ChatExamples(train, seq_len, name="train"),
                   ChatExamples(val, seq_len, name="val"),
                   cfg, tokenizer=tokenizer, out_dir=out_dir, device=device)


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (it only grows).

    On Linux it is VmHWM, the high-water mark of this program's own memory: ``ru_maxrss`` would do
    too, except that a process started from a big one (a notebook's kernel) inherits the parent's
    peak through fork and exec, and would report that instead of its own."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else KiB


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the optimizer's state: AdamW keeps two numbers (the moments) per trained number."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if hasattr(t, "numel") and t.dim() > 0)


def summary(trainer: Trainer, tokenizer, task: str = "json", n_test: int = 200) -> dict:
    """What a fine-tuning run learned and cost: held-out exact match (None without test examples),
    parameters, optimizer state, this process's peak memory, seconds per step."""
    model = trainer.model
    matches = greedy_matches(model, tokenizer, task_pairs(tokenizer, TASKS[task](n_test, "test")))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = max(1, trainer.step)
    return {"exact_match": sum(matches) / len(matches) if matches else None,
            "test_examples": len(matches),
            "trainable_params": trained, "params": sum(p.numel() for p in model.parameters()),
            "optimizer_state_mb": optimizer_state_bytes(trainer.optimizer) / 2**20,
            "peak_memory_mb": peak_memory_mb(), "steps": trainer.step,
            "seconds_per_step": trainer.train_seconds / steps}


def cost_in_fresh_process(full: bool, steps: int = 3, gguf: str | Path | None = None,
                          batch_size: int = 8) -> dict:
    """``summary`` of ``steps`` fine-tuning steps run in a new Python process, without a test set:
    its peak memory is this kind's alone (a process's peak only grows, so two kinds in one process
    would show the larger twice)."""
    code = ("import json, sys\n"
            "from slm_helpers.finetune import finetune_config, finetune_trainer, summary\n"
            "from slm_helpers.pretrained import load_pretrained\n"
            f"model, tokenizer = load_pretrained({str(gguf) if gguf else None!r})\n"
            f"trainer = finetune_trainer(model, tokenizer, full={full}, n_val=8, "
            f"cfg=finetune_config({full}, {steps}, eval_interval={steps}, eval_iters=1, "
            f"batch_size={batch_size}))\n"
            "trainer.fit(progress=False)\n"
            "print(json.dumps(summary(trainer, tokenizer, n_test=0)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SLMError(f"the fine-tuning process failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
