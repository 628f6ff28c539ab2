"""Benchmark: how much faster does the KV cache make generation?

    python tests/benchmarks/bench_kv_cache.py [--tokens 500] [--device cpu] [--threads 1]

The 6-layer, 384-wide character GPT (block_size 256; random weights: speed does not depend on
them) decodes greedily from a one-token prompt, without and with the cache, on the CPU and on
the GPU when there is one. Prints the time per token and the speed-up at two lengths: while the
sequence still fits in the context (255 new tokens), and for all ``--tokens`` (default 500).

Past the context the window slides, every position shifts and the cache must be rebuilt. The
window restarts from the last ``keep`` tokens once it is full, with and without the cache, so the
two always give the same tokens. ``keep=256`` (the default) is the usual crop to the last 256
tokens: exact, but the cache then needs a full pass per token. ``keep=128`` restarts the window
only every 129 tokens, so 128 of every 129 steps are cheap; the model sees 128 to 256 tokens of
context. Each row's speed-up is against the run without the cache at the same ``keep``.
Goal (issue: lesson 9): >= 5x for 500 new tokens on the CPU.

On a busy machine, ``--threads 1`` gives steadier numbers: one decoding step is dozens of tiny
operations, and each waits for every thread, so a thread the OS has parked stalls them all.
"""

import argparse
import time

import torch

from slm_helpers.device import synchronize
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.sampling import token_stream


def timeline(model, prompt, n, device, **options) -> tuple[list[float], torch.Tensor]:
    """Seconds elapsed after each new token, and the tokens."""
    times, tokens = [], []
    start = time.perf_counter()
    for next_id in token_stream(model, prompt, n, temperature=0, **options):
        tokens.append(next_id)
        synchronize(device)  # CUDA and MPS run asynchronously
        times.append(time.perf_counter() - start)
    return times, torch.cat(tokens, dim=1)


def bench(device: torch.device, n: int) -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0)
    model = GPT(config).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    timeline(model, prompt, 20, device)  # warm-up: first calls allocate and pick kernels
    timeline(model, prompt, 20, device, use_cache=False)
    keeps = {"keep=256, exact crop": None, "keep=128": config.block_size // 2}
    results = {(label, use_cache): timeline(model, prompt, n, device, use_cache=use_cache,
                                            keep=keep)
               for label, keep in keeps.items() for use_cache in (False, True)}
    within = min(n, config.block_size - 1)  # new tokens that fit beside the one-token prompt
    print(f"device {device} ({torch.get_num_threads()} CPU threads), "
          f"{model.num_params() / 1e6:.2f}M parameters, greedy decoding from a 1-token prompt")
    print(f"{'':34} {within:>4} new tokens            {n:>4} new tokens")
    for (label, use_cache), (times, tokens) in results.items():
        base_times, base_tokens = results[label, False]
        same = ("tokens identical to no cache" if torch.equal(tokens, base_tokens)
                else "TOKENS DIFFER FROM NO CACHE")
        print(f"{('cache, ' if use_cache else 'no cache, ') + label:34} "
              f"{times[within - 1]:6.2f}s {base_times[within - 1] / times[within - 1]:5.1f}x      "
              f"{times[-1]:6.2f}s {base_times[-1] / times[-1]:5.1f}x   {1000 * times[-1] / n:6.2f} "
              "ms/token"
              + (f", {same}" if use_cache else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--device", action="append",
                        help="cpu or cuda (repeatable; default: cpu, and cuda if present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        bench(torch.device(device), args.tokens)


if __name__ == "__main__":
    main()
