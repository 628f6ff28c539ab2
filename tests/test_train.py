"""train.py: schedule, optimizer groups, a loop that learns, and resuming that is exact bit for
bit."""

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slm_helpers.checkpoint import load_checkpoint
from slm_helpers.config import from_mapping
from slm_helpers.device import seed_everything
from slm_helpers.errors import SLMError
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.train import TrainConfig, Trainer, lr_at

POEM = ("Twinkle, twinkle, little star,\nHow I wonder what you are!\nUp above the world so high,\n"
        "Like a diamond.\n\n")


def test_lr_schedule_endpoints():
    cfg = TrainConfig(max_iters=110, warmup_iters=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)  # warmup never starts at exactly 0
    assert lr_at(9, cfg) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)  # the peak, where the cosine starts
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # half way down: cos(pi / 2) = 0
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)  # stays at min_lr past the end
    warm = [lr_at(s, cfg) for s in range(11)]
    decay = [lr_at(s, cfg) for s in range(10, 111)]
    assert warm == sorted(warm) and decay == sorted(decay, reverse=True)
    assert lr_at(0,
                 TrainConfig(max_iters=10, warmup_iters=0,
                             learning_rate=1e-3)) == pytest.approx(1e-3)


@pytest.mark.parametrize("kwargs, key", [
    (dict(max_iters=0), "max_iters"),
    (dict(batch_size=0), "batch_size"),
    (dict(learning_rate=2.0), "learning_rate"),
    (dict(learning_rate=1e-3, min_lr=1e-2), "min_lr"),
])
def test_train_config_validation(kwargs, key):
    with pytest.raises(SLMError, match=key):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("mapping, message", [
    (dict(seed=True), "train.seed in f.yaml must be int, got True"),
    (dict(eval_iters="10"), "train.eval_iters in f.yaml must be int, got '10'"),
    (dict(compile="yes"), "train.compile in f.yaml must be bool"),
    (dict(max_iter=5), r"unknown key\(s\) train.max_iter in f.yaml; known keys: .*train.max_iters"),
    (dict(max_iters=0), "max_iters must be at least 1"),  # the range: TrainConfig's own check
])
def test_yaml_sections_are_checked_in_one_place(mapping, message):
    with pytest.raises(SLMError, match=message):
        from_mapping(TrainConfig, mapping, "f.yaml", "train.")
    # numbers coerced
    cfg = from_mapping(TrainConfig, {"min_lr": 0, "learning_rate": "1e-3"}, "f.yaml")
    assert (cfg.min_lr, cfg.learning_rate) == (0.0, 1e-3) and type(cfg.min_lr) is float


def _corpus(text):
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text))
    n = int(0.9 * len(data))
    return tok, data[:n], data[n:]


def test_trainer_learns_a_repetitive_text(poem_text):
    tok, train, val = _corpus(poem_text)
    seed_everything(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32,
                          dropout=0.0))
    cfg = TrainConfig(max_iters=60, batch_size=16, learning_rate=1e-2, min_lr=1e-3, warmup_iters=5,
                      eval_interval=30, eval_iters=4)
    trainer = Trainer(model, train, val, cfg, tokenizer=tok)
    history = trainer.fit(progress=False)
    assert [h["step"] for h in history] == [0, 30, 60]
    # starts near uniform
    assert history[0]["train"] == pytest.approx(math.log(tok.vocab_size), abs=0.2)
    assert history[-1]["train"] < 0.5 * history[0]["train"]
    assert history[-1]["val"] < 0.5 * history[0]["val"]
    assert len(trainer.step_losses) == 60 and trainer.step == 60
    assert history[-1]["tokens"] == 60 * 16 * 16 and trainer.tokens_per_step == 256
    assert trainer.best_val == min(h["val"] for h in history)


def test_trainer_rejects_a_split_shorter_than_the_context(tiny_config):
    with pytest.raises(SLMError, match="val split has 8 tokens"):
        Trainer(GPT(tiny_config), torch.zeros(100, dtype=torch.long),
                torch.zeros(8, dtype=torch.long),
                TrainConfig(max_iters=1))


# ---------------------------------------------------------------- resuming exactly

N = 8  # steps in all; the interrupted run stops at N // 2, a multiple of eval_interval


def _setup(text, seed, out_dir=None, n_embd=16):
    tok, train, val = _corpus(text)
    seed_everything(seed)  # the model's initial weights and the global (dropout) generator
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=n_embd,
                       dropout=0.2)
    cfg = TrainConfig(max_iters=N, batch_size=4, learning_rate=1e-2, min_lr=1e-3, warmup_iters=2,
                      eval_interval=2, eval_iters=2, seed=7)
    return Trainer(GPT(config), train, val, cfg, tokenizer=tok, out_dir=out_dir)


