"""Data parallel training: the CLI under torchrun with 2 CPU processes (Gloo) matches one process.

Both runs use the same config, so the same global batch: grad_accum=4 micro-batches per step, done
one after the other by a single process, or two by each of the two processes (the first under
no_sync, the gradients averaged across processes only after the last). They draw the same windows
(see Trainer.train_step), so the losses agree up to float32 rounding: DDP sums the processes'
gradients in another order than accumulation does. Tolerance: 1e-4 on every loss; the final weights
of the two runs agree within float32 tolerance.
"""

import os
import subprocess
import sys

import pytest
import torch

from slm_helpers.checkpoint import load_checkpoint
from slm_helpers.metrics import read_metrics

CONFIG = """\
data: {data}
tokenizer: char
model: {{n_layer: 2, n_head: 2, n_embd: 32, block_size: 16, dropout: 0.0}}
train: {{max_iters: 6, batch_size: 4, grad_accum: 4, learning_rate: 1.0e-2, min_lr: 1.0e-3,
         warmup_iters: 2, eval_interval: 3, eval_iters: 2, log_interval: 1}}
"""


def _run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLM_DEVICE": "cpu"}
    env.pop("SLM_QUICK", None)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "poem.txt").write_text("Twinkle, twinkle, little star,\nHow I wonder what you "
                                  "are!\n" * 40)
    (tmp / "run.yaml").write_text(CONFIG.format(data=tmp / "poem.txt"))
    train = ["-m", "slm_helpers", "train", "--config", "run.yaml", "--out"]
    single = _run([*train, "single"], tmp)
    ddp = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *train,
                "ddp"], tmp)
    return tmp, single, ddp


def test_both_runs_succeed(runs):
    _, single, ddp = runs
    assert single.returncode == 0, single.stderr
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "cpu x 2" in ddp.stdout and "cpu x 1" in single.stdout


def test_ddp_losses_match_one_process_with_the_same_global_batch(runs):
    tmp = runs[0]
    one, two = read_metrics(tmp / "single"), read_metrics(tmp / "ddp")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]
    assert len(one) == 3 + 6  # evaluations at 0, 3, 6 and a training line every step
    for a, b in zip(one, two):
        for key in ("train", "val", "loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert two[-1]["tokens"] == one[-1]["tokens"] == 6 * 4 * 4 * 16


def test_ddp_weights_match_one_process(runs):
    """The saved models of the two runs (rank 0's copy for DDP) after 6 steps of 4 micro-batches."""
    tmp = runs[0]
    one, two = load_checkpoint(tmp / "single" / "last.pt"), load_checkpoint(tmp / "ddp" / "last.pt")
    assert one["step"] == two["step"] == 6 and one["model"].keys() == two["model"].keys()
    for name, weight in one["model"].items():
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_only_rank_zero_writes_and_prints(runs):
    tmp, _, ddp = runs
    assert sorted(p.name for p in (tmp / "ddp").iterdir()) == ["best.pt", "last.pt",
                                                               "metrics.jsonl"]
    assert ddp.stdout.count("done: step 6") == 1
    assert ddp.stdout.count("parameters, cpu x 2") == 1
