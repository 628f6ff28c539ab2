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
    """
    prefer = prefer or os.environ.get("SLM_DEVICE")
    if prefer:
        available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
        kind = prefer.split(":")[0]
        if kind not in available:
            raise SLMError(f"unknown device {prefer!r}; use one of cpu, cuda, mps")
        if not available[kind]:
            raise SLMError(f"device {prefer!r} is not available on this machine; use 'cpu' or leave it unset")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def supports_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast is a real speed-up on ``device`` (Ampere+ GPUs, recent MPS)."""
    device = torch.device(device)
    if device.type == "cuda":  # native bf16 arrived with Ampere (compute capability 8); older GPUs emulate it
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "mps":
        return hasattr(torch.backends.mps, "is_macos_or_newer") and torch.backends.mps.is_macos_or_newer(14, 0)
    # CPUs compute bf16 correctly but, without AMX units, slower than fp32: report no speed-up.
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
        "bf16 speed-up": "yes" if supports_bf16(device) else "no",
        "cpu threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return report
