"""Benchmark: SmolLM2-135M-Instruct in the course's GPT against Hugging Face transformers, on the
same GGUF file.

    python tests/benchmarks/bench_pretrained.py [--tokens 200] [--repeats 3] [--loads 3] [--threads
    N]
        [--device cpu|cuda] [--model FILE.gguf] [--no-transformers] [--quick]

Four measurements, on the file ``load_pretrained()`` loads (``--model``: any Llama GGUF file):

1. Decoding: a greedy reply of ``--tokens`` new tokens (default 200) to a ChatML chat of one user
message
   (about 45 tokens with the default system line). Ours is the loop ``generate(model, idx, n,
   temperature=0)`` runs (``token_stream``, with its KV cache; it never stops at ``<|im_end|>``),
   theirs ``model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)``
   (``min_new_tokens`` bans the end token, so both write n tokens). Both models live in one process
   and run in turn, after one untimed warm-up run each; the table shows the median of ``--repeats``
   runs (default 3): tokens/s over the whole call, the prefill (prompt in, first token out) and the
   mean time of each later token. "vs HF" is the median, over the runs, of ours/theirs tokens/s
   measured back to back, so a busy machine slows both. "same tokens" counts the leading tokens
   equal to transformers' reply (ours continues after an ``<|im_end|>`` that transformers may not
   write), or, for a speed-up, to our float32 reply.
2. Speed-ups a lesson can teach, on the CPU: the Linear layers' weights in float16 with float32
activations
   (half the bytes to read per token: a greedy step reads every weight once; a prompt, a
   matrix-matrix product that CPUs without 16-bit arithmetic do slowly, turns them back into float32
   first), and int8 weights with PyTorch's ``quantize_dynamic`` (deprecated for torchao, still in
   torch 2.13), which also rounds each layer's input to 8 bits with one scale per tensor: fast, but
   too coarse for a Llama's activations, whose few large values set that scale. Each row shows its
   largest |difference| from our float32 logits at the last position of a few chat prompts, against
   TOLERANCE, and its speed against transformers' float32.
3. Load time: ``load_pretrained()`` to a model and tokenizer, against transformers' GGUF load of its
model
   and tokenizer, each in a fresh process (imports not counted), best of ``--loads`` (default 3).
4. Peak resident memory (``ru_maxrss``) of those same processes, which write one reply of
``--tokens``
   tokens after the load (the largest of the ``--loads``); on CUDA also the allocator's peak on the
   GPU.

Goals (lesson 12): float32 decoding >= 1.0x transformers' and a speed-up >= 1.5x; load <= 5 s and <=
1/3 of transformers'; peak memory <= 1.5 GB. This script asserts none of them: it prints the
numbers. ``--threads`` (default: every core) is set in every process, for both sides. On a busy
machine only the ratios mean much; the load average is printed before and after.

``--device cuda`` does the same in bfloat16 on the GPU (the CPU speed-ups are skipped there).
``--quick`` runs everything on a tiny random Llama file (``tests/tiny_gguf.py``), 5 tokens, 1 run, 1
load: a check that the script works, for the tests. Without transformers (or with
``--no-transformers``) only ours runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
MESSAGES = [{"role": "user",
             "content": "Write a long, detailed story about a dragon who learns to bake bread."}]
# fits a tiny context
QUICK_MESSAGES = [{"role": "system", "content": "Hi."}, {"role": "user", "content": "Hello!"}]
ACCURACY_PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.",
                    "Explain photosynthesis to a child.",
                    "Give me three tips for learning to code."]
# largest |logit difference| a speed-up may make (SmolLM2's largest logits are about 20)
TOLERANCE = 0.1
RESULT = "RESULT "  # a worker's last line: this, then its numbers as JSON


# ---------------------------------------------------------------- what runs inside a worker process

def setup(args):
    """torch, set to the benchmark's threads, the device and the dtype: the same in every process,
    for both sides."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    return torch, device, torch.bfloat16 if device.type == "cuda" else torch.float32


def quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def load_ours(args, device, dtype):
    from slm_helpers.pretrained import load_pretrained

    return load_pretrained(args.model, device=device, dtype=dtype)


