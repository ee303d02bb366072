"""``python -m train``: help like ``fracgen -h``; errors one line."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dash_h_works_like_fracgen():
    proc = subprocess.run([sys.executable, "-m", "train", "-h"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: python -m train [OPTIONS] COMMAND")
    commands = proc.stdout.split("Commands:", 1)[1]
    assert all(name in commands for name in ("pretrain", "finetune", "repro-small", "sweep"))
    sub = subprocess.run([sys.executable, "-m", "train", "pretrain", "-h"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert sub.returncode == 0 and "--verify-data / --no-verify-data" in sub.stdout


def test_worker_tracebacks_become_their_last_line():
    from train.__main__ import _one_line

    wrapped = ("Caught TrainError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ntrain.errors.TrainError: image a/b.jpg: cannot decode (OSError: x)\n')
    assert _one_line(wrapped) == "image a/b.jpg: cannot decode (OSError: x)"
    assert _one_line("plain message") == "plain message"
