"""What CI relies on: the browser tests fail, not skip, when CI requires them and they cannot run.

A laptop without Chromium may skip tests/browser with a clear line; CI (.ci/run, the GitHub
workflow) sets SLM_REQUIRE_BROWSER=1, and then a missing Chromium or Playwright is a failure. Each
case runs pytest on tests/browser in a subprocess, with only that folder's conftest and no plugins
(no torch, no Jupyter: under a second).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _browser_tests(tmp_path, *, require: bool, chromium: str, no_playwright: bool = False):
    env = {k: v for k, v in os.environ.items() if k not in ("SLM_REQUIRE_BROWSER", "PYTHONPATH")}
    env["SLM_CHROMIUM"] = chromium
    # nbval and friends: seconds to import, not needed here
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if require:
        env["SLM_REQUIRE_BROWSER"] = "1"
    # as if Playwright were not installed: a package of that name that cannot be imported
    if no_playwright:
        (tmp_path / "playwright").mkdir()
        (tmp_path / "playwright" / "__init__.py").write_text("raise ModuleNotFoundError('no "
                                                             "playwright here')\n")
        env["PYTHONPATH"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--confcutdir",
         "tests/browser",
         "tests/browser"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_chromium_skips_on_a_laptop_with_a_clear_line(tmp_path):
    result = _browser_tests(tmp_path, require=False, chromium=str(tmp_path / "no-chromium"))
    assert result.returncode == 0, result.stdout[-2000:]
    assert "3 skipped" in result.stdout and "is not an executable" in result.stdout


@pytest.mark.parametrize("missing", ["chromium", "playwright"])
def test_ci_fails_when_the_browser_tests_cannot_run(tmp_path, missing):
    # any executable
    chromium = str(tmp_path / "no-chromium") if missing == "chromium" else sys.executable
    result = _browser_tests(tmp_path, require=True, chromium=chromium,
                            no_playwright=missing == "playwright")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "skipped" not in result.stdout and "3 errors" in result.stdout
    assert "SLM_REQUIRE_BROWSER is set: the browser tests must run here" in result.stdout
    assert ("no playwright here" if missing == "playwright"
            else "is not an executable") in result.stdout
