"""checkpoint.py: atomic saves, clear errors for damaged files, exact model round trips."""

import random

import pytest
import torch

from slm_helpers import checkpoint
from slm_helpers.checkpoint import load_checkpoint, load_model, save_checkpoint
from slm_helpers.errors import SLMError
from slm_helpers.model import GPT
from slm_helpers.tokenizers import CharTokenizer


@pytest.fixture
def saved(tmp_path, tiny_config):
    """A real checkpoint of a tiny GPT, as the Trainer would write it (the keys load_model needs)."""
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    tok = CharTokenizer.from_text("abcdefghijklmnopqrs\n")  # 20 characters, the config's vocab_size
    state = {"model": model.state_dict(), "model_config": tiny_config.to_dict(), "tokenizer": tok.to_dict(),
             "step": 42, "history": [{"step": 42, "train": 1.5, "val": 1.6, "tokens_per_sec": None}]}
    path = save_checkpoint(state, tmp_path / "run" / "best.pt")  # creates the folder
    return path, model, tok


def test_load_model_round_trip_gives_identical_logits(saved):
    path, model, tok = saved
    loaded, loaded_tok, state = load_model(path)
    assert not loaded.training
    assert loaded_tok.chars == tok.chars and state["step"] == 42
    assert state["history"][0]["tokens_per_sec"] is None
    idx = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    assert loaded.transformer.wte.weight is loaded.lm_head.weight  # still tied after loading


def test_save_is_atomic(saved, monkeypatch):
    path, _, _ = saved
    before = path.read_bytes()
    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes are written...
        raise OSError("disk full")  # ...but the save fails before it completes

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}, "model_config": {}, "tokenizer": {}, "step": 99}, path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # and no temporary file is left
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 42


def test_ctrl_c_during_a_save_leaves_the_previous_checkpoint(saved, monkeypatch):
    """Ctrl-C is a KeyboardInterrupt, not an Exception: half a file written, then the interrupt."""
    path, _, _ = saved
    before = path.read_bytes()

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(before[: len(before) // 2])  # half of a checkpoint...
        raise KeyboardInterrupt  # ...when the user presses Ctrl-C

    monkeypatch.setattr(checkpoint.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}, "model_config": {}, "tokenizer": {}, "step": 99}, path)
    assert path.read_bytes() == before  # byte for byte
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temporary file left behind


def test_save_replaces_the_old_file(saved):
    path, _, _ = saved
    save_checkpoint({"model": {}, "model_config": {}, "tokenizer": {}, "step": 7}, path)
    assert load_checkpoint(path)["step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.01])
def test_truncated_checkpoint(saved, tmp_path, fraction):
    path, _, _ = saved
    data = path.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SLMError, match="truncated or not a checkpoint") as err:
        load_checkpoint(broken)
    assert str(broken) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SLMError):
        load_model(broken)


def test_random_files_are_not_checkpoints(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "junk.pt"
    samples = [b"", b"hello world\n", b"PK\x03\x04", bytes(100)]
    samples += [bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 10, 200, 2000]))) for _ in range(40)]
    samples += [bytes(rng.choice(b"abc xyz\n{}()[]0123") for _ in range(rng.choice([2, 10, 100]))) for _ in range(40)]
    for content in samples:
        path.write_bytes(content)
        with pytest.raises(SLMError, match="junk.pt"):
            load_checkpoint(path)


def test_torch_files_that_are_not_course_checkpoints(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(SLMError, match="not a checkpoint of this course"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(SLMError, match="not a checkpoint of this course"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SLMError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    path, _, _ = saved
    state = load_checkpoint(path)
    state["model_config"]["n_embd"] = 32
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(SLMError, match="do not fit its own config"):
        load_model(tmp_path / "bad.pt")
