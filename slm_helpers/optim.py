"""Muon for the hidden matrices, AdamW for the rest: the optimizer of lesson 11's fast recipe.

Adam scales each number of a gradient by its own running size. Muon (Keller Jordan, 2024) treats a
weight matrix as a whole: it keeps a momentum of the gradient, then replaces that matrix by the
nearest orthogonal one, U Vᵀ for the momentum's SVD U S Vᵀ, so every direction the layer can
change in moves by the same amount, however small its gradient was. An SVD is slow, so five
steps of a Newton-Schulz iteration approximate it with a few matrix products (``orthogonalize``).

Muon is for the 2-D weights inside the blocks. Embeddings are lookups, not linear maps, the output
layer's rows are scored one against another, and gains are vectors: AdamW keeps those.
``MuonAdamW`` is one optimizer holding both kinds of group, so the trainer, the gradient scaler and
checkpoints treat it like any other. ``make_optimizer`` sorts a model's parameters by the kind of
module that holds them (``param_kinds``) and builds the trainer's optimizer: AdamW, or Muon and
AdamW.

What it leaves out: the distributed version (each process orthogonalising its share of the matrices)
and Nesterov-free momentum. ``torch.optim.Muon`` (torch 2.9+) computes the same Muon update; the
tests check the two agree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .errors import SLMError

if TYPE_CHECKING:
    from .train import TrainConfig

# Coefficients of the quintic a·x + b·x³ + c·x⁵ that pushes every singular value towards 1 fastest.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U Vᵀ of ``g`` = U S Vᵀ: the same singular vectors, singular values pushed
    towards 1 (after five steps the large ones land between about 0.7 and 1.2 and the tiny ones rise
    by orders of magnitude; exactness buys nothing in training).

    Each step applies p(x) = a·x + b·x³ + c·x⁵ to the singular values (X Xᵀ X has the same singular
    vectors as X, with values cubed). Dividing by the norm first puts them all in (0, 1].
    ``dtype``: bfloat16 on GPUs (fast, and precise enough), float32 by default.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or torch.float32)
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.mT  # work on the short side: X Xᵀ is then the smaller square
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.mT  # (rows, rows)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·gram + c·gram², in one call
        x = torch.addmm(x, poly, x, beta=a)  # a·x + b·(x xᵀ) x + c·(x xᵀ)² x
    return (x if wide else x.mT).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Parameter groups with ``"muon": True`` get Muon updates; the others AdamW updates, as
    ``torch.optim.AdamW`` makes them.

    Muon's step for a matrix W of shape (rows, cols) with gradient G::

        m = β·m + (1 - β)·G                       # momentum
        u = orthogonalize((1 - β)·G + β·m)        # Nesterov: look one step ahead
        W = W·(1 - lr·wd) - lr·sqrt(max(1, rows/cols))·u

    The orthogonalised update has entries of size about 1/sqrt(cols); the square root keeps a tall
    matrix's update as large, per entry, as a square one's (``torch.optim.Muon``'s "original" rule).
    """

    def __init__(self, groups: list[dict], *, lr: float = 1e-3, momentum: float = 0.95,
                 ns_steps: int = 5,
                 ns_dtype: torch.dtype | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8,
                 weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, ns_dtype=ns_dtype, betas=betas,
                        eps=eps,
                        weight_decay=weight_decay, muon=False)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise SLMError("Muon updates 2-D weight matrices only; give other parameters to "
                               "AdamW groups")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            update = self._muon if group["muon"] else self._adamw
            for p in group["params"]:
                if p.grad is not None:
                    update(p, self.state[p], group)
        return loss

    @staticmethod
    def _muon(p: torch.Tensor, state: dict, group: dict) -> None:
        beta = group["momentum"]
        if not state:
            state["momentum"] = torch.zeros_like(p)
        m = state["momentum"].lerp_(p.grad, 1 - beta)
        u = orthogonalize(p.grad.lerp(m, beta), group["ns_steps"], group["ns_dtype"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(u, alpha=-group["lr"] * math.sqrt(max(1.0, p.size(0) / p.size(1))))

    @staticmethod
    def _adamw(p: torch.Tensor, state: dict, group: dict) -> None:
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        # Both averages start at zero: dividing by 1 -
        # beta^step undoes that bias in the first steps.
        step_size = group["lr"] / (1 - beta1 ** state["step"])
        denominator = ((state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_()
                       .add_(group["eps"]))
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denominator, value=-step_size)


def param_kinds(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters of ``model`` by the module that holds them, each once (a tied matrix
    under the module that comes first, the token embedding), in ``model.parameters()`` order:

    - ``embedding``: the weights of ``nn.Embedding`` lookups (tokens, positions);
    - ``hidden``: the weight matrices inside the transformer blocks (``model.Block``),
    ``nn.Linear``'s;
    - ``matrix``: the other weight matrices (an output layer of its own);
    - ``vector``: what only scales or shifts (1-D): norms' gains and biases, Linear's biases."""
    from .model import Block

    in_blocks = {id(p) for module in model.modules() if isinstance(module, Block)
                 for p in module.parameters()}
    kinds: dict[str, list[nn.Parameter]] = {"embedding": [], "hidden": [], "matrix": [],
                                            "vector": []}
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Embedding):
                kind = "embedding"
            elif p.dim() < 2:  # a norm's gain or bias, a Linear's bias
                kind = "vector"
            else:  # nn.Linear's weight (and any other matrix)
                kind = "hidden" if id(p) in in_blocks else "matrix"
            kinds[kind].append(p)
    return kinds


def make_optimizer(model: nn.Module, cfg: TrainConfig,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the weight matrices and embeddings only: decaying biases,
    LayerNorm gains or (1-D) scales would pull them towards zero for no benefit.

    New (lesson 11): with ``optimizer`` "muon", the weight matrices inside the blocks get Muon at
    ``muon_lr``, the embeddings AdamW at ``embedding_lr`` and the rest AdamW at ``learning_rate``.
    Each group's ``lr_scale`` is its peak rate over ``learning_rate``: the schedule scales them
    together. ``optimizer`` "adamw-groups" builds the same groups with AdamW at ``learning_rate``
    for the block matrices: Muon against AdamW with everything else equal."""
    kinds = param_kinds(model)
    if cfg.optimizer == "adamw":
        decayed = _in_model_order(model, kinds, "embedding", "hidden", "matrix")
        groups = [{"params": decayed, "weight_decay": cfg.weight_decay},
                  {"params": kinds["vector"], "weight_decay": 0.0}]
        # fused: one CUDA kernel updates every parameter, instead of a handful of kernels per tensor
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                 eps=cfg.adam_eps,
                                 fused=device.type == "cuda")
    if cfg.optimizer not in ("muon", "adamw-groups"):
        raise SLMError(f"unknown optimizer {cfg.optimizer!r}; choose adamw, muon or adamw-groups")
    muon = cfg.optimizer == "muon"
    embedding_scale = (cfg.embedding_lr or cfg.learning_rate) / cfg.learning_rate
    groups = [
        {"params": kinds["hidden"], "muon": muon,
         "lr_scale": cfg.muon_lr / cfg.learning_rate if muon else 1.0},
        {"params": kinds["embedding"], "lr_scale": embedding_scale,
         "weight_decay": cfg.weight_decay},
        {"params": kinds["matrix"], "weight_decay": cfg.weight_decay},
        {"params": kinds["vector"], "weight_decay": 0.0},
    ]
    # bfloat16 Newton-Schulz on GPUs (tensor cores);
    # CPUs without bfloat16 units are faster in float32.
    return MuonAdamW([g for g in groups if g["params"]], lr=cfg.learning_rate,
                     momentum=cfg.muon_momentum,
                     ns_dtype=torch.bfloat16 if device.type == "cuda" else None,
                     betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def _in_model_order(model: nn.Module, kinds: dict, *names: str) -> list[nn.Parameter]:
    """The parameters of the kinds ``names``, in ``model.parameters()`` order (a checkpoint's
    optimizer state is matched to the parameters by position)."""
    wanted = {id(p) for name in names for p in kinds[name]}
    return [p for p in model.parameters() if id(p) in wanted]
