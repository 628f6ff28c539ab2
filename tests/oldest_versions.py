"""The oldest versions the course supports, as tests/oldest-versions.txt pins them.

``make test-oldest`` runs this file with the environment it built before the tests: it prints the
versions and exits with a one-line error when one differs from its pin (a pin pip could not honour,
or an environment left over from older pins), so a run on newer versions never passes for the
oldest. ``tests/test_environment.py`` checks the pins against pyproject.toml's floors.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PINS = Path(__file__).resolve().parent / "oldest-versions.txt"


def read_pins(path: str | Path = PINS) -> dict[str, str]:
    """name (lower case) -> pinned version, from lines ``name==version`` (``#`` starts a
    comment)."""
    pins = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.]*)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected name==version, got {line!r}")
        pins[match.group(1).lower()] = match.group(2)
    return pins


def mismatches(pins: dict[str, str]) -> list[str]:
    """One line per pinned package whose installed version is not its pin; a local label (torch's
    ``+cpu``) does not count."""
    wrong = []
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name} is not installed (pinned {pinned})")
            continue
        if installed.split("+")[0] != pinned:
            wrong.append(f"{name} {installed} is installed, not {pinned}")
    return wrong


def main() -> None:
    pins = read_pins(sys.argv[1] if len(sys.argv) > 1 else PINS)
    wrong = mismatches(pins)
    if wrong:
        sys.exit("not the oldest versions: " + "; ".join(wrong))
    print(f"Python {sys.version.split()[0]}, "
          + ", ".join(f"{name} {version(name)}" for name in pins))


if __name__ == "__main__":
    main()
