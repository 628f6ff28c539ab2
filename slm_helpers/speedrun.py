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

``read_difference`` reads two runs against their noise, by one rule for every row of an ablation:
a difference no larger than the spread of repeated runs (different seeds) plus what their different
step counts alone would explain is "not distinguishable here". On a shared machine equal-cost runs
get different numbers of steps in the same seconds, and one more step still lowers the loss at the
end of a short run; ``loss_per_step`` estimates by how much.

What it leaves out: the speedrun's own standard. modded-nanoGPT's records are the time to reach a
target validation loss (3.28 on FineWeb), averaged over many runs with different seeds, with a
statistical test that the runs really reach the target; a few seeds at a fixed time, as here, can
only say which differences are too small to tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import RunConfig, build_trainer
from .device import seed_everything
from .errors import SLMError
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


NOT_DISTINGUISHABLE = "not distinguishable here"


def loss_per_step(result: Race) -> float:
    """By how much one more step still lowered ``result``'s validation loss at the end of its run:
    the fall between its last two evaluations per second, times its seconds per step (at least 0).
    With a single evaluation there is no slope to read: infinity, so nothing is told apart."""
    if len(result.curve) < 2:
        return math.inf
    (s0, loss0), (s1, loss1) = result.curve[-2:]
    return max(0.0, (loss0 - loss1) / (s1 - s0)) * result.seconds / result.steps


@dataclass
class Reading:
    difference: float  # the run's final loss minus the reference's
    margin: float  # the seeds' spread plus the step-count effect
    verdict: str  # "lower", "higher" or NOT_DISTINGUISHABLE


def read_difference(result: Race, reference: Race, spread: float) -> Reading:
    """``result`` against ``reference``: lower or higher loss only if the difference is larger than
    ``spread`` (max - min of the final loss over repeated runs of one recipe) plus the step-count
    effect, |difference in steps| times the two runs' mean ``loss_per_step``."""
    if not spread >= 0:
        raise SLMError(f"spread is max - min of repeated runs' losses, >= 0; got {spread}")
    per_step = (loss_per_step(result) + loss_per_step(reference)) / 2
    steps = abs(result.steps - reference.steps)
    margin = spread + (steps * per_step if steps else 0.0)  # 0 steps apart: no effect, even at inf
    difference = result.loss - reference.loss
    verdict = (NOT_DISTINGUISHABLE if abs(difference) <= margin
               else "lower" if difference < 0 else "higher")
    return Reading(difference, margin, verdict)
