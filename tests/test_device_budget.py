"""device.py and budget.py: device choice, seeding, quick mode."""

import random

import numpy as np
import pytest
import torch

from slm_helpers import device as device_mod
from slm_helpers.budget import budget, is_quick
from slm_helpers.device import environment_report, pick_device, seed_everything, supports_bf16
from slm_helpers.errors import SLMError


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
    expected = "cuda" if torch.cuda.is_available() else ("mps" if device_mod._mps_available() else "cpu")
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
    return random.random(), np.random.rand(), torch.rand(3).tolist(), torch.randint(100, (2,)).tolist()


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
    assert report["bf16 speed-up"] == "no"


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
