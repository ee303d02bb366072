"""The run folder: the one object every file of a run is written through, its lock, and its status from start to end.

Only rank 0 writes:
    config.yaml        the resolved config
    run.json           {"status": "running" | "stopped" | "failed" | "complete", ...}; "complete" is written last;
                       "stopped" after SIGTERM/SIGINT or ``train.stop_at``, with a checkpoint ``--resume`` continues
    log.csv, tensorboard/, curves.png   what the run logs (``train/run/log.py``)
    config.json, model.safetensors, state.safetensors   the checkpoint (``train/run/checkpoint.py``)
    metrics.json       the job's results, written before run.json says complete
    .lock              held (flock) by the process training in the folder, so that a second one is refused

``RunFolder`` writes every file whole under a temporary name beside it and renames it over it, never through a
link (``fracgen.folder``); a start refuses a folder where any of these names is a link or not a regular file, and
a start that fails leaves the folder as it found it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fracgen import folder as fs
from fracgen.errors import FracgenError
from train.config import Config
from train.errors import TrainError

if TYPE_CHECKING:  # torch is imported when a run starts, not when the CLI parses --out
    from train.distributed import Dist

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
STATUS_FILE = "run.json"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
LOG_FILE = "log.csv"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
LEGACY_STATE_FILE = "state.pt"  # an earlier trainer's pickle: never loaded, only named and removable
TIMM_CONFIG_FILE = "config.json"
RUN_FILES = (CONFIG_FILE, STATUS_FILE, METRICS_FILE, LOCK_FILE, LOG_FILE, CURVES_FILE, MODEL_FILE, STATE_FILE,
             TIMM_CONFIG_FILE)
"""The files a run writes (all but tensorboard/, a folder): a start refuses a folder where one is a link."""
STATUSES = ("running", "stopped", "failed", "complete")  # what write_status writes
MOST_RECORD_BYTES = 1 << 24  # run.json, metrics.json, log.csv: a larger one is not this trainer's

_locks: dict[Path, fs.FolderLock] = {}  # run folder -> its held lock, for the job's duration


def out_path(value: str | Path, option: str = "--out") -> Path:
    """``value`` as a folder to write into: a path the system can look up; an empty one is refused.

    Raises:
        TrainError: ``--out must be a path, got an empty one``, or a name the system refuses (too long...).
    """
    if not str(value).strip():
        raise TrainError(f"{option} must be a path, got an empty one (use . for the current folder)")
    try:
        fs.probe(Path(value), option)
    except FracgenError as e:
        raise TrainError(str(e)) from None
    return Path(value)


def out_option(ctx: Any, param: Any, value: str | None) -> Path | None:
    """click's callback of an ``--out`` option: ``out_path`` of it (an empty path is refused, not the current folder)."""
    return None if value is None else out_path(value, f"--{param.name}")


class RunFolder:
    """A folder the trainer writes: each file whole, renamed over its target, never through a link.

    Args:
        path: the folder (it must exist before the first write).
        then: what to do after a full disk, said in the message (``rerun with --resume``).
    """

    def __init__(self, path: str | Path, then: str = "rerun with --resume") -> None:
        self.path, self.then = Path(path), then

    def file(self, name: str) -> Path:
        return self.path / fs.single_name(name, "a run file")  # one plain component

    def write(self, name: str, data: bytes) -> None:
        """``data`` into ``name`` atomically (``fracgen.folder.write_atomic``).

        Raises:
            TrainError: ``name`` is a link or not a regular file, the disk is full, the folder cannot be written.
        """
        try:
            fs.write_atomic(self.file(name), data, self.then)
        except FracgenError as e:
            raise TrainError(str(e)) from None

    def write_json(self, name: str, value: Any) -> None:
        """``value`` as strict JSON (a value that is not finite is an error: ``strict_json`` first)."""
        self.write(name, (json.dumps(value, indent=1, allow_nan=False) + "\n").encode())

    def append(self, name: str, text: str) -> None:
        """Append ``text`` to ``name`` without following a link."""
        try:
            fs.append_text(self.file(name), text, self.then)
        except FracgenError as e:
            raise TrainError(str(e)) from None

    def read(self, name: str, most: int = MOST_RECORD_BYTES) -> bytes | None:
        """The bytes of ``name``; None when it is absent, not a regular file (a FIFO would block) or over ``most``."""
        return fs.read_regular(self.file(name), most)

    def refuse_links(self) -> None:
        """Refuse a folder where a file the run writes is a link or not a regular file, or tensorboard/ a link.

        Raises:
            TrainError: naming the file, before anything is written.
        """
        for name in RUN_FILES:
            try:
                fs.refuse_link(self.path / name, f"{self.path / name}")
            except FracgenError as e:
                raise TrainError(str(e)) from None
        board = self.path / TENSORBOARD_DIR
        if board.is_symlink() or (board.exists() and not board.is_dir()):
            raise TrainError(f"{board} is a link or not a folder; the trainer writes its event files only into a "
                             "folder of its own: move it away first")


