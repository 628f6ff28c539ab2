"""`make gpu-check`: what the course does on a GPU, in one command and one markdown report.

    python tests/benchmarks/gpu_check.py [--out tests/benchmarks/gpu_check_report.md]
        [--lessons 00 02 06 08 09] [--device cuda] [--quick]

On one modern GPU it should take under 8 minutes (not yet timed on one: the course's CI machine has
no GPU). In order:

1. the machine: GPU, torch, CUDA and cuDNN versions;
2. lessons 0, 2, 6, 8 and 9 executed top to bottom in full mode (outputs not compared with the
   committed CPU ones, only "did every cell run"), with each lesson's wall time;
3. training throughput of shakespeare-char and tinystories-small in float32, TF32, bfloat16 and
   float16 with the gradient scaler, each without and with torch.compile: tokens/s, MFU, peak memory
   (``bench_throughput.py``);
4. the KV-cache benchmark (``bench_kv_cache.py``);
5. lesson 11's speedrun: seconds of training for ``shakespeare-char-fast`` to reach nanoGPT's
validation
   loss of 1.4697 (``bench_speedrun.py --device cuda``);
6. a one-process NCCL run under torchrun (DDP's code path: process group, barrier, all-reduce).

Each part runs as its own process and its output goes into the report as printed; a part that fails
is reported as failed and the others still run. ``--device cpu --quick`` is a dry run of the same
steps on a CPU, at tiny sizes (quick mode), which is how the tests check this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tests" / "benchmarks"
LESSONS = ["00", "02", "06", "08", "09"]
# (label, overrides) for the throughput table; float32 without TF32 is the --no-tf32 flag.
PRECISIONS = [("float32", ["--no-tf32"]), ("TF32", []),
              ("bfloat16", ["--set", "train.dtype=bfloat16"]),
              ("float16 + GradScaler", ["--set", "train.dtype=float16"])]


def machine(device: str) -> list[str]:
    lines = [f"- torch {torch.__version__}, Python {platform.python_version()}, "
             f"{platform.platform(terse=True)}"]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines += [f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
                  f"{props.major}.{props.minor}, {torch.cuda.device_count()} visible",
                  f"- CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    else:
        lines.append(f"- no GPU: a dry run on the CPU ({os.cpu_count()} cores)")
    return lines


def run(command: list[str], *, env: dict | None = None, cwd: Path = ROOT,
        timeout: float = 600) -> tuple[bool, str, float]:
    """(succeeded, its output, seconds) of a command, never raising."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})},
                              capture_output=True, text=True,
                              timeout=timeout)
        ok, output = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        ok, output = False, f"timed out after {timeout:.0f} s\n{err.stdout or ''}"
    return ok, output.strip(), time.perf_counter() - start


def execute_lesson(path: Path, quick: bool) -> tuple[bool, str, float]:
    """Run one notebook top to bottom in a fresh kernel, in its own folder (so ../runs is the
    repo's)."""
    code = ("import sys, nbformat\n"
            "from nbclient import NotebookClient\n"
            f"nb = nbformat.read({str(path)!r}, as_version=4)\n"
            f"where = {{'metadata': {{'path': {str(path.parent)!r}}}}}\n"
            "NotebookClient(nb, timeout=1200, kernel_name='python3', resources=where).execute()\n"
            "print(sum(c.cell_type == 'code' for c in nb.cells), 'code cells ran')\n")
    env = {"SLM_QUICK": "1" if quick else "0"}
    ok, output, seconds = run([sys.executable, "-c", code], env=env, timeout=1800)
    return ok, output if ok else output[-3000:], seconds