def load_theirs(args, device, dtype, tokenizer: bool = True):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(args.model)
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 **{dtype_kw: dtype})
    model = model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(path.parent,
                                                gguf_file=path.name) if tokenizer else None


def prompt_ids(torch, tokenizer, messages, device):
    from slm_helpers.chat import chat_ids

    return torch.tensor([chat_ids(tokenizer, messages)], device=device)


def chat_prompt(args) -> tuple[list[int], int]:
    """The benchmark chat's token ids and the id of <|im_end|>, from the file's own vocabulary (the
    parent passes them to every worker: transformers' side then needs nothing of ours)."""
    from slm_helpers.chat import IM_END, chat_ids
    from slm_helpers.gguf_file import GGUFFile
    from slm_helpers.pretrained import tokenizer_from_gguf

    tokenizer = tokenizer_from_gguf(GGUFFile(args.model))
    return chat_ids(tokenizer, args.messages), tokenizer.special_tokens[IM_END]


def reply_ours(torch, model, idx, n):
    """Our greedy reply, timed: (seconds to the first token, seconds in all, the new ids)."""
    from slm_helpers.device import synchronize
    from slm_helpers.sampling import token_stream

    new, first = [], None
    synchronize(idx.device)
    start = time.perf_counter()
    for next_id in token_stream(model, idx, n, temperature=0):  # the loop generate() runs
        new.append(next_id)
        if first is None:
            synchronize(idx.device)
            first = time.perf_counter() - start
    synchronize(idx.device)
    return first, time.perf_counter() - start, torch.cat(new, dim=1)[0].tolist()


class _FirstToken:
    """A streamer for transformers' generate: notes when the first new token arrives (its first put
    is the prompt)."""

    def __init__(self, start):
        self.start, self.puts, self.first = start, 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter() - self.start

    def end(self):
        pass


def reply_theirs(torch, model, idx, n, end_id):
    from slm_helpers.device import synchronize

    synchronize(idx.device)
    start = time.perf_counter()
    streamer = _FirstToken(start)
    with torch.no_grad():
        out = model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n,
                             min_new_tokens=n,
                             do_sample=False, pad_token_id=end_id, streamer=streamer)
    synchronize(idx.device)
    return streamer.first, time.perf_counter() - start, out[0, idx.size(1):].tolist()


def int8_dynamic(model, torch):
    """PyTorch's dynamic int8 quantization of every Linear, the same layers as half_weights; None
    where this torch has no quantize_dynamic."""
    with warnings.catch_warnings():  # deprecated in favour of torchao, still there in torch 2.13
        warnings.simplefilter("ignore")
        try:
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
        except ImportError:
            return None
        return quantize_dynamic(model, {torch.nn.Linear: default_dynamic_qconfig},
                                dtype=torch.qint8)


def largest_logit_difference(torch, reference, model, tokenizer, device) -> float:
    with torch.no_grad():
        diffs = []
        for text in ACCURACY_PROMPTS:
            idx = prompt_ids(torch, tokenizer, [{"role": "user", "content": text}], device)
            a, b = (m(idx, only_last=True)[0][0, -1].float() for m in (reference, model))
            diffs.append((a - b).abs().max().item())
    return max(diffs)


