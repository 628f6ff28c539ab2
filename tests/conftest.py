"""Shared fixtures: a clean environment, small texts and tiny model shapes, so every test is fast on
2 CPU cores."""

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: no window, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from slm_helpers.model import GPTConfig  # noqa: E402

torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and the machine is shared)

# A short, very repetitive text: a tiny model learns it in a few dozen steps.
POEM = (
    "Twinkle, twinkle, little star,\n"
    "How I wonder what you are!\n"
    "Up above the world so high,\n"
    "Like a diamond in the sky.\n\n"
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Tests must not depend on the caller's settings (quick mode, forced device, data folder)."""
    for name in ("SLM_QUICK", "SLM_DEVICE", "SLM_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield
    plt.close("all")


@pytest.fixture
def poem_text():
    return POEM * 20


@pytest.fixture
def tiny_config():
    """A 2-layer, 16-wide GPT over a 20-token vocabulary (a few thousand parameters)."""
    return GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
