"""The output folder: is it free, a build to resume or one to replace; the builder's own records in it.

Nothing a user made is touched: a folder that is not empty is refused unless it is a fracgen build and the
user asked to resume or replace it, and replacing deletes only the files that build recorded. Reading and
checking happen before anything is written.

A folder belongs to one set of options from its first byte: ``claim`` publishes ``.fracgen/config.json`` with
a hard link (atomic and exclusive, also on NFS), before any planning. A job whose options differ is refused at
once; jobs with the same options (``--shard-range`` on several hosts) share the folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

from fracgen import dataset
from fracgen.config import LATER_OPTIONS, BuildConfig
from fracgen.errors import UsageError
from fracgen.folder import TMP_SUFFIX, dump_json, tmp_path, write_atomic
from fracgen.systems import System, load_systems


def inspect_output(root: Path, *, resume: bool, overwrite: bool, joining: bool = False) -> BuildConfig | None:
    """Check the output folder before anything is written (reads only).

    Args:
        root: the output folder.
        resume: the user asked to finish a recorded build.
        overwrite: the user asked to replace a recorded build.
        joining: a ``--shard-range`` job, which may be the first of several to reach an empty folder.

    Returns:
        The stored config of the build being resumed, or None for a fresh build.

    Raises:
        UsageError: the folder is not empty (and neither flag allows it), is not a fracgen build, holds files
            that build did not record (``overwrite``), or holds nothing to resume.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one")
    probe(root)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise UsageError(f"output {root} exists and is not a folder")
    for inner in (root / dataset.INTERNAL, root / dataset.STATS):  # written into, so never through a link
        if inner.is_symlink() or (inner.exists() and not inner.is_dir()):
            raise UsageError(f"{inner} is not a plain folder (fracgen writes only real folders there); "
                             "move it away first")
    # a folder holding only the internal folder is a build another shard range is just starting, unless that
    # folder holds what fracgen never writes there (a user's own ".fracgen")
    occupied = root.exists() and (any(p.name != dataset.INTERNAL for p in root.iterdir()) or _foreign_inside(root))
    if resume:
        stored = stored_config(root)
        if stored is None and (occupied or not joining):
            what = "is not a fracgen build" if occupied else "holds no recorded build"
            raise UsageError(f"--resume: {root} {what} (no {dataset.CONFIG_JSON}); start a build with "
                             f"`fracgen build [options] {root}`, without --resume")
        return stored
    if occupied:
        if not overwrite:
            raise UsageError(f"output folder {root} is not empty; pass --resume to finish it or --overwrite to replace it")
        live = [p for p in _temporaries(root) if not _abandoned(p)]
        if live:
            raise UsageError(f"--overwrite refuses to delete {root}: a build is writing in it now ({live[0].name}: "
                             "its process runs on this host, or another host's file changed in the last "
                             f"{OTHER_HOST_GRACE / 60:.0f} minutes); wait for it to end or stop it first")
        stored = _owner(root)
        if stored is None:
            raise UsageError(f"--overwrite refuses to delete {root}: it is not a fracgen build (no readable "
                             f"{dataset.CONFIG_JSON} or {dataset.BUILD_JSON})")
        foreign = unrecorded(root, stored)
        if foreign:
            shown = ", ".join(str(p.relative_to(root)) for p in foreign[:5])
            raise UsageError(f"--overwrite refuses to delete {root}: it holds what the build there did not write "
                             f"({shown}{', ...' if len(foreign) > 5 else ''}); move it away first")
    return None


def recorded(root: Path, config: BuildConfig) -> set[Path]:
    """The files a build with ``config`` writes into ``root`` (besides temporary files and its markers)."""
    names = [*map(dataset.shard_name, range(config.num_shards)), dataset.INFO_JSON, dataset.PARAMS_JSON,
             dataset.BUILD_JSON, dataset.PREVIEW_PNG, dataset.CONFIG_JSON, dataset.SYSTEMS_JSON]
    if config.source:
        names.append(config.source)
    return {root / n for n in names}


# NAME.tmp-HOST-PID (``tmp_path``; the claim's own temporary adds a second suffix) and the names fracgen
# writes in each of its folders: only these count as an interrupted writer's leftovers, never a user's "notes.tmp".
_TEMPORARY = re.compile(rf"(.+?)(?:{re.escape(TMP_SUFFIX)}-.+-\d+)+")
_WRITES = {
    "": re.compile(r"train-\d{6,}\.tar|_info\.json|params\.json|build\.json|preview\.png|source\.[^/]*|probe"),
    dataset.INTERNAL: re.compile(r"config\.json|systems\.json|probe"),
    dataset.STATS: re.compile(r"\d{6,}\.json|probe"),
}


