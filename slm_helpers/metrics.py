"""Measuring a run: FLOPs per token, model FLOPs utilisation (MFU), and the metrics log on disk.

MFU answers "how much of the hardware did the training use?": the FLOPs the model needs per second
at the measured speed, divided by what the device can do at best. Good large runs reach 40-50%; a
small model on one GPU often 10-30%, because small matrix multiplies cannot fill the device.

Every run with an output folder appends one JSON object per line to ``metrics.jsonl`` (an
evaluation, and optionally the training loss every few steps), so the curves can be redrawn at any
time with ``plotting.plot_metrics``, even while the run goes on. Weights & Biases gets the same
records when ``wandb: true`` (set ``WANDB_MODE=offline`` to log without an account or a network).
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path

import torch

from .errors import SLMError

# Dense bfloat16/float16 tensor-core peaks from NVIDIA's data sheets, in FLOP/s, matched against
# torch.cuda.get_device_name in this order (the first match wins, so "H100 PCIe" precedes "H100").
# MFU is measured against this 16-bit peak, as nanoGPT and PaLM do, also for a float32 run.
PEAK_FLOPS = [
    (r"H200|GH200", 989e12),
    (r"H100.*PCIe", 756e12),
    (r"H100", 989e12),
    (r"A100", 312e12),
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
    (r"A6000", 155e12),
    (r"V100", 125e12),
    (r"\bT4\b", 65e12),
    (r"RTX 4090", 165e12),
    (r"RTX 3090", 71e12),
]


def peak_flops(device: torch.device | str) -> float | None:
    """The 16-bit peak FLOP/s of a known GPU; None for the CPU, MPS and GPUs not in the table."""
    device = torch.device(device)
    if device.type != "cuda":
        return None  # CPUs vary too much (cores, vector units, clocks) for one honest number
    name = torch.cuda.get_device_name(device)
    return next((flops for pattern, flops in PEAK_FLOPS if re.search(pattern, name)), None)


def flops_per_token(model, seq_len: int | None = None) -> int:
    """Training FLOPs per token of a GPT: 6N + 12·L·H·Q·T (the PaLM paper's appendix B, as in
    nanoGPT).

    6N: each parameter does a multiply and an add per token (2 FLOPs) forward and twice that
    backward. 12·L·H·Q·T: attention's own matrix multiplies (scores and weighted sum), which have no
    parameters; L layers, H heads of Q dimensions, T tokens of context (``seq_len``, default
    ``block_size``). N is ``num_params()``: every matrix that multiplies, so the output layer
    counts and the lookups do not (no multiplies): the position embedding never, the token embedding
    only when it is tied to the output layer (then it is that layer, counted once).
    """
    c = model.config
    return (6 * model.num_params()
            + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * (seq_len or c.block_size))


# Colab's free GPU, from the table above. Small models reach only a fraction of its peak; the
# fraction below is an assumption (no T4 run has measured
# it yet), used for the lessons' time estimates.
T4_PEAK_FLOPS = dict(PEAK_FLOPS)[r"\bT4\b"]
ASSUMED_T4_MFU = 0.2


def run_flops(run, vocab_size: int) -> float:
    """FLOPs of a whole training run of ``run`` (a config.RunConfig): every training step at
    ``flops_per_token``, and every evaluation (``eval_iters`` batches of both splits, at each
    ``eval_interval`` and at the end), whose forward pass costs a third of a training step."""
    from .model import GPT

    with torch.device("meta"):  # the shapes without the memory
        model = GPT(run.gpt_config(vocab_size))
    t = run.train
    tokens = t.batch_size * (t.seq_len or model.block_size)
    evaluations = t.max_iters // t.eval_interval + 1 + (t.max_iters % t.eval_interval > 0)
    eval_tokens = evaluations * 2 * t.eval_iters * tokens
    return flops_per_token(model,
                           t.seq_len
                           or None) * (t.max_iters * t.grad_accum * tokens + eval_tokens / 3)


def estimate_seconds(run, vocab_size: int, peak: float = T4_PEAK_FLOPS,
                     utilisation: float = ASSUMED_T4_MFU) -> float:
    """Seconds a run should take on a GPU of 16-bit ``peak`` FLOP/s used at ``utilisation``
    (default: a Colab T4 at 20%): an estimate from FLOPs alone, for choosing step counts before
    anyone has timed it."""
    return run_flops(run, vocab_size) / (peak * utilisation)


def mfu(tokens_per_sec: float | None, flops_per_token: float | None, peak: float | None,
        devices: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of ``devices`` devices; None when
    unknown."""
    if not (tokens_per_sec and flops_per_token and peak):
        return None
    return tokens_per_sec * flops_per_token / (peak * devices)


def throughput(steps: int, seconds: float, tokens_per_step: int,
               flops_per_token: float | None = None,
               peak: float | None = None, devices: int = 1) -> dict:
    """Tokens per second and MFU of ``steps`` steps that took ``seconds`` (None for either when
    unknown)."""
    tokens_per_sec = steps * tokens_per_step / seconds if steps and seconds > 0 else None
    return {"tokens_per_sec": tokens_per_sec,
            "mfu": mfu(tokens_per_sec, flops_per_token, peak, devices)}


