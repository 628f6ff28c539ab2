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
