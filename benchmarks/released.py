"""Running the authors' released scripts from a user's checkout: finding the script, naming its commit, and
feeding it fracgen's draws through CPython's ``random`` calls."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path


def find_script(root: str, script: Path, flag: str) -> Path:
    """The released ``script`` (relative to its repository) in a checkout given as the repository root, the
    script's folder or the script itself; exits naming ``flag`` when it is not there."""
    p = Path(root).expanduser()
    for cand in (p / script, p / script.name, p):
        if cand.is_file() and cand.name == script.name:
            return cand.resolve()
    raise SystemExit(f"{flag}: no {script} under {root}")


def checkout_commit(path: Path) -> str:
    """The short commit of the checkout holding ``path``, marked when files of its folder are modified."""
    try:
        head = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path.parent), "status", "--porcelain", "--", str(path.parent)],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def uniform_r(a: float, b: float, target: float) -> float:
    """A ``random()`` value r with ``a + (b - a) * r == target`` exactly (what CPython's uniform computes)."""
    r = (target - a) / (b - a)
    for _ in range(64):
        got = a + (b - a) * r
        if got == target:
            return r
        r = math.nextafter(r, math.inf if got < target else -math.inf)
    raise ValueError(f"no random() value gives uniform({a}, {b}) == {target!r}")
