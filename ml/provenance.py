"""Where a measurement was taken: the code's git commit and the machine it ran on.

Stored with every evaluation and printed by the benchmarks, since timings and figures mean
little without them.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (``model name``,
    ``flags``), None where there is no such line or no such file."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the code ran on: host, CPU model, cores, load average, Python and NumPy."""
    cpu = cpuinfo("model name") or platform.processor() or ""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def git_commit(*, mark_dirty: bool = True) -> str:
    """The checkout's short commit hash, or ``unknown``; with ``mark_dirty``, ``+dirty`` is
    added when tracked files differ from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = mark_dirty and _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def _git(*args: str) -> str:
    """The output of one git command run in the checkout."""
    return subprocess.run(
        ["git", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()
