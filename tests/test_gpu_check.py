"""`make gpu-check` without a GPU: its dry run (`--device cpu --quick`) does every step at tiny
sizes."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_dry_run_writes_every_section_of_the_report(tmp_path):
    out = tmp_path / "report.md"
    assert gpu_check.main(["--device", "cpu", "--quick", "--lessons", "00", "--out", str(out)]) == 0
    report = out.read_text()
    assert "**All parts ran**" in report
    assert "| 00_setup.ipynb | ran |" in report
    assert "shakespeare-char-cpu" in report and "tokens/s" in report and "peak MB" in report
    assert report.count("tokens identical to no cache") == 2
    assert "One process under torchrun (gloo)" in report and "done: step 4" in report
    assert ("## Speedrun: the CPU race" in report and "shakespeare-char-cpu-fast" in report
            and "W = " in report)


def test_without_a_gpu_it_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", "unused.md"]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
