"""The run folder: what a pre-training or fine-tuning run leaves behind, and its status from start to end.

Only rank 0 writes:
    config.yaml        the resolved config
    run.json           {"status": "running" | "stopped" | "failed" | "complete", ...}; "complete" is written last;
                       "stopped" after SIGTERM/SIGINT or ``train.stop_at``, with a checkpoint ``--resume`` continues
    log.csv            step, epoch, loss, lr, images_per_s, elapsed_s, eval_top1 every log_every steps
                       (and a row per evaluation without images_per_s)
    tensorboard/       the same rows as TensorBoard scalars (``log.tensorboard=true``)
    config.json, model.safetensors, state.pt   the checkpoint in timm's layout (``train/checkpoint.py``)
    metrics.json       the job's results, written before run.json says complete
    curves.png         loss / lr / accuracy curves, drawn at the end
    .lock              held (flock) by the process training in the folder, so that a second one is refused

While it trains, rank 0 shows progress on stderr: a tqdm bar on a terminal, plain log lines otherwise
(``Progress``), so that a log file holds one line per report.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no flock, so no guard against a second process in the same folder
    fcntl = None

from train.checkpoint import MODEL_FILE, STATE_FILE, TIMM_CONFIG_FILE, checkpoint_files
from train.config import Config
from train.distributed import Dist, leave
from train.errors import TrainError
from train.resume import check_resume

log = logging.getLogger(__name__)

STATUS_FILE = "run.json"
STATUSES = ("running", "stopped", "failed", "complete")  # what write_status writes
LOG_FILE = "log.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
PLAIN_EVERY_S = 60.0  # without a terminal, a progress line at least this often between log rows

_locks: dict[Path, int] = {}  # run folder -> the descriptor holding its flock, for the job's duration


def _take_lock(out: Path) -> str:
    """Hold ``out/.lock`` for this process; an error message when another process holds it."""
    if fcntl is None:
        return ""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return f"run folder {out} is in use by another training process (pid {holder}); wait for it or use another --out"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _locks[out.resolve()] = fd
    return ""


def release_run_folder(out: Path) -> None:
    """Let go of the folder's lock (the job is over, however it ended)."""
    fd = _locks.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)


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


