"""An output folder as one object: every file fracgen or its trainer writes goes through it.

What it guarantees, for any folder (a dataset being built, a trainer's run folder, a preview's target):

- a file appears whole or not at all: it is written under a temporary name beside its target
  (``NAME.tmp-HOST-PID``, unique across the hosts sharing a folder) and renamed over it;
- never through a link: the temporary is created exclusively without following links, a target that is a link
  or not a regular file is refused, and appends open without following links;
- nothing a user made is replaced unless the caller says what fracgen's own file looks like (``replaceable``);
- the folders a failed first write created are removed again (``made`` / ``remove_made``);
- a record several jobs race to create is created once (``publish_once``: a hard link, atomic also on NFS);
- an interrupted writer's temporaries are told apart from a live one's (``abandoned``);
- one process at a time works in a folder that asks for it (``hold_lock``: an flock, released when the process
  ends however it ends).

Knows nothing of datasets: the names a dataset holds are ``fracgen.dataset``'s.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from fracgen.errors import FracgenError, UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no guard against a second process in the same folder
    fcntl = None

TMP_SUFFIX = ".tmp"
OTHER_HOST_GRACE = 600.0  # seconds: another host's temporary untouched this long counts as abandoned
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def tmp_path(path: Path) -> Path:
    """This process's temporary name for ``path`` (unique across the machines sharing a folder)."""
    path = Path(path)
    return path.with_name(f"{path.name}{TMP_SUFFIX}-{socket.gethostname()}-{os.getpid()}")


def dump_json(data: object) -> bytes:
    """Canonical JSON bytes: sorted keys, one-space indentation, a trailing newline."""
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def write_error(e: OSError, path: Path, then: str) -> FracgenError:
    """One line for a failed write: a full disk says what to do next (``then``)."""
    if e.errno == errno.ENOSPC:
        return FracgenError(f"disk full while writing {path}; free space and {then}")
    if e.errno == errno.ENAMETOOLONG:
        return UsageError(f"cannot write {path}: the name is too long")
    return FracgenError(f"cannot write {path}: {e.strerror or e}")


def refuse_link(path: Path, what: str = "") -> None:
    """Refuse a target that is a link or exists and is not a regular file (fracgen writes neither)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise write_error(e, path, "rerun") from None
    if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
        kind = "a link" if stat.S_ISLNK(mode) else "not a regular file"
        raise UsageError(f"{what or path} is {kind}; fracgen writes only regular files there: move it away first")


def open_new(path: Path, then: str = "rerun"):
    """A temporary opened for writing: created exclusively, never through a link.

    ``path`` carries this process's host and PID (``tmp_path``), so what already holds that name is a leftover of
    an earlier process that had the same PID (a container restarted): it is unlinked (a link itself, not its
    target) and the file created anew.
    """
    for attempt in (0, 1):
        try:
            return os.fdopen(os.open(path, _NEW, 0o644), "wb")
        except FileExistsError:
            if attempt:
                raise write_error(FileExistsError(errno.EEXIST, "exists"), path, then) from None
            Path(path).unlink(missing_ok=True)
        except OSError as e:
            raise write_error(e, path, then) from None
    raise AssertionError("unreachable")


def write_atomic(path: Path, data: bytes, then: str = "rerun with --resume") -> None:
    """Write ``data`` under a temporary name beside ``path`` and rename it over ``path``.

    Raises:
        UsageError: ``path`` is a link or not a regular file.
        FracgenError: the disk is full (the message ends with ``then``) or the folder cannot be written; the
            temporary is removed.
    """
    path = Path(path)
    refuse_link(path)
    tmp = tmp_path(path)
    try:
        with open_new(tmp, then) as f:
            f.write(data)
        os.replace(tmp, path)  # rename never follows a link at the target: it replaces the name
    except OSError as e:
        raise write_error(e, path, then) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object, then: str = "rerun with --resume") -> str:
    """``data`` as canonical JSON (``dump_json``), written atomically; returns the sha256 of the bytes."""
    text = dump_json(data)
    write_atomic(path, text, then)
    return hashlib.sha256(text).hexdigest()


def link_or_copy(source: Path, path: Path) -> None:
    """Put ``source``'s content at ``path`` (a hard link, or a copy where the file system has none), atomically and
    never through a link at ``path``."""
    path = Path(path)
    refuse_link(path)
    tmp = tmp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(e, path, "rerun") from None
    finally:
        tmp.unlink(missing_ok=True)


def append_text(path: Path, text: str, then: str = "rerun") -> None:
    """Append to a log file without following a link (a log replaced by a link elsewhere is refused).

    Raises:
        UsageError: ``path`` is a link or not a regular file.
        FracgenError: the open or the write failed (a full disk, a file past its size limit: ``write_error``).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{path} is a link; fracgen writes only regular files there: move it away first") \
                from None
        raise write_error(e, path, then) from None
    try:
        with os.fdopen(fd, "a", encoding="utf-8", newline="") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UsageError(f"{path} is not a regular file; move it away first")
            f.write(text)  # buffered: a full disk may only show when the file is closed, inside this try
    except OSError as e:
        raise write_error(e, path, then) from None


