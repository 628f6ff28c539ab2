"""metrics.jsonl beside the checkpoints, redrawn by plot_metrics, kept consistent on resume;
optional wandb."""

import json
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from slm_helpers.device import seed_everything
from slm_helpers.errors import SLMError
from slm_helpers.metrics import (
    MetricsLog,
    Throughput,
    activation_memory,
    measure_throughput,
    read_metrics,
)
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.plotting import plot_metrics
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.train import TrainConfig, Trainer


def _trainer(text, out_dir=None, seed=0, **overrides):
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text))
    seed_everything(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16,
                          dropout=0.1))
    cfg = TrainConfig(**{**dict(max_iters=6, batch_size=4, learning_rate=1e-2, min_lr=1e-3,
                                warmup_iters=1,
                                eval_interval=3, eval_iters=2, log_interval=2, seed=3),
                         **overrides})
    return Trainer(model, data[:300], data[300:], cfg, tokenizer=tok, out_dir=out_dir)


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_sec", "mfu")}
            for r in records]


def test_every_evaluation_and_every_nth_step_is_a_line(poem_text, tmp_path):
    trainer = _trainer(poem_text, tmp_path)
    trainer.fit(progress=False)
    records = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("eval", 0), ("train", 2), ("eval", 3), ("train", 4), ("train", 6), ("eval", 6)]
    evals = read_metrics(tmp_path / "metrics.jsonl", kind="eval")
    assert evals == [json.loads(json.dumps({"kind": "eval", **h})) for h in trainer.history]
    assert set(evals[-1]) >= {"train", "val", "val_ppl", "lr", "tokens", "tokens_per_sec", "mfu"}
    steps = read_metrics(tmp_path, kind="train")
    assert [r["loss"] for r in steps] == [trainer.step_losses[i - 1] for i in (2, 4, 6)]
    assert all(r["tokens_per_sec"] > 0 and r["grad_norm"] > 0 for r in steps)


def test_plot_metrics_redraws_the_curves(poem_text, tmp_path):
    _trainer(poem_text, tmp_path).fit(progress=False)
    ax = plot_metrics(tmp_path, title="from the log")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["train (each logged step)", "train", "val"]
    assert list(ax.get_lines()[2].get_xdata()) == [0, 3, 6] and ax.get_title() == "from the log"


def test_a_resumed_run_writes_the_same_log(poem_text, tmp_path):
    whole = _trainer(poem_text, tmp_path / "a")
    whole.fit(progress=False)
    first = _trainer(poem_text, tmp_path / "b")
    first.fit(3, progress=False)
    # logged after the checkpoint, then a crash
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        # and half a line
        f.write(json.dumps({"kind": "train", "step": 4, "loss": 9.9}) + "\n" + '{"kind": "tra')
    second = _trainer(poem_text, tmp_path / "b", seed=5)
    second.resume(tmp_path / "b" / "last.pt")
    second.fit(progress=False)
    assert (_without_timings(read_metrics(tmp_path / "b"))
            == _without_timings(read_metrics(tmp_path / "a")))


def test_a_new_run_starts_a_new_log(poem_text, tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": 500,
                                                        "val": 0.1}) + "\n")
    _trainer(poem_text, tmp_path).fit(progress=False)
    assert [r["step"] for r in read_metrics(tmp_path, kind="eval")] == [0, 3, 6]


def test_read_metrics_errors(tmp_path):
    with pytest.raises(SLMError, match="no metrics log"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"kind": "eval", "step": 0}\nnot json\n')
    with pytest.raises(SLMError, match="line 2"):
        read_metrics(tmp_path)


# ---------------------------------------------------------------- Weights & Biases

