"""Races at equal wall time: lesson 11's ablations and its CPU speedrun
(tests/benchmarks/bench_speedrun.py).

``nanogpt_cpu_recipe`` is the baseline every race is measured against: nanoGPT's published recipe
for Shakespeare's characters on a CPU (its README: ``--device=cpu --compile=False --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`` on config/train_shakespeare_char.py): GPT-2's architecture, AdamW with learning rate
1e-3, beta2 0.99 and weight decay 0.1, 100 warm-up steps, cosine decay to 1e-4 over 2,000 steps,
gradients clipped at 1.0, built from the course's own GPT and Trainer.

``race`` trains a run and scores the whole validation text (``evaluate.split_loss``) at evenly
spaced moments; the scoring is not counted in the time, so every run gets the same seconds of
training.

What it leaves out: repeats. One run per recipe is noisy (a different seed moves the final loss by
about 0.01 here); differences smaller than that are not findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import RunConfig, build_trainer
from .device import seed_everything
from .evaluate import split_loss
from .model import GPTConfig
from .train import TrainConfig, Trainer


def nanogpt_cpu_recipe(max_iters: int = 2000) -> RunConfig:
    """nanoGPT's CPU recipe for Shakespeare's characters (``max_iters`` fewer for a quick check)."""
    model = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
    train = TrainConfig(max_iters=max_iters, batch_size=12, learning_rate=1e-3, min_lr=1e-4,
                        warmup_iters=100,
                        beta2=0.99, weight_decay=0.1, grad_clip=1.0)
    return RunConfig(data="shakespeare", tokenizer="char", model=model, train=train,
                     name="nanogpt-cpu")


@dataclass
class Race:
    name: str
    curve: list[tuple[float, float]]  # (seconds of training, validation loss), the last at the end
    steps: int
    # seconds: the first step also compiles the model (torch.compile) and warms caches
    first_step: float
    # its model, tokenizer and history, to sample from or inspect
    trainer: Trainer = field(repr=False)

    @property
    def seconds(self) -> float:
        return self.curve[-1][0]

    @property
    def loss(self) -> float:
        return self.curve[-1][1]

    def seconds_to(self, target: float) -> float | None:
        """Seconds of training at the first evaluation that scored ``target`` or less (None:
        never)."""
        return next((s for s, loss in self.curve if loss <= target), None)


def race(run: RunConfig, *, evaluations: int = 20, val_tokens: int | None = None,
         device="cpu") -> Race:
    """Train ``run`` from scratch (for ``run.train.time_budget`` seconds, or ``max_iters`` steps
    without one) and score the validation split, or its first ``val_tokens`` tokens, ``evaluations``
    times: after each ``1 / evaluations`` of the run, the last time at its end."""
    seed_everything(run.train.seed)
    trainer = build_trainer(run, device=device)
    val = torch.as_tensor(trainer.splits["val"][:val_tokens])
    budget = run.train.time_budget

    def progress() -> float:
        return trainer.train_seconds / budget if budget else trainer.step / run.train.max_iters

    def score() -> None:
        curve.append((trainer.train_seconds, split_loss(trainer.model, val, batch_size=64)[0]))
        trainer.model.train()  # split_loss evaluates in eval mode and restores it; training goes on

    curve: list[tuple[float, float]] = []
    first_step = None
    while progress() < 1:
        trainer.train_step()
        first_step = trainer.train_seconds if first_step is None else first_step
        if progress() >= (len(curve) + 1) / evaluations or progress() >= 1:
            score()
    return Race(run.name, curve, trainer.step, first_step, trainer)
