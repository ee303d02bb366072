"""The dataset on disk: the one module that knows its file names, its records and its shard layout.

A dataset folder (see `fracgen/ARCHITECTURE.md`)::

    train-000000.tar ...        WebDataset shards; sample i is {i:08d}.png, {i:08d}.cls, {i:08d}.json
    _info.json                  timm's schema: name, num_classes, splits.train (filenames, shard_lengths)
    params.json                 the base systems and every class's parameters
    build.json                  the options, the shards with sizes and sha256; written last (= complete)
    .fracgen/config.json        the stored options (resume), .fracgen/systems.json the base systems,
    .fracgen/stats/NNNNNN.json  one completion marker per shard

Every file is written under a temporary name and renamed. Shards hold ``tarfile``'s bytes (headers by ``ustar``) in
``webdataset.TarWriter``'s layout (``{key}.{ext}``, extensions sorted, fixed mtime/owner/mode) and ``iter_shard``
groups members as webdataset does (key = path up to the base name's first dot): importing webdataset imports
torch (1.3 s, 600 MB per process), and nothing here imports numba or torch, so verify and preview stay light.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from fracgen import ustar
from fracgen.errors import FracgenError, UsageError
from fracgen.folder import open_new, tmp_path, write_error, write_json

INFO_JSON = "_info.json"
PARAMS_JSON = "params.json"
BUILD_JSON = "build.json"
PREVIEW_PNG = "preview.png"  # what `fracgen preview` draws by default
INTERNAL = ".fracgen"  # the builder's own records; never published
CONFIG_JSON = f"{INTERNAL}/config.json"
SYSTEMS_JSON = f"{INTERNAL}/systems.json"
STATS = f"{INTERNAL}/stats"
SPLIT = "train"
SHARD_PATTERN = "train-{shard:06d}.tar"
SHARD_GLOB = "train-*.tar"
SAMPLE_EXTS = ("png", "cls", "json")  # what every sample holds
KEY_RE = re.compile(r"^\d{8}$")
MTIME = 0  # every tar entry gets this mtime, so the bytes do not depend on when they were built


class DatasetError(FracgenError):
    """A dataset file is missing, unreadable or malformed; the message names the file."""


# ----------------------------------------------------------------------------------------------- names


def shard_name(shard: int) -> str:
    """The file name of shard ``shard``: ``train-{shard:06d}.tar``."""
    return SHARD_PATTERN.format(shard=shard)


def brace_pattern(count: int) -> str:
    """The webdataset brace pattern of shards 0..count-1: ``train-{000000..00000K}.tar``."""
    return SHARD_PATTERN.replace("{shard:06d}", f"{{{0:06d}..{count - 1:06d}}}")


def sample_key(index: int) -> str:
    """The ``__key__`` of sample ``index``: 8 digits, so keys sort in index order."""
    return f"{index:08d}"


def marker_path(root: Path, shard: int) -> Path:
    """The completion marker of one shard."""
    return Path(root) / STATS / f"{shard:06d}.json"


def build_files(num_shards: int, source: str = "") -> list[str]:
    """The files a build of ``num_shards`` shards writes (relative names), besides temporaries and markers."""
    names = [*map(shard_name, range(num_shards)), INFO_JSON, PARAMS_JSON, BUILD_JSON, PREVIEW_PNG, CONFIG_JSON,
             SYSTEMS_JSON]
    return names + ([source] if source else [])


# The names a build writes in each of its folders, and the probe it writes to check a folder can be written.
WRITES = {
    "": re.compile(r"train-\d{6,}\.tar|_info\.json|params\.json|build\.json|preview\.png|source\.[^/]*|probe"),
    INTERNAL: re.compile(r"config\.json|systems\.json|probe"),
    STATS: re.compile(r"\d{6,}\.json|probe"),
}


# ------------------------------------------------------------------------------------------ plain files


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """Read a JSON record of the dataset.

    Raises:
        UsageError: the file is missing, not a regular file once links are followed (a FIFO would block, a
            device never end), or is not JSON. A link to a regular file is read (a `cp -rs` copy, a Hub cache).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"{path} is not a regular file (fracgen writes its records as plain files)")
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UsageError(f"{path} is missing") from err
    except OSError as err:  # a folder or an unreadable file where the record should be
        raise UsageError(f"{path} cannot be read: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UsageError(f"{path} is not valid JSON ({type(err).__name__}: {err})") from None


def inside(root: Path | str, name: object, what: str) -> Path:
    """``root/name`` for a file name a dataset's own records give, refused unless it stays inside ``root``.

    Raises:
        DatasetError: ``name`` is not a plain relative name, or resolves (links followed) outside ``root``.
    """
    root = Path(root)
    path = root / str(name)
    if not isinstance(name, str) or not name or "\0" in name or Path(name).is_absolute() or \
            not path.resolve().is_relative_to(root.resolve()) or path.resolve() == root.resolve():
        raise DatasetError(f"{what} names {name!r}, which is not a file inside {root}; the dataset is damaged")
    return path


# ------------------------------------------------------------------------------------------- _info.json


@dataclass(frozen=True)
class SplitInfo:
    """One split of ``_info.json`` (as timm's ``reader_wds.SplitInfo``).

    Attributes:
        name: the split's name ("train").
        num_samples: samples in the split.
        filenames: shard file names, relative to the dataset folder, in order.
        shard_lengths: samples per shard, one per file name.
    """

    name: str
    num_samples: int
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "num_samples": self.num_samples, "filenames": list(self.filenames),
                "shard_lengths": list(self.shard_lengths)}


