"""The training loop: AdamW, warmup + cosine schedule, evaluation, checkpoints that resume exactly.

A run can be stopped at any moment and resumed from its last checkpoint with the same result,
bit for bit on the CPU, as if it had never stopped: the checkpoint holds the model, the optimizer,
the step, the loss history and every random number generator the loop draws from.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .data import get_batch
from .errors import SLMError


@dataclass
class TrainConfig:
    max_iters: int = 5000
    batch_size: int = 64
    learning_rate: float = 1e-3
    min_lr: float = 1e-4  # the cosine schedule ends here
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99  # above 0.95: small batches make noisy gradients, a longer memory smooths them
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 turns clipping off
    eval_interval: int = 250
    eval_iters: int = 100  # batches averaged per loss estimate
    seed: int = 1337

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SLMError(f"TrainConfig.{f.name} must be a number, got {value!r}")
        for name in ("max_iters", "batch_size", "eval_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise SLMError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1 or not 0 <= self.min_lr <= self.learning_rate:
            raise SLMError(f"need 0 < learning_rate < 1 and 0 <= min_lr <= learning_rate, "
                           f"got learning_rate={self.learning_rate}, min_lr={self.min_lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup (Adam's statistics are poor in the first steps), then cosine decay to ``min_lr``."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    progress = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying biases, LayerNorm gains or (1-D) scales
    would pull them towards zero for no benefit."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


@torch.no_grad()
def estimate_loss(model: nn.Module, splits: dict[str, torch.Tensor], *, batch_size: int, block_size: int,
                  eval_iters: int, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, float]:
    """Mean loss over ``eval_iters`` random batches of each split, in eval mode (no dropout).

    It draws from its own generator seeded with ``seed``, so measuring never changes what training sees.
    """
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        generator = torch.Generator().manual_seed(seed)
        losses = torch.empty(eval_iters)
        for i in range(eval_iters):
            x, y = get_batch(data, batch_size, block_size, device, generator)
            losses[i] = model(x, y)[1].item()
        out[name] = losses.mean().item()
    model.train(was_training)
    return out


class Trainer:
    """Trains a language model (anything called as ``model(x, y) -> (logits, loss)``).

    ``fit`` evaluates every ``eval_interval`` steps; with an ``out_dir`` it writes ``last.pt``
    after every evaluation and ``best.pt`` whenever the validation loss improves.
    """

    def __init__(self, model: nn.Module, train_data: torch.Tensor, val_data: torch.Tensor, cfg: TrainConfig,
                 *, tokenizer=None, out_dir: str | Path | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.block_size = model.block_size
        self.splits = {"train": train_data, "val": val_data}
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.optimizer = make_optimizer(model, cfg, self.device)
        self.batches = torch.Generator().manual_seed(cfg.seed)  # which windows training sees
        self.step = 0
        self.history: list[dict] = []  # one entry per evaluation
        self.step_losses: list[float] = []  # the training loss of every step
        self.best_val = math.inf
        self.train_seconds = 0.0
        for name, data in self.splits.items():  # fail now, not after the first evaluation
            if len(data) < self.block_size + 1:
                raise SLMError(f"the {name} split has {len(data):,} tokens, fewer than block_size + 1 = "
                               f"{self.block_size + 1}; use more text or a smaller block_size")

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.block_size

    # ------------------------------------------------------------------ the loop

    def fit(self, max_iters: int | None = None, *, plot=None, progress: bool = True) -> list[dict]:
        """Train until step ``max_iters`` (default: the config's); returns the evaluation history."""
        max_iters = self.cfg.max_iters if max_iters is None else max_iters
        self.model.train()
        bar = tqdm(total=max_iters, initial=self.step, disable=not progress, file=sys.stdout,
                   desc="training", unit="step", dynamic_ncols=True, mininterval=1.0)
        tick, tokens_since = time.perf_counter(), 0
        while True:
            if self._should_evaluate(max_iters):
                elapsed = time.perf_counter() - tick
                self.train_seconds += elapsed
                self._evaluate(tokens_per_sec=tokens_since / elapsed if tokens_since else None)
                if plot is not None:
                    plot.update(self.history)
                elif progress:
                    last = self.history[-1]
                    bar.write(f"step {last['step']:>6}: train {last['train']:.4f}, val {last['val']:.4f}")
                tick, tokens_since = time.perf_counter(), 0
            if self.step >= max_iters:
                break
            loss = self.train_step()
            tokens_since += self.tokens_per_step
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.close()
        return self.history

    def _should_evaluate(self, max_iters: int) -> bool:
        already = self.history and self.history[-1]["step"] == self.step  # e.g. right after resuming
        return not already and (self.step % self.cfg.eval_interval == 0 or self.step >= max_iters)

    def train_step(self) -> float:
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(self.splits["train"], self.cfg.batch_size, self.block_size, self.device, self.batches)
        _, loss = self.model(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.step_losses.append(loss.item())
        return self.step_losses[-1]

    def _evaluate(self, tokens_per_sec: float | None) -> None:
        losses = estimate_loss(self.model, self.splits, batch_size=self.cfg.batch_size, block_size=self.block_size,
                               eval_iters=self.cfg.eval_iters, device=self.device, seed=self.cfg.seed + self.step)
        self.history.append({"step": self.step, **losses, "lr": lr_at(self.step, self.cfg),
                             "tokens": self.step * self.tokens_per_step, "seconds": round(self.train_seconds, 2),
                             "tokens_per_sec": tokens_per_sec})
        improved = losses["val"] < self.best_val
        self.best_val = min(self.best_val, losses["val"])  # before saving, so checkpoints hold the true best
        if self.out_dir is not None and hasattr(self.model, "config"):
            save_checkpoint(self.state_dict(), self.out_dir / "last.pt")
            if improved:
                save_checkpoint(self.state_dict(), self.out_dir / "best.pt")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "history": self.history,
            "step_losses": self.step_losses,
            "best_val": self.best_val,
            "train_seconds": self.train_seconds,
            "rng": {
                "batches": self.batches.get_state(),
                "torch": torch.get_rng_state(),  # dropout draws from here
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def load_state_dict(self, state: dict) -> None:
        expected = self.model.config.to_dict()
        if state["model_config"] != expected:
            diff = {k: (state["model_config"].get(k), v) for k, v in expected.items()
                    if state["model_config"].get(k) != v}
            raise SLMError("checkpoint was trained with a different model config ("
                           + ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
                           + "); resume with the same preset, or train into a new --out folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = state["step"], state["history"]
        self.step_losses, self.best_val = state["step_losses"], state["best_val"]
        self.train_seconds = state["train_seconds"]
        self.batches.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def resume(self, path: str | Path) -> Trainer:
        """Continue from the checkpoint at ``path`` (it must match this trainer's model config)."""
        self.load_state_dict(load_checkpoint(path))  # RNG states must stay on the CPU
        return self
