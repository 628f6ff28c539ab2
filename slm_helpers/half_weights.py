"""Float16 weights for a faster decode on a CPU: half the bytes to read for every new token.

Generating one token multiplies each weight matrix by one vector: every weight is read once and used
in one multiply-add, so the speed of memory, not of arithmetic, sets the pace. Stored in 2 bytes
instead of 4, the weights are read in about half the time. Only the Linear layers change; the
embedding, the norms, the activations between layers and the KV cache stay float32.

What it leaves out: training (the weights become buffers, frozen), GPUs (there the whole model runs
in bfloat16 or float16 already), and 8- or 4-bit kernels (llama.cpp computes on the quantized blocks
directly, reading 1/8 of the float32 bytes).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SLMError


class HalfLinear(nn.Module):
    """A frozen ``nn.Linear`` whose weight is stored in float16; it takes and returns float32.

    One position (a single new token) is a matrix-vector product, done in float16: PyTorch's CPU
    kernel for it reads the 2-byte weights as they are. A prompt of many positions is a
    matrix-matrix product, which CPUs without 16-bit arithmetic (most laptops: AVX2) run several
    times slower in float16 than in float32, so there the weights are turned back into float32
    first: one conversion per prompt.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().half())  # (out_features, in_features)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.size(-1):  # one vector: matrix-vector, in float16
            y = F.linear(x.half(), self.weight).to(x.dtype)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight.to(x.dtype), self.bias)


def half_weights(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of a float32 ``model`` by a ``HalfLinear``, in place; returns the
    model.

    A tied output layer gets its own float16 copy of the embedding (the embedding itself stays
    float32)."""
    kinds = {m.weight.dtype for m in model.modules() if isinstance(m, nn.Linear)}
    if kinds - {torch.float32}:
        raise SLMError("half_weights expects a float32 model (it is a CPU speed-up), got "
                       "weights in "
                       f"{', '.join(sorted(map(str, kinds)))}: load the model in float32")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, HalfLinear(child))
    return model