def trainer_status(out: Path) -> dict[str, Any] | None:
    """``out/run.json`` when this trainer wrote it (a JSON object with its status and time), else None."""
    try:
        status = json.loads((out / STATUS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ours = isinstance(status, dict) and status.get("status") in STATUSES and isinstance(status.get("time"), str)
    return status if ours else None


def _inspect(out: Path, resume: bool) -> tuple[str, bool, bool]:
    """What ``out`` holds: (why it cannot be used or "", whether a run started there, whether it has a checkpoint).

    Only a folder that is absent, empty or a run folder this trainer wrote (its ``run.json``) is used: a user's
    own files, even ones named like the trainer's (``config.yaml``, ``log.csv``), are never written over.
    """
    if out.exists() and not out.is_dir():
        return f"--out {out}: not a folder", False, False
    try:
        names = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    except OSError as e:
        return f"--out {out}: cannot read the folder ({e.strerror or e})", False, False
    started = trainer_status(out) is not None
    if names and not started:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return (f"--out {out} holds files that are not a run of this trainer ({shown}); pass an empty or new "
                "folder", False, False)
    has_checkpoint = any(checkpoint_files(out)) if started else False
    if not resume and has_checkpoint:
        return f"run folder {out} already holds a run: pass --resume or another --out", started, has_checkpoint
    return "", started, has_checkpoint


def start_run_folder(out: Path, cfg: Config, resume: bool, is_main: bool,
                     data: dict[str, Any] | None = None) -> bool:
    """Create (or, on resume, check) the run folder and take its lock; refuse to mix a new run into an old one.

    A folder whose run ended before its first checkpoint (killed, failed, stopped early, or killed before it
    made the folder at all) holds nothing to keep: ``--resume`` and a plain rerun both start it from step 0,
    so that a requeue script can always pass ``--resume``. A checkpoint is resumed only with the run's own
    config and dataset (``train.resume.check_resume``), checked before anything in the folder changes. Rank 0
    decides and tells the others, so that a refusal stops every rank instead of leaving them waiting.

    Args:
        out: the run folder.
        cfg: the command's resolved config (written to ``config.yaml``).
        resume: continue the checkpoint in ``out``, if any.
        is_main: rank 0 (the only one that reads and writes the folder).
        data: ``train.resume.dataset_identity`` of the command's dataset, compared on resume with what the
            checkpoint recorded (None: compare ``data.path``).

    Returns:
        Whether there is a checkpoint to resume from (False: train from step 0).

    Raises:
        TrainError: a run with a checkpoint without ``--resume``, ``--resume`` with another config or dataset
            than the run's, a folder in use, or an ``out`` that is a file, cannot be created or holds files that
            are not a run (``_inspect``).
    """
    error, from_checkpoint = "", False
    if is_main:
        error, started, has_checkpoint = _inspect(out, resume)
        if not error and resume and has_checkpoint:
            try:
                check_resume(out, cfg, data)
            except TrainError as e:
                error = str(e)
        if not error:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                error = f"--out {out}: cannot create the folder ({e.strerror or e})"
        if not error:
            error = _take_lock(out)
        if not error:
            from_checkpoint = resume and has_checkpoint
            if started and not from_checkpoint:
                log.warning("%s: the run there ended before its first checkpoint; starting it again from step 0",
                            out)
            elif resume and not started:
                log.warning("--resume: %s holds no run yet (none was started, or it was killed before its "
                            "folder was made); starting one from step 0", out)
            (out / "config.yaml").write_text(cfg.to_yaml())
            write_status(out, "running")
    if dist.is_initialized():
        box = [error, from_checkpoint]
        dist.broadcast_object_list(box, src=0)
        error, from_checkpoint = box
    if error:
        raise TrainError(error)
    return from_checkpoint


JOB_FILE = "job.json"  # marks the --out of a sweep or repro-small as theirs
# what a run writes into its folder (and the temporary names it writes them under): all a fresh run may remove
_RUN_FILES = {"config.yaml", STATUS_FILE, LOG_FILE, METRICS_FILE, CURVES_FILE, TENSORBOARD_DIR, LOCK_FILE,
              MODEL_FILE, STATE_FILE, TIMM_CONFIG_FILE}
_RUN_FILES |= {name + ".tmp" for name in _RUN_FILES}


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def claim_folder(out: Path, kind: str) -> None:
    """Make ``out`` the folder of a ``kind`` job (``sweep``, ``repro-small``) that writes run folders inside it.

    Absent or empty, it is created and marked (``job.json``); marked by the same kind, it is reused. Anything
    else is refused untouched, since the job replaces the run folders it finds inside.

    Raises:
        TrainError: ``out`` is a file, cannot be created, or holds files that are not this kind's.
    """
    marker = out / JOB_FILE
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: not a folder")
    try:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        mine = json.loads(marker.read_text()).get("kind") == kind if marker.is_file() else False
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        mine = False
    if names and not mine:
        raise TrainError(f"--out {out} holds files that are not a {kind} folder ({_listing(names)}); pass an "
                         "empty or new folder")
    if not names:
        try:
            out.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        except OSError as e:
            raise TrainError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None


def clear_run_folder(out: Path) -> Path:
    """Empty ``out`` for a fresh run: it may hold only a run this trainer wrote, whose files alone are removed.

    Returns:
        ``out``.

    Raises:
        TrainError: ``out`` holds anything a run does not write, or a process is training there.
    """
    if not out.exists():
        return out
    if not out.is_dir():
        raise TrainError(f"{out}: not a folder; it is left as it is")
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if n not in _RUN_FILES]
    board = out / TENSORBOARD_DIR
    if board.is_dir() and not board.is_symlink():
        foreign += [f"{TENSORBOARD_DIR}/{p.name}" for p in board.iterdir()
                    if not (p.is_file() and p.name.startswith("events.out.tfevents."))]
    if foreign or (names and trainer_status(out) is None and set(names) - {LOCK_FILE}):
        raise TrainError(f"{out} holds files this trainer did not write ({_listing(foreign or names)}); move them "
                         "or pass another --out")
    if LOCK_FILE in names:  # a process training there holds it
        error = _take_lock(out)
        if error:
            raise TrainError(error)
        release_run_folder(out)
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # tensorboard/: event files the run wrote
        else:
            path.unlink()
    return out


def write_status(out: Path, status: str, **extra: Any) -> None:
    """``run.json`` (replaced atomically): "complete" only once everything else is written."""
    tmp = out / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}, indent=1))
    os.replace(tmp, out / STATUS_FILE)