def fenced(text: str) -> list[str]:
    return ["```", text, "```", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(BENCH / "gpu_check_report.md"))
    parser.add_argument("--lessons", nargs="*", default=LESSONS,
                        help="lesson numbers to execute (none: skip)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (quick mode): a dry run")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU here; `--device cpu --quick` does a dry run of the same steps",
              file=sys.stderr)
        return 2

    report = ["# GPU check", "",
              f"Run {time.strftime('%Y-%m-%d %H:%M')} by `tests/benchmarks/gpu_check.py`"
              + (" (dry run: quick mode)" if args.quick else "") + ".", "", "## Machine", "",
              *machine(args.device), ""]
    failures = []
    start = time.perf_counter()

    report += ["## Lessons, full mode" if not args.quick else "## Lessons, quick mode", "",
               "| lesson | result | minutes |", "| --- | --- | --- |"]
    details = []
    for number in args.lessons:
        path = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
        ok, output, seconds = execute_lesson(path, args.quick)
        print(f"{path.name}: {'ok' if ok else 'FAILED'} in {seconds / 60:.1f} min", flush=True)
        report.append(f"| {path.name} | {'ran' if ok else '**failed**'} | {seconds / 60:.1f} |")
        if not ok:
            failures.append(path.name)
            details += [f"{path.name} failed:", *fenced(output)]
    report += ["", *details]

    steps = "1" if args.quick else "10"
    presets = ["shakespeare-char-cpu"] if args.quick else ["shakespeare-char", "tinystories-small"]
    report += ["## Training throughput", "",
               f"`bench_throughput.py` on random tokens, {steps} timed steps after one warm-up "
               "(compilation happens in the warm-up). MFU is against the GPU's 16-bit peak, also "
               "for float32.", ""]
    # on a CPU they are all float32
    for label, flags in PRECISIONS[:1] if args.quick else PRECISIONS:
        for compile_ in (False, True):
            if args.quick and compile_:
                continue
            command = [sys.executable, str(BENCH / "bench_throughput.py"), "--presets", *presets,
                       "--steps", steps,
                       "--device", args.device, *flags, "--set",
                       f"train.compile={str(compile_).lower()}"]
            if args.quick:
                command += ["--batch-size", "2"]
            ok, output, seconds = run(command)
            title = f"{label}, {'compiled' if compile_ else 'eager'}"
            print(f"throughput {title}: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)", flush=True)
            failures += [] if ok else [f"throughput {title}"]
            report += [f"**{title}**" + ("" if ok else " (failed)"), "", *fenced(output)]

    ok, output, seconds = run([sys.executable, str(BENCH / "bench_kv_cache.py"), "--device",
                               args.device,
                               "--tokens", "10" if args.quick else "500"])
    print(f"KV cache: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)", flush=True)
    failures += [] if ok else ["KV cache"]
    report += ["## KV cache", "", *fenced(output)]

    command = [sys.executable, str(BENCH / "bench_speedrun.py"), "--device", args.device]
    ok, output, seconds = run(command + (["--quick", "--evaluations", "2"] if args.quick else []))
    print(f"speedrun: {'ok' if ok else 'FAILED'} ({seconds:.0f} s)", flush=True)
    failures += [] if ok else ["speedrun"]
    title = "shakespeare-char-fast to nanoGPT's 1.4697" if args.device == "cuda" else "the CPU race"
    report += [f"## Speedrun: {title} (`bench_speedrun.py`)", "", *fenced(output)]

    with tempfile.TemporaryDirectory() as tmp:
        sets = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64",
                "train.max_iters=20",
                "train.eval_interval=10", "train.eval_iters=2", "train.batch_size=8",
                "train.compile=false"]
        if args.quick:
            sets += ["train.max_iters=4", "train.eval_interval=2"]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "1",
                   "-m", "slm_helpers", "train", "--preset", "shakespeare-char-cpu", "--device",
                   args.device,
                   "--out", str(Path(tmp) / "ddp"), *(f"--set={s}" for s in sets)]
        # no progress bars in the report
        ok, output, seconds = run(command, env={"TQDM_DISABLE": "1"})
    backend = "NCCL" if args.device == "cuda" else "gloo"
    print(f"torchrun ({backend}): {'ok' if ok else 'FAILED'} ({seconds:.0f} s)", flush=True)
    failures += [] if ok else ["torchrun"]
    report += [f"## One process under torchrun ({backend})", "", *fenced(output)]

    total = (time.perf_counter() - start) / 60
    report[4:4] = [f"**{'All parts ran' if not failures else 'Failed: ' + ', '.join(failures)}**, "
                   f"in {total:.1f} minutes.", ""]
    Path(args.out).write_text("\n".join(report) + "\n", encoding="utf-8")
    print(f"report: {args.out} ({total:.1f} "
          f"min){'; failed: ' + ', '.join(failures) if failures else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
