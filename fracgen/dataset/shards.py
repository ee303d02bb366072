"""The shards: tar files in ``webdataset.TarWriter``'s layout (``{key}.{ext}``, extensions sorted, fixed
mtime/owner/mode; ``tarfile``'s bytes, by ``fracgen.ustar``), written atomically, read as webdataset groups them,
and hashed while read."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from fracgen import ustar
from fracgen.dataset.names import MTIME, DatasetError, shard_name
from fracgen.folder import open_new, tmp_path, write_error


def write_shard(root: Path, shard: int, samples: Iterable[dict]) -> tuple[str, int, int]:
    """Write one shard's samples to ``root/train-{shard:06d}.tar`` atomically (``ustar.write_samples``).

    Returns:
        (sha256 hex digest, number of samples, size in bytes).

    Raises:
        FracgenError: the disk is full or the folder cannot be written; the partial tar is removed.
    """
    final = Path(root) / shard_name(shard)
    tmp = tmp_path(final)
    try:
        with open_new(tmp, "rerun with --resume") as f:
            digest, count = ustar.write_samples(f, samples, MTIME, 0o444, "fracgen")
        os.replace(tmp, final)
    except OSError as e:
        raise write_error(e, final, "rerun with --resume") from None
    finally:
        tmp.unlink(missing_ok=True)
    return digest, count, final.stat().st_size


_MEMBER_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.DIRTYPE: "folder"}


def iter_shard(source: str | Path | IO[bytes], strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the samples of one shard in file order, as webdataset groups them.

    The key of a member is its path up to the first dot of its base name and the extension the rest; a
    sample ends when the key changes. Members that are not regular files are skipped, as webdataset skips them.

    Args:
        source: a shard's path, or a binary file object positioned at its start (read as a stream).
        strict: raise on a member that is not a regular file (a link, a folder: fracgen writes none), for
            ``verify``, instead of skipping it.

    Yields:
        ``{"__key__": key, "__url__": where, ext: bytes, ...}``, e.g. ``png``, ``cls`` and ``json``.

    Raises:
        DatasetError: ``shard <where>: ...`` when the tar cannot be read (the samples before it were yielded).
    """
    where = str(source) if isinstance(source, str | Path) else str(getattr(source, "name", "<stream>"))
    current: dict[str, Any] | None = None
    try:
        with (tarfile.open(source, "r:") if isinstance(source, str | Path)
              else tarfile.open(fileobj=source, mode="r|")) as tar:
            for member in tar:
                if not member.isfile():
                    if strict:
                        raise DatasetError(f"shard {where}: member {member.name!r} is not a regular file (a "
                                           f"{_MEMBER_KINDS.get(member.type, 'special file')}; fracgen writes none)")
                    continue
                head, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{head}/{stem}" if head else stem
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": where}
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"shard {where}: not a readable tar ({e})") from None
    if current is not None:
        yield current


class HashingReader:
    """A binary stream over a file that hashes every byte read, so a shard is read once: checked and hashed."""

    def __init__(self, f: IO[bytes], name: str):
        self._f, self.name, self._digest = f, name, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data

    def hexdigest(self) -> str:
        """The sha256 of the whole file (what the tar reader left unread, the end-of-archive blocks, included)."""
        while self.read(1 << 20):
            pass
        return self._digest.hexdigest()
