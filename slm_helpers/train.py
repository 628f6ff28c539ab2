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
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .data import batch_at, get_batch
from .device import supports_bf16
from .errors import SLMError
from .metrics import MetricsLog, flops_per_token, peak_flops, throughput
from .optim import MuonAdamW
from .utils import eval_mode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPTIMIZERS = ("adamw", "muon")
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
    beta2: float = 0.99  # above 0.95: small batches make noisy gradients, a longer memory smooths them
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 turns clipping off
    grad_accum: int = 1  # micro-batches per optimizer step, over all processes: a larger batch in the same memory
    dtype: str = "float32"  # or "bfloat16", "float16" (mixed precision), "auto" (the best the device has)
    compile: bool = False  # torch.compile the model: a slow first step, then faster ones (mostly on GPUs)
    fused_attention: bool = True  # PyTorch's fused attention kernel; False: the explicit softmax(QK^T)V
    eval_interval: int = 250
    eval_iters: int = 100  # batches averaged per loss estimate
    log_interval: int = 0  # also log the training loss every this many steps to metrics.jsonl; 0: only evaluations
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works)
    wandb_project: str = "build-a-gpt"
    seed: int = 1337
    # New (lesson 11): the fast recipe.
    optimizer: str = "adamw"  # "muon": Muon for the blocks' weight matrices, AdamW (as below) for the rest
    muon_lr: float = 0.02  # Muon's peak learning rate; the schedule scales it as it scales learning_rate
    muon_momentum: float = 0.95
    embedding_lr: float = 0.0  # with Muon: AdamW's peak rate for the token embeddings (0: learning_rate)
    adam_eps: float = 1e-8
    schedule: str = "cosine"  # "wsd": warm up, hold learning_rate, then decay linearly to min_lr
    cooldown: float = 0.5  # wsd: the fraction of the run that decays
    time_budget: float = 0.0  # > 0: train for this many seconds (evaluations excluded), not max_iters steps,
    #                           and the schedule follows the clock, so a run cut by time still anneals

    def __post_init__(self):  # ranges; types are checked where a YAML file is read (config.from_mapping)
        for name in ("max_iters", "batch_size", "eval_interval", "eval_iters", "grad_accum"):
            if getattr(self, name) < 1:
                raise SLMError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.log_interval < 0:
            raise SLMError(f"TrainConfig.log_interval must be >= 0 (0: no per-step log), got {self.log_interval}")
        if not 0 < self.learning_rate < 1 or not 0 <= self.min_lr <= self.learning_rate:
            raise SLMError(f"need 0 < learning_rate < 1 and 0 <= min_lr <= learning_rate, "
                           f"got learning_rate={self.learning_rate}, min_lr={self.min_lr}")
        if self.dtype not in (*DTYPES, "auto"):
            raise SLMError(f"TrainConfig.dtype must be one of {', '.join((*DTYPES, 'auto'))}, got {self.dtype!r}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in choices:
                raise SLMError(f"TrainConfig.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not 0 < self.cooldown <= 1:
            raise SLMError(f"TrainConfig.cooldown (the fraction of the run that decays) must be in (0, 1], "
                           f"got {self.cooldown}")
        if self.time_budget < 0 or self.muon_lr <= 0 or self.embedding_lr < 0:
            raise SLMError(f"need time_budget >= 0 (0: no budget), muon_lr > 0 and embedding_lr >= 0; got "
                           f"time_budget={self.time_budget}, muon_lr={self.muon_lr}, embedding_lr={self.embedding_lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig, seconds: float = 0.0) -> float:
    """Linear warmup over ``warmup_iters`` steps (Adam's statistics are poor in the first steps), then
    cosine decay to ``min_lr`` at ``max_iters``, or (New) with ``schedule`` "wsd" a constant rate that
    decays linearly to ``min_lr`` over the last ``cooldown`` of the run. With a ``time_budget`` the
    run's progress is ``seconds`` of training out of the budget instead of steps out of ``max_iters``."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if cfg.time_budget:
        progress = min(1.0, seconds / cfg.time_budget)
    else:
        progress = min(1.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    if cfg.schedule == "wsd":
        share = min(1.0, (1 - progress) / cfg.cooldown)  # 1 until the cooldown starts, then down to 0
    else:
        share = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr + share * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only: decaying biases, LayerNorm gains or (1-D) scales
    would pull them towards zero for no benefit.

    New (lesson 11): with ``optimizer`` "muon", the weight matrices inside the blocks get Muon at
    ``muon_lr``, the token embeddings AdamW at ``embedding_lr`` and the rest AdamW at ``learning_rate``.
    Each group's ``lr_scale`` is its peak rate over ``learning_rate``: the schedule scales them together."""
    if cfg.optimizer == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # fused: one CUDA kernel updates every parameter, instead of a handful of kernels per tensor
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                                 fused=device.type == "cuda")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]  # a tied matrix once, as wte
    hidden = [p for name, p in named if p.dim() == 2 and ".h." in f".{name}"]
    embeddings = [p for name, p in named if name.startswith(("transformer.wte", "transformer.wpe"))]
    matrices = [p for name, p in named if p.dim() >= 2 and not any(p is q for q in hidden + embeddings)]
    vectors = [p for name, p in named if p.dim() < 2]
    embedding_scale = (cfg.embedding_lr or cfg.learning_rate) / cfg.learning_rate
    groups = [
        {"params": hidden, "muon": True, "lr_scale": cfg.muon_lr / cfg.learning_rate},
        {"params": embeddings, "lr_scale": embedding_scale, "weight_decay": cfg.weight_decay},
        {"params": matrices, "weight_decay": cfg.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    # bfloat16 Newton-Schulz on GPUs (tensor cores); CPUs without bfloat16 units are faster in float32.
    return MuonAdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, momentum=cfg.muon_momentum,
                     ns_dtype=torch.bfloat16 if device.type == "cuda" else None,
                     betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def autocast_dtype(name: str, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """The 16-bit type to autocast to on ``device`` (None: plain float32), and a note when the request
    cannot be met as asked.

    bfloat16 keeps float32's range, so it needs no loss scaling; GPUs before Ampere (T4, V100) only
    emulate it and get float16 instead. float16 needs a CUDA GPU here (its gradient scaler and fast kernels);
    elsewhere training falls back to float32. On a CPU bfloat16 is computed correctly, but only CPUs
    with bfloat16 units (AMX, AVX512-BF16) are faster for it; "auto" keeps float32 there.
    """
    if name == "auto":
        name = ("bfloat16" if supports_bf16(device) else "float16") if device.type == "cuda" else "float32"
    if name == "float32":
        return None, None
    if device.type == "cuda":
        if name == "bfloat16" and not supports_bf16(device):  # emulated there: slower than float16
            return torch.float16, "this GPU has no native bfloat16: training in float16 with a gradient scaler"
        return DTYPES[name], None
    if device.type == "cpu" and name == "bfloat16":
        return torch.bfloat16, None
    return None, f"{name} training needs a CUDA GPU: training in float32 on {device.type}"


@torch.no_grad()
def estimate_loss(model: nn.Module, splits: dict, *, batch_size: int, block_size: int,
                  eval_iters: int, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, float]:
    """Mean loss over ``eval_iters`` random batches of each split, in eval mode (no dropout).

    It draws from its own generator seeded with ``seed``, so measuring never changes what training sees.
    """
    out = {}
    with eval_mode(model):
        for name, data in splits.items():
            generator = torch.Generator().manual_seed(seed)
            losses = torch.empty(eval_iters)
            for i in range(eval_iters):
                x, y = get_batch(data, batch_size, block_size, device, generator)
                losses[i] = model(x, y)[1].item()
            out[name] = losses.mean().item()
    return out


class Trainer:
    """Trains a language model (anything called as ``model(x, y) -> (logits, loss)``).

    ``train_data`` and ``val_data`` are 1-D LongTensors of token ids or ``tokens.TokenFile``s on disk.
    ``fit`` evaluates every ``eval_interval`` steps; with an ``out_dir`` it writes ``last.pt`` after
    every evaluation, ``best.pt`` whenever the validation loss improves, and ``metrics.jsonl``.
    Under torchrun (see distributed.py) it trains with DDP; only rank 0 writes and prints.
    """

    def __init__(self, model: nn.Module, train_data, val_data, cfg: TrainConfig,
                 *, tokenizer=None, out_dir: str | Path | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.block_size = model.block_size
        self.splits = {"train": train_data, "val": val_data}
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.run: dict | None = None  # the preset and data it trains on, when config.build_trainer made it
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        if cfg.grad_accum % self.world_size:
            raise SLMError(f"grad_accum ({cfg.grad_accum}) must be a multiple of the number of processes "
                           f"({self.world_size}): each process does the same number of micro-batches")
        self.micro_steps = cfg.grad_accum // self.world_size  # this process's share of each step
        self.amp_dtype, note = autocast_dtype(cfg.dtype, self.device)
        if note and self.is_main:
            print(f"note: {note}")
        # float16 overflows above 65,504 and small gradients underflow to zero: the scaler multiplies
        # the loss before backward and divides the gradients after, skipping steps that overflowed.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        if hasattr(model, "set_fused_attention"):  # the GPT; the small models of lessons 2-4 have one path
            model.set_fused_attention(cfg.fused_attention)
        self.optimizer = make_optimizer(model, cfg, self.device)
        # Two handles, as in nanoGPT: self.model is the plain module (its state_dict, its config), and
        # self.train_model runs the steps and evaluations, compiled and wrapped in DDP when asked for.
        self.train_model = torch.compile(model) if cfg.compile else model
        if self.world_size > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.batches = torch.Generator().manual_seed(cfg.seed)  # which windows training sees
        self.step = 0
        self.history: list[dict] = []  # one entry per evaluation
        self.step_losses: list[float] = []  # the training loss of every step
        self.best_val = math.inf
        self.train_seconds = 0.0  # time spent in training steps (evaluation excluded)
        self.grad_norm: float | None = None  # of the last step, before clipping (None without clipping)
        self._last_logged = {"eval": (0, 0.0), "train": (0, 0.0)}  # (step, train_seconds) at the last record
        self.flops_per_token = flops_per_token(model) if hasattr(model, "config") else None
        self.peak_flops = peak_flops(self.device)
        self.metrics = MetricsLog(
            self.out_dir / "metrics.jsonl" if self.out_dir is not None and self.is_main else None,
            wandb_project=cfg.wandb_project if cfg.wandb and self.is_main else None,
            run_name=self.out_dir.name if self.out_dir is not None else None,
            run_config={"train": cfg.to_dict(), "model": model.config.to_dict() if hasattr(model, "config") else {}})
        for name, data in self.splits.items():  # fail now, not after the first evaluation
            if len(data) < self.block_size + 1:
                raise SLMError(f"the {name} split has {len(data):,} tokens, fewer than block_size + 1 = "
                               f"{self.block_size + 1}; use more text or a smaller block_size")

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step, over all micro-batches and processes."""
        return self.cfg.batch_size * self.block_size * self.cfg.grad_accum

    def autocast(self):
        """Run the enclosed forward passes in the mixed-precision type (a no-op for float32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ the loop

    def fit(self, max_iters: int | None = None, *, plot=None, progress: bool = True) -> list[dict]:
        """Train until step ``max_iters`` (default: the config's) or, with a ``time_budget``, until
        that many seconds of training; returns the evaluation history."""
        max_iters = self.cfg.max_iters if max_iters is None else max_iters
        if self.step == 0 and not self.history:
            self.metrics.rewind(-1)  # a new run: lines left in metrics.jsonl by an earlier one are not its own
        self.model.train()
        bar = tqdm(total=None if self.cfg.time_budget else max_iters, initial=self.step, file=sys.stdout,
                   disable=not (progress and self.is_main), desc="training", unit="step", dynamic_ncols=True,
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
                                    "grad_norm": self.grad_norm, "tokens": self.step * self.tokens_per_step,
                                    **self._speed_since("train")})
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
        """The learning rate of the next step (of the AdamW parameters; other groups scale with it)."""
        return lr_at(self.step, self.cfg, self.train_seconds)

    def _should_evaluate(self, max_iters: int) -> bool:
        already = self.history and self.history[-1]["step"] == self.step  # e.g. right after resuming
        return not already and (self.step % self.cfg.eval_interval == 0 or self.step >= max_iters)

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns their mean loss."""
        start = time.perf_counter()
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        B, T, data = self.cfg.batch_size, self.block_size, self.splits["train"]
        # Every process draws the start of every window of the step from the same generator, then keeps
        # its own share: the run sees the same data whatever the number of processes, and resumes exactly.
        starts = torch.randint(len(data) - T, (self.cfg.grad_accum * B,), generator=self.batches)
        mine = starts.view(self.cfg.grad_accum, B)[self.rank * self.micro_steps:(self.rank + 1) * self.micro_steps]
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(mine):
            x, y = batch_at(data, micro, T, self.device)
            # DDP averages gradients across processes after each backward; only the last micro-step needs it.
            last = i == self.micro_steps - 1
            with nullcontext() if last or self.world_size == 1 else self.train_model.no_sync():
                with self.autocast():
                    _, loss = self.train_model(x, y)
                # The gradients of the micro-batches add up; dividing each loss makes their sum the
                # gradient of the mean loss over the whole batch, as one big batch would give.
                loss = loss / self.micro_steps
                self.scaler.scale(loss).backward()
            total += loss.detach()
        norm = None
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)  # the norm before clipping
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.world_size > 1:  # report the loss of the whole batch, not of this process's share
            dist.all_reduce(total)
            total /= self.world_size
        self.step += 1
        self.step_losses.append(total.item())  # .item() waits for the GPU, so the time below is real
        self.grad_norm = norm.item() if norm is not None else None
        self.train_seconds += time.perf_counter() - start
        return self.step_losses[-1]

    def _speed_since(self, kind: str) -> dict:
        """Tokens/s and MFU since the last record of ``kind`` ("eval" or "train"), which this one becomes."""
        step, seconds = self._last_logged[kind]
        self._last_logged[kind] = (self.step, self.train_seconds)
        return throughput(self.step - step, self.train_seconds - seconds, self.tokens_per_step,
                          self.flops_per_token, self.peak_flops, self.world_size)

    def _evaluate(self) -> None:
        with self.autocast():
            losses = estimate_loss(self.train_model, self.splits, batch_size=self.cfg.batch_size,
                                   block_size=self.block_size, eval_iters=self.cfg.eval_iters, device=self.device,
                                   seed=self.cfg.seed + self.step)
        perplexity = math.exp(losses["val"]) if losses["val"] < 700 else math.inf  # exp overflows past 709
        self.history.append({"step": self.step, **losses, "val_ppl": perplexity, "lr": self.lr,
                             "tokens": self.step * self.tokens_per_step, "seconds": round(self.train_seconds, 2),
                             **self._speed_since("eval")})
        improved = losses["val"] < self.best_val
        self.best_val = min(self.best_val, losses["val"])  # before saving: the checkpoints hold the new best
        self.metrics.write({"kind": "eval", **self.history[-1]})
        if self.out_dir is not None and hasattr(self.model, "config") and self.is_main:
            state = self.state_dict()
            save_checkpoint(state, self.out_dir / "last.pt")
            if improved:
                save_checkpoint(state, self.out_dir / "best.pt")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "train_config": self.cfg.to_dict(),
            "run": self.run,
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # float16's current loss scale; empty otherwise
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
        saved = type(self.model.config)(**state["model_config"]).to_dict()  # fields added since take their defaults
        if saved != expected:
            diff = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
            raise SLMError("checkpoint was trained with a different model config ("
                           + ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
                           + "); resume with the same preset, or train into a new --out folder")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        self.step_losses, self.best_val = state["step_losses"], state["best_val"]
        self.train_seconds = state["train_seconds"]
        self._last_logged = {"eval": (self.step, self.train_seconds), "train": (self.step, self.train_seconds)}
        self.batches.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.is_main:
            self.metrics.rewind(self.step)  # lines logged after this checkpoint are about to be logged again

    def resume(self, path: str | Path) -> Trainer:
        """Continue from the checkpoint at ``path`` (it must match this trainer's model config)."""
        self.load_state_dict(load_checkpoint(path))  # RNG states must stay on the CPU
        return self


def describe(entry: dict) -> str:
    """One line for an evaluation: losses, perplexity, speed."""
    speed = ""
    if entry.get("tokens_per_sec"):
        share = f"{entry['mfu']:.1%}" if entry.get("mfu") is not None else "n/a"
        speed = f", {entry['tokens_per_sec']:,.0f} tokens/s, MFU {share}"
    return (f"step {entry['step']:>6}: train {entry['train']:.4f}, val {entry['val']:.4f} "
            f"(perplexity {entry['val_ppl']:.1f}){speed}")
