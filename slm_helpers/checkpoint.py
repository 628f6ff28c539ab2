"""Checkpoints: written atomically, read back with clear errors, turned back into a model.

Also what a checkpoint holds besides the weights: every random number generator a run draws from
(``rng_state``), the model config it must match (``check_model_config``), only the parameters that
train when a base model stays frozen (``model_state``), and the lock that keeps two runs out of
one folder (``lock_run_folder``).
"""

from __future__ import annotations

import contextlib
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
    # a failed save (disk full, Ctrl-C) leaves no half-written temporary behind
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_state(path: str | Path, what: str, keys: tuple[str, ...], map_location="cpu") -> dict:
    """The dict saved in ``path`` (a ``what``: checkpoint, adapter) that must hold ``keys``; a
    missing, unreadable, truncated or foreign file is one clear error."""
    path, a = Path(path), "an" if what[0] in "aeiou" else "a"
    if not path.is_file():
        raise SLMError(f"{what} {path} does not exist; train first or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise SLMError(f"cannot read {what} {path}: permission denied") from None
    # garbage bytes fail in many ways (UnpicklingError, KeyError, struct.error, ...)
    except Exception as err:
        raise SLMError(f"{what} {path} is truncated or not {a} {what} ({type(err).__name__}); "
                       f"use another one or train again") from None
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise SLMError(f"{path} is not {a} {what} of this course (expected keys {', '.join(keys)})")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    return read_state(path, "checkpoint", REQUIRED_KEYS, map_location)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) from a checkpoint file."""
    state = load_checkpoint(path)
    if state.get("trainable_only"):
        raise SLMError(f"checkpoint {path} holds only the parameters that trained, not a whole "
                       "model; load it onto its base model (Trainer.resume, or load_model_state)")
    model = GPT(GPTConfig(**state["model_config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise SLMError(f"checkpoint {path} holds weights that do not fit its own config; it is "
                       "corrupt") from None
    return model.to(device).eval(), tokenizer_from_dict(state["tokenizer"]), state


def rng_state(batches: torch.Generator) -> dict:
    """Every random number generator a run draws from: its batches', torch's (dropout), CUDA's."""
    return {"batches": batches.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict, batches: torch.Generator) -> None:
    """Put back the generators of ``rng_state`` (the states stay on the CPU: load with
    map_location="cpu")."""
    batches.set_state(state["batches"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_model_config(model, saved: dict) -> None:
    """An error that lists the differences when ``saved`` (a checkpoint's model config) is not
    ``model``'s."""
    expected = model.config.to_dict()
    saved = type(model.config)(**saved).to_dict()  # fields added since take their defaults
    if saved != expected:
        diff = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
        raise SLMError("checkpoint was trained with a different model config ("
                       + ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
                       + "); resume with the same preset, or train into a new --out folder")


def model_state(model, trainable_only: bool = False) -> dict:
    """``model.state_dict()``, or with ``trainable_only`` only its parameters that train
    (requires_grad): a fine-tune of a frozen base model saves what changed, not the base again."""
    state = model.state_dict()
    if not trainable_only:
        return state
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: tensor for name, tensor in state.items() if name in trainable}


def load_model_state(model, state: dict, trainable_only: bool = False) -> None:
    """Load ``model_state``'s output into ``model``; with ``trainable_only`` onto the base model's
    other weights, which must then be exactly the frozen ones."""
    if not trainable_only:
        model.load_state_dict(state)
        return
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise SLMError(f"checkpoint holds the parameters {sorted(set(state) - trainable)[:3]} that "
                       f"this model does not train, or lacks {sorted(trainable - set(state))[:3]}; "
                       "freeze the same parameters of the same base model as the run that wrote it")
    model.load_state_dict(state, strict=False)


@contextlib.contextmanager
def lock_run_folder(folder: str | Path):
    """Hold ``folder``'s ``train.lock`` while a run trains there; a second run stops at once with an
    error that names the first one's process. The operating system drops the lock when its process
    ends, even by a crash, so a lock file left behind never blocks; the file is deleted on the way
    out (and the folder, if this made it and nothing was written in it)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.lock"
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            _lock(f)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise SLMError(f"{folder} is in use by another training run (process {holder}); wait "
                           "for it to finish, or pass another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)  # while still locked: the next run creates a new file
            # a run that failed before writing leaves no folder
            if created and not any(folder.iterdir()):
                folder.rmdir()
    finally:
        f.close()  # closing it releases the lock


def _lock(f) -> None:
    """An exclusive lock on the open file ``f`` without waiting; OSError when another process holds
    it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
