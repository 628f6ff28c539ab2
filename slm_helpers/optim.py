"""Muon for the hidden matrices, AdamW for the rest: the optimizer of lesson 11's fast recipe.

Adam scales each number of a gradient by its own running size. Muon (Keller Jordan, 2024) treats a
weight matrix as a whole: it keeps a momentum of the gradient, then replaces that matrix by the
nearest orthogonal one, U Vᵀ for the momentum's SVD U S Vᵀ, so every direction the layer can
change in moves by the same amount, however small its gradient was. An SVD is slow, so five
steps of a Newton-Schulz iteration approximate it with a few matrix products (``orthogonalize``).

Muon is for the 2-D weights inside the blocks. Embeddings are lookups, not linear maps, the output
layer's rows are scored one against another, and gains are vectors: AdamW keeps those.
``MuonAdamW`` is one optimizer holding both kinds of group, so the trainer, the gradient scaler and
checkpoints treat it like any other.

What it leaves out: the distributed version (each process orthogonalising its share of the matrices)
and Nesterov-free momentum. ``torch.optim.Muon`` (torch 2.9+) computes the same Muon update; the
tests check the two agree.
"""

from __future__ import annotations

import math

import torch

# Coefficients of the quintic a·x + b·x³ + c·x⁵ that pushes every singular value towards 1 fastest.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U Vᵀ of ``g`` = U S Vᵀ: the same singular vectors, singular values pushed towards 1
    (after five steps the large ones land between about 0.7 and 1.2 and the tiny ones rise by orders of
    magnitude; exactness buys nothing in training).

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

    def __init__(self, groups: list[dict], *, lr: float = 1e-3, momentum: float = 0.95, ns_steps: int = 5,
                 ns_dtype: torch.dtype | None = None, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, ns_dtype=ns_dtype, betas=betas, eps=eps,
                        weight_decay=weight_decay, muon=False)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon updates 2-D weight matrices only; give other parameters to AdamW groups")

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
            state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        # Both averages start at zero: dividing by 1 - beta^step undoes that bias in the first steps.
        step_size = group["lr"] / (1 - beta1 ** state["step"])
        denominator = (state["exp_avg_sq"] / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denominator, value=-step_size)
