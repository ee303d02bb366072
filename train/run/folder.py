"""The run folder: what a pre-training or fine-tuning run leaves behind, its lock, and its status from start to end.

Only rank 0 writes:
    config.yaml        the resolved config
    run.json           {"status": "running" | "stopped" | "failed" | "complete", ...}; "complete" is written last;
                       "stopped" after SIGTERM/SIGINT or ``train.stop_at``, with a checkpoint ``--resume`` continues
    log.csv, tensorboard/, curves.png   what the run logs (``train/run/log.py``)
    config.json, model.safetensors, state.pt   the checkpoint in timm's layout (``train/run/checkpoint.py``)
    metrics.json       the job's results, written before run.json says complete
    .lock              held (flock) by the process training in the folder, so that a second one is refused

The folder of a job that holds run folders (a sweep, repro-small) is marked by its ``job.json``
(``claim_folder``); such a job replaces only run folders the trainer wrote (``clear_run_folder``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

try:
    import fcntl
except ImportError:  # Windows: no flock, so no guard against a second process in the same folder
    fcntl = None

from train.config import Config
from train.distributed import Dist, leave
from train.errors import TrainError
from train.run.checkpoint import MODEL_FILE, STATE_FILE, TIMM_CONFIG_FILE, check_resume, checkpoint_files
from train.run.log import CURVES_FILE, LOG_FILE, TENSORBOARD_DIR

log = logging.getLogger(__name__)

STATUS_FILE = "run.json"
STATUSES = ("running", "stopped", "failed", "complete")  # what write_status writes
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"

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


def trainer_status(out: Path) -> dict[str, Any] | None:
    """``out/run.json`` when this trainer wrote it (a JSON object with its status and time), else None."""
    try:
        status = json.loads((out / STATUS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ours = isinstance(status, dict) and status.get("status") in STATUSES and isinstance(status.get("time"), str)
    return status if ours else None


def completed_run(out: Path, cfg: Config, compare_data: bool = True) -> dict[str, Any] | None:
    """On ``--resume``: the metrics of the complete run in ``out``, which has nothing left to do; else None.

    The folder is left byte for byte as it is (no lock, no ``config.yaml``, no checkpoint rewritten), so a
    requeue script that always passes ``--resume`` may run again after the job ended. The command's config
    must still be the run's (``check_resume``): another ``train.steps`` is another run, not this one.

    Args:
        out: the run folder.
        cfg: the command's resolved config.
        compare_data: compare ``data.path`` too (False for pre-training, whose dataset is compared by identity).

    Returns:
        ``metrics.json`` with ``"already_complete": True``, or None when ``out`` holds no complete run.

    Raises:
        TrainError: another config than the run's, or a run marked complete whose ``metrics.json`` is unreadable.
    """
    status = trainer_status(out) if out.is_dir() else None
    if status is None or status.get("status") != "complete":
        return None
    check_resume(out, cfg, compare_data=compare_data)
    try:
        metrics = json.loads((out / METRICS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        metrics = None
    if not isinstance(metrics, dict):
        raise TrainError(f"--resume: {out} is marked complete ({STATUS_FILE}) but its {METRICS_FILE} is missing or "
                         "unreadable: there is nothing to resume; start the run again in a new --out")
    return {**metrics, "already_complete": True}


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
    config and dataset (``train.run.checkpoint.check_resume``), checked before anything in the folder changes. Rank 0
    decides and tells the others, so that a refusal stops every rank instead of leaving them waiting.

    Args:
        out: the run folder.
        cfg: the command's resolved config (written to ``config.yaml``).
        resume: continue the checkpoint in ``out``, if any.
        is_main: rank 0 (the only one that reads and writes the folder).
        data: ``dataset_identity`` / ``downstream_identity`` (``train.data``) of the command's dataset, compared on resume with what the
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


