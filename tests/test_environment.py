"""The conda environment and the pip package must ask for the same things."""

import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge calls a few packages differently
# A floor that names no release, and the first release above it.
FIRST_RELEASE = {"regex": "2023.3.22"}  # regex>=2023.0


def _split(requirement: str) -> tuple[str, str]:
    # an environment marker: conda has no Python-version choice
    requirement = requirement.split(";")[0]
    name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", requirement).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    if tomllib is None:
        import pytest

        pytest.skip("tomllib needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = dict(_split(r)
                    for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    pip_side = {CONDA_NAMES.get(k, k): v for k, v in pip_side.items()}
    pip_side["python"] = project["requires-python"].replace(" ", "")

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = dict(_split(d) for d in env["dependencies"] if isinstance(d, str) and d != "pip")
    assert conda_side == pip_side
    assert "conda-forge" in env["channels"]


def test_the_oldest_pins_are_pyprojects_floors():
    """tests/oldest-versions.txt pins each dependency at the release its floor names (torch>=2.4: a
    2.4.x), so `make test-oldest` tests what pyproject.toml promises."""
    if tomllib is None:
        import pytest

        pytest.skip("tomllib needs Python 3.11")
    from oldest_versions import read_pins

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = dict(_split(r) for r in project["dependencies"])
    pins = read_pins()
    assert sorted(pins) == sorted(floors)
    for name, spec in floors.items():
        assert spec.startswith(">="), (name, spec)
        floor = FIRST_RELEASE.get(name, spec[2:]).split(".")
        assert pins[name].split(".")[:len(floor)] == floor, (name, spec, pins[name])


def test_a_malformed_pin_is_refused_in_one_line(tmp_path):
    import pytest
    from oldest_versions import read_pins

    (tmp_path / "pins.txt").write_text("# comment\ntorch==2.4.1\nnumpy>=1.24\n")
    with pytest.raises(ValueError, match=r"pins.txt:3: expected name==version, got 'numpy>=1.24'"):
        read_pins(tmp_path / "pins.txt")


def test_the_workflows_oldest_job_installs_the_oldest_pins():
    from oldest_versions import read_pins

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "test.yml").read_text())
    matrix = workflow["jobs"]["test"]["strategy"]["matrix"]["include"]
    oldest = next(m for m in matrix if m["name"].startswith("oldest "))
    assert oldest["torch"] == f"torch=={read_pins()['torch']}"
    assert oldest["pins"] == "-c tests/oldest-versions.txt"
    requires = re.search(r'requires-python = ">=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert oldest["python"] == requires.group(1)
