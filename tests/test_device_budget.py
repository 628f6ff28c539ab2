"""device.py and budget.py: device choice, seeding, quick mode."""

import random

import numpy as np
import pytest
import torch

from slm_helpers import device as device_mod
from slm_helpers.budget import budget, is_quick
from slm_helpers.device import (
    environment_report,
    has_tf32,
    pick_device,
    seed_everything,
    supports_bf16,
    synchronize,
)
from slm_helpers.errors import SLMError
from slm_helpers.precision import autocast_dtype


@pytest.fixture
def cpu_only(monkeypatch):
    """Pretend there is no GPU, whatever machine runs the tests."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)


def test_pick_device_is_cpu_without_accelerators(cpu_only):
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_pick_device_prefers_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"


def test_pick_device_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if device_mod._mps_available()
                                                         else "cpu")
    assert pick_device().type == expected


def test_forcing_a_missing_device_is_an_error(cpu_only, monkeypatch):
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(SLMError, match=f"'{name}' is not available"):
            pick_device(name)
    monkeypatch.setenv("SLM_DEVICE", "cuda")
    with pytest.raises(SLMError, match="not available"):
        pick_device()
    monkeypatch.setenv("SLM_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")


def test_unknown_device_name():
    with pytest.raises(SLMError, match="unknown device 'tpu'"):
        pick_device("tpu")


def _draws():
    return random.random(), np.random.rand(), torch.rand(3).tolist(), torch.randint(100,
                                                                                    (2,)).tolist()


def test_seed_everything_repeats_every_generator():
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    other = _draws()
    assert all(a != b for a, b in zip(first, other))  # each of the three libraries was reseeded


def test_cpu_report(cpu_only):
    assert supports_bf16("cpu") is False
    report = environment_report(torch.device("cpu"))
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    assert report["trains in bf16"] == "no" and report["TF32 matmuls"] == "no"


@pytest.mark.parametrize("value, quick", [
    ("1", True), ("true", True), ("yes", True), (" TRUE ", True),
    ("0", False), ("", False), ("false", False), ("No", False), (None, False),
])
def test_quick_mode_switch(monkeypatch, value, quick):
    if value is None:
        monkeypatch.delenv("SLM_QUICK", raising=False)
    else:
        monkeypatch.setenv("SLM_QUICK", value)
    assert is_quick() is quick
    assert budget(full=5000, quick=20) == (20 if quick else 5000)


@pytest.mark.parametrize("capability, expected", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_supports_bf16_only_natively_on_cuda(monkeypatch, capability, expected):
    # A T4 (7.5) emulates bf16 slowly; Ampere (8.x) and Hopper (9.x) have it in hardware.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert supports_bf16(torch.device("cuda")) is expected


@pytest.fixture
def tf32_off():
    """TF32 switched off, then put back as it was (the flags are global)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_pick_device_turns_on_tf32_only_for_cuda(monkeypatch, tf32_off):
    monkeypatch.delenv("SLM_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    assert pick_device().type == "cpu" and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert has_tf32("cuda") and not has_tf32("cpu")
    # a T4 has no TF32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not has_tf32("cuda")


@pytest.mark.parametrize("kind, capability",
                         [("cpu", None), ("mps", None), ("cuda", (7, 5)), ("cuda", (8, 0))])
def test_supports_bf16_agrees_with_the_training_dtype(monkeypatch, kind, capability):
    # Lesson 8 prints supports_bf16 as "bfloat16 chosen
    # by dtype=auto": it must be what training does.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    device = torch.device(kind)
    assert supports_bf16(device) == (autocast_dtype("auto", device)[0] is torch.bfloat16)


def test_synchronize_waits_for_cuda_and_mps(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    for kind in ("cpu", "cuda", "mps"):
        synchronize(torch.device(kind))
    assert calls == ["cuda", "mps"]