def read_regular(path: Path, most: int, *, follow: bool = True) -> bytes | None:
    """The bytes of a record: None when ``path`` is absent, not a regular file once links are followed (a FIFO
    would block, a device never end), a link (``follow`` False), unreadable, or over ``most`` bytes.

    The file is opened once, without blocking (nor following a link, unless ``follow``), and checked on its
    descriptor, so a FIFO or a link swapped in after the first look cannot be read either.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        if not stat.S_ISREG((os.stat if follow else os.lstat)(path).st_mode):
            return None
        fd = os.open(path, flags | (0 if follow else getattr(os, "O_NOFOLLOW", 0)))
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > most:
                return None
            data = f.read(most + 1)
    except OSError:
        return None
    return data if len(data) <= most else None


def replaceable(path: Path, ours: Callable[[bytes], bool], what: str, head: int = 1 << 16) -> None:
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
    path = Path(path)
    refuse_link(path, f"{path}")
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            start = f.read(head)
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
    if not ours(start):
        raise UsageError(f"{path} exists and is not a {what}; give another path, or remove it first")


def single_name(name: object, what: str) -> str:
    """A name that becomes one path component (a run or sweep name): no separators, not ``.``/``..``/empty."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name \
            or not name.isprintable() or len(name.encode()) > 200:
        raise UsageError(f"{what} must be one plain name (no '/', not '.' or '..', at most 200 bytes), got {name!r}")
    return name


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, nearest first: what creating ``path`` makes."""
    path = Path(path)
    return [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]


def make_folders(path: Path, what: str = "output folder") -> list[Path]:
    """Create ``path`` (and its parents) and check a file can be created in it; returns what was made.

    Raises:
        UsageError: it cannot be created or written (what was made is removed again).
    """
    path = Path(path)
    made = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tmp_path(path / "probe")
        with open_new(probe):
            pass
        probe.unlink()
    except (OSError, FracgenError) as e:
        remove_made(made)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).rpartition(": ")[2]
        raise UsageError(f"{what} {path} cannot be written: {reason}") from None
    return made


def remove_made(made: list[Path]) -> None:
    """Remove folders ``make_folders`` created, nearest first, while they are empty."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty: someone else writes there now


def publish_once(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists: True when this call created it.

    The content is written under a temporary name and hard-linked to ``path``, so the file appears whole and
    only once however many jobs race for it (also on NFS); where hard links are refused, exclusive create.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open_new(tmp) as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        try:
            f = open_new(path)
        except FracgenError:
            if path.exists() or path.is_symlink():
                return False
            raise
        with f:
            f.write(data)
        return True
    except OSError as e:
        raise UsageError(f"output folder {path.parent} cannot be written: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def temporary_of(name: str) -> str | None:
    """The target name of a temporary (``NAME.tmp-HOST-PID``, nested suffixes too), else None."""
    base = name
    while True:
        head, sep, tail = base.rpartition(TMP_SUFFIX + "-")
        host, dash, pid = tail.rpartition("-")
        if not sep or not head or not host or not dash or not pid.isdigit():
            return None if base == name else base
        base = head


def abandoned(path: Path) -> bool:
    """Whether a temporary's writer is gone: on this host its PID no longer runs; another host's job cannot be
    asked, so its file counts as abandoned once unmodified for OTHER_HOST_GRACE (a writer appends as it goes)."""
    host, _, pid = path.name.rpartition(TMP_SUFFIX + "-")[2].rpartition("-")
    if host == socket.gethostname():
        return not running(int(pid))
    try:
        return time.time() - path.stat().st_mtime > OTHER_HOST_GRACE
    except OSError:
        return False


def running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host. A zombie (a killed build's worker not yet reaped) writes
    nothing, so it does not count: Linux's /proc tells them apart."""
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
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def probe(path: Path, what: str = "output folder") -> None:
    """Refuse a path the system cannot even look up (a name over 255 bytes, a file as a parent...)."""
    if not str(path).strip():
        raise UsageError(f"{what} must be a path, got an empty one (use . for the current folder)")
    try:
        Path(path).lstat()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be written: {e.strerror or e}") from None


class FolderInUse(UsageError):
    """Another process holds the folder's lock; ``holder`` is the PID it wrote there ("?" when none)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


class FolderLock:
    """A held ``hold_lock``: its descriptor (None where the system has no flock), and whether taking it created
    the lock file. ``mark`` writes this process's PID into it; ``release`` lets go, ``undo`` putting back what
    ``mark`` replaced (or removing the file this lock created)."""

    def __init__(self, path: Path, fd: int | None, created: bool):
        self.path, self.fd, self.created = path, fd, created
        self._before: bytes | None = None

    def mark(self) -> None:
        """Write this process's PID into the lock file (what a refused process names), keeping what it held."""
        if self.fd is None:
            return
        self._before = os.pread(self.fd, 64, 0)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, undo: bool = False) -> None:
        """Let go of the lock; ``undo``: a start that failed half-way leaves the file as it found it."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if undo and self.created:
                self.path.unlink(missing_ok=True)  # unlink removes a name, never what a link points at
            elif undo and self._before is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, self._before, 0)
        finally:
            os.close(fd)


def hold_lock(folder: Path, name: str = ".lock") -> FolderLock:
    """Hold ``folder/name`` exclusively (a non-blocking flock) until ``release`` or the end of the process.

    The file is opened without following a link and created only when absent; a refusal changes nothing (not the
    file's contents, not its existence).

    Raises:
        FolderInUse: another process holds it (its PID, as it wrote it, in ``holder``).
        UsageError: the lock file is a link or not a regular file, or cannot be opened.
    """
    path = Path(folder) / name
    if fcntl is None:
        return FolderLock(path, None, False)
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            created = False
            fd = os.open(path, flags)  # a FIFO or a device opens without blocking, and is refused below
    except OSError as e:
        why = {errno.ELOOP: "is a link", errno.EISDIR: "is not a regular file"}.get(
            e.errno, f"cannot be opened ({e.strerror or e})")
        raise UsageError(f"{path} {why}; move it away first") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{path} is not a regular file; move it away first")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderInUse(f"{folder} is in use by another process (pid {holder})", holder) from None
    return FolderLock(path, fd, created)
