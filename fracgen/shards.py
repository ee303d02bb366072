"""Shards on disk: one tar writer per shard, completion markers, checksums and the dataset's own metadata.

A shard is written under a temporary name and renamed when complete; only then is its marker
(``.fracgen/stats/{shard:06d}.json``) written. A shard counts as complete when its marker exists and the tar's
sha256 matches it. Nothing in a shard depends on the time or the user: fixed mtime, owner and mode.

Shards are written with the standard library's ``tarfile`` in the layout of ``webdataset.TarWriter`` (entries
``{key}.{ext}``, extensions of a sample in sorted order): importing webdataset imports torch when it is
installed, which costs about 1.3 s and 600 MB in every build process. The tests read the shards back through
webdataset and timm.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import tarfile
from collections.abc import Iterable
from pathlib import Path

from fracgen.errors import FracgenError

SHARD_PATTERN = "train-{shard:06d}.tar"
TMP_SUFFIX = ".tmp"  # temporary files are NAME.tmp-HOST-PID: builds of other shard ranges may share the folder
INTERNAL = ".fracgen"
MTIME = 0  # every tar entry gets this mtime, so the bytes do not depend on when they were built


def shard_name(shard: int) -> str:
    return SHARD_PATTERN.format(shard=shard)


def marker_path(root: Path, shard: int) -> Path:
    return root / INTERNAL / "stats" / f"{shard:06d}.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dump_json(data: object) -> bytes:
    """Canonical JSON bytes: sorted keys, fixed indentation, trailing newline."""
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def tmp_path(path: Path) -> Path:
    """This process's temporary name for ``path`` (unique across the machines sharing a folder)."""
    return path.with_name(f"{path.name}{TMP_SUFFIX}-{socket.gethostname()}-{os.getpid()}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name and rename it, so readers never see half of it."""
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _os_error(e, path) from None


def _os_error(e: OSError, path: Path) -> FracgenError:
    if e.errno == errno.ENOSPC:
        return FracgenError(f"disk full while writing {path}; free space and rerun with --resume")
    return FracgenError(f"cannot write {path}: {e.strerror or e}")


def write_shard(root: Path, shard: int, samples: Iterable[dict]) -> tuple[str, int, int]:
    """Write one shard's samples to ``root/train-{shard:06d}.tar`` atomically.

    Args:
        root: dataset folder.
        shard: shard index.
        samples: dicts with ``__key__`` (dot-free str) and bytes values per extension.

    Returns:
        (sha256 hex digest, number of samples, size in bytes).

    Raises:
        FracgenError: the disk is full or the folder cannot be written; the partial tar is removed.
    """
    final = root / shard_name(shard)
    tmp = tmp_path(final)
    count = 0
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            tar = tarfile.open(fileobj=_Hashing(f, digest), mode="w|", format=tarfile.USTAR_FORMAT)
            try:
                for sample in samples:
                    _add_sample(tar, sample)
                    count += 1
            except BaseException:
                with contextlib.suppress(Exception):  # else the tar stream flushes into a closed file at GC
                    tar.close()
                raise
            tar.close()
        os.replace(tmp, final)
    except OSError as e:
        raise _os_error(e, final) from None
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest(), count, final.stat().st_size


def _add_sample(tar: tarfile.TarFile, sample: dict) -> None:
    key = sample["__key__"]
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot; webdataset would split it")
    for ext in sorted(k for k in sample if not k.startswith("_")):
        data = sample[ext]
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), MTIME, 0o444
        info.uname = info.gname = "fracgen"
        tar.addfile(info, io.BytesIO(data))


class _Hashing:
    """A write-only file that hashes what passes through it (saves re-reading the shard)."""

    def __init__(self, f, digest):
        self._f = f
        self._digest = digest

    def write(self, data) -> int:
        self._digest.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def read_marker(root: Path, shard: int) -> dict | None:
    """A shard's marker if the shard is complete and its checksum verifies, else None."""
    path = marker_path(root, shard)
    tar = root / shard_name(shard)
    if not path.is_file() or not tar.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("bytes") != tar.stat().st_size or marker.get("sha256") != sha256_file(tar):
        return None
    return marker


def remove_partials(root: Path, shard_ids: Iterable[int] | None = None) -> list[Path]:
    """Delete temporary files left by an interrupted build; returns what was removed.

    Args:
        root: dataset folder.
        shard_ids: only the partial tars and markers of these shards (the ones this call builds), so a build
            of another shard range writing into the same folder keeps its own; None: every temporary file.
    """
    if shard_ids is None:
        found = list(root.glob(f"*{TMP_SUFFIX}*")) + list((root / INTERNAL).rglob(f"*{TMP_SUFFIX}*"))
    else:
        found = [p for s in shard_ids for p in [*root.glob(f"{shard_name(s)}{TMP_SUFFIX}*"),
                                                 *marker_path(root, s).parent.glob(f"{s:06d}.json{TMP_SUFFIX}*")]]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def info_json(name: str, num_classes: int, shards: list[dict]) -> dict:
    """``_info.json`` in the schema timm's WebDataset reader expects."""
    return {
        "name": name,
        "num_classes": num_classes,
        "splits": {
            "train": {
                "name": "train",
                "num_samples": sum(s["num_samples"] for s in shards),
                "filenames": [s["filename"] for s in shards],
                "shard_lengths": [s["num_samples"] for s in shards],
            }
        },
    }