# --------------------------------------------------------------------------------------------- the lock


def take_lock(out: Path) -> tuple[str, bool]:
    """Hold ``out/.lock`` (``fracgen.folder.hold_lock``): ("", whether this call created it), or (why not, False).
    The lock file is left as it was until the run starts (``_mark_lock``): a refused start changes nothing.
    """
    try:
        lock = fs.hold_lock(out, LOCK_FILE)
    except fs.FolderInUse as e:
        return (f"run folder {out} is in use by another training process (pid {e.holder}); wait for it or use "
                "another --out"), False
    except FracgenError as e:
        return f"run folder {out}: {e}", False
    _locks[out.resolve()] = lock
    return "", lock.created


def _mark_lock(out: Path) -> None:
    """Write this process's PID into the held lock (a refused second process names it)."""
    lock = _locks.get(out.resolve())
    if lock is not None:
        lock.mark()


def release_run_folder(out: Path, remove: bool = False) -> None:
    """Let go of the folder's lock (the job is over, however it ended); ``remove``: a start that failed, whose lock
    file is put back as it was (removed when this start created it)."""
    lock = _locks.pop(Path(out).resolve(), None)
    if lock is not None:
        lock.release(undo=remove)


# --------------------------------------------------------------------------------------------- status


def trainer_status(out: Path) -> dict[str, Any] | None:
    """``out/run.json`` when this trainer wrote it (a JSON object with its status and time), else None."""
    raw = RunFolder(out).read(STATUS_FILE)
    try:
        status = json.loads(raw) if raw is not None else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    ours = isinstance(status, dict) and status.get("status") in STATUSES and isinstance(status.get("time"), str)
    return status if ours else None


