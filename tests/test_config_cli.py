"""config.py and cli.py: presets, overrides, key and type checks; the command line end to end."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slm_helpers.checkpoint import load_checkpoint
from slm_helpers.cli import main
from slm_helpers.config import PRESET_DIR, RunConfig, build_trainer, list_presets, load_config
from slm_helpers.errors import SLMError
from slm_helpers.model import GPTConfig
from slm_helpers.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
POEM = ("Twinkle, twinkle, little star,\nHow I wonder what you are!\n"
        "Up above the world so high,\nLike a diamond in the sky.\n\n")

TINY_YAML = """\
# A 2-layer, 32-wide model: seconds on a CPU.
data: shakespeare
tokenizer: char
val_fraction: 0.1
model: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, dropout: 0.0}
train: {max_iters: 20, batch_size: 8, learning_rate: 1.0e-2, min_lr: 1.0e-3, warmup_iters: 2,
        eval_interval: 10, eval_iters: 2}
"""


# ---------------------------------------------------------------- config

def test_every_shipped_preset_loads():
    presets = list_presets()
    assert (presets == sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            and "shakespeare-char-cpu" in presets)
    for name in presets:
        run = load_config(name)
        assert isinstance(run, RunConfig) and isinstance(run.train,
                                                         TrainConfig) and run.name == name
        assert isinstance(run.model, GPTConfig) and run.gpt_config(65).vocab_size == 65
        assert ((run.tokenizer == "char" and run.data in ("shakespeare", "darwin"))
                or (run.tokenizer == "gpt2" and run.data in ("tinystories", "tinystories-valid")))


def test_overrides():
    run = load_config("shakespeare-char-cpu",
                      ["train.max_iters=5", "model.dropout=0.1", "train.learning_rate=1e-3",
                       "model.bias=true", "data=my.txt", "name=tiny", "val_fraction=0.2"])
    assert run.train.max_iters == 5 and run.model.dropout == 0.1 and run.train.learning_rate == 1e-3
    assert (run.model.bias is True and run.data == "my.txt" and run.name == "tiny"
            and run.val_fraction == 0.2)
    assert run.model.n_layer == 4  # untouched keys keep the preset's values
    # an int where a float is expected
    run = load_config("shakespeare-char-cpu", ["train.min_lr=0"])
    assert run.train.min_lr == 0.0 and type(run.train.min_lr) is float


@pytest.mark.parametrize("override, named", [
    ("colour=blue", "colour"),
    ("model.n_layers=2", "n_layers"),
    ("train.max_iter=5", "max_iter"),
    ("model.n_layer=two", "model.n_layer"),
    ("model.n_layer=2.5", "model.n_layer"),
    ("model.dropout=high", "model.dropout"),
    ("model.bias=3", "model.bias"),
    ("train.max_iters=5.5", "train.max_iters"),
    ("train.max_iters=", "train.max_iters"),
    ("train.learning_rate=fast", "train.learning_rate"),
    ("train.seed=[1]", "train.seed"),
    ("tokenizer=bpe", "tokenizer"),
    ("val_fraction=lots", "val_fraction"),
    ("val_fraction=1.5", "val_fraction"),
    ("data.path=x.txt", "data"),
    ("model=3", "model"),
    ("train.max_iters", "key=value"),
    ("train.max_iters=0", "max_iters"),
    ("model.n_head=5", "divisible"),
])
def test_bad_overrides_name_the_key(override, named):
    with pytest.raises(SLMError, match=named) as err:
        load_config("shakespeare-char-cpu", [override])  # shape errors too, before any data is read
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("train.max_iters=abc",
     "train.max_iters from --set train.max_iters=abc must be int, got 'abc'"),
    ("train.compile=maybe", "train.compile from --set train.compile=maybe must be bool"),
    ("train.max_iter=5", "unknown key(s) train.max_iter from --set train.max_iter=5; known keys"),
])
def test_a_bad_override_names_the_set_option_not_the_preset_file(override, message):
    with pytest.raises(SLMError) as err:
        load_config("shakespeare-char-cpu", ["train.eval_iters=3", override])
    assert message in str(err.value) and ".yaml" not in str(err.value)


def test_a_bad_value_in_the_file_still_names_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: {max_iters: abc}\n")
    with pytest.raises(SLMError, match=r"train.max_iters in .*bad.yaml must be int, got 'abc'"):
        load_config(tmp_path / "bad.yaml", ["train.eval_iters=3"])


def test_config_files(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    run = load_config(path)
    assert run.name == "tiny" and run.model.n_embd == 32 and run.train.eval_interval == 10
    for content, match in [("model: [1, 2]\n", "mapping"), ("- a\n- b\n", "mapping"),
                           ("model: {n_layer: 2\n", "YAML"),
                           ("train:\n  warmup: 3\n", "warmup")]:
        path.write_text(content)
        with pytest.raises(SLMError, match=match):
            load_config(path)
    with pytest.raises(SLMError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(SLMError, match="unknown preset 'nope'"):
        load_config("nope")


def test_build_trainer(tmp_path):
    data = tmp_path / "poem.txt"
    data.write_text(POEM * 10)
    run = load_config("shakespeare-char-cpu", [f"data={data}", "model.n_layer=1", "model.n_embd=16",
                                               "model.block_size=8", "train.max_iters=2"])
    trainer = build_trainer(run)
    assert trainer.tokenizer.chars == sorted(set(POEM))
    assert trainer.model.config.vocab_size == len(set(POEM)) and trainer.model.config.n_layer == 1
    assert len(trainer.splits["train"]) == int(len(POEM * 10) * 0.9)


# ---------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the CLI, shared by the tests that sample from it."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "tiny.yaml").write_text(TINY_YAML)
    (tmp / "poem.txt").write_text(POEM * 30, encoding="utf-8")
    rc = main(["train", "--config", str(tmp / "tiny.yaml"), "--data", str(tmp / "poem.txt"),
               "--out", str(tmp / "run"), "--device", "cpu"])
    assert rc == 0
    return tmp


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_train_writes_checkpoints(trained):
    assert sorted(p.name for p in (trained / "run").iterdir()) == ["best.pt", "last.pt",
                                                                   "metrics.jsonl"]
    state = load_checkpoint(trained / "run" / "last.pt")
    assert state["step"] == 20 and [h["step"] for h in state["history"]] == [0, 10, 20]
    # trained on --data, not the config's corpus
    assert state["tokenizer"]["chars"] == sorted(set(POEM))
    assert (state["model_config"]["n_embd"] == 32
            and state["history"][-1]["val"] < state["history"][0]["val"])


def test_cli_sample_starts_with_the_prompt_and_repeats_with_a_seed(trained, capsys):
    base = ["sample", "--checkpoint", str(trained / "run" / "best.pt"), "--prompt", "Twinkle",
            "--max-new-tokens", "40", "--device", "cpu"]
    rc, out, err = _run(capsys, *base, "--seed", "1")
    assert rc == 0 and err == ""
    # the text and print's newline
    assert out.startswith("Twinkle") and len(out) == len("Twinkle") + 40 + 1
    assert _run(capsys, *base, "--seed", "1")[1] == out
    other = _run(capsys, *base, "--seed", "2")[1]
    assert other.startswith("Twinkle") and other != out
    assert _run(capsys, *base, "--seed", "1", "--top-k", "3", "--top-p",
                "0.9")[1].startswith("Twinkle")


def test_cli_prompt_longer_than_the_context_is_cropped(trained, capsys):
    prompt = POEM * 2  # 230 characters, the context is 16
    rc, out, err = _run(capsys, "sample", "--checkpoint", str(trained / "run" / "last.pt"),
                        "--prompt", prompt,
                        "--max-new-tokens", "10", "--seed", "0")
    assert rc == 0 and out.startswith(prompt) and len(out) == len(prompt) + 10 + 1


def test_cli_resume_continues_the_run(trained, capsys, tmp_path):
    import shutil

    out_dir = tmp_path / "run"
    shutil.copytree(trained / "run", out_dir)
    rc, out, err = _run(capsys, "train", "--config", str(trained / "tiny.yaml"), "--data",
                        str(trained / "poem.txt"),
                        "--out", str(out_dir), "--resume", "--set", "train.max_iters=30")
    assert rc == 0, err
    state = load_checkpoint(out_dir / "last.pt")
    assert state["step"] == 30 and [h["step"] for h in state["history"]] == [0, 10, 20, 30]
    assert len(state["step_losses"]) == 30


def test_resume_with_another_corpus_or_preset_names_what_the_checkpoint_was_trained_on(trained,
                                                                                       capsys,
                                                                                       tmp_path):
    import shutil

    out_dir = tmp_path / "run"
    shutil.copytree(trained / "run", out_dir)
    poem = str(trained / "poem.txt")
    _assert_one_line_error(*_run(capsys, "train", "--config", str(trained / "tiny.yaml"), "--data",
                                 "darwin",
                                 "--out", str(out_dir), "--resume")[::2],
                           f"was trained with preset tiny on {poem}, not tiny on darwin",
                           f"--data {poem}")
    (tmp_path / "other.yaml").write_text((trained / "tiny.yaml").read_text())
    _assert_one_line_error(*_run(capsys, "train", "--config", str(tmp_path / "other.yaml"),
                                 "--data", poem,
                                 "--out", str(out_dir), "--resume")[::2], "preset tiny",
                           "not other")


def test_ctrl_c_exits_130_and_resume_continues_exactly(tmp_path, capsys):
    """Ctrl-C (SIGINT) to `python -m slm_helpers train` once a checkpoint past step 0 is on disk:
    exit status 130 and one line saying the last checkpoint is intact; --resume then ends where a
    run never interrupted ends, bit for bit (losses, evaluations, weights). The learning rate is
    constant here, so the interrupted run can be given far more steps than it will live for (no race
    with its end) and both finish at a step chosen after the interrupt."""
    import json
    import os
    import signal
    import time

    (tmp_path / "poem.txt").write_text(POEM * 30, encoding="utf-8")
    (tmp_path / "run.yaml").write_text(
        "data: shakespeare\ntokenizer: char\nmodel: {n_layer: 1, n_head: 2, n_embd: 16, "
        "block_size: 16, dropout: 0.0}\ntrain: {max_iters: 100000, batch_size: 4, learning_rate: "
        "1.0e-2, min_lr: 1.0e-2, warmup_iters: 0,\n        eval_interval: 20, eval_iters: 1}\n")
    args = ["train", "--config", str(tmp_path / "run.yaml"), "--data", str(tmp_path / "poem.txt"),
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SLM_QUICK", None)
    # Ctrl-C as a terminal delivers it: a background job of a shell (`make test &`, nohup) starts
    # with SIGINT ignored, which the child would inherit, and then the signal would do nothing
    process = subprocess.Popen([sys.executable, "-m", "slm_helpers", *args, "--out",
                                str(tmp_path / "stopped")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics, deadline = tmp_path / "stopped" / "metrics.jsonl", time.monotonic() + 120
    try:
        # the evaluation at step 40 is logged after the checkpoint of step 20 was written
        while not (metrics.is_file() and any(json.loads(line)["step"] >= 40 for line in
                                             metrics.read_text().splitlines()
                                             if line.endswith("}"))):
            assert process.poll() is None and time.monotonic() < deadline, \
                process.communicate()[1][-2000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert (err.strip().splitlines()[-1]
            == "interrupted; resume with --resume (the last checkpoint is intact)")
    stopped_at = load_checkpoint(tmp_path / "stopped" / "last.pt")["step"]
    assert stopped_at >= 20 and stopped_at % 20 == 0
    # 30: the resumed run evaluates at one more multiple of 20
    end = ["--set", f"train.max_iters={stopped_at + 30}"]
    assert main([*args, "--out", str(tmp_path / "stopped"), "--resume", *end]) == 0
    assert main([*args, "--out", str(tmp_path / "whole"), *end]) == 0
    capsys.readouterr()
    resumed = load_checkpoint(tmp_path / "stopped" / "last.pt")
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    assert resumed["step"] == whole["step"] == stopped_at + 30
    assert resumed["step_losses"] == whole["step_losses"]
    assert [(h["step"], h["train"], h["val"]) for h in resumed["history"]] == \
           [(h["step"], h["train"], h["val"]) for h in whole["history"]]
    for name, weight in whole["model"].items():
        assert torch.equal(resumed["model"][name], weight), name


def _assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_cli_errors_in_train(trained, capsys, tmp_path):
    config = str(trained / "tiny.yaml")
    _assert_one_line_error(*_run(capsys, "train", "--config", config, "--data",
                                 str(tmp_path / "missing.txt"),
                                 "--out", str(tmp_path / "a"))[::2], "missing.txt",
                           "does not exist")
    (tmp_path / "empty.txt").write_text("")
    _assert_one_line_error(*_run(capsys, "train", "--config", config, "--data",
                                 str(tmp_path / "empty.txt"),
                                 "--out", str(tmp_path / "b"))[::2], "empty")
    _assert_one_line_error(*_run(capsys, "train", "--config", config, "--data",
                                 str(trained / "poem.txt"),
                                 "--out", str(tmp_path / "c"), "--resume")[::2],
                           "nothing to resume")
    _assert_one_line_error(*_run(capsys, "train", "--config", config, "--data",
                                 str(trained / "poem.txt"),
                                 "--out", str(trained / "run"))[::2], "already holds a run",
                           "--resume")
    _assert_one_line_error(*_run(capsys, "train", "--config", config, "--set", "model.n_layers=1",
                                 "--out", str(tmp_path / "d"))[::2], "n_layers")
    _assert_one_line_error(*_run(capsys, "train", "--config", config, "--device", "tpu",
                                 "--out", str(tmp_path / "e"))[::2], "tpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf"])
def test_cli_time_budget_must_be_positive(capsys, tmp_path, seconds, monkeypatch):
    """--time-budget 0 would mean no budget: the preset's max_iters steps (a million for the fast
    CPU preset)."""
    monkeypatch.setattr("slm_helpers.config.build_trainer", lambda *a,
                        **k: pytest.fail("the run was started"))
    rc, _, err = _run(capsys, "train", "--preset", "shakespeare-char-cpu-fast",
                      f"--time-budget={seconds}",
                      "--out", str(tmp_path / "run"))
    _assert_one_line_error(rc, err, "--time-budget must be a positive number of seconds",
                           "max_iters")
    assert not (tmp_path / "run").exists()


def test_a_second_run_into_the_same_folder_stops_and_names_the_first(trained, capsys, tmp_path):
    """The first run holds train.lock (flock) in --out; the lock of a process that has ended never
    blocks."""
    out = tmp_path / "run"
    argv = ["--config", str(trained / "tiny.yaml"), "--data", str(trained / "poem.txt"), "--out",
            str(out),
            "--device", "cpu", "--set", "train.max_iters=2", "--set", "train.eval_interval=1"]
    hold = ("import sys, time; from slm_helpers.checkpoint import lock_run_folder\n"
            "with lock_run_folder(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)")
    first = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    try:
        assert first.stdout.readline() == "locked\n"
        _assert_one_line_error(*_run(capsys, "train", *argv)[::2], str(out),
                               "in use by another training run",
                               f"process {first.pid}")
        assert not (out / "last.pt").exists()
    finally:
        first.kill()
        first.wait()
    # left behind by the killed run: it does not block
    assert (out / "train.lock").read_text() == f"{first.pid}\n"
    rc, _, err = _run(capsys, "train", *argv)
    assert rc == 0, err
    # the lock is gone
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


def test_cli_data_path_is_taken_literally(trained, capsys, tmp_path):
    odd = tmp_path / "notes #2: draft.txt"  # through YAML, " #2..." would be read as a comment
    odd.write_text(POEM * 30)
    rc, out, err = _run(capsys, "train", "--config", str(trained / "tiny.yaml"), "--data", str(odd),
                        "--out", str(tmp_path / "run"), "--set", "train.max_iters=1", "--set",
                        "train.eval_interval=1")
    assert rc == 0, err


def test_cli_errors_in_sample(trained, capsys, tmp_path):
    best = str(trained / "run" / "best.pt")
    _assert_one_line_error(*_run(capsys, "sample", "--checkpoint", best, "--prompt",
                                 "Twinkle €")[::2],
                           "'€'", "not in the vocabulary")
    broken = tmp_path / "broken.pt"
    data = (trained / "run" / "best.pt").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(*_run(capsys, "sample", "--checkpoint", str(broken))[::2], "broken.pt",
                           "truncated")
    _assert_one_line_error(*_run(capsys, "sample", "--checkpoint", str(tmp_path / "none.pt"))[::2],
                           "does not exist")
    for option, value, name in [("--top-p", "0", "top_p"), ("--temperature", "-1", "temperature"),
                                ("--top-k", "0", "top_k"),
                                ("--max-new-tokens", "-5", "max_new_tokens")]:
        _assert_one_line_error(*_run(capsys, "sample", "--checkpoint", best, option, value)[::2],
                               name)


def test_cli_usage_errors_exit_with_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train"])  # neither --preset nor --config
    assert exit_.value.code == 2
    assert "--preset" in capsys.readouterr().err


def test_python_m_help():
    result = subprocess.run([sys.executable, "-m", "slm_helpers", "--help"], capture_output=True,
                            text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("train" in result.stdout and "sample" in result.stdout
            and result.stdout.startswith("usage:"))


def test_cli_sample_runs_on_the_loaded_weights(trained):
    """Greedy output of the CLI path equals a greedy decode done by hand with the checkpoint's
    weights."""
    from slm_helpers.checkpoint import load_model

    model, tok, _ = load_model(trained / "run" / "best.pt")
    ids = torch.tensor([tok.encode("How")])
    for _ in range(5):
        ids = torch.cat([ids, model(ids[:, -16:])[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["sample", "--checkpoint", str(trained / "run" / "best.pt"), "--prompt", "How",
                     "--temperature", "0", "--max-new-tokens", "5"]) == 0
    assert buffer.getvalue() == tok.decode(ids[0].tolist()) + "\n"