def worker_load(args) -> dict:
    """A fresh process: the imports, then the load (timed), then one reply; the peak resident memory
    of it all."""
    torch, device, dtype = setup(args)
    if args.side == "hf":
        quiet_transformers()
        import transformers.models.llama.modeling_llama  # noqa: F401 (imports are not part of the load time)
    import slm_helpers.pretrained  # noqa: F401
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    model, tokenizer = (load_theirs if args.side == "hf" else load_ours)(args, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if args.side == "hf":
        reply_theirs(torch, model, torch.tensor([args.ids], device=device), args.tokens,
                     args.end_id)
    else:
        reply_ours(torch, model, prompt_ids(torch, tokenizer, args.messages, device), args.tokens)
    result = {"seconds": seconds,
              "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "imports_mb": after_imports}
    if device.type == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def worker_decode(args) -> dict:
    torch, device, dtype = setup(args)
    from slm_helpers.half_weights import half_weights

    model, tokenizer = load_ours(args, device, dtype)
    idx = prompt_ids(torch, tokenizer, args.messages, device)
    end_id = args.end_id
    sides = {"ours": lambda: reply_ours(torch, model, idx, args.tokens)}
    accuracy = {}
    if device.type == "cpu" and not args.no_speedups:
        half = half_weights(load_ours(args, device, dtype)[0])
        sides["ours, float16 weights"] = lambda: reply_ours(torch, half, idx, args.tokens)
        accuracy["ours, float16 weights"] = largest_logit_difference(torch, model, half, tokenizer,
                                                                     device)
        int8 = int8_dynamic(load_ours(args, device, dtype)[0], torch)
        if int8 is not None:
            sides["ours, int8 quantize_dynamic"] = lambda: reply_ours(torch, int8, idx, args.tokens)
            accuracy["ours, int8 quantize_dynamic"] = largest_logit_difference(torch, model, int8,
                                                                               tokenizer, device)
    if args.transformers:
        quiet_transformers()
        theirs = load_theirs(args, device, dtype, tokenizer=False)[0]
        sides["transformers"] = lambda: reply_theirs(torch, theirs, idx, args.tokens, end_id)
    runs = {name: [] for name in sides}
    tokens = {name: run()[2] for name, run in sides.items()}  # the warm-up, and each side's reply
    for _ in range(args.repeats):
        for name, run in sides.items():
            runs[name].append(run()[:2])
    return {"prompt_tokens": idx.size(1), "runs": runs, "tokens": tokens, "accuracy": accuracy,
            "end_id": end_id}


WORKERS = {"load": worker_load, "decode": worker_decode}


# ----------------------------------------------------------------
# the parent: runs workers, prints the table

def run_worker(kind: str, args, side: str = "ours") -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--side", side,
               "--model", str(args.model), "--device", args.device, "--threads", str(args.threads),
               "--tokens", str(args.tokens), "--repeats", str(args.repeats), "--ids",
               ",".join(map(str, args.ids)),
               "--end-id", str(args.end_id)]
    command += ["--quick"] * args.quick + ["--no-transformers"] * (not args.transformers)
    command += ["--no-speedups"] * args.no_speedups
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        raise SystemExit(f"the {kind} worker ({side}) "
                         f"failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT):])


def transformers_unusable() -> str | None:
    try:
        import transformers  # noqa: F401
        from transformers.utils import is_torch_available
    except Exception as e:  # ImportError, or whatever a half-installed package raises
        return f"transformers cannot be imported ({type(e).__name__}: {e})"
    return None if is_torch_available() else "transformers finds no usable torch"


def same_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}"
                                           for x in os.getloadavg()) + f" ({os.cpu_count()} cores)"
    except OSError:
        return "load average unknown"


