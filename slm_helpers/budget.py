"""Quick mode: the same notebook, with tiny iteration counts, for CI on a 2-core CPU.

Each notebook reads the switch in one visible line, for example::

    ITERS = budget(full=5000, quick=20)

Set the environment variable ``SLM_QUICK=1`` to get the quick numbers; nothing else differs.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")


def is_quick() -> bool:
    """True when ``SLM_QUICK`` is set to anything but empty, 0, false or no."""
    return os.environ.get("SLM_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def budget(full: T, quick: T) -> T:
    """``quick`` in quick mode, ``full`` otherwise."""
    return quick if is_quick() else full