def write_status(out: Path, status: str, **extra: Any) -> None:
    """``run.json``: "complete" only once everything else is written."""
    RunFolder(out).write_json(STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def checkpoint_files(out: Path) -> tuple[bool, bool]:
    """Whether ``out`` holds ``model.safetensors`` and a training state (this trainer's, or an earlier one's)."""
    return (out / MODEL_FILE).is_file(), (out / STATE_FILE).is_file() or (out / LEGACY_STATE_FILE).is_file()


# --------------------------------------------------------------------------------------------- a run's start


def _inspect(out: Path, resume: bool) -> tuple[str, bool, bool]:
    """What ``out`` holds: (why it cannot be used or "", whether a run started there, whether it has a checkpoint).

    Only a folder that is absent, empty or a run folder this trainer wrote (its ``run.json``) is used: a user's
    own files, even ones named like the trainer's (``config.yaml``, ``log.csv``), are never written over, and a
    file the run writes that is a link (to a file elsewhere) is refused.
    """
    try:
        out_path(out)
    except TrainError as e:
        return str(e), False, False
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
    try:
        RunFolder(out).refuse_links()
    except TrainError as e:
        return str(e), started, False
    has_checkpoint = any(checkpoint_files(out)) if started else False
    if not resume and has_checkpoint:
        return f"run folder {out} already holds a run: pass --resume or another --out", started, has_checkpoint
    return "", started, has_checkpoint


def _said(step: Callable[[], Any]) -> str:
    try:  # what ``step`` refused, "" when it did not
        step()
    except TrainError as e:
        return str(e)
    return ""


def _agree(env: Dist | None, values: list[Any]) -> list[Any]:
    """Rank 0's ``values``, on every rank (the values themselves in a single process)."""
    if env is not None and env.world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(values, src=0)
    return values


def _any_error(env: Dist | None, error: str) -> str:
    """The first error any rank met ("" when none did)."""
    if env is None or env.world_size == 1:
        return error
    import torch.distributed as dist

    every: list[Any] = [None] * env.world_size
    dist.all_gather_object(every, error)
    return next((e for e in every if e), "")


def start_run_folder(out: Path, cfg: Config, resume: bool, env: Dist | None = None,
                     check: Callable[[], None] | None = None, begin: Callable[[bool], None] | None = None) -> bool:
    """Check the run folder, restore or seed the run, then take the folder: its lock, ``config.yaml``, ``run.json``.

    A folder whose run ended before its first checkpoint (killed, failed, stopped early, or killed before it made
    the folder at all) holds nothing to keep: ``--resume`` and a plain rerun both start it from step 0, so that a
    requeue script can always pass ``--resume``. Everything that can refuse the run (the folder's contents, the
    checkpoint's config and data, the checkpoint itself) is done before anything in the folder changes; a start
    that fails after that (the folder in use, a full disk) puts back what it changed. Rank 0 decides and tells the
    others, so that a refusal stops every rank instead of leaving them waiting.

    Args:
        out: the run folder.
        cfg: the command's resolved config (written to ``config.yaml``).
        resume: continue the checkpoint in ``out``, if any.
        env: this process (None: a single one).
        check: on rank 0, when there is a checkpoint to resume: refuse another config or dataset
            (``train.run.checkpoint.check_resume``).
        begin: on every rank, with whether to resume: restore the checkpoint (it refuses a damaged one) or seed.

    Returns:
        Whether the run resumes from a checkpoint (False: from step 0).

    Raises:
        TrainError: a run with a checkpoint without ``--resume``, ``--resume`` with another config or dataset than
            the run's, a damaged checkpoint, a folder in use, or an ``out`` that is a file, cannot be created, or
            holds files that are not a run or links.
    """
    main = env is None or env.is_main
    error, from_checkpoint, started = "", False, False
    if main:
        error, started, has_checkpoint = _inspect(out, resume)
        from_checkpoint = resume and has_checkpoint
        if not error and from_checkpoint and check is not None:
            error = _said(check)
    error, from_checkpoint, started = _agree(env, [error, from_checkpoint, started])
    if not error and begin is not None:
        error = _any_error(env, _said(lambda: begin(from_checkpoint)))
    if not error and main:
        error = _claim(out, cfg, resume, started, from_checkpoint)
    (error,) = _agree(env, [error])
    if error:
        raise TrainError(error)
    return from_checkpoint


def _claim(out: Path, cfg: Config, resume: bool, started: bool, from_checkpoint: bool) -> str:
    """Make the folder, take its lock, write ``config.yaml`` and ``run.json``; on a failure, put all back."""
    folder = RunFolder(out)
    try:
        made = fs.make_folders(out, "--out")
    except FracgenError as e:
        return str(e)
    error, _ = take_lock(out)
    if error:
        fs.remove_made(made)
        return error
    kept = {name: folder.read(name) for name in (CONFIG_FILE, STATUS_FILE)}
    _mark_lock(out)
    try:
        folder.write(CONFIG_FILE, cfg.to_yaml().encode())
        write_status(out, "running")
    except TrainError as e:
        _put_back(out, kept, made)
        return str(e)
    if started and not from_checkpoint:
        log.warning("%s: the run there ended before its first checkpoint; starting it again from step 0", out)
    elif resume and not started:
        log.warning("--resume: %s holds no run yet (none was started, or it was killed before its folder was "
                    "made); starting one from step 0", out)
    return ""


def _put_back(out: Path, kept: dict[str, bytes | None], made: list[Path]) -> None:
    """Undo a start that failed half-way: the files it replaced, the lock file, the folders it created."""
    folder = RunFolder(out)
    for name, data in kept.items():
        try:
            if data is None:
                folder.file(name).unlink(missing_ok=True)
            else:
                folder.write(name, data)
        except (OSError, TrainError):
            log.warning("could not put back %s after the failed start", out / name)
    release_run_folder(out, remove=True)
    fs.remove_made(made)


# --------------------------------------------------------------------------------------------- a run's end


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
        "steps": n, "reason": why}`` when a signal (``SIGTERM``, ``SIGINT``) or ``train.stop_at`` ended the run
        early with a checkpoint. Every rank has left the process group by then (``distributed.leave``), after
        waiting for rank 0's last writes.
    """
    ended = False  # without an exception: every rank then waits for the others before leaving the group
    try:
        try:
            result = train()
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint at this step, the last one stands
            _last_status(out, env, "stopped", reason="interrupted", checkpoint="the last one written, if any")
            raise
        except Exception as e:
            _last_status(out, env, "failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        if result.get("stopped"):
            if env.is_main:
                write_status(out, "stopped", step=result["step"], reason=result["reason"])
            ended = True
            return {"stopped": True, "steps": result["step"], "reason": result["reason"]}
        values = strict_json(metrics(result))
        if env.is_main:
            RunFolder(out).write_json(METRICS_FILE, values)
            write_status(out, "complete", **{complete: values[complete]})
        ended = True
        return values
    finally:
        from train.distributed import leave

        if env.is_main:
            release_run_folder(out)
        leave(env, wait=ended)


def _last_status(out: Path, env: Dist, status: str, **extra: Any) -> None:
    """``run.json`` after a failure, on rank 0; a write that fails too (a full disk) is logged, so the first error
    is the one the user reads."""
    if not env.is_main:
        return
    try:
        write_status(out, status, **extra)
    except TrainError as e:
        log.warning("run.json could not say the run is %s: %s", status, e)


def strict_json(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None: ``metrics.json`` stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value