def run_job(out: Path, env: Dist, train: Callable[[], dict[str, Any]],
            metrics: Callable[[dict[str, Any]], dict[str, Any]], complete: str) -> dict[str, Any]:
    """Run a training job in its folder and keep ``run.json`` true to how it ended.

    Args:
        out: the run folder, started by ``start_run_folder``.
        env: this process (rank 0 writes).
        train: runs the loop; returns ``train_loop``'s result.
        metrics: the loop's result -> the job's metrics (written to ``metrics.json``).
        complete: the metrics key repeated in the "complete" status (e.g. ``steps``, ``top1``).

    Returns:
        The metrics (a value that is not finite as None, as in ``metrics.json``), or ``{"stopped": True,
        "steps": n, "reason": why}`` when a signal (``SIGTERM``,
        ``SIGINT``) or ``train.stop_at`` ended the run early with a checkpoint. Every rank has left the
        process group by then (``distributed.leave``), after waiting for rank 0's last writes.
    """
    ended = False  # without an exception: every rank then waits for the others before leaving the group
    try:
        try:
            result = train()
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint at this step, the last one stands
            if env.is_main:
                write_status(out, "stopped", reason="interrupted", checkpoint="the last one written, if any")
            raise
        except Exception as e:
            if env.is_main:
                write_status(out, "failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        if result.get("stopped"):
            if env.is_main:
                write_status(out, "stopped", step=result["step"], reason=result["reason"])
            ended = True
            return {"stopped": True, "steps": result["step"], "reason": result["reason"]}
        values = strict_json(metrics(result))
        if env.is_main:
            (out / METRICS_FILE).write_text(json.dumps(values, indent=1, allow_nan=False))
            write_status(out, "complete", **{complete: values[complete]})
        ended = True
        return values
    finally:
        if env.is_main:
            release_run_folder(out)
        leave(env, wait=ended)


def strict_json(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None: ``metrics.json`` stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


class CsvLog:
    """``log.csv``, one row per log window or evaluation; opening it drops rows past the step resumed from.

    Args:
        out: the run folder.
        step: the step the run starts at (rows a crashed run wrote after its last checkpoint are redone).
        enabled: False on ranks other than 0 (nothing is read or written).
        tensorboard: also write each row as scalars to ``out/tensorboard`` (``check_tensorboard`` first).
    """

    FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s", "eval_top1")

    def __init__(self, out: Path, step: int, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path, self.enabled, self.writer = out / LOG_FILE, enabled, None
        self.last_loss = math.nan  # of the last training row kept (a run resumed at its end reports it)
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint resumed from
            self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=step + 1 if step else None)
        rows = []
        if self.path.is_file():
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            kept = [r for r in rows if r.get("images_per_s")]
            try:
                self.last_loss = float(kept[-1]["loss"]) if kept else math.nan
            except (TypeError, ValueError):
                self.last_loss = math.nan
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, epoch: int, loss: float, lr: float, elapsed_s: float,
              images_per_s: float | None = None, eval_top1: float | None = None) -> None:
        """Append one row; ``images_per_s`` None marks an evaluation row (it repeats the last loss)."""
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "loss": f"{loss:.5f}", "lr": f"{lr:.3e}",
               "images_per_s": "" if images_per_s is None else f"{images_per_s:.1f}",
               "elapsed_s": f"{elapsed_s:.1f}", "eval_top1": "" if eval_top1 is None else eval_top1}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow(row)
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

    with open(out / LOG_FILE) as f:
        rows = list(csv.DictReader(f))
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
    fig.savefig(out / CURVES_FILE, dpi=100)
    plt.close(fig)
