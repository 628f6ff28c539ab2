"""Mixed precision: the 16-bit type a run computes in, and the gradient scaler float16 needs.

Lesson 8's recipe. The weights and the optimizer stay in float32; inside ``autocast`` matrix
multiplies run in 16 bits while reductions (softmax, the loss) stay in float32. float16 overflows
above 65,504 and small gradients underflow to zero: its scaler multiplies the loss before backward
and divides the gradients after, skipping steps that overflowed. bfloat16 keeps float32's range and
needs no scaler.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .device import supports_bf16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(name: str, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """The 16-bit type to autocast to on ``device`` (None: plain float32), and a note when the
    request cannot be met as asked.

    bfloat16 keeps float32's range, so it needs no loss scaling; GPUs before Ampere (T4, V100) only
    emulate it and get float16 instead. float16 needs a CUDA GPU here (its gradient scaler and fast
    kernels); elsewhere training falls back to float32. On a CPU bfloat16 is computed correctly, but
    only CPUs with bfloat16 units (AMX, AVX512-BF16) are faster for it; "auto" keeps float32 there.
    """
    if name == "auto":
        name = ("bfloat16" if supports_bf16(device)
                else "float16") if device.type == "cuda" else "float32"
    if name == "float32":
        return None, None
    if device.type == "cuda":
        if name == "bfloat16" and not supports_bf16(device):  # emulated there: slower than float16
            return torch.float16, ("this GPU has no native bfloat16: training in float16 with a "
                                   "gradient scaler")
        return DTYPES[name], None
    if device.type == "cpu" and name == "bfloat16":
        return torch.bfloat16, None
    return None, f"{name} training needs a CUDA GPU: training in float32 on {device.type}"


class MixedPrecision:
    """A run's precision: ``dtype`` to autocast to (None: float32) and its ``scaler`` (enabled for
    float16 only; otherwise each of its calls passes the loss and the step through unchanged).

    ``name`` is ``TrainConfig.dtype``; ``note`` says why the device got another type than asked, if
    it did.
    """

    def __init__(self, name: str, device: torch.device | str):
        self.device = torch.device(device)
        self.dtype, self.note = autocast_dtype(name, self.device)
        # float16 overflows above 65,504 and small gradients underflow to zero: the scaler
        # multiplies the loss before backward and divides the
        # gradients after, skipping steps that overflowed.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)

    def autocast(self):
        """Run the enclosed forward passes in the mixed-precision type (a no-op for float32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()  # float16's current loss scale; empty otherwise

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.scaler.load_state_dict(state)
