"""The models lessons train on each device, where runs go, and the Colab T4 time estimates."""

import json
import re
from pathlib import Path

import pytest
import torch

from slm_helpers import cli
from slm_helpers.config import LESSON_PRESETS, lesson_preset, list_presets, load_config, runs_dir
from slm_helpers.errors import SLMError
from slm_helpers.metrics import estimate_seconds, flops_per_token, run_flops
from slm_helpers.model import GPT

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("capability, expected",
                         [((8, 0), "shakespeare-char"), ((7, 5), "shakespeare-char-t4")])
def test_lesson_preset_follows_the_device(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert lesson_preset("shakespeare-char", "cuda") == expected
    for elsewhere in ("cpu", "mps"):
        assert lesson_preset("shakespeare-char", elsewhere) == "shakespeare-char-cpu"
    assert lesson_preset("tinystories", "cpu") == "tinystories-tiny"
    with pytest.raises(SLMError, match="unknown preset family"):
        lesson_preset("shakespeare", "cpu")


def test_every_lesson_preset_exists_and_gpu_presets_use_16_bits():
    for fast_gpu, older_gpu, cpu in LESSON_PRESETS.values():
        assert {fast_gpu, older_gpu, cpu} <= set(list_presets())
        for name in (fast_gpu, older_gpu):
            assert load_config(name).train.dtype == "auto", name
        assert load_config(fast_gpu).train.compile
    for name in list_presets():
        run = load_config(name)
        if run.tokenizer == "gpt2" and run.train.compile:  # the GPU-sized BPE presets
            assert run.model.vocab_multiple == 64, name


def test_runs_dir_follows_slm_runs_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SLM_RUNS_DIR", raising=False)
    assert runs_dir() == Path("runs") and runs_dir("../runs") == Path("../runs")
    monkeypatch.setenv("SLM_RUNS_DIR", str(tmp_path / "drive"))
    assert runs_dir("../runs") == tmp_path / "drive"


def test_the_cli_trains_into_slm_runs_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLM_RUNS_DIR", str(tmp_path / "drive"))
    (tmp_path / "text.txt").write_text("to be or not to be, that is the question\n" * 40,
                                       encoding="utf-8")
    code = cli.main(["train", "--preset", "shakespeare-char-cpu", "--data", "text.txt", "--device",
                     "cpu",
                     "--set", "model.n_layer=1", "--set", "model.n_embd=8", "--set",
                     "model.n_head=2",
                     "--set", "model.block_size=8", "--set", "train.max_iters=2", "--set",
                     "train.batch_size=2",
                     "--set", "train.eval_iters=1"])
    assert code == 0
    assert ((tmp_path / "drive" / "shakespeare-char-cpu" / "last.pt").is_file()
            and not (tmp_path / "runs").exists())


def test_run_flops_counts_training_and_evaluation_by_hand():
    run = load_config("shakespeare-char-t4")
    with torch.device("meta"):
        model = GPT(run.gpt_config(65))
    per_token = 6 * model.num_params() + 12 * 6 * 6 * 64 * 256  # 6N + 12 L H Q T
    assert flops_per_token(model) == per_token
    tokens_per_step = 64 * 256
    evaluations = 2000 // 250 + 1  # at steps 0, 250, ..., 2000
    expected = per_token * (2000 * tokens_per_step + evaluations * 2 * 50 * tokens_per_step / 3)
    assert run_flops(run, 65) == pytest.approx(expected)
    assert estimate_seconds(run, 65) == pytest.approx(expected / (65e12 * 0.2))
    # a shorter training sequence: fewer tokens, and attention over 128 of them
    run.train.seq_len = 128
    per_token = 6 * model.num_params() + 12 * 6 * 6 * 64 * 128
    expected = per_token * (2000 * 64 * 128 + evaluations * 2 * 50 * 64 * 128 / 3)
    assert flops_per_token(model, 128) == per_token and run_flops(run,
                                                                  65) == pytest.approx(expected)


def test_lesson_8_quotes_the_t4_estimate():
    minutes = estimate_seconds(load_config("tinystories-t4"), 50257) / 60
    cells = json.loads((NOTEBOOKS / "08_training_recipes.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells)
    assert f"tinystories-t4 on a free Colab T4 (about {minutes:.1f} minutes" in code


def test_the_lessons_quote_the_t4_estimate():
    minutes = estimate_seconds(load_config("shakespeare-char-t4"), 65) / 60
    for name in ("06_gpt.ipynb", "09_sampling.ipynb", "10_evaluation.ipynb"):
        code = "\n".join("".join(c["source"])
                         for c in json.loads((NOTEBOOKS / name).read_text())["cells"])
        quoted = re.findall(r"about ([\d.]+) minutes[^\n]*\n?[^\n]*T4|T4[^\n]*: about ([\d.]+) "
                            r"minutes", code)
        assert quoted, f"{name} says how long its training takes on a T4"
        for pair in quoted:
            assert float(next(q for q in pair if q)) == round(minutes, 1), name
