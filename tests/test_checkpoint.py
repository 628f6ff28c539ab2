"""checkpoint.py: atomic saves, clear errors for damaged files, exact model round trips."""

import random

import pytest
import torch

from slm_helpers import checkpoint
from slm_helpers.checkpoint import load_checkpoint, load_model, save_checkpoint
from slm_helpers.errors import SLMError
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.tokenizers import CharTokenizer


@pytest.fixture
def saved(tmp_path, tiny_config):
    """A real checkpoint of a tiny GPT, as the Trainer would write it (the keys load_model
    needs)."""
    torch.manual_seed(0)
    model = GPT(tiny_config).eval()
    tok = CharTokenizer.from_text("abcdefghijklmnopqrs\n")  # 20 characters, the config's vocab_size
    state = {"model": model.state_dict(), "model_config": tiny_config.to_dict(),
             "tokenizer": tok.to_dict(),
             "step": 42,
             "history": [{"step": 42, "train": 1.5, "val": 1.6, "tokens_per_sec": None}]}
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
    # and no temporary file is left
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
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
    # no temporary file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]


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
    samples += [bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 10, 200, 2000])))
                for _ in range(40)]
    samples += [bytes(rng.choice(b"abc xyz\n{}()[]0123") for _ in range(rng.choice([2, 10, 100])))
                for _ in range(40)]
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


# ----------------------------------------------------------------
# what a checkpoint holds besides the weights

def test_rng_state_puts_back_every_generator_a_run_draws_from():
    batches = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    state = checkpoint.rng_state(batches)
    expected = (torch.randint(100, (5,), generator=batches), torch.rand(5))
    torch.randint(100, (7,), generator=batches), torch.rand(7)  # drawn on after the checkpoint
    checkpoint.set_rng_state(state, batches)
    assert torch.equal(torch.randint(100, (5,), generator=batches), expected[0])
    assert torch.equal(torch.rand(5), expected[1])


def test_check_model_config_names_each_difference():
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16))
    checkpoint.check_model_config(model,
                                  {k: v for k, v in model.config.to_dict().items() if k != "norm"})
    with pytest.raises(SLMError,
                       match="n_layer: checkpoint 2 vs now 1, n_embd: checkpoint 32 vs now 16"):
        checkpoint.check_model_config(model, {**model.config.to_dict(), "n_layer": 2, "n_embd": 32})


def _frozen_base(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=16,
                          tie_embeddings=False))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.transformer.h[1].parameters():  # fine-tune the last block only
        p.requires_grad_(True)
    return model


def test_trainable_only_state_holds_only_the_parameters_that_train_and_loads_onto_the_base():
    tuned = _frozen_base()
    with torch.no_grad():
        for p in tuned.transformer.h[1].parameters():
            p.add_(1.0)
    state = checkpoint.model_state(tuned, trainable_only=True)
    assert set(state) == {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert all(name.startswith("transformer.h.1.") for name in state)
    base = _frozen_base()
    checkpoint.load_model_state(base, state, trainable_only=True)
    for (name, p), q in zip(base.state_dict().items(), tuned.state_dict().values()):
        assert torch.equal(p, q), name
    other = _frozen_base()
    # trains one more matrix than the checkpoint
    other.transformer.h[0].attn.c_attn.weight.requires_grad_(True)
    with pytest.raises(SLMError, match="freeze the same parameters"):
        checkpoint.load_model_state(other, state, trainable_only=True)
    assert set(checkpoint.model_state(tuned)) == set(tuned.state_dict())  # by default: everything
