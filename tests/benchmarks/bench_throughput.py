"""Benchmark: training speed (tokens/s) and MFU of the char and GPT-2 BPE presets on this device.

    python tests/benchmarks/bench_throughput.py [--presets shakespeare-char-cpu tinystories-tiny
    ...]
        [--steps 3] [--batch-size N] [--set train.dtype=bfloat16 --set train.compile=true ...]
        [--device cuda] [--no-tf32]

Each preset's model and recipe (dtype, compile, fused attention, gradient accumulation) is trained
for a few steps on random token ids (speed does not depend on what the tokens say, and nothing needs
downloading). On a GPU the presets keep their batch; on a CPU the batch defaults to 4 sequences,
1 micro-batch per step and no torch.compile, or a large preset would take minutes. MFU needs a known
GPU peak (slm_helpers.metrics.PEAK_FLOPS); elsewhere the table shows n/a and the achieved model
TFLOP/s. On CUDA, float32 matrix multiplies use TF32 tensor cores (as ``pick_device`` sets them up);
``--no-tf32`` measures plain float32. "peak MB" is the CUDA allocator's peak during the timed steps.
"""

import argparse
import time

import torch

from slm_helpers.config import load_config
from slm_helpers.device import pick_device, seed_everything
from slm_helpers.metrics import measure_throughput
from slm_helpers.model import GPT
from slm_helpers.train import Trainer

PRESETS = ["shakespeare-char-cpu", "shakespeare-char", "tinystories-tiny", "tinystories-small",
           "tinystories-medium"]
VOCAB = {"char": 65, "gpt2": 50257}  # Tiny Shakespeare's characters; GPT-2's BPE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps per preset (after 1 warm-up step)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-tf32", action="store_true",
                        help="CUDA: plain float32 matmuls, without TF32")
    args = parser.parse_args()

    device = pick_device(args.device)
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    small = device.type == "cpu" and args.batch_size is None
    threads = f"{device}, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"device: {name}; torch {torch.__version__}; {args.steps} timed steps per preset"
          + ("; CPU: batch 4, grad_accum 1, no compile" if small else ""))
    print(f"{'preset':<22}{'params':>8}{'tok/step':>10}{'dtype':>10}{'compile':>8}{'ms/step':>10}"
          f"{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'act. MB':>9}{'peak MB':>9}")
    for preset in args.presets:
        overrides = ["train.batch_size=4", "train.grad_accum=1",
                     "train.compile=false"] if small else []
        if args.batch_size:
            overrides.append(f"train.batch_size={args.batch_size}")
        run = load_config(preset, overrides + args.set)
        seed_everything(run.train.seed)
        model = GPT(run.gpt_config(VOCAB[run.tokenizer]))
        tokens = torch.randint(VOCAB[run.tokenizer], (200_000,))
        trainer = Trainer(model, tokens, tokens[:20_000], run.train, device=device)
        start = time.perf_counter()
        m = measure_throughput(trainer, steps=args.steps, warmup=1)
        mfu = f"{m['mfu']:.1%}" if m["mfu"] is not None else "n/a"
        act = f"{m['activation_mb']:.0f}" if m["activation_mb"] is not None else "n/a"
        peak = f"{m['peak_memory_mb']:.0f}" if m["peak_memory_mb"] is not None else "n/a"
        print(f"{preset:<22}{model.num_params() / 1e6:>7.1f}M{trainer.tokens_per_step:>10,}"
              f"{str(trainer.amp_dtype or torch.float32).replace('torch.', ''):>10}"
              f"{str(run.train.compile):>8}"
              f"{m['ms_per_step']:>10,.0f}{m['tokens_per_sec']:>11,.0f}{m['model_tflops']:>9.3f}{mfu:>7}{act:>9}{peak:>9}"
              f"   ({time.perf_counter() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
