"""Checkpoints: written atomically, read back with clear errors, turned back into a model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import SLMError
from .model import GPT, GPTConfig
from .tokenizers import tokenizer_from_dict

REQUIRED_KEYS = ("model", "model_config", "tokenizer", "step")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` so that a crash at any moment leaves the old file or the new one,
    never half of one: save to a temporary file beside it, flush it to disk, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:  # a failed save (disk full, Ctrl-C) leaves no half-written temporary behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_state(path: str | Path, what: str, keys: tuple[str, ...], map_location="cpu") -> dict:
    """The dict saved in ``path`` (a ``what``: checkpoint, adapter) that must hold ``keys``; a missing,
    unreadable, truncated or foreign file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise SLMError(f"{what} {path} does not exist; train first or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise SLMError(f"cannot read {what} {path}: permission denied") from None
    except Exception as err:  # garbage bytes fail in many ways (UnpicklingError, KeyError, struct.error, ...)
        raise SLMError(f"{what} {path} is truncated or not a {what} ({type(err).__name__}); "
                       f"use another one or train again") from None
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise SLMError(f"{path} is not a {what} of this course (expected keys {', '.join(keys)})")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    return read_state(path, "checkpoint", REQUIRED_KEYS, map_location)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) from a checkpoint file."""
    state = load_checkpoint(path)
    model = GPT(GPTConfig(**state["model_config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise SLMError(f"checkpoint {path} holds weights that do not fit its own config; it is corrupt") from None
    return model.to(device).eval(), tokenizer_from_dict(state["tokenizer"]), state
