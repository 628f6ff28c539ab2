"""LoRA (Hu et al., 2021): fine-tune a big model by training a small low-rank correction.

A ``LoRALinear`` wraps a frozen ``nn.Linear`` (weight W, out x in) and adds ``(alpha / r) · B A x``.
A (r x in) starts random and B (out x r) at zero, so a fresh adapter changes nothing: training
starts from the pretrained model exactly. Only A and B learn, r · (in + out) numbers per layer
instead of in · out, and AdamW keeps its two moments for those alone. ``merge_lora`` folds B A
into W for inference (no extra cost per token); ``remove_lora`` takes the adapters off again.

An adapter file holds A and B of every wrapped layer, the rank, alpha, the layers' names and the
shapes of the model it was made for, so loading it onto another model fails with one clear line.

What it leaves out: dropout on the adapter's input, QLoRA's 4-bit frozen weights, and adapters on
embeddings or on one head's share of a fused projection (the course's ``c_attn`` makes q, k and v
in one Linear: an adapter wraps the whole of it).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import read_state, save_checkpoint
from .errors import SLMError

# The default targets: q, k and v (one Linear), and attention's output projection, as in the paper.
ATTENTION = ("attn.c_attn", "attn.c_proj")
# Every Linear of a block: the MLP holds most of what a model knows about its tokens (lesson 13
# adapts all four at rank 4 rather than attention's two at rank 8).
EVERY_LINEAR = ATTENTION + ("mlp.c_fc", "mlp.c_proj")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) · B A x`` with ``base`` frozen and A, B trainable."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        check_rank_alpha(rank, alpha)
        self.base, self.rank, self.alpha = base, rank, alpha
        base.requires_grad_(False)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))  # (r, in)
        # B starts at zero, so the adapter changes nothing yet; A gets nn.Linear's own init
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        # alpha / r keeps the update's size about the same when r changes: retune alpha less often
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function: W + (alpha / r) · B A."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(base.weight + self.scale * self.lora_B @ self.lora_A)
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear.requires_grad_(False)


def check_rank_alpha(rank, alpha) -> None:
    if not (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1):
        raise SLMError(f"LoRA's rank must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0 < alpha < math.inf):
        raise SLMError(f"LoRA's alpha must be a number > 0, got {alpha!r}")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
             targets: tuple[str, ...] = ATTENTION) -> list[str]:
    """Freeze every parameter of ``model``, then wrap each Linear whose name ends with one of
    ``targets`` in a ``LoRALinear``; returns their names. Only the adapters' A and B train then."""
    check_rank_alpha(rank, alpha)
    if lora_layers(model):
        raise SLMError("this model has LoRA adapters already: merge_lora or remove_lora them first")
    model.requires_grad_(False)
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.endswith(tuple(targets))]
    if not names:
        raise SLMError(f"no Linear layer of the model ends with {', '.join(targets)}: "
                       f"nothing to adapt")
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha))
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight: the same outputs, a plain model again."""
    for name, layer in lora_layers(model).items():
        _replace(model, name, layer.merged())
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Take every adapter off: the frozen base layers come back, as pretrained."""
    for name, layer in lora_layers(model).items():
        _replace(model, name, layer.base)
    return model


def shape_of(model: nn.Module) -> dict:
    """The model's parameter shapes by name, the adapters' own left out: what an adapter fits."""
    return {name.replace(".base.", "."): list(p.shape) for name, p in model.named_parameters()
            if "lora_" not in name}


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write the adapters (A and B of every wrapped layer) and what they fit, atomically."""
    layers = lora_layers(model)
    if not layers:
        raise SLMError("the model has no LoRA adapters to save: add_lora first")
    first = next(iter(layers.values()))
    tensors = {f"{name}.{p}": getattr(layer, p).detach().cpu()
               for name, layer in layers.items() for p in ("lora_A", "lora_B")}
    state = {"lora": tensors, "rank": first.rank, "alpha": first.alpha, "layers": list(layers),
             "model_shape": shape_of(model)}
    return save_checkpoint(state, path)


def load_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Put the adapters of ``path`` onto ``model`` (a model without adapters, e.g. a fresh
    ``load_pretrained()``); returns the wrapped layers' names."""
    state = read_state(path, "adapter", ("lora", "rank", "alpha", "layers", "model_shape"))
    if state["model_shape"] != shape_of(model):
        raise SLMError(f"adapter {path} was made for a model of another shape than this one; "
                       f"load it onto the model it was trained on")
    names = add_lora(model, state["rank"], state["alpha"], tuple(state["layers"]))
    if names != state["layers"]:
        raise SLMError(f"adapter {path} names layers this model does not have; it is corrupt")
    try:
        for name, layer in lora_layers(model).items():
            for p in ("lora_A", "lora_B"):
                getattr(layer, p).data.copy_(state["lora"][f"{name}.{p}"])
    except (KeyError, RuntimeError):
        remove_lora(model)
        raise SLMError(f"adapter {path} lacks a layer's A or B, or holds one of the wrong shape; "
                       f"it is corrupt") from None
    return names
