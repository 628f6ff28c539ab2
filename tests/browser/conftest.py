"""The course as a person sees it: JupyterLab in headless Chromium, driven by Playwright.

These tests are slow (a JupyterLab server, a browser, whole notebooks) and need Chromium, so a plain
``pytest tests/`` leaves them out; they run when this folder is named: ``pytest tests/browser``
(``make test-browser``; ``make test`` too, when Chromium is installed).

Environment:
    SLM_CHROMIUM      the Chromium to drive (default: ``chromium`` on the PATH, then
    /usr/bin/chromium) SLM_REQUIRE_BROWSER  1: a missing Chromium or Playwright fails the tests
    instead of skipping them
                      (CI sets it: .ci/run and the GitHub workflow; a laptop without Chromium skips)
    SLM_SCREENSHOTS   a folder for the screenshots (default: a temporary folder); ``images/``
    refreshes
                      the pictures the README shows
    SLM_BROWSER_FULL  1: run the lessons in full mode instead of quick mode (minutes, not seconds;
    the
                      copy gets the repository's trained runs/ so lesson 9 reuses lesson 6's model).
                      This is how the README's pictures are made:
                      SLM_BROWSER_FULL=1 SLM_SCREENSHOTS=images make test-browser
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NOTEBOOKS = ROOT / "notebooks"

# Headless, no GPU, and no attempt to reach the network
# (this machine has none; each attempt would fail).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_ignore_collect(collection_path, config):
    """Collect this folder only when it (or a file in it) is named on the command line."""
    for arg in config.invocation_params.args:
        path = Path(config.invocation_params.dir, str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return None
    return True


def browser_required() -> bool:
    return os.environ.get("SLM_REQUIRE_BROWSER", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str):
    """Skip on a developer's machine; fail where the browser tests must run
    (SLM_REQUIRE_BROWSER=1)."""
    if browser_required():
        pytest.fail(f"{reason}, and SLM_REQUIRE_BROWSER is set: the browser tests must run here",
                    pytrace=False)
    pytest.skip(reason)


def find_chromium() -> str | None:
    if os.environ.get("SLM_CHROMIUM"):
        path = os.environ["SLM_CHROMIUM"]
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# JupyterLab settings for the test server: every cell in the page (no virtual scrolling, so the page
# can be read whole), and no news or update checks (they would try the network).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        '{"fetchNews": "false", "checkForUpdates": false}',
}


class Lab:
    """A JupyterLab server on 127.0.0.1 serving a temporary copy of notebooks/ (kernels in quick
    mode)."""

    def __init__(self, base: Path, *, full: bool = False):
        self.base, self.full = base, full
        # '../runs' in a notebook lands in the copy, not the repo
        self.root = base / "course" / "notebooks"
        shutil.copytree(NOTEBOOKS, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        # trained models, so full mode need not train them again
        if full and (ROOT / "runs").is_dir():
            shutil.copytree(ROOT / "runs", base / "course" / "runs",
                            ignore=shutil.ignore_patterns("quick"))
        for name, text in LAB_SETTINGS.items():
            path = base / "settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, SLM_QUICK="0" if full else "1",
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
                   JUPYTER_RUNTIME_DIR=str(base / "runtime"), IPYTHONDIR=str(base / "ipython"),
                   JUPYTER_PLATFORM_DIRS="1")
        env.pop("SLM_DEVICE", None)
        self.log_path = base / "jupyterlab.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             f"--LabApp.user_settings_dir={base / 'settings'}",
             f"--LabApp.workspaces_dir={base / 'workspaces'}",
             "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.root)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("JupyterLab stopped (exit "
                                   f"{self.process.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer in {timeout:.0f} s:\n{self.log()}")

    def notebook_url(self, name: str) -> str:
        """The notebook alone in a new, empty workspace (so no tab of an earlier test comes
        back)."""
        return f"{self.url}/lab/workspaces/{secrets.token_hex(4)}/tree/{name}?token={self.token}"

    def api(self, method: str, path: str):
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """End every notebook's kernel (between tests, so two never run at once)."""
        for session in self.api("GET", "sessions"):
            self.api("DELETE", f"sessions/{session['id']}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def chromium_path():
    path = find_chromium()
    if not path:
        where = (f"SLM_CHROMIUM={os.environ['SLM_CHROMIUM']} is not an executable"
                 if os.environ.get("SLM_CHROMIUM") else "Chromium not found")
        skip_or_fail(f"{where} (install Debian's chromium, or set SLM_CHROMIUM)")
    return path


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    full = os.environ.get("SLM_BROWSER_FULL", "").strip().lower() not in ("", "0", "false", "no")
    server = Lab(tmp_path_factory.mktemp("jupyterlab"), full=full)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright import sync_api
    except ImportError as err:
        skip_or_fail(f"Playwright cannot be imported ({err}): pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        # launch() starts Chromium with a fresh, empty profile (--user-data-dir) of its own.
        chromium = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, lab, request):
    """A fresh browser tab; when its test fails, a screenshot of the whole page is kept for a
    look."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        path = Path(tempfile.gettempdir()) / "slm-browser-tests" / f"{request.node.name}-failed.png"
        path.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        print(f"\nthe page when {request.node.name} failed: {path}")
    context.close()
    lab.shutdown_kernels()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory):
    """Where screenshots go: SLM_SCREENSHOTS (relative to the repository) or a temporary folder."""
    folder = os.environ.get("SLM_SCREENSHOTS")
    path = (ROOT / folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
