"""Checkpoints written before the model/Trainer redesign still load and give the same logits.

tests/data/checkpoints/ holds one tiny checkpoint per architecture the presets and lessons use,
written by the code of commit 997d4bd with the logits it gave (tests/make_compat_checkpoints.py)."""

from pathlib import Path

import pytest
import torch

from slm_helpers.checkpoint import load_model
from slm_helpers.config import list_presets, load_config

CHECKPOINTS = Path(__file__).resolve().parent / "data" / "checkpoints"
ARCHITECTURE = ("bias", "norm", "position", "mlp", "qk_norm", "tie_embeddings", "init")


def _architecture(config) -> tuple:
    return (*(getattr(config, name) for name in ARCHITECTURE), config.n_kv_head > 0,
            config.vocab_multiple > 1)


@pytest.mark.parametrize("path", sorted(CHECKPOINTS.glob("*.pt")), ids=lambda p: p.stem)
def test_old_checkpoints_give_the_same_logits(path):
    model, _, state = load_model(path)
    logits = model(state["reference"]["idx"])[0]
    assert torch.allclose(logits, state["reference"]["logits"], atol=1e-6, rtol=0), path.stem


def test_every_preset_architecture_has_an_old_checkpoint():
    saved = {_architecture(load_model(p)[0].config) for p in CHECKPOINTS.glob("*.pt")}
    for preset in list_presets():
        assert _architecture(load_config(preset).gpt_config(65)) in saved, preset
