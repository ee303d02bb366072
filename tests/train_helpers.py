"""Helpers shared by the trainer's attack tests: a quick tiny config, the CLI run in this process, a folder's
snapshot, a loss poisoned from some step on."""

import sys
from pathlib import Path

from train.config import load_config

QUICK = ["data.source=stream", "train.batch_size=8", "train.log_every=1", "data.eval_path=''", "train.steps=6"]


def cfg_of(data, *overrides):
    """The tiny config on ``data`` at a few steps, with ``overrides`` (KEY=VALUE)."""
    return load_config("tiny", [*QUICK, *overrides], {"data.path": str(data)})


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``python -m train ARGV`` in this process: (exit status, stdout, stderr)."""
    from train.__main__ import main

    old = sys.argv
    sys.argv = ["python -m train", *map(str, argv)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(argv, capsys) -> tuple[int, str]:
    """``run_cli`` without stdout: (exit status, stderr)."""
    code, _, err = run_cli(argv, capsys)
    return code, err


def assert_one_line(code, err, *fragments, start: str = "error: ") -> None:
    """A clean refusal: exit 2, one stderr line starting with ``start`` and holding every fragment, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(start), (code, err)
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict:
    """Every file of ``folder``: its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def poison_loss(monkeypatch, factor: float, from_step: int) -> None:
    """Multiply every micro-step's loss by ``factor`` (nan, inf) from optimizer step ``from_step`` on."""
    from train.step import TrainStep

    real = TrainStep.micro_step

    def poisoned(self, images, targets, last):
        loss = real(self, images, targets, last)
        return loss * factor if self.step >= from_step else loss

    monkeypatch.setattr(TrainStep, "micro_step", poisoned)
