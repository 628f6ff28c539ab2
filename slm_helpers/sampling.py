"""Turning a model's next-token logits into text: temperature, top-k, top-p, greedy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SLMError


def check_options(*, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  max_new_tokens: int = 1) -> None:
    """Raise a one-line SLMError for an option no sampler can honour."""
    if temperature < 0:
        raise SLMError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise SLMError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise SLMError(f"top_p must be in (0, 1] (or None for no limit), got {top_p}")
    if max_new_tokens < 0:
        raise SLMError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def next_token_probs(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> torch.Tensor:
    """The distribution a sampler draws from, given logits of shape (B, V). Temperature 0 puts all
    mass on the most likely token (greedy)."""
    check_options(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):  # k beyond the vocabulary keeps every token
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least one).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend each row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens.

    Only the last ``model.block_size`` tokens are fed back in: a prompt longer than the context
    is cropped from the left, as the model cannot see further back anyway.
    """
    check_options(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.block_size:])
        probs = next_token_probs(logits[:, -1, :], temperature=temperature, top_k=top_k, top_p=top_p)
        next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
        idx = torch.cat([idx, next_id], dim=1)
    model.train(was_training)
    return idx


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 200, *, seed: int | None = None,
             **options) -> str:
    """The prompt followed by ``max_new_tokens`` sampled tokens, as text. ``seed`` makes it repeatable."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt or "\n")  # an empty prompt starts the model at a line break
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = generate(model, torch.tensor([ids], device=device), max_new_tokens, generator=generator, **options)
    return tokenizer.decode(out[0].tolist()[0 if prompt else len(ids):])
