"""Benchmark: how much faster does the KV cache make generation?

    python tests/benchmarks/bench_kv_cache.py [--tokens 500] [--device cpu] [--threads 1]

The 6-layer, 384-wide character GPT (block_size 256; random weights: speed does not depend on
them) decodes greedily from a one-token prompt, without and with the cache, on the CPU and on
the GPU when there is one. Prints the time per token and the speed-up at two lengths: while the
sequence still fits in the context (255 new tokens), and for all ``--tokens`` (default 500).

Past the context the window slides, every position shifts and the cache must be rebuilt. Rebuilt
over the whole window at every step (``keep=256``, the default) it gives exactly the uncached
tokens, but each step then costs a full pass; rebuilt over half the window (``keep=128``) it runs
128 cheap steps per rebuild, at the price of a context between 128 and 256 tokens.
Goal (issue: lesson 9): >= 5x for 500 new tokens on the CPU.

On a busy machine, ``--threads 1`` gives steadier numbers: one decoding step is dozens of tiny
operations, and each waits for every thread, so a thread the OS has parked stalls them all.
"""

import argparse
import time

import torch

from slm_helpers.model import GPT, GPTConfig
from slm_helpers.sampling import token_stream


def timeline(model, prompt, n, device, **options) -> tuple[list[float], torch.Tensor]:
    """Seconds elapsed after each new token, and the tokens."""
    times, tokens = [], []
    start = time.perf_counter()
    for next_id in token_stream(model, prompt, n, temperature=0, **options):
        tokens.append(next_id)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, torch.cat(tokens, dim=1)


def bench(device: torch.device, n: int) -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0)
    model = GPT(config).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    timeline(model, prompt, 20, device)  # warm-up: first calls allocate and pick kernels
    timeline(model, prompt, 20, device, use_cache=False)
    runs = {
        "no cache": dict(use_cache=False),
        "cache (keep=256, exact)": dict(use_cache=True),
        "cache (keep=128)": dict(use_cache=True, keep=config.block_size // 2),
    }
    results = {name: timeline(model, prompt, n, device, **options) for name, options in runs.items()}
    within = min(n, config.block_size - 1)  # new tokens that fit beside the one-token prompt
    base = results["no cache"]
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {model.num_params() / 1e6:.2f}M parameters, "
          f"greedy decoding from a 1-token prompt")
    print(f"{'':26} {within:>4} new tokens            {n:>4} new tokens")
    for name, (times, tokens) in results.items():
        same = torch.equal(tokens, base[1])
        print(f"{name:26} {times[within - 1]:6.2f}s {base[0][within - 1] / times[within - 1]:5.1f}x      "
              f"{times[-1]:6.2f}s {base[0][-1] / times[-1]:5.1f}x   "
              f"{1000 * times[-1] / n:6.2f} ms/token, tokens {'identical to' if same else 'differ from'} no cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--device", action="append", help="cpu or cuda (repeatable; default: cpu, and cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        bench(torch.device(device), args.tokens)


if __name__ == "__main__":
    main()
