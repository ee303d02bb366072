"""What every benchmark prints first: the machine, the versions, the date and the load; and CPU-time helpers.

Figures are CPU time (``time.process_time`` for this process, ``resource.getrusage(RUSAGE_CHILDREN)`` for the
processes it waited for), so other load on a shared machine counts less than in wall time; the load average is
printed anyway, since a loaded machine still slows caches and turbo.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def header(title: str, load_at_start: str | None = None) -> str:
    """The lines every figure needs: what, when, on which CPU and cores, with which versions, under what load
    (``load_at_start``: ``load()`` taken when the measurement began, for a header printed after it)."""
    versions = ", ".join(f"{name} {version(dist)}" for name, dist in
                         (("numpy", "numpy"), ("numba", "numba"), ("Pillow", "pillow"), ("noise", "noise")))
    return (f"# {title}\n\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- CPU: {cpu_model()}, {cores()} cores available ({os.cpu_count()} logical in the machine)\n"
            f"- Python {platform.python_version()}, {versions}\n"
            f"- load average at start (1 / 5 / 15 min): {load_at_start or load()}\n")


def children_cpu() -> float:
    """CPU seconds of the child processes waited for so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_now() -> float:
    """CPU seconds of this process and of its waited-for children."""
    return time.process_time() + children_cpu()