def is_temporary(path: Path, root: Path) -> bool:
    """Whether ``path`` is a temporary file a fracgen writer leaves in ``root`` when interrupted."""
    match = _TEMPORARY.fullmatch(path.name)
    for folder, names in _WRITES.items():
        if match and path.parent == root / folder and names.fullmatch(match.group(1)):
            return path.is_file() and not path.is_symlink()
    return False


def remove_partials(root: Path, shard_ids: Iterable[int] | None = None) -> list[Path]:
    """Delete the temporary files an interrupted build left (``is_temporary``); returns what was removed.

    Args:
        root: dataset folder.
        shard_ids: only the partial tars and markers of these shards (the ones this call builds), so a build
            of another shard range writing into the same folder keeps its own; None: every temporary file.
    """
    root = Path(root)
    if shard_ids is None:
        found = _temporaries(root)
    else:
        found = [p for s in shard_ids for p in [*root.glob(f"{dataset.shard_name(s)}{TMP_SUFFIX}*"),
                 *dataset.marker_path(root, s).parent.glob(f"{s:06d}.json{TMP_SUFFIX}*")]
                 if is_temporary(p, root)]
    found = [p for p in found if _abandoned(p)]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def _temporaries(root: Path) -> list[Path]:
    """Every temporary file of a fracgen writer in ``root`` and its internal folders (``is_temporary``)."""
    return [p for folder in _WRITES if (root / folder).is_dir() and not (root / folder).is_symlink()
            for p in (root / folder).iterdir() if is_temporary(p, root)]


OTHER_HOST_GRACE = 600.0  # seconds: a temporary of another host untouched this long is taken as abandoned


def _abandoned(path: Path) -> bool:
    """Whether a temporary's writer is gone: on this host its PID no longer runs; another host's job cannot be
    asked, so its file counts as abandoned once unmodified for OTHER_HOST_GRACE (a writer appends as it goes).
    A job resumed beside a live one must not pull the file from under it."""
    host, _, pid = path.name.rpartition(TMP_SUFFIX + "-")[2].rpartition("-")
    if host == socket.gethostname():
        return not _running(int(pid))
    try:
        return time.time() - path.stat().st_mtime > OTHER_HOST_GRACE
    except OSError:
        return False


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host. A killed build's workers stay zombies until someone reaps them
    (seconds in a container whose init is slow to), and a zombie writes nothing: Linux's /proc tells them apart."""
    if not 0 < pid < 1 << 31:
        return False
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rpartition(b")")[2].split()[:1] not in ([b"Z"], [b"X"])
        except FileNotFoundError:
            return False
        except OSError:
            pass
    try:  # no /proc (macOS): ask the kernel whether the PID exists
        os.kill(pid, 0)  # signal 0 only asks
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _foreign_inside(root: Path) -> bool:
    """Whether ``root/.fracgen`` holds anything a build does not write there (files of other names, links).

    Judged by name first: another job's temporary (its probe, its claim before the rename) may vanish between the
    listing and a look at it, and is then simply absent, not foreign.
    """
    internal, stats = root / dataset.INTERNAL, root / dataset.STATS
    if not internal.is_dir():
        return False
    try:
        inside = [p for p in internal.iterdir() if p != stats] + (list(stats.iterdir()) if stats.is_dir() else [])
    except FileNotFoundError:
        return False
    for path in inside:
        names = _WRITES[path.parent.relative_to(root).as_posix()]
        temporary = _TEMPORARY.fullmatch(path.name)
        if not (names.fullmatch(path.name) or (temporary and names.fullmatch(temporary.group(1)))):
            return True
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return True  # a link or a folder under a name fracgen writes as a file
        except FileNotFoundError:
            continue
    return False


def _is_ours(path: Path, root: Path, known: set[Path]) -> bool:
    if path.is_symlink() or not path.is_file():
        return False  # fracgen writes no links, folders only .fracgen and its stats
    if path in known or is_temporary(path, root):
        return True
    return path.parent == root / dataset.STATS and path.name.endswith(".json") and path.name[:-5].isdigit()