def print_decoding(args, result: dict) -> None:
    runs, tokens, n = result["runs"], result["tokens"], args.tokens
    # each side's tokens/s over transformers', run by run (back to back), then the median
    ratios = {}
    if "transformers" in runs:
        for name, side_runs in runs.items():
            ratios[name] = statistics.median(hf_total / total for (_, total), (_, hf_total)
                                             in zip(side_runs, runs["transformers"]))
    print(f"\nDecoding: greedy, {n} new tokens after a {result['prompt_tokens']}-token chat "
          f"prompt; median of {args.repeats} run(s) after a warm-up, the sides in turn")
    print(f"{'':30}{'tokens/s':>9}{'prefill ms':>12}{'ms/token':>10}{'vs HF':>8}"
          f"{'max |logit diff|':>18}{'same tokens':>14}")
    for name, side_runs in runs.items():
        speed = statistics.median(n / total for _, total in side_runs)
        prefill = statistics.median(first for first, _ in side_runs)
        per_token = statistics.median((total - first) / max(n - 1, 1) for first, total in side_runs)
        ratio = f"{ratios[name]:.2f}x" if name in ratios else "-"
        diff = result["accuracy"].get(name)
        diff = "-" if diff is None else f"{diff:.3f} {'ok' if diff <= TOLERANCE else 'OVER'}"
        if name == "ours":
            other = tokens.get("transformers")
            mine = tokens["ours"]
            # transformers was not allowed to end its reply
            if other is not None and result["end_id"] in mine:
                mine = mine[:mine.index(result["end_id"]) + 1]
            same = "-" if other is None else f"{same_prefix(mine, other)}/{len(mine)}"
        elif name == "transformers":
            same = "-"
        else:
            same = f"{same_prefix(tokens[name], tokens['ours'])}/{n} ours"
        print(f"{name:30}{speed:9.2f}{1000 * prefill:12.1f}{1000 * per_token:10.2f}{ratio:>8}"
              f"{diff:>18}{same:>14}")
    print(f"max |logit diff|: largest |difference| from our float32 logits at the last position of "
          f"{len(ACCURACY_PROMPTS)} chat prompts; ok: <= {TOLERANCE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per reply")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed replies per side (after one warm-up)")
    parser.add_argument("--loads", type=int, default=3,
                        help="fresh processes per side for the load time")
    parser.add_argument("--threads", type=int,
                        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count(),
                        help="torch CPU threads, in every process (default: every core)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: bfloat16 on the GPU")
    parser.add_argument("--model", default=None,
                        help="a Llama GGUF file (default: the installed SmolLM2)")
    parser.add_argument("--no-transformers", dest="transformers", action="store_false",
                        help="ours only (also what happens where transformers is unusable)")
    parser.add_argument("--no-speedups", action="store_true", help="skip the float16 and int8 rows")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random model, 5 tokens, 1 run: a smoke test")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--side", default="ours", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=lambda s: [int(i) for i in s.split(",")],
                        help=argparse.SUPPRESS)
    parser.add_argument("--end-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.messages = QUICK_MESSAGES if args.quick else MESSAGES
    if args.worker:
        print(RESULT + json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0

    if args.quick:
        args.tokens, args.repeats, args.loads = 5, 1, 1
    reason = transformers_unusable() if args.transformers else "--no-transformers"
    args.transformers = reason is None
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick and args.model is None:
            sys.path.insert(0, str(HERE.parent))
            from tiny_gguf import write_tiny_llama

            args.model = write_tiny_llama(Path(tmp) / "tiny-llama.gguf").path
        if args.model is None:
            from slm_helpers.pretrained import smollm2_path

            args.model = smollm2_path()
        args.ids, args.end_id = chat_prompt(args)
        return report(args, reason)


def report(args, reason: str | None) -> int:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run without --device cuda for the CPU numbers",
              file=sys.stderr)
        return 2
    versions = f"torch {torch.__version__}"
    if args.transformers:
        import transformers

        versions += f", transformers {transformers.__version__}"
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} CPU threads"
    print(f"{Path(args.model).name}: {args.device}, {dtype}, {where}; {versions}")
    print(f"before: {load_average()}" + ("" if args.transformers
                                         else f"; transformers skipped: {reason}"))
    sides = ["ours", "hf"] if args.transformers else ["ours"]

    print_decoding(args, run_worker("decode", args))

    loads = {side: [run_worker("load", args, side) for _ in range(args.loads)] for side in sides}
    best = {side: min(run["seconds"] for run in runs) for side, runs in loads.items()}
    print("\nLoad, model and tokenizer, in a fresh process (imports not counted), best of "
          f"{args.loads}:")
    print(f"  ours {best['ours']:.2f} s" + (f", transformers {best['hf']:.2f} s: ours takes "
                                           f"{best['ours'] / best['hf']:.2f} of theirs"
                                            if "hf" in best else ""))
    print(f"\nPeak resident memory of those processes (load, then one {args.tokens}-token reply), "
          "the largest:")
    for side, runs in loads.items():
        peak = max(runs, key=lambda run: run["peak_mb"])
        gpu = f", GPU allocator peak {peak['gpu_peak_mb']:,.0f} MB" if "gpu_peak_mb" in peak else ""
        print(f"  {'ours' if side == 'ours' else 'transformers':13} {peak['peak_mb']:7,.0f} MB "
              f"({peak['imports_mb']:,.0f} MB after the imports){gpu}")
    print(f"\nafter: {load_average()}")
    print("Goals: float32 decoding >= 1.0x transformers', a speed-up >= 1.5x; load <= 5 s and <= "
          "1/3 of transformers'; peak memory <= 1,500 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
