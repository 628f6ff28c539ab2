"""A timing committed in a lesson must agree with the benchmark that measures the same work.

The lessons are committed with the outputs of a full run on the course's reference machine, and the
README's results tables hold what the benchmark scripts printed on that machine. When both time the
same work, a committed number far from the benchmark's means one of them was measured on a loaded
machine (or measures something else): rerun the lesson, or the benchmark, on a quiet one.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTOR = 1.5  # generous: two runs on the same machine differ by far less when it is quiet


def _outputs(notebook: str) -> list[str]:
    """The committed text output of each code cell of ``notebooks/<notebook>``."""
    cells = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))["cells"]
    return ["".join("".join(out.get("text", "")) for out in cell.get("outputs", []))
            for cell in cells if cell["cell_type"] == "code"]


def _find(pattern: str, texts: list[str], where: str) -> re.Match:
    """The one match of ``pattern`` in ``texts``; fails, naming ``where``, unless there is one."""
    found = [m for text in texts for m in re.finditer(pattern, text)]
    assert len(found) == 1, (f"{where}: expected one line matching {pattern!r}, found {len(found)} "
                             "(outputs cleared? rerun the lesson in full mode)")
    return found[0]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _close(lesson: float, bench: float) -> bool:
    return bench / FACTOR <= lesson <= bench * FACTOR


def lesson6_training_seconds() -> tuple[str, int, float]:
    """(preset, steps, seconds of training steps) from lesson 6's committed training cell."""
    outputs = _outputs("06_gpt.ipynb")
    preset = _find(r"device: cpu, preset: ([\w-]+), quick mode: False", outputs,
                   "lesson 6's setup cell").group(1)
    steps = int(_find(r"final: train [\d.]+, val [\d.]+ after (\d+) steps on cpu", outputs,
                      "lesson 6's training cell").group(1))
    seconds = float(_find(r"(\d+) s of training steps", outputs,
                          "lesson 6's training cell").group(1))
    return preset, steps, seconds


def bench_cpu_preset_seconds() -> tuple[str, int, float]:
    """(preset, steps, seconds of training) from the README's bench_cpu_preset table."""
    readme = _readme()
    heading = _find(r"\(`tests/benchmarks/bench_cpu_preset\.py`, preset `([\w-]+)`:[^)]*?"
                    r"([\d,]+) steps of", [readme], "README, bench_cpu_preset")
    row = _find(r"\| this course, `[\w-]+` \| [^|]* \| \*\*(\d+) s\*\*", [readme],
                "README, bench_cpu_preset's table")
    return heading.group(1), int(heading.group(2).replace(",", "")), float(row.group(1))


def lesson9_cache_speedup() -> tuple[int, int, float]:
    """(threads, new tokens, speed-up) from lesson 9's committed timing of the 6-layer model."""
    outputs = _outputs("09_sampling.ipynb")
    threads = int(_find(r"device: cpu, preset: [\w-]+, torch threads: (\d+)", outputs,
                        "lesson 9's setup cell").group(1))
    timing = _find(r"parameters, (\d+) new tokens on cpu: [\d.]+ s without the cache, [\d.]+ s "
                   r"with it: ([\d.]+)x faster", outputs, "lesson 9's KV-cache timing")
    return threads, int(timing.group(1)), float(timing.group(2))


def bench_kv_cache_speedup() -> tuple[int, int, float]:
    """(threads, new tokens, speed-up of the cache with keep=256) from the README's
    bench_kv_cache table, first column: the tokens that fit in the context."""
    readme = _readme()
    threads = int(_find(r"`tests/benchmarks/bench_kv_cache\.py`[^)]*?(\d+) threads\)", [readme],
                        "README, bench_kv_cache").group(1))
    tokens = int(_find(r"\| \| (\d+) new tokens \| \d+ new tokens \|", [readme],
                       "README, bench_kv_cache's table header").group(1))
    speedup = float(_find(r"\| KV cache, `keep=256` \| [\d.]+ s \(\**([\d.]+)×\**\)", [readme],
                          "README, bench_kv_cache's table").group(1))
    return threads, tokens, speedup


def test_lesson6_training_time_matches_bench_cpu_preset():
    preset, steps, seconds = lesson6_training_seconds()
    bench_preset, bench_steps, bench_seconds = bench_cpu_preset_seconds()
    assert (preset, steps) == (bench_preset, bench_steps), (
        f"lesson 6 trained {preset} for {steps} steps, bench_cpu_preset {bench_preset} for "
        f"{bench_steps}: not the same work")
    assert _close(seconds, bench_seconds), (
        f"lesson 6's seconds of training steps ({seconds:.0f} s, evaluation excluded) against "
        f"bench_cpu_preset's training time in the README ({bench_seconds:.0f} s): more than "
        f"{FACTOR}x apart; rerun one of them on a quiet machine")


def test_lesson9_cache_speedup_matches_bench_kv_cache():
    threads, tokens, speedup = lesson9_cache_speedup()
    bench_threads, bench_tokens, bench_speedup = bench_kv_cache_speedup()
    assert (threads, tokens) == (bench_threads, bench_tokens), (
        f"lesson 9 timed {tokens} new tokens on {threads} threads, bench_kv_cache {bench_tokens} "
        f"on {bench_threads}: not the same work")
    assert _close(speedup, bench_speedup), (
        f"lesson 9's KV-cache speed-up for {tokens} new tokens ({speedup}x) against "
        f"bench_kv_cache's (keep=256, {bench_tokens} new tokens) in the README "
        f"({bench_speedup}x): more than {FACTOR}x apart; rerun one of them on a quiet machine")