def unrecorded(root: Path, config: BuildConfig) -> list[Path]:
    """What in ``root`` a build with ``config`` did not write (symbolic links included), sorted."""
    known = recorded(root, config)
    internal, stats = root / dataset.INTERNAL, root / dataset.STATS
    foreign = []
    for path in sorted(root.iterdir()):
        if path == internal and not path.is_symlink() and path.is_dir():
            for inner in sorted(internal.iterdir()):
                if inner == stats and not inner.is_symlink() and inner.is_dir():
                    foreign += [p for p in sorted(stats.iterdir()) if not _is_ours(p, root, known)]
                elif not _is_ours(inner, root, known):
                    foreign.append(inner)
        elif not _is_ours(path, root, known):
            foreign.append(path)
    return foreign


def clear_output(root: Path) -> None:
    """Delete a previous build's files; ``inspect_output`` has checked that nothing else is there.

    Files are unlinked, never followed; folders are removed only once empty.
    """
    stored = _owner(root)
    if stored is None or not root.is_dir():
        return
    if unrecorded(root, stored):  # something appeared since the check: leave everything
        raise UsageError(f"--overwrite: {root} changed while being checked; rerun")
    stats, internal = root / dataset.STATS, root / dataset.INTERNAL
    folders = [f for f in (root, stats, internal) if f.is_dir()]
    for folder in folders:  # a folder that refuses a new file refuses deletions too: fail before any
        _try_writing(folder, "--overwrite cannot delete the previous build: ")
    # the claim (.fracgen/config.json) goes last, so a failure part-way still leaves a build --overwrite knows
    for folder in folders:
        for path in folder.iterdir():
            if not path.is_dir() or path.is_symlink():
                path.unlink(missing_ok=True)
    for folder in (stats, internal):
        if folder.is_dir():
            folder.rmdir()


def _try_writing(folder: Path, context: str = "") -> None:
    """Create and delete a temporary file in ``folder``; UsageError naming it when that fails."""
    probe = tmp_path(folder / "probe")
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{context}{folder} cannot be written: {e.strerror or e}") from None


def check_writable(root: Path) -> None:
    """Create the folder and probe it, so an unwritable output fails before any work."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / dataset.STATS).mkdir(parents=True, exist_ok=True)
        probe = tmp_path(root / dataset.INTERNAL / "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output folder {root} cannot be written: {e.strerror or e}") from None


def claim(root: Path, config: BuildConfig) -> bool:
    """Make ``root`` the build of ``config``, or join the build of the same options already there.

    Returns:
        True when this call created the claim (the folder was nobody's), False when it joined one.

    Raises:
        UsageError: the folder belongs to a build with other options.
    """
    created = _publish(root / dataset.CONFIG_JSON, dump_json(config.to_json()))
    if not created:
        stored = stored_config(root)
        if stored != config:
            raise UsageError(f"{root} belongs to a build whose options differ: {differences(config, stored)}; "
                             "use another folder, the same options, or --overwrite to replace that build")
    return created


def missing_folders(root: Path) -> list[Path]:
    """``root`` and its ancestors that do not exist yet, nearest first: what creating ``root`` makes."""
    return [p for p in (root, *root.parents) if not p.exists() and not p.is_symlink()]


def release(root: Path, made: list[Path]) -> None:
    """Undo a claim whose planning failed (nothing else was written): the folder is left as it was found, and
    the folders ``made`` for it (``missing_folders`` before the build) go again while empty."""
    (root / dataset.CONFIG_JSON).unlink(missing_ok=True)
    for folder in [root / dataset.STATS, root / dataset.INTERNAL, *made]:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty: another job of the same options is using it


def unclaim(root: Path, config: BuildConfig, made: list[Path]) -> bool:
    """Undo the claim of a fresh build that its own options failed before any shard was complete.

    A class that never fills fails the same way on every rerun, so there is nothing for ``--resume`` to finish:
    the files the build wrote go and the folder is left as it was found, so that the corrected command needs no
    ``--overwrite``.

    Returns:
        False, touching nothing, when a shard is complete (a job of the same options joined and finished one).
    """
    if any((root / dataset.STATS).glob("*.json")):
        return False
    remove_partials(root)
    for path in recorded(root, config) - {root / dataset.CONFIG_JSON}:
        if path.is_file() and not path.is_symlink():  # fracgen writes no links
            path.unlink()
    release(root, made)
    return True


def claim_systems(root: Path, systems: list[System]) -> None:
    """Store the base systems once; a job whose systems differ (another --params file) is refused."""
    data = dump_json({"systems": [s.to_json() for s in systems]})
    path = root / dataset.SYSTEMS_JSON
    if not _publish(path, data) and path.read_bytes() != data:
        raise UsageError(f"{root} belongs to a build with other base systems ({path}); --params must give the "
                         "same systems, or use another folder")


def _publish(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists: True when this call created it.

    The content is written under a temporary name and hard-linked to ``path``, so the file appears whole and
    only once however many jobs race for it.
    """
    tmp = tmp_path(path)
    try:
        write_atomic(tmp, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        try:  # a file system without hard links: exclusive create, then the content
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    except OSError as e:
        raise UsageError(f"output folder {path.parent} cannot be written: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def differences(config: BuildConfig, stored: BuildConfig) -> str:
    """The options of ``config`` that differ from ``stored``, as ``--delta 0.3 (stored 0.1)``."""
    mine, theirs = config.to_json(), stored.to_json()
    return ", ".join(f"--{k.replace('_', '-')} {v} (stored {theirs[k]})" for k, v in mine.items() if theirs[k] != v)


def probe(root: Path) -> None:
    """Refuse an output path the system cannot even look up (a name over 255 bytes, a file as a parent...)."""
    try:
        Path(root).lstat()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise UsageError(f"output folder {root} cannot be written: {e.strerror or e}") from None


def stored_config(root: str | Path) -> BuildConfig | None:
    """The options of the build in ``root``, or None when it holds none."""
    probe(Path(root))
    path = Path(root) / dataset.CONFIG_JSON
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"{path} is damaged ({e}); rebuild with --overwrite") from None
    missing = {f.name for f in fields(BuildConfig)} - set(data) if isinstance(data, dict) else {"all"}
    if missing and missing <= LATER_OPTIONS:  # resumed with these versions' defaults, its shards could mix
        raise UsageError(f"{root} holds a build started by an older fracgen (its options lack "
                         f"{', '.join(sorted(missing))}; this version's images may differ): finish it with the "
                         "fracgen that started it, or rebuild with --overwrite")
    try:
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))}")
        config = BuildConfig.from_json(data)
        config.validate()
    except (OSError, ValueError, TypeError, RecursionError, UsageError) as e:
        raise UsageError(f"{path} is damaged ({e}); rebuild with --overwrite") from None
    return config


