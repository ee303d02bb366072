"""The output folder: is it free, a build to resume or one to replace; the builder's own records in it.

Nothing a user made is touched: a folder that is not empty is refused unless it is a fracgen build and the
user asked to resume or replace it. Reading and checking happen before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fracgen import dataset
from fracgen.config import BuildConfig
from fracgen.errors import UsageError
from fracgen.systems import System, load_systems


def inspect_output(root: Path, *, resume: bool, overwrite: bool) -> BuildConfig | None:
    """Check the output folder before anything is written (reads only).

    Returns:
        The stored config of the build being resumed, or None for a fresh build.

    Raises:
        UsageError: the folder is not empty (and neither flag allows it), or is not a fracgen build.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one")
    if root.exists() and not root.is_dir():
        raise UsageError(f"output {root} exists and is not a folder")
    # a folder holding only the internal folder is a build another shard range is just starting
    occupied = root.exists() and any(p.name != dataset.INTERNAL for p in root.iterdir())
    if resume:
        stored = stored_config(root)
        if stored is None and occupied:
            raise UsageError(f"{root} holds no fracgen build to resume (no {dataset.CONFIG_JSON})")
        return stored
    if occupied:
        if not overwrite:
            raise UsageError(f"output folder {root} is not empty; pass --resume to finish it or --overwrite to replace it")
        if not ((root / dataset.CONFIG_JSON).is_file() or dataset.is_complete(root)):
            raise UsageError(f"--overwrite refuses to delete {root}: it is not a fracgen build")
    return None


def clear_output(root: Path) -> None:
    """Delete a previous build's files (``inspect_output`` has checked that it is one)."""
    if root.is_dir():
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def check_writable(root: Path) -> None:
    """Create the folder and probe it, so an unwritable output fails before any work."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / dataset.STATS).mkdir(parents=True, exist_ok=True)
        probe = dataset.tmp_path(root / dataset.INTERNAL / "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output folder {root} cannot be written: {e.strerror or e}") from None


def stored_config(root: str | Path) -> BuildConfig | None:
    """The options of the build in ``root``, or None when it holds none."""
    path = Path(root) / dataset.CONFIG_JSON
    if not path.is_file():
        return None
    try:
        config = BuildConfig.from_json(json.loads(path.read_text()))
        config.validate()
    except (OSError, ValueError, TypeError, UsageError) as e:
        raise UsageError(f"{path} is damaged ({e}); rebuild with --overwrite") from None
    return config


def stored_systems(root: Path) -> list[System] | None:
    """The base systems of the build being resumed, or None when it stored none."""
    path = root / dataset.SYSTEMS_JSON
    return load_systems(path) if path.is_file() else None


def write_records(root: Path, config: BuildConfig, systems: list[System]) -> None:
    """Store the options and the base systems, so a resume rebuilds the same bytes without searching again."""
    dataset.write_json(root / dataset.CONFIG_JSON, config.to_json())
    dataset.write_json(root / dataset.SYSTEMS_JSON, {"systems": [s.to_json() for s in systems]})