class Throughput:
    """A run's speed bookkeeping: tokens/s and MFU since the last record of each kind ("eval",
    "train").

    ``tokens_per_step`` counts every micro-batch of every process; ``devices`` is their number. The
    FLOPs per token are known for models with a GPT ``config``, the peak for the GPUs of
    ``PEAK_FLOPS``."""

    def __init__(self, model, device: torch.device | str, tokens_per_step: int, devices: int = 1,
                 seq_len: int | None = None):
        self.flops_per_token = flops_per_token(model, seq_len) if hasattr(model, "config") else None
        self.peak_flops = peak_flops(device)
        self.tokens_per_step, self.devices = tokens_per_step, devices
        self.restart(0, 0.0)

    def restart(self, step: int, seconds: float) -> None:
        """Count from ``step`` at ``seconds`` of training for every kind (a new or resumed run)."""
        self._last = {"eval": (step, seconds), "train": (step, seconds)}

    def since(self, kind: str, step: int, seconds: float) -> dict:
        """Tokens/s and MFU since the last record of ``kind``, which this one becomes."""
        last_step, last_seconds = self._last[kind]
        self._last[kind] = (step, seconds)
        return throughput(step - last_step, seconds - last_seconds, self.tokens_per_step,
                          self.flops_per_token,
                          self.peak_flops, self.devices)


def describe(entry: dict) -> str:
    """One line for an evaluation: losses, perplexity and speed, each where ``entry`` has it."""
    losses = ", ".join(f"{split} {entry[split]:.4f}" for split in ("train", "val")
                       if split in entry)
    line = f"step {entry['step']:>6}: {losses}"
    if entry.get("val_ppl") is not None:
        line += f" (perplexity {entry['val_ppl']:.1f})"
    if entry.get("tokens_per_sec"):
        share = f"{entry['mfu']:.1%}" if entry.get("mfu") is not None else "n/a"
        line += f", {entry['tokens_per_sec']:,.0f} tokens/s, MFU {share}"
    return line


class MetricsLog:
    """Appends records to a JSONL file (one JSON object per line), and to Weights & Biases if asked.

    ``path`` None writes no file. With ``wandb_project`` the wandb package is imported here, so a
    missing package is an error before training starts, not after; without it wandb is never
    imported.
    """

    def __init__(self, path: str | Path | None, *, wandb_project: str | None = None,
                 run_name: str | None = None,
                 run_config: dict | None = None):
        self.path = Path(path) if path is not None else None
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise SLMError("train.wandb is true but the wandb package is not installed; "
                               "pip install wandb, or set train.wandb=false") from None
            self.wandb = wandb
        self.project, self.run_name, self.run_config = wandb_project, run_name, run_config or {}
        self._run = None
        self._run_id = None

    def rewind(self, step: int) -> None:
        """Forget records after ``step``: a run resumed from its checkpoint at ``step`` logs them
        again."""
        if self.path is None or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut short by the crash that stopped the run
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one record (it must have ``step`` and ``kind``: "eval" or "train")."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # opened per line: every line is on disk at once
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            # the same id: a second fit() of the same trainer continues the same wandb run
            if self._run is None:
                self._run = self.wandb.init(project=self.project, name=self.run_name,
                                            config=self.run_config,
                                            id=self._run_id, resume="allow",
                                            dir=str(self.path.parent) if self.path is not None
                                            else None)
                self._run_id = self._run.id
            numbers = {f"{record['kind']}/{k}": v for k, v in record.items()
                       if k not in ("step", "kind") and isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            self._run.log(numbers, step=record["step"])

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (or of the one in a run folder), optionally of one
    kind."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise SLMError(f"no metrics log at {path}; train with an output folder to write one")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise SLMError(f"{path} line {number} is not JSON; was the file edited by "
                           "hand?") from None
    return [r for r in records if kind is None or r.get("kind") == kind]


def activation_memory(model, x: torch.Tensor, y: torch.Tensor, autocast=None) -> int:
    """Bytes that autograd keeps from one forward pass of ``model(x, y)`` for the backward pass.

    This is the memory that grows with batch size and context (the parameters, saved too, are not
    counted), and what mixed precision halves and the fused attention kernel shrinks: the explicit
    path keeps every T x T attention matrix. It is measured the same way on every device.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()  # a tensor saved twice is stored once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast or nullcontext():
        model(x, y)
    return sum(saved.values())


def measure_throughput(trainer, steps: int = 5, warmup: int = 1) -> dict:
    """Speed and memory of ``trainer``'s recipe: ``warmup`` untimed steps (compilation, allocator
    caches), then ``steps`` timed ones. The trainer trains while it is measured.

    Returns tokens/s, MFU (None without a known peak), milliseconds per step, the activation memory
    of one micro-batch (``activation_memory``, eager models only) and, on CUDA, the allocator's
    peak.
    """
    for _ in range(warmup):
        trainer.train_step()
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    start = trainer.train_seconds
    for _ in range(steps):
        trainer.train_step()
    seconds = trainer.train_seconds - start
    per_token = trainer.speed.flops_per_token
    speed = throughput(steps, seconds, trainer.tokens_per_step, per_token, trainer.speed.peak_flops,
                       trainer.world_size)
    activations = None
    if not trainer.cfg.compile:
        source = trainer.sources["train"]
        x, y = source.batch(source.draw(trainer.cfg.batch_size), trainer.device)
        activations = activation_memory(trainer.model, x, y, trainer.amp.autocast())
    return {**speed,
            "model_tflops": speed["tokens_per_sec"] * per_token / 1e12 if per_token else None,
            "ms_per_step": 1000 * seconds / steps,
            "activation_mb": activations / 2**20 if activations is not None else None,
            "peak_memory_mb": torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda
            else None}