class FakeWandb:
    """Records what the Trainer asks of the wandb package."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return SimpleNamespace(id="run-1", log=lambda data, step: self.logged.append((step, data)),
                               finish=self._finish)

    def _finish(self):
        self.finished += 1


def test_wandb_gets_the_same_records(poem_text, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    trainer = _trainer(poem_text, tmp_path / "run", wandb=True, wandb_project="course-tests")
    trainer.fit(4, progress=False)
    trainer.fit(progress=False)  # a second fit continues the same wandb run
    assert [i["project"]
            for i in fake.inits] == ["course-tests"] * 2 and fake.inits[1]["id"] == "run-1"
    assert fake.inits[0]["name"] == "run" and fake.inits[0]["config"]["train"]["max_iters"] == 6
    assert fake.finished == 2
    evals = [(step, data) for step, data in fake.logged if "eval/val" in data]
    assert [step for step, _ in evals] == [0, 3, 4, 6]  # fit(4) ends with an evaluation
    assert evals[-1][1]["eval/val"] == trainer.history[-1]["val"]
    assert all(isinstance(v, float | int) for _, data in fake.logged for v in data.values())


def test_wandb_is_never_imported_unless_enabled(poem_text, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it now raises ImportError
    _trainer(poem_text).fit(progress=False)
    with pytest.raises(SLMError, match="pip install wandb"):
        _trainer(poem_text, wandb=True)


def test_metrics_log_without_a_file_writes_nothing(tmp_path):
    log = MetricsLog(None)
    log.write({"kind": "eval", "step": 0, "val": 1.0})
    log.rewind(0)
    log.close()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------
# activation memory and throughput, by hand

class Toy(torch.nn.Module):
    """A model whose saved tensors can be listed by hand: the embedding keeps its indices (int64),
    tanh its output a; f * f keeps f, a view of a (the same storage: counted once), and (f * f) *
    gain keeps f * f and gain, a parameter (the parameters are not activations: not counted)."""

    block_size = 8

    def __init__(self, vocab_size=10, n_embd=6):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, n_embd)
        self.gain = torch.nn.Parameter(torch.ones(n_embd))

    def forward(self, x, y):
        a = torch.tanh(self.emb(x))
        f = a.flatten(0, 1)
        return a, (f * f * self.gain).sum()


def _toy_bytes(B, T, n_embd=6):
    return B * T * 8 + 2 * B * T * n_embd * 4  # the indices, a (and f) and f * f


def test_activation_memory_counts_each_saved_tensor_once_and_no_parameter():
    x = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(0))
    assert activation_memory(Toy(), x, x) == _toy_bytes(4, 8) == 1792
    short = x[:, :3].contiguous()  # (a slice would keep, and count, the storage of all of x)
    assert activation_memory(Toy(), short, short) == _toy_bytes(4, 3)  # linear in the context here
    assert activation_memory(Toy(n_embd=12), x, x) == _toy_bytes(4, 8, 12)


def test_measure_throughput_times_only_the_measured_steps(monkeypatch):
    """A trainer whose steps take known times: 10 s for the warm-up step (a compile, say), 0.5 s
    each for 4 measured steps of 64 tokens, 1,000 FLOPs per token, 2 devices of 100,000 FLOP/s."""
    durations, calls, batches = iter([10.0, 0.5, 0.5, 0.5, 0.5]), [], []
    x = torch.randint(0, 10, (4, 8), generator=torch.Generator().manual_seed(0))

    class Source:  # one micro-batch, for the activation memory
        def draw(self, n, generator=None):
            batches.append(n)
            return torch.arange(n)

        def batch(self, picks, device):
            batches.append(tuple(picks.tolist()))
            return x, x

    def train_step():
        calls.append(1)
        trainer.train_seconds += next(durations)

    trainer = SimpleNamespace(
        device=torch.device("cpu"), train_step=train_step, train_seconds=100.0, tokens_per_step=64,
        cfg=SimpleNamespace(compile=False, batch_size=4), sources={"train": Source()}, model=Toy(),
        amp=SimpleNamespace(autocast=nullcontext),
        speed=SimpleNamespace(flops_per_token=1000, peak_flops=1e5),
        world_size=2)
    m = measure_throughput(trainer, steps=4, warmup=1)
    assert len(calls) == 5 and batches == [4, (0, 1, 2, 3)]
    assert m["tokens_per_sec"] == pytest.approx(4 * 64 / 2.0)  # 128
    assert m["ms_per_step"] == pytest.approx(500)
    assert m["mfu"] == pytest.approx(128 * 1000 / (2 * 1e5))  # 0.64 of the two devices' peak
    assert m["model_tflops"] == pytest.approx(128 * 1000 / 1e12)
    assert m["activation_mb"] == pytest.approx(_toy_bytes(4, 8) / 2**20)  # one micro-batch of 4 x 8
    assert m["peak_memory_mb"] is None  # no allocator statistics on a CPU
    trainer.cfg.compile = True  # a compiled model's activations are not measured
    durations = iter([0.25, 0.25])
    assert measure_throughput(trainer, steps=1)["activation_mb"] is None


def test_throughput_counts_from_the_last_record_of_each_kind():
    speed = Throughput(Toy(), "cpu", tokens_per_step=100, devices=2)
    assert speed.flops_per_token is None and speed.peak_flops is None  # no GPT config, no GPU peak
    assert speed.since("train", 4, 2.0)["tokens_per_sec"] == pytest.approx(4 * 100 / 2.0)
    # since step 4
    assert speed.since("train", 6, 4.0)["tokens_per_sec"] == pytest.approx(2 * 100 / 2.0)
    # its own count
    assert speed.since("eval", 6, 4.0)["tokens_per_sec"] == pytest.approx(6 * 100 / 4.0)
    speed.flops_per_token, speed.peak_flops = 1000, 1e5
    speed.restart(10, 5.0)  # a resumed run
    m = speed.since("eval", 12, 6.0)
    assert (m["tokens_per_sec"] == pytest.approx(200)
            and m["mfu"] == pytest.approx(200 * 1000 / (2 * 1e5)))