@dataclass(frozen=True)
class DatasetInfo:
    """``_info.json``: the dataset's name, its classes and its splits.

    Attributes:
        name: the dataset's name.
        num_classes: labels are 0..num_classes-1.
        splits: split name -> its shards.
        extra: any other top-level keys, kept as read.
    """

    name: str
    num_classes: int
    splits: dict[str, SplitInfo]
    extra: dict = field(default_factory=dict)

    @property
    def train(self) -> SplitInfo:
        """The train split.

        Raises:
            DatasetError: there is none.
        """
        if SPLIT not in self.splits:
            raise DatasetError(f"{INFO_JSON} has no {SPLIT} split (has {sorted(self.splits)})")
        return self.splits[SPLIT]

    def to_json(self) -> dict:
        return {**self.extra, "name": self.name, "num_classes": self.num_classes,
                "splits": {k: s.to_json() for k, s in self.splits.items()}}

    @classmethod
    def from_shards(cls, name: str, num_classes: int, shards: list[dict]) -> DatasetInfo:
        """The info of a build whose train shards are ``shards`` (dicts with filename and num_samples)."""
        split = SplitInfo(name=SPLIT, num_samples=sum(s["num_samples"] for s in shards),
                          filenames=tuple(s["filename"] for s in shards),
                          shard_lengths=tuple(s["num_samples"] for s in shards))
        return cls(name=name, num_classes=num_classes, splits={SPLIT: split})


def parse_info(data: bytes | str | dict, where: str = INFO_JSON) -> DatasetInfo:
    """Check and type a parsed or raw ``_info.json``.

    Args:
        data: the file's bytes or text, or the parsed dict.
        where: what to call the file in errors (a path or URL).

    Raises:
        DatasetError: not JSON, no positive integer num_classes, or a split without filenames and
            shard_lengths of the same length whose sum is num_samples.
    """
    try:
        info = json.loads(data) if isinstance(data, bytes | str) else data
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{where} is not a JSON object")
    num_classes = info.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise DatasetError(f"{where} has no positive integer num_classes (got {num_classes!r})")
    splits = {}
    raw = info.get("splits")
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} has no splits object")
    for key, split in raw.items():
        try:
            filenames = tuple(str(f) for f in split["filenames"])
            lengths = tuple(int(n) for n in split["shard_lengths"])
            num_samples = int(split.get("num_samples", sum(lengths)))
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where} lacks splits.{key} filenames/shard_lengths ({e})") from None
        if len(filenames) != len(lengths):
            raise DatasetError(f"{where} has {len(filenames)} filenames but {len(lengths)} shard_lengths")
        if num_samples != sum(lengths):
            raise DatasetError(f"{where} num_samples {num_samples} != sum of shard_lengths {sum(lengths)}")
        splits[key] = SplitInfo(name=str(split.get("name", key)), num_samples=num_samples, filenames=filenames,
                                shard_lengths=lengths)
    extra = {k: v for k, v in info.items() if k not in ("name", "num_classes", "splits")}
    return DatasetInfo(name=str(info.get("name", "")), num_classes=num_classes, splits=splits, extra=extra)


def read_info(root: Path | str) -> DatasetInfo:
    """``_info.json`` of a dataset folder (DatasetError when missing, unreadable or malformed)."""
    path = Path(root) / INFO_JSON
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror or e})") from None
    return parse_info(data, str(path))


def write_info(root: Path, info: DatasetInfo) -> str:
    """Write ``_info.json`` atomically; returns its sha256."""
    return write_json(Path(root) / INFO_JSON, info.to_json())


# -------------------------------------------------------------------------------- params.json, build.json


def read_params(root: Path | str) -> dict | None:
    """``params.json`` of a dataset folder, or None when it has none (UsageError when it is not JSON)."""
    path = Path(root) / PARAMS_JSON
    return read_json(path) if path.exists() else None