def _owner(root: Path) -> BuildConfig | None:
    """The options of the build in ``root`` from its config, or from build.json when the config is damaged; a
    build started by an older fracgen (options added since missing) takes their defaults, so it can be replaced."""
    for path, inner in ((root / dataset.CONFIG_JSON, False), (root / dataset.BUILD_JSON, True)):
        if path.is_symlink():
            continue  # fracgen writes no links
        try:
            data = json.loads(path.read_text())
            data = data["config"] if inner else data
            if {f.name for f in fields(BuildConfig)} - set(data) - LATER_OPTIONS:
                continue
            config = BuildConfig.from_json(data)
            config.validate()
            return config
        except (OSError, ValueError, TypeError, KeyError, RecursionError, UsageError):
            continue
    return None


def stored_systems(root: Path) -> list[System] | None:
    """The base systems of the build being resumed, or None when it stored none."""
    path = root / dataset.SYSTEMS_JSON
    if not path.is_file():
        return None
    try:
        return load_systems(path)
    except UsageError as e:
        raise UsageError(f"{path} is damaged ({str(e).removeprefix(f'--params {path}: ')}); "
                         "rebuild with --overwrite") from None


def check_replaceable(path: Path, ours, what: str, head: int = 1 << 16) -> None:
    """Refuse to write ``path`` over anything fracgen did not write there (a user's file, a link, a folder).

    Args:
        path: the file about to be written (atomically replaced).
        ours: called with the existing file's first ``head`` bytes: True when it is the kind of file fracgen
            writes here.
        what: that kind, for the message ("params file of `fracgen search`").
        head: how much of the file ``ours`` needs.

    Raises:
        UsageError: ``path`` is a link or not a regular file, or holds something else.
    """
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"{path} is a link or not a regular file; give another path")
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            start = f.read(head)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    if not ours(start):
        raise UsageError(f"{path} exists and is not a {what}; give another path, or remove it first")


__all__ = ["check_replaceable", "check_writable", "claim", "claim_systems", "clear_output", "differences",
           "inspect_output", "missing_folders", "recorded", "release", "stored_config", "stored_systems", "unclaim",
           "unrecorded"]
