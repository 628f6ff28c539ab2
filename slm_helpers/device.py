"""Pick the fastest device, say what it can do, and seed every random number generator."""

from __future__ import annotations

import os
import platform
import random
import sys

import numpy as np
import torch

from .errors import SLMError


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU.

    ``prefer`` (or the ``SLM_DEVICE`` environment variable) forces one, for example "cpu"
    to compare speeds; asking for a device that is not there is an error, not a silent fallback.
    On CUDA, float32 matrix multiplies may then use TF32 tensor cores (see ``use_tf32``).
    """
    prefer = prefer or os.environ.get("SLM_DEVICE")
    if prefer:
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
        kind = prefer.split(":")[0]
        if kind not in available:
            raise SLMError(f"unknown device {prefer!r}; use one of cpu, cuda, mps")
        if not available[kind]:
            raise SLMError(f"device {prefer!r} is not available on this machine; use 'cpu' or "
                           "leave it unset")
        device = torch.device(prefer)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif _mps_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        use_tf32()
    return device


def use_tf32() -> None:
    """Let float32 matrix multiplies on CUDA use TF32 tensor cores (Ampere and newer; ignored
    before).

    TF32 keeps float32's range with a 10-bit mantissa, like float16's: several times faster, and
    training curves are indistinguishable (nanoGPT and most training code turn it on). Only CUDA
    matmuls and convolutions are affected; CPU results stay bit for bit the same.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def has_tf32(device: torch.device | str) -> bool:
    """Whether float32 matrix multiplies on ``device`` run on TF32 tensor cores right now."""
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
            and torch.backends.cuda.matmul.allow_tf32)


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished its queued work. GPUs (CUDA and Apple's MPS) run
    asynchronously: without this, a timer stops when the work is queued, not when it is done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def supports_bf16(device: torch.device | str) -> bool:
    """Whether training on ``device`` uses bfloat16 when asked for ``dtype: auto``: a CUDA GPU with
    native bfloat16 (Ampere or newer: A100, H100, L4, RTX 30xx/40xx).

    Older GPUs (T4, V100) only emulate bfloat16 and get float16 instead. Apple silicon computes
    bfloat16 on macOS 14 or later, but autocast on MPS is recent in PyTorch and not a dependable
    speed-up for models this small, so the course trains in float32 there. CPUs compute bfloat16
    correctly but, without AMX units, slower than float32. ``precision.autocast_dtype`` follows this
    answer.
    """
    device = torch.device(device)
    # native bf16 arrived with Ampere (compute capability 8); older GPUs emulate it
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) so a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def environment_report(device: torch.device | None = None) -> dict[str, str]:
    """The facts a bug report needs: versions, device, what the device supports."""
    device = device or pick_device()
    report = {
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "device": str(device),
        "trains in bf16": "yes" if supports_bf16(device) else "no",
        "TF32 matmuls": "yes" if has_tf32(device) else "no",
        "cpu threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return report
