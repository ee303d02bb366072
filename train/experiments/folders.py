"""The folder of a job that holds run folders (a sweep, repro-small): marked as that job's, and only the run folders
the trainer wrote there are ever replaced.

``check_job_folder`` reads (a refusal changes nothing), ``claim_folder`` creates and marks (``job.json``),
``clear_run_folder`` empties one run folder for a fresh run after checking that it holds nothing but a run's files.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fracgen import folder as fs
from fracgen.errors import FracgenError
from train.errors import TrainError
from train.run.folder import (
    LEGACY_STATE_FILE,
    LOCK_FILE,
    RUN_FILES,
    TENSORBOARD_DIR,
    RunFolder,
    out_path,
    release_run_folder,
    take_lock,
    trainer_status,
)

JOB_FILE = "job.json"  # marks the --out of a sweep or repro-small as theirs


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def check_job_folder(out: Path, kind: str) -> bool:
    """Whether ``out`` may hold a ``kind`` job (``sweep``, ``repro-small``): True when it is that job's already.

    Raises:
        TrainError: ``out`` is a file, or holds files that are not this kind's (nothing is written).
    """
    out_path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out}: not a folder")
    try:
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    except OSError as e:
        raise TrainError(f"--out {out}: cannot read the folder ({e.strerror or e})") from None
    raw = RunFolder(out).read(JOB_FILE) if names else None
    try:
        mine = raw is not None and json.loads(raw).get("kind") == kind
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        mine = False
    if names and not mine:
        raise TrainError(f"--out {out} holds files that are not a {kind} folder ({_listing(names)}); pass an "
                         "empty or new folder")
    return mine


def claim_folder(out: Path, kind: str) -> None:
    """Make ``out`` the folder of a ``kind`` job that writes run folders inside it.

    Absent or empty, it is created and marked (``job.json``); marked by the same kind, it is reused. Anything
    else is refused untouched, since the job replaces the run folders it finds inside.

    Raises:
        TrainError: ``out`` is a file, cannot be created, or holds files that are not this kind's.
    """
    if check_job_folder(out, kind):
        return
    try:
        made = fs.make_folders(out, "--out")
    except FracgenError as e:
        raise TrainError(str(e)) from None
    try:
        RunFolder(out, "rerun").write_json(JOB_FILE, {"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except TrainError:
        fs.remove_made(made)
        raise


def _ours(name: str) -> bool:
    """A name a run writes (or an earlier trainer wrote), or a temporary of one."""
    base = fs.temporary_of(name) or name.removesuffix(".tmp")
    return base in (*RUN_FILES, TENSORBOARD_DIR, LEGACY_STATE_FILE)


def clear_run_folder(out: Path) -> Path:
    """Empty ``out`` for a fresh run: it may hold only a run this trainer wrote, whose files alone are removed.

    Returns:
        ``out``.

    Raises:
        TrainError: ``out`` holds anything a run does not write, or a process is training there.
    """
    if not out.exists() and not out.is_symlink():
        return out
    if out.is_symlink() or not out.is_dir():
        raise TrainError(f"{out}: not a folder; it is left as it is")
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if not _ours(n)]
    board = out / TENSORBOARD_DIR
    if board.is_dir() and not board.is_symlink():
        foreign += [f"{TENSORBOARD_DIR}/{p.name}" for p in board.iterdir()
                    if not (p.is_file() and p.name.startswith("events.out.tfevents."))]
    if foreign or (names and trainer_status(out) is None and set(names) - {LOCK_FILE}):
        raise TrainError(f"{out} holds files this trainer did not write ({_listing(foreign or names)}); move them "
                         "or pass another --out")
    if LOCK_FILE in names:  # a process training there holds it
        error, _ = take_lock(out)
        if error:
            raise TrainError(error)
        release_run_folder(out)
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # tensorboard/: event files the run wrote (rmtree unlinks links, never follows)
        else:
            path.unlink()
    return out
