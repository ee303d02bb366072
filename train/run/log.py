"""What a run logs while it trains: ``log.csv`` rows, TensorBoard scalars, progress on stderr, ``curves.png``.

Only rank 0 writes. ``log.csv`` holds ``step, epoch, loss, lr, images_per_s, elapsed_s, eval_top1`` every
``train.log_every`` steps (and a row per evaluation without ``images_per_s``); ``tensorboard/`` the same rows as
scalars (``log.tensorboard=true``); ``curves.png`` loss / lr / accuracy against step, drawn at the end. While it
trains, rank 0 shows progress: a tqdm bar on a terminal, plain log lines otherwise (``Progress``), so that a log
file holds one line per report.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from train.config import Config
from train.errors import TrainError
from train.run.folder import CURVES_FILE, LOG_FILE, TENSORBOARD_DIR, RunFolder

log = logging.getLogger(__name__)

PLAIN_EVERY_S = 60.0  # without a terminal, a progress line at least this often between log rows
MOST_LOG_BYTES = 1 << 28  # log.csv of a 240k-step run logged every step is about 15 MB
FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s", "eval_top1")


def check_tensorboard(cfg: Config) -> None:
    """Refuse ``log.tensorboard=true`` up front when the ``tensorboard`` package is missing.

    Raises:
        TrainError: asked for and not installed.
    """
    if not cfg.log.tensorboard:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise TrainError("log.tensorboard=true needs the tensorboard package: pip install tensorboard") from None


class CsvLog:
    """``log.csv``, one row per log window or evaluation; opening it drops rows past the step resumed from.

    Args:
        out: the run folder.
        step: the step the run starts at (rows a crashed run wrote after its last checkpoint are redone).
        enabled: False on ranks other than 0 (nothing is read or written).
        tensorboard: also write each row as scalars to ``out/tensorboard`` (``check_tensorboard`` first).
    """

    def __init__(self, out: Path, step: int, enabled: bool = True, tensorboard: bool = False) -> None:
        self.folder, self.enabled, self.writer = RunFolder(out), enabled, None
        self.last_loss = math.nan  # of the last training row kept (a run resumed at its end reports it)
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint resumed from
            self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=step + 1 if step else None)
        rows = [r for r in read_rows(out) if int(r["step"]) <= step]
        kept = [r for r in rows if r["images_per_s"]]
        self.last_loss = float(kept[-1]["loss"]) if kept else math.nan
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        self.folder.write(LOG_FILE, text.getvalue().encode())

    def write(self, step: int, epoch: int, loss: float, lr: float, elapsed_s: float,
              images_per_s: float | None = None, eval_top1: float | None = None) -> None:
        """Append one row; ``images_per_s`` None marks an evaluation row (it repeats the last loss)."""
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "loss": f"{loss:.5f}", "lr": f"{lr:.3e}",
               "images_per_s": "" if images_per_s is None else f"{images_per_s:.1f}",
               "elapsed_s": f"{elapsed_s:.1f}", "eval_top1": "" if eval_top1 is None else eval_top1}
        text = io.StringIO()
        csv.DictWriter(text, fieldnames=FIELDS).writerow(row)
        self.folder.append(LOG_FILE, text.getvalue())
        if self.writer is not None:
            if images_per_s is not None:
                self.writer.add_scalar("train/loss", loss, step)
                self.writer.add_scalar("train/lr", lr, step)
                self.writer.add_scalar("train/images_per_s", images_per_s, step)
            if eval_top1 is not None:
                self.writer.add_scalar("eval/top1", eval_top1, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/log.csv`` this trainer could have written (numbers where it writes numbers); a row that is
    not one, or a file that is not a regular one, is left out with a warning."""
    raw = RunFolder(out).read(LOG_FILE, MOST_LOG_BYTES)
    if raw is None:
        return []
    rows, bad = [], 0
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))):
        if _row_ok(row):
            rows.append({k: row[k] for k in FIELDS})
        else:
            bad += 1
    if bad:
        log.warning("%s: %d row(s) of %s are not this trainer's and are left out", out, bad, LOG_FILE)
    return rows


def _row_ok(row: dict[str, Any]) -> bool:
    try:
        int(row["step"]), int(row["epoch"]), float(row["loss"]), float(row["lr"]), float(row["elapsed_s"])
        for key in ("images_per_s", "eval_top1"):
            if row[key]:
                float(row[key])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 05m``, ``4m 10s``, ``12s``."""
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Progress on stderr from rank 0: a tqdm bar on a terminal, plain log lines when stderr is a file or pipe.

    The plain lines (``step 10/300  loss 2.345  lr 4.0e-04  images/s 350  elapsed 12s  eta 5m 40s``) come at the
    first step, at every log row and at least every ``every_s`` seconds between rows.

    Args:
        total: optimizer steps of the run.
        initial: the step it starts at.
        enabled: False on ranks other than 0.
        every_s: the longest silence between plain lines.
    """

    def __init__(self, total: int, initial: int, enabled: bool, every_s: float = PLAIN_EVERY_S) -> None:
        self.total, self.initial, self.enabled, self.every_s = total, initial, enabled, every_s
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True) if enabled and tty else None
        self.t0 = self.last = time.perf_counter()
        self.shown = initial

    def step(self, step: int, lr: float, window: Callable[[], tuple[float, float]]) -> None:
        """After each optimizer step; ``window()`` gives this rank's (loss, images/s) since the last row."""
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and step > self.shown and (
                step == self.initial + 1 or time.perf_counter() - self.last >= self.every_s):
            self._line(step, *window(), lr)

    def row(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        """At each log row (the loss averaged over ranks)."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}")
        elif self.enabled and step > self.shown:
            self._line(step, loss, images_per_s, lr)

    def _line(self, step: int, loss: float, images_per_s: float, lr: float) -> None:
        now = time.perf_counter()
        elapsed = now - self.t0
        eta = elapsed / (step - self.initial) * (self.total - step)
        log.info("step %d/%d  loss %.4f  lr %.3e  images/s %.1f  elapsed %s  eta %s", step, self.total, loss, lr,
                 images_per_s, duration(elapsed), duration(eta))
        self.shown, self.last = step, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_curves(out: Path) -> None:
    """``curves.png``: loss, learning rate and (when present) accuracy against step, from ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(out)
    acc = [(int(r["step"]), float(r["eval_top1"])) for r in rows if r.get("eval_top1")]
    rows = [r for r in rows if r.get("images_per_s")]  # eval-only rows repeat the last loss
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3 if acc else 2, figsize=(12 if acc else 8, 3.2))
    axes[0].plot(step, [float(r["loss"]) for r in rows])
    axes[0].set(xlabel="step", ylabel="train loss")
    axes[1].plot(step, [float(r["lr"]) for r in rows])
    axes[1].set(xlabel="step", ylabel="lr")
    if acc:
        axes[2].plot([a for a, _ in acc], [b for _, b in acc], marker="o")
        axes[2].set(xlabel="step", ylabel="eval top-1 %")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    RunFolder(out).write(CURVES_FILE, png.getvalue())
