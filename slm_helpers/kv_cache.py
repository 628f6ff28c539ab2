"""The KV cache of lesson 9: each attention layer's keys and values of the tokens seen so far.

A token's key and value depend only on the tokens up to it, so once computed they never change:
generation keeps them and runs the model on one new token per step. ``GPT.new_cache`` makes one
``KVCache`` per layer; ``CausalSelfAttention`` appends to it.

What it leaves out: paged or shared memory between sequences (vLLM's), and quantized caches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SLMError


class KVCache:
    """One attention layer's keys and values, in buffers filled from the left.

    ``length`` says how many positions hold real data and ``position`` how many tokens the cache has
    seen (the position of the next one). The buffers start at ``reserve`` positions (default:
    ``block_size``) and double when they fill, up to ``block_size``: a chat reply needs its prompt
    and its reply, not a real model's 8,192-token context. (New, lesson 12.)

    # New (lesson 11): ``slide=True`` (RoPE models) lets it run past ``block_size`` tokens. The
    oldest keys and values are dropped and nothing is recomputed: every token then attends to itself
    and the ``block_size - 1`` tokens before it, at every layer, with the keys and values those
    tokens got when they were new. That is exactly sliding-window attention over the whole text
    (what ``GPT.forward`` computes on a sequence longer than ``block_size``), not the model rerun on
    the last ``block_size`` tokens. With learned positions a cache cannot slide: every position
    would shift.
    """

    def __init__(self, batch_size: int, n_head: int, block_size: int, head_size: int, device=None,
                 dtype=torch.float32, slide: bool = False, reserve: int | None = None):
        positions = block_size if reserve is None else max(1, min(reserve, block_size))
        # (B, nh, T, hs)
        self.k = torch.zeros(batch_size, n_head, positions, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.block_size = block_size
        self.length = 0
        self.position = 0
        self.slide = slide

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of the new positions after the cached ones; return all of them
        (the cached ones first). Their positions end at ``position``, which this call advances."""
        # grow the buffers, up to block_size
        if self.length + k.size(2) > self.k.size(2) < self.block_size:
            grown = min(self.block_size, max(self.length + k.size(2), 2 * self.k.size(2)))
            self.k, self.v = (F.pad(t, (0, 0, 0, grown - t.size(2))) for t in (self.k, self.v))
        capacity, end = self.k.size(2), self.length + k.size(2)
        self.position += k.size(2)
        if end <= capacity:
            self.k[:, :, self.length:end], self.v[:, :, self.length:end] = k, v
            self.length = end
            return self.k[:, :, :end], self.v[:, :, :end]
        if not self.slide:
            raise SLMError(f"the KV cache holds {capacity} positions and {end} were asked for; "
                           "with learned positions, start a new cache (sampling does this for you)")
        # The new queries may still need the old keys, so all of them go into this call's attention;
        # the next token sees itself and the block_size - 1 before it, so that many are kept.
        keys = torch.cat([self.k[:, :, :self.length], k], dim=2)
        values = torch.cat([self.v[:, :, :self.length], v], dim=2)
        self.length = capacity - 1
        self.k[:, :, :self.length], self.v[:, :, :self.length] = keys[:, :,
                                                                      -self.length:], values[:, :,
                                                                                             -self.length:]
        return keys, values

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` (in that order): beam search continues some beams twice, others
        not at all."""
        self.k, self.v = self.k[index], self.v[index]