def write_params(root: Path, params: dict) -> str:
    """Write ``params.json`` atomically; returns its sha256."""
    return write_json(Path(root) / PARAMS_JSON, params)


def read_build(root: Path | str) -> dict[str, Any]:
    """Read ``build.json``, the marker of a complete build.

    Raises:
        UsageError: ``root`` is not a folder or holds no complete build.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; give the output folder of `fracgen build`")
    if not (root / BUILD_JSON).exists() and not (root / BUILD_JSON).is_symlink():
        raise UsageError(
            f"{root} has no {BUILD_JSON}: the build is incomplete (or this is not a fracgen dataset); "
            f"`fracgen build --resume {root}` finishes it"
        )
    build = read_json(root / BUILD_JSON)
    if not isinstance(build, dict) or not isinstance(build.get("shards"), list):
        raise UsageError(f"{root / BUILD_JSON} has no 'shards' list")
    return build


def write_build(root: Path, build: dict) -> None:
    """Write ``build.json`` atomically; write it last, since its presence marks a complete build."""
    write_json(Path(root) / BUILD_JSON, build)


def is_complete(root: Path | str) -> bool:
    """True when the folder holds a finished build (its build.json)."""
    return (Path(root) / BUILD_JSON).is_file()


# --------------------------------------------------------------------------------------------- shards


def write_shard(root: Path, shard: int, samples: Iterable[dict]) -> tuple[str, int, int]:
    """Write one shard's samples to ``root/train-{shard:06d}.tar`` atomically.

    Args:
        root: dataset folder.
        shard: shard index.
        samples: dicts with ``__key__`` (dot-free str) and bytes values per extension; other keys starting
            with ``_`` are ignored.

    Returns:
        (sha256 hex digest, number of samples, size in bytes).

    Raises:
        FracgenError: the disk is full or the folder cannot be written; the partial tar is removed.
    """
    final = Path(root) / shard_name(shard)
    tmp = tmp_path(final)
    count = 0
    digest = hashlib.sha256()
    try:
        with open_new(tmp, "rerun with --resume") as f:
            out = _Hashing(f, digest)
            offset = 0
            for sample in samples:
                offset += _add_sample(out, sample)
                count += 1
            out.write(ustar.end_of_archive(offset))
        os.replace(tmp, final)
    except OSError as e:
        raise write_error(e, final, "rerun with --resume") from None
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest(), count, final.stat().st_size


def _add_sample(out, sample: dict) -> int:
    """Write one sample's tar entries (extensions in sorted order); returns the bytes written."""
    key = sample["__key__"]
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot; webdataset would split it")
    written = 0
    for ext in sorted(k for k in sample if not k.startswith("_")):
        data = sample[ext]
        header = ustar.entry_header(f"{key}.{ext}", len(data), MTIME, 0o444, "fracgen")
        entry = header + data + bytes(-len(data) % ustar.BLOCKSIZE)
        out.write(entry)
        written += len(entry)
    return written


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


def read_marker(root: Path, shard: int) -> dict | None:
    """A shard's marker if the shard is complete and its checksum verifies, else None."""
    path = marker_path(root, shard)
    tar = Path(root) / shard_name(shard)
    if not path.is_file() or not tar.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("bytes") != tar.stat().st_size or marker.get("sha256") != sha256_file(tar):
        return None
    return marker


def write_marker(root: Path, marker: dict) -> None:
    """Write a shard's completion marker (after the shard itself)."""
    write_json(marker_path(root, marker["shard"]), marker)


# ------------------------------------------------------------------------------------------------ images


def decode_image(data: bytes, mode: str = "L") -> np.ndarray:
    """Image bytes -> uint8 array, fully decoded so truncated data fails (DatasetError if it does not decode).

    ``mode`` "L" gives (H, W) grey (old builds' palette PNGs too: {0, 127}), "RGB" gives (H, W, 3).
    """
    from PIL import Image  # Pillow costs ~50 ms to import; the writer never needs it

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError... for bad bytes
        raise DatasetError(f"cannot decode the image ({type(e).__name__}: {e})") from None


def decode_grey(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) uint8 grey, as every reader of the shards sees a sample (DatasetError if undecodable)."""
    return decode_image(data, "L")


PNG_GREY, PNG_RGB, PNG_PALETTE = 0, 2, 3  # PNG colour types; palette: the images written before issue 10


def png_colour_type(data: bytes) -> int | None:
    """The colour type in a PNG's header (``PNG_GREY``, ``PNG_RGB``, ``PNG_PALETTE``...), None if not a PNG."""
    return data[25] if len(data) > 25 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" else None
