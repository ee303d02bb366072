"""Helpers shared by the trainer's tests: quick tiny configs, the CLI run in this process or as a process, a folder's
snapshot, a loss poisoned from some step on, a small ImageFolder."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.config import load_config

REPO = Path(__file__).resolve().parents[1]
# 8 images of 64 px per step on the stream source, no evaluation: a step takes a fraction of a second
STREAM = ["data.source=stream", "train.batch_size=8", "train.log_every=1", "data.eval_path=''"]
QUICK = [*STREAM, "train.steps=6"]


def tiny_cfg(data, *overrides, **values):
    """The tiny config on ``data`` at the quick settings (``STREAM``), with ``overrides`` (KEY=VALUE)."""
    return load_config("tiny", [*STREAM, *overrides], {"data.path": str(data), **values})


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


def ft_cfg(data, *overrides):
    """The tiny fine-tuning config on ``data``: one epoch of batches of 10."""
    return load_config("tiny-finetune", ["train.epochs=1", "train.batch_size=10", "train.log_every=1", *overrides],
                       {"data.path": str(data)})


def image_folder(root: Path, classes=("cat", "dog"), train=10, test=4, size=16) -> Path:
    """A small ImageFolder root (train/, test/) of flat-colour PNGs, one colour per class."""
    from PIL import Image

    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (size, size), (40 * c + 3 * i, 200 - 40 * c, 90)).save(root / split / name / f"{i}.png")
    return root


def assert_same_weights(a: Path, b: Path) -> None:
    """Every tensor of ``a/model.safetensors`` equals ``b``'s."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def start_cli(data: Path, out: Path, steps: int, *extra: str) -> subprocess.Popen:
    """``python -m train pretrain`` of the tiny config at the quick settings, as a process of its own."""
    cmd = [sys.executable, "-m", "train", "pretrain", "--config", "tiny", "--data", str(data), "--out", str(out),
           "--steps", str(steps), *[a for o in STREAM for a in ("--set", o)], *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 240) -> None:
    """Wait until ``log.csv`` has a row at ``step`` or later."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        log = out / "log.csv"
        if log.is_file():
            rows = log.read_text().splitlines()[1:]
            if rows and int(rows[-1].split(",")[0]) >= step:
                return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no step {step} after {timeout} s")


# the arguments of a fine-tuning in seconds: tiny-finetune on 32 px
FT = ["--config", "tiny-finetune", "--epochs", "2", "--batch-size", "8", "--set", "finetune.eval_batch_size=12",
      "--set", "model.img_size=32", "--set", "train.log_every=1"]


def shaded_images(folder: Path, n: int, shade: int = 0) -> None:
    """``n`` 8 px RGB PNGs in ``folder``, each of its own colour (``shade`` shifts them: other files)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), ((i * 30 + shade) % 256, 60, 120)).save(folder / f"{shade}-{i}.png")


def shaded_folder(root: Path, classes=("airplane", "cat", "dog"), per_class: int = 8) -> Path:
    """An ImageFolder (``train/`` and ``test/``, a folder per class) of ``shaded_images``: what a fine-tuning
    of ``FT`` reads in seconds."""
    for split in ("train", "test"):
        for c in classes:
            shaded_images(root / split / c, per_class)
    return root

