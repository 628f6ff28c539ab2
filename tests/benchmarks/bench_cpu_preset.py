"""Benchmark: how low does the CPU preset get the validation loss, and how fast?

    python tests/benchmarks/bench_cpu_preset.py [--preset shakespeare-char-cpu] [--set
    train.max_iters=...]

Prints parameters, device, threads, final validation loss, training time (evaluation excluded)
and wall time (everything, evaluation and checkpoint-free), plus tokens per second.
Target (issue: lessons 3-6): validation loss <= 1.75 within 3 minutes on a 2-core CPU.
"""

import argparse
import time

import torch

from slm_helpers.config import build_trainer, load_config
from slm_helpers.device import pick_device, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    run = load_config(args.preset, args.set)
    device = pick_device(args.device)
    seed_everything(run.train.seed)
    trainer = build_trainer(run, device=device)
    print(f"preset {run.name}: {trainer.model.num_params() / 1e6:.2f}M parameters, device "
          f"{device}, {torch.get_num_threads()} threads, {run.train.max_iters} steps of "
          f"{trainer.tokens_per_step} tokens")
    start = time.perf_counter()
    history = trainer.fit(progress=False)
    wall = time.perf_counter() - start
    for h in history:
        print(f"  step {h['step']:>5}  train {h['train']:.4f}  val {h['val']:.4f}  at "
              f"{h['seconds']:6.1f}s")
    tokens = run.train.max_iters * trainer.tokens_per_step
    print(f"val loss {history[-1]['val']:.4f} | training {trainer.train_seconds:.1f}s | wall "
          f"{wall:.1f}s | {tokens / trainer.train_seconds:,.0f} tokens/s")


if __name__ == "__main__":
    main()
