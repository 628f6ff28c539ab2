"""The training loop: AdamW, warmup + cosine schedule, evaluation, checkpoints that resume exactly.

A run can be stopped at any moment and resumed from its last checkpoint with the same result,
bit for bit on the CPU, as if it had never stopped: the checkpoint holds the model, the optimizer,
the step, the loss history and every random number generator the loop draws from.

The recipes of lesson 8 are switched on in ``TrainConfig``: gradient accumulation (``grad_accum``),
mixed precision (``dtype``), ``torch.compile`` (``compile``), the fused attention kernel
(``fused_attention``), data parallelism over several processes (start under ``torchrun``: see
distributed.py), the metrics log and Weights & Biases (``log_interval``, ``wandb``). Every
evaluation records tokens per second and, on known GPUs, the model FLOPs utilisation (metrics.py).
Lesson 11's recipe adds the Muon optimizer (``optimizer``, optim.py), a warmup-stable-decay schedule
(``schedule``) and runs measured in seconds instead of steps (``time_budget``).

The pieces live beside their kind: the optimizer's parameter groups in optim.py, mixed precision in
precision.py, batches in data.py (a source: windows of a token stream, or chat examples), the loss
estimate in evaluate.py, speed in metrics.py, random states and config checks in checkpoint.py.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from . import distributed
from .checkpoint import (
    check_model_config,
    load_checkpoint,
    load_model_state,
    model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import as_source
from .errors import SLMError
from .evaluate import estimate_loss
from .metrics import MetricsLog, Throughput, describe
from .optim import make_optimizer
from .precision import DTYPES, MixedPrecision, autocast_dtype

# the last four live in metrics, evaluate, optim and precision; here for old imports
__all__ = ["TrainConfig", "Trainer", "Progress", "lr_at", "describe", "estimate_loss",
           "make_optimizer", "autocast_dtype"]
OPTIMIZERS = ("adamw", "muon", "adamw-groups")
SCHEDULES = ("cosine", "wsd")


@dataclass
class TrainConfig:
    max_iters: int = 5000
    batch_size: int = 64  # sequences per micro-batch (per process under torchrun)
    learning_rate: float = 1e-3
    min_lr: float = 1e-4  # the cosine schedule ends here
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    # above 0.95: small batches make noisy gradients, a longer memory smooths them
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 turns clipping off
    # micro-batches per optimizer step, over all processes: a larger batch in the same memory
    grad_accum: int = 1
    # or "bfloat16", "float16" (mixed precision), "auto" (the best the device has)
    dtype: str = "float32"
    # torch.compile the model: a slow first step, then faster ones (mostly on GPUs)
    compile: bool = False
    # PyTorch's fused attention kernel; False: the explicit softmax(QK^T)V
    fused_attention: bool = True
    eval_interval: int = 250
    eval_iters: int = 100  # batches averaged per loss estimate
    # also log the training loss every this many steps to metrics.jsonl; 0: only evaluations
    log_interval: int = 0
    # also log to Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works)
    wandb: bool = False
    wandb_project: str = "build-a-gpt"
    seed: int = 1337
    # New (lesson 11): the fast recipe.
    # "muon": Muon for the blocks' weight matrices, AdamW (as below) for the rest; "adamw-groups":
    # muon's groups and rates with AdamW at learning_rate for those matrices (lesson 11's ablation:
    # only the matrices' optimizer changes)
    optimizer: str = "adamw"
    # Muon's peak learning rate; the schedule scales it as it scales learning_rate
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    # with Muon: AdamW's peak rate for the token embeddings (0: learning_rate)
    embedding_lr: float = 0.0
    adam_eps: float = 1e-8
    schedule: str = "cosine"  # "wsd": warm up, hold learning_rate, then decay linearly to min_lr
    cooldown: float = 0.5  # wsd: the fraction of the run that decays
    # > 0: train for this many seconds (evaluations excluded), not max_iters steps, and the
    # schedule follows the clock, so a run cut by time still anneals
    time_budget: float = 0.0
    # tokens per training sequence; 0: the model's block_size (a real Llama's is 8,192)
    seq_len: int = 0
    # checkpoints hold only the parameters that train (a frozen base model's fine-tune)
    trainable_only: bool = False

    # ranges; types are checked where a YAML file is read (config.from_mapping)
    def __post_init__(self):
        for name in ("max_iters", "batch_size", "eval_interval", "eval_iters", "grad_accum"):
            if getattr(self, name) < 1:
                raise SLMError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("log_interval", "seq_len"):  # 0: no per-step log; the model's block_size
            if getattr(self, name) < 0:
                raise SLMError(f"TrainConfig.{name} must be >= 0 (0: the default), got "
                               f"{getattr(self, name)}")
        if not 0 < self.learning_rate < 1 or not 0 <= self.min_lr <= self.learning_rate:
            raise SLMError(f"need 0 < learning_rate < 1 and 0 <= min_lr <= learning_rate, "
                           f"got learning_rate={self.learning_rate}, min_lr={self.min_lr}")
        if self.dtype not in (*DTYPES, "auto"):
            raise SLMError(f"TrainConfig.dtype must be one of {', '.join((*DTYPES, 'auto'))}, got "
                           f"{self.dtype!r}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise SLMError(f"TrainConfig.{name} must be one of {', '.join(choices)}, got "
                               f"{getattr(self, name)!r}")
        if not 0 < self.cooldown <= 1:
            raise SLMError("TrainConfig.cooldown (the fraction of the run that decays) must be in "
                           f"(0, 1], got {self.cooldown}")
        if self.time_budget < 0 or self.muon_lr <= 0 or self.embedding_lr < 0:
            raise SLMError("need time_budget >= 0 (0: no budget), muon_lr > 0 and embedding_lr >= "
                           f"0; got time_budget={self.time_budget}, muon_lr={self.muon_lr}, "
                           f"embedding_lr={self.embedding_lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig, seconds: float = 0.0) -> float:
    """Linear warmup over ``warmup_iters`` steps (Adam's statistics are poor in the first steps),
    then cosine decay to ``min_lr`` at ``max_iters``, or (New) with ``schedule`` "wsd" a constant
    rate that decays linearly to ``min_lr`` over the last ``cooldown`` of the run. With a
    ``time_budget`` the run's progress is ``seconds`` of training out of the budget instead of steps
    out of ``max_iters``."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if cfg.time_budget:
        progress = min(1.0, seconds / cfg.time_budget)
    else:
        progress = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    if cfg.schedule == "wsd":
        # 1 until the cooldown starts, then down to 0
        share = min(1.0, (1 - progress) / cfg.cooldown)
    else:
        share = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr + share * (cfg.learning_rate - cfg.min_lr)


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves besides the weights, the optimizer and the random
    states."""
    step: int = 0
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    step_losses: list[float] = field(default_factory=list)  # the training loss of every step
    best_val: float = math.inf
    train_seconds: float = 0.0  # time spent in training steps (evaluation excluded)


class _InProgress:
    """``trainer.step`` and the like: read and written through to ``trainer.progress``."""

    def __set_name__(self, owner, name: str):
        self.name = name

    def __get__(self, trainer, owner=None):
        return self if trainer is None else getattr(trainer.progress, self.name)

    def __set__(self, trainer, value) -> None:
        setattr(trainer.progress, self.name, value)


class Trainer:
    """Trains a language model (anything called as ``model(x, y) -> (logits, loss)``).

    ``train_data`` and ``val_data`` are 1-D LongTensors of token ids, ``tokens.TokenFile``s on disk,
    or batch sources (data.py: ``ChatExamples`` for instruction tuning). ``fit`` evaluates every
    ``eval_interval`` steps; with an ``out_dir`` it writes ``last.pt`` after every evaluation,
    ``best.pt`` whenever the validation loss improves, and ``metrics.jsonl``.
    Under torchrun (see distributed.py) it trains with DDP; only rank 0 writes and prints.
    """

    # trainer.step and the like: the fields of trainer.progress, read and written through.
    step, history, step_losses, best_val, train_seconds = (_InProgress() for _ in fields(Progress))

    def __init__(self, model: nn.Module, train_data, val_data, cfg: TrainConfig,
                 *, tokenizer=None, out_dir: str | Path | None = None,
                 device: torch.device | str = "cpu"):
        self.device, self.cfg, self.tokenizer = torch.device(device), cfg, tokenizer
        self.model = model.to(self.device)
        self.seq_len = _seq_len(model, cfg)
        self.splits = {"train": train_data, "val": val_data}
        self.sources = {name: as_source(data, self.seq_len, name)
                        for name, data in self.splits.items()}
        self.run: dict | None = None  # the preset and data, when config.build_trainer made it
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.micro_steps = _micro_steps(cfg.grad_accum, self.world_size)  # this process's share
        self.amp = MixedPrecision(cfg.dtype, self.device)
        if self.amp.note and self.is_main:
            print(f"note: {self.amp.note}")
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.train_model = self._train_model()
        self.batches = torch.Generator().manual_seed(cfg.seed)  # which examples training sees
        self.progress = Progress()
        self.grad_norm: float | None = None  # of the last step, before clipping (None: no clipping)
        self.speed = Throughput(model, self.device, self.tokens_per_step, self.world_size,
                                self.seq_len)
        self.metrics = self._metrics_log()

    def _train_model(self) -> nn.Module:
        """Two handles, as in nanoGPT: self.model is the plain module (its state_dict, its config),
        and the one returned runs the steps and evaluations, compiled and wrapped in DDP when asked
        for."""
        # the GPT; the small models of lessons 2-4 have one path
        if hasattr(self.model, "set_fused_attention"):
            self.model.set_fused_attention(self.cfg.fused_attention)
        train_model = torch.compile(self.model) if self.cfg.compile else self.model
        if self.world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(
                train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return train_model

    def _metrics_log(self) -> MetricsLog:
        config = self.model.config.to_dict() if hasattr(self.model, "config") else {}
        return MetricsLog(
            self.out_dir / "metrics.jsonl" if self.out_dir is not None and self.is_main else None,
            wandb_project=self.cfg.wandb_project if self.cfg.wandb and self.is_main else None,
            run_name=self.out_dir.name if self.out_dir is not None else None,
            run_config={"train": self.cfg.to_dict(), "model": config})

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step, over all micro-batches and processes."""
        return self.cfg.batch_size * self.seq_len * self.cfg.grad_accum

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The mixed-precision type (None: float32)."""
        return self.amp.dtype

    # ------------------------------------------------------------------ the loop

    def fit(self, max_iters: int | None = None, *, plot=None, progress: bool = True) -> list[dict]:
        """Train until step ``max_iters`` (default: the config's) or, with a ``time_budget``, until
        that many seconds of training; returns the evaluation history."""
        max_iters = self.cfg.max_iters if max_iters is None else max_iters
        if self.step == 0 and not self.history:
            # a new run: lines left in metrics.jsonl by an earlier one are not its own
            self.metrics.rewind(-1)
        self.model.train()
        bar = tqdm(total=None if self.cfg.time_budget else max_iters, initial=self.step,
                   file=sys.stdout,
                   disable=not (progress and self.is_main), desc="training", unit="step",
                   dynamic_ncols=True,
                   mininterval=1.0)
        while True:
            if self.out_of_time:
                max_iters = self.step  # the last evaluation happens now
            if self._should_evaluate(max_iters):
                self._evaluate()
                if plot is not None and self.is_main:
                    plot.update(self.history)
                elif progress and self.is_main:
                    bar.write(describe(self.history[-1]))
            if self.step >= max_iters:
                break
            lr = self.lr
            loss = self.train_step()
            if self.cfg.log_interval and self.step % self.cfg.log_interval == 0:
                self.metrics.write({"kind": "train", "step": self.step, "loss": loss, "lr": lr,
                                    "grad_norm": self.grad_norm,
                                    "tokens": self.step * self.tokens_per_step,
                                    **self.speed.since("train", self.step, self.train_seconds)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.close()
        self.metrics.close()
        return self.history

    @property
    def out_of_time(self) -> bool:
        """True once a run with a ``time_budget`` has trained for that long."""
        return bool(self.cfg.time_budget) and self.train_seconds >= self.cfg.time_budget

    @property
    def lr(self) -> float:
        """The learning rate of the next step (of the AdamW parameters; other groups scale with
        it)."""
        return lr_at(self.step, self.cfg, self.train_seconds)

    def _should_evaluate(self, max_iters: int) -> bool:
        # e.g. right after resuming
        already = self.history and self.history[-1]["step"] == self.step
        return not already and (self.step % self.cfg.eval_interval == 0 or self.step >= max_iters)

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns their mean loss."""
        start = time.perf_counter()
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        source = self.sources["train"]  # windows of the token stream, or chat examples (data.py)
        # Every process draws every example of the step from the same generator, then keeps its own
        # share: the run sees the same data whatever the number of processes, and resumes exactly.
        picks = source.draw(self.cfg.grad_accum * self.cfg.batch_size, self.batches)
        mine = picks.view(self.cfg.grad_accum,
                          -1)[self.rank * self.micro_steps:(self.rank + 1) * self.micro_steps]
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(mine):
            x, y = source.batch(micro, self.device)
            # DDP averages gradients across processes after each backward; only the last micro-step
            # needs it.
            last = i == self.micro_steps - 1
            with nullcontext() if last or self.world_size == 1 else self.train_model.no_sync():
                with self.amp.autocast():
                    _, loss = self.train_model(x, y)
                # The gradients of the micro-batches add up; dividing each loss makes their sum the
                # gradient of the mean loss over the whole batch, as one big batch would give.
                loss = loss / self.micro_steps
                self.amp.scaler.scale(loss).backward()
            total += loss.detach()
        norm = None
        if self.cfg.grad_clip > 0:
            self.amp.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            # the norm before clipping
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.amp.scaler.step(self.optimizer)
        self.amp.scaler.update()
        if self.world_size > 1:  # report the loss of the whole batch, not of this process's share
            dist.all_reduce(total)
            total /= self.world_size
        self.step += 1
        # .item() waits for the GPU, so the time below is real
        self.step_losses.append(total.item())
        self.grad_norm = norm.item() if norm is not None else None
        self.train_seconds += time.perf_counter() - start
        return self.step_losses[-1]

    def _evaluate(self) -> None:
        with self.amp.autocast():
            losses = estimate_loss(self.train_model, self.sources, batch_size=self.cfg.batch_size,
                                   block_size=self.seq_len, eval_iters=self.cfg.eval_iters,
                                   device=self.device,
                                   seed=self.cfg.seed + self.step)
        # exp overflows past 709
        perplexity = math.exp(losses["val"]) if losses["val"] < 700 else math.inf
        self.history.append({"step": self.step, **losses, "val_ppl": perplexity, "lr": self.lr,
                             "tokens": self.step * self.tokens_per_step,
                             "seconds": round(self.train_seconds, 2),
                             **self.speed.since("eval", self.step, self.train_seconds)})
        improved = losses["val"] < self.best_val
        # before saving: the checkpoints hold the new best
        self.best_val = min(self.best_val, losses["val"])
        self.metrics.write({"kind": "eval", **self.history[-1]})
        if self.out_dir is not None and hasattr(self.model, "config") and self.is_main:
            state = self.state_dict()
            save_checkpoint(state, self.out_dir / "last.pt")
            if improved:
                save_checkpoint(state, self.out_dir / "best.pt")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "model": model_state(self.model, self.cfg.trainable_only),
            "trainable_only": self.cfg.trainable_only,
            "model_config": self.model.config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "run": self.run,
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.amp.state_dict(),
            **asdict(self.progress),  # step, history, step_losses, best_val, train_seconds
            "rng": rng_state(self.batches),
        }

    def load_state_dict(self, state: dict) -> None:
        check_model_config(self.model, state["model_config"])
        load_model_state(self.model, state["model"], state.get("trainable_only", False))
        self.optimizer.load_state_dict(state["optimizer"])
        self.amp.load_state_dict(state.get("scaler"))
        self.progress = Progress(**{f.name: state[f.name] for f in fields(Progress)})
        self.speed.restart(self.step, self.train_seconds)
        set_rng_state(state["rng"], self.batches)
        if self.is_main:
            # lines logged after this checkpoint are about to be logged again
            self.metrics.rewind(self.step)

    def resume(self, path: str | Path) -> Trainer:
        """Continue from the checkpoint at ``path`` (it must match this trainer's model config)."""
        self.load_state_dict(load_checkpoint(path))  # RNG states must stay on the CPU
        return self


def _seq_len(model: nn.Module, cfg: TrainConfig) -> int:
    """Tokens per training sequence: ``cfg.seq_len``, or the model's ``block_size``; longer only for
    models whose attention slides past it (RoPE)."""
    seq_len = cfg.seq_len or model.block_size
    if seq_len > model.block_size and not getattr(model, "reads_past_context", False):
        raise SLMError(f"train.seq_len ({seq_len}) is longer than the model's block_size "
                       f"({model.block_size}), "
                       "which has no positions past it; use a smaller seq_len or a larger "
                       "block_size")
    return seq_len


def _micro_steps(grad_accum: int, world_size: int) -> int:
    if grad_accum % world_size:
        raise SLMError(f"grad_accum ({grad_accum}) must be a multiple of the number of processes "
                       f"({world_size}): each process does the same number of micro-batches")
    return grad_accum // world_size
