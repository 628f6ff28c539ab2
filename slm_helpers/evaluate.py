"""How good is a language model? Its loss over a whole split, perplexity and bits per byte.

- loss: the mean negative log-likelihood of each token given the ones before it, in nats
  (what training minimises);
- perplexity = exp(loss): the model is as unsure as a fair choice among that many tokens;
- bits per token = loss / ln 2;
- bits per byte = all the bits the model needs for the text / the text's UTF-8 bytes. Only this
  one compares models whose tokenizers differ: a BPE token stands for several bytes, so its loss
  per token is higher than a character model's for the same quality.

``estimate_loss`` is the trainer's quick measure during training: the mean loss of a few random
batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import as_source
from .errors import SLMError
from .utils import eval_mode


@dataclass(frozen=True)
class Evaluation:
    loss: float  # nats per token
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text those tokens stand for

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / self.bytes

    @property
    def bits_per_byte(self) -> float:
        return self.bits_per_token * self.tokens_per_byte

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity,
                "bits per token": self.bits_per_token,
                "tokens per byte": self.tokens_per_byte, "bits per byte": self.bits_per_byte}


def _windows(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, new) for each window: inputs ids[begin:end], targets ids[begin + 1:end + 1], of
    which the last ``new`` have not been scored by an earlier window. Every target is scored
    once."""
    out, scored_until = [], 0
    for begin in range(0, n - 1, stride):
        end = min(begin + block_size, n - 1)
        out.append((begin, end, end - scored_until))
        scored_until = end
        if end == n - 1:
            break
    return out


@torch.no_grad()
def split_loss(model, ids, *, block_size: int | None = None, stride: int | None = None,
               batch_size: int = 32) -> tuple[float, int]:
    """Mean loss (nats per token) of predicting every token of ``ids`` from the ones before it, and
    how many tokens that is (the first token has nothing before it and is not scored).

    The text is cut into windows of ``block_size`` tokens (default: the model's) every ``stride``
    tokens (default: ``block_size``, windows side by side, as in training). A smaller stride gives
    each scored token at least ``block_size - stride`` tokens of context, at more cost.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten().cpu()
    block_size = block_size or model.block_size
    stride = stride or block_size
    if not (isinstance(stride, int) and 1 <= stride <= block_size):
        raise SLMError(f"stride must be between 1 and block_size ({block_size}), got {stride!r}")
    if len(ids) < 2:
        raise SLMError(f"need at least two tokens to measure a loss, got {len(ids)}")
    device = next(model.parameters()).device
    windows = _windows(len(ids), block_size, stride)
    total, count = 0.0, 0
    with eval_mode(model):
        # equal lengths batch together
        for length in sorted({end - begin for begin, end, _ in windows}):
            same = [w for w in windows if w[1] - w[0] == length]
            for i in range(0, len(same), batch_size):
                batch = same[i:i + batch_size]
                x = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
                y = torch.stack([ids[b + 1:e + 1] for b, e, _ in batch]).to(device)
                nll = F.cross_entropy(model(x)[0].float().flatten(0, 1), y.flatten(),
                                      reduction="none")
                new = torch.tensor([n for _, _, n in batch], device=device)
                # the last `new` of each row
                scored = torch.arange(length, device=device) >= length - new[:, None]
                # Each batch is summed in float32 and the batches in a Python float (float64): exact
                # enough for a million tokens, with no float64
                # tensor on the device (Apple's MPS has none).
                total += nll.view(len(batch), length)[scored].sum().item()
                count += sum(n for _, _, n in batch)
    return total / count, count


def evaluate_ids(model, ids, n_bytes: int, **kwargs) -> Evaluation:
    """``split_loss`` of ``ids`` as an Evaluation; ``n_bytes``: UTF-8 bytes of the scored tokens."""
    loss, tokens = split_loss(model, ids, **kwargs)
    return Evaluation(loss, tokens, n_bytes)


def scored_bytes(tokenizer, text: str, ids) -> int:
    """UTF-8 bytes of ``text`` that the scored tokens (all but the first) stand for.

    A byte-level BPE token may hold part of a character (the first two bytes of a three-byte one,
    say): its bytes come from ``decode_bytes``, since decoding it alone as text gives a replacement
    character."""
    first = ids[:1].tolist() if hasattr(ids, "tolist") else list(ids[:1])
    first_bytes = (tokenizer.decode_bytes(first) if hasattr(tokenizer, "decode_bytes")
                   else tokenizer.decode(first).encode("utf-8"))
    return len(text.encode("utf-8")) - len(first_bytes)


def evaluate_text(model, tokenizer, text: str, **kwargs) -> Evaluation:
    """Loss, perplexity and bits per byte of ``model`` on ``text`` (keywords: see
    ``split_loss``)."""
    ids = tokenizer.encode(text)
    return evaluate_ids(model, ids, scored_bytes(tokenizer, text, ids), **kwargs)


@torch.no_grad()
def estimate_loss(model, splits: dict, *, batch_size: int, block_size: int,
                  eval_iters: int, device: torch.device | str = "cpu", seed: int = 0) -> dict[str,
                                                                                              float]:
    """Mean loss over ``eval_iters`` random batches of each split, in eval mode (no dropout). A
    split is a token stream (windows of ``block_size`` tokens) or a batch source (data.py).

    It draws from its own generator seeded with ``seed``, so measuring never changes what training
    sees.
    """
    out = {}
    with eval_mode(model):
        for name, data in splits.items():
            source = as_source(data, block_size, name)
            generator = torch.Generator().manual_seed(seed)
            losses = torch.empty(eval_iters)
            for i in range(eval_iters):
                x, y = source.batch(source.draw(batch_size, generator), device)
                losses[i] = model(x, y)[1].item()
            out[name] = losses.mean().item()
    return out