def _losses(history):
    # not the timings
    return [(h["step"], h["train"], h["val"], h["lr"], h["tokens"]) for h in history]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A uninterrupted; run B stopped half way, then resumed by a fresh trainer on a fresh
    model."""
    text = POEM * 20
    tmp = tmp_path_factory.mktemp("resume")
    a = _setup(text, seed=0, out_dir=tmp / "a")
    a.fit(progress=False)
    b1 = _setup(text, seed=0, out_dir=tmp / "b")
    b1.fit(N // 2, progress=False)
    half_files = sorted(p.name for p in (tmp / "b").iterdir())
    shutil.copy(tmp / "b" / "last.pt", tmp / "half.pt")  # b's last.pt moves on as b2 trains
    # other weights, other dropout draws: all must be restored
    b2 = _setup(text, seed=12345, out_dir=tmp / "b")
    assert not torch.equal(b2.model.transformer.wte.weight, a.model.transformer.wte.weight)
    b2.resume(tmp / "b" / "last.pt")
    b2.fit(progress=False)
    return dict(a=a, b1=b1, b2=b2, tmp=tmp, text=text, half_files=half_files)


def test_resume_is_exact_bit_for_bit(runs):
    a, b2 = runs["a"], runs["b2"]
    assert len(a.step_losses) == N and b2.step == N
    assert b2.step_losses == a.step_losses  # exact float equality, every step
    assert _losses(b2.history) == _losses(a.history)
    assert [h["step"] for h in a.history] == [0, 2, 4, 6, 8]
    for (name, p), q in zip(a.model.state_dict().items(), b2.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert b2.best_val == a.best_val


def test_resume_without_the_saved_rng_would_differ(runs):
    """Control: the comparison above can fail. Same checkpoint, but dropout draws from another
    seed."""
    b3 = _setup(runs["text"], seed=0)
    b3.resume(runs["tmp"] / "half.pt")
    assert b3.step == N // 2
    torch.manual_seed(999)
    b3.fit(progress=False)
    assert b3.step_losses[: N // 2] == runs["a"].step_losses[: N // 2]  # restored history
    assert b3.step_losses[N // 2:] != runs["a"].step_losses[N // 2:]


def test_checkpoints_written_and_no_temporary_files(runs):
    tmp = runs["tmp"]
    assert runs["half_files"] == ["best.pt", "last.pt", "metrics.jsonl"]
    for run in ("a", "b"):
        assert sorted(p.name for p in (tmp / run).iterdir()) == ["best.pt", "last.pt",
                                                                 "metrics.jsonl"]
    last = load_checkpoint(tmp / "a" / "last.pt")
    best = load_checkpoint(tmp / "a" / "best.pt")
    assert last["step"] == N
    history = runs["a"].history
    best_step = min(history, key=lambda h: h["val"])["step"]
    assert best["step"] == best_step
    assert last["tokenizer"] == runs["a"].tokenizer.to_dict()
    assert last["model_config"]["dropout"] == 0.2


def test_resume_with_another_model_config_names_the_key(runs):
    other = _setup(runs["text"], seed=0, n_embd=32)
    with pytest.raises(SLMError, match="n_embd: checkpoint 16 vs now 32"):
        other.resume(runs["tmp"] / "a" / "last.pt")


def test_checkpoint_best_val_is_the_best_so_far(runs):
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(runs["tmp"] / "a" / name)
        assert state["best_val"] == min(h["val"] for h in state["history"]), name


# ----------------------------------------------------------------
# the same numbers as before the refactor

DATA = Path(__file__).parent / "data"


def _recorder():
    """tests/data/record_train_baseline.py: the runs whose losses the trainer of 0f3426d
    recorded."""
    spec = importlib.util.spec_from_file_location("record_train_baseline",
                                                  DATA / "record_train_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDED = json.loads((DATA / "train_baseline_0f3426d.json").read_text(encoding="utf-8"))
# The torch the losses were recorded with: another release sums some of them in another order
# (torch 2.4: the last bits of a loss) or draws other dropout masks: bit for bit, only on it.
RECORDED_TORCH = "2.13"


@pytest.mark.parametrize("recipe", sorted(RECORDED))
def test_losses_are_bit_identical_to_the_trainer_before_its_refactor(recipe):
    if not torch.__version__.startswith(RECORDED_TORCH + "."):
        pytest.skip(f"the losses were recorded with torch {RECORDED_TORCH}, bit for bit; this is "
                    f"torch {torch.__version__}")
    recorder = _recorder()
    trainer = recorder.make(recorder.RECIPES[recipe])
    history = trainer.fit(progress=False)
    # exact float equality, every step
    assert trainer.step_losses == RECORDED[recipe]["step_losses"]
    assert [{k: h[k] for k in ("step", "train", "val", "lr")}
            for h in history] == RECORDED[recipe]["history"]


def test_a_checkpoint_of_the_trainer_before_its_refactor_resumes_exactly(tmp_path):
    """checkpoint_0f3426d.pt: step 3 of 6 of the adamw recipe, written by the old trainer."""
    recorder = _recorder()
    trainer = recorder.make(recorder.RECIPES["adamw"],
                            out_dir=tmp_path).resume(DATA / "checkpoint_0f3426d.pt")
    assert (trainer.step == trainer.progress.step == 3 and len(trainer.history) == 2
            and len(trainer.step_losses) == 3)
    assert (trainer.best_val == min(h["val"] for h in RECORDED["adamw"]["history"][:2])
            and trainer.train_seconds > 0)
    history = trainer.fit(progress=False)
    assert trainer.step_losses == RECORDED["adamw"]["step_losses"]
    assert [h["val"] for h in history] == [h["val"] for h in RECORDED["adamw"]["history"]]


# ----------------------------------------------------------------
# sequence length, chat examples, trainable only

def _tiny_gpt(vocab_size, seed=0, **kwargs):
    seed_everything(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=vocab_size, block_size=8, n_layer=2, n_head=2,
                                   n_embd=16,
                                   dropout=0.0), **kwargs}))


def test_the_training_sequence_length_is_a_setting_of_its_own(poem_text):
    tok, train, val = _corpus(poem_text)
    cfg = TrainConfig(max_iters=2, batch_size=3, eval_iters=1, eval_interval=2, seq_len=5)
    trainer = Trainer(_tiny_gpt(tok.vocab_size), train, val, cfg)
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    trainer.fit(progress=False)
    assert seen and set(seen) == {(3, 5)} and trainer.tokens_per_step == 3 * 5
    # 0: block_size
    assert Trainer(_tiny_gpt(tok.vocab_size), train, val, TrainConfig(eval_iters=1)).seq_len == 8
    with pytest.raises(SLMError,
                       match=r"seq_len \(9\) is longer than the model's block_size \(8\)"):
        Trainer(_tiny_gpt(tok.vocab_size), train, val, TrainConfig(seq_len=9))
    rope = Trainer(_tiny_gpt(tok.vocab_size, position="rope"), train, val,
                   TrainConfig(seq_len=12, eval_iters=1))
    assert rope.seq_len == 12  # attention slides past block_size


def test_chat_examples_train_on_the_replies_only():
    """The step's loss is the mean cross-entropy of the reply tokens of the examples it drew,
    nothing else."""
    from slm_helpers.data import ChatExamples

    examples = [([1, 2, 3], [4, 5, 6]), ([7, 8], [9, 10]), ([3, 3, 3, 3], [11])]
    train, val = ChatExamples(examples, seq_len=8), ChatExamples(examples[:1], seq_len=8)
    cfg = TrainConfig(max_iters=30, batch_size=2, grad_accum=2, eval_iters=1, eval_interval=30,
                      learning_rate=1e-2,
                      warmup_iters=0, seed=3)
    trainer = Trainer(_tiny_gpt(12), train, val, cfg)
    reference = _tiny_gpt(12)
    picks = train.draw(4, torch.Generator().manual_seed(3))
    x, y = train.batch(picks)
    logits = reference(x)[0]
    mine = y != -100
    assert mine.sum() == sum(len(examples[i][1]) for i in picks.tolist())
    # two micro-batches of two examples: each the mean over its own reply tokens, then their mean
    halves = [F.cross_entropy(logits[a:b][mine[a:b]], y[a:b][mine[a:b]]) for a,
              b in ((0, 2), (2, 4))]
    assert trainer.train_step() == pytest.approx(((halves[0] + halves[1]) / 2).item(), rel=1e-5)
    trainer.fit(progress=False)
    assert trainer.step_losses[-1] < trainer.step_losses[0] - 1.0  # it learns the replies


def test_a_trainable_only_checkpoint_resumes_onto_its_base_model(poem_text, tmp_path):
    tok, train, val = _corpus(poem_text)

    def base():
        model = _tiny_gpt(tok.vocab_size, tie_embeddings=False)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("lm_head", "transformer.h.1.")))
        return model

    cfg = TrainConfig(max_iters=6, batch_size=4, eval_iters=2, eval_interval=3, learning_rate=1e-2,
                      warmup_iters=1,
                      trainable_only=True)
    whole = Trainer(base(), train, val, cfg, tokenizer=tok)
    whole.fit(progress=False)
    half = Trainer(base(), train, val, cfg, tokenizer=tok, out_dir=tmp_path)
    half.fit(3, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["trainable_only"] and all(k.startswith(("lm_head", "transformer.h.1."))
                                           for k in state["model"])
    resumed = Trainer(base(), train, val, cfg, tokenizer=tok).resume(tmp_path / "last.pt")
    resumed.fit(progress=False)
    assert resumed.step_losses == whole.step_losses
    from slm_helpers.checkpoint import load_model

    with pytest.raises(SLMError, match="only the parameters that trained"):
        load_model(tmp_path / "last.pt")
