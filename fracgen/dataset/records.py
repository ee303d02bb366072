"""The dataset's JSON records: ``_info.json`` typed as timm's reader types it, ``params.json``, ``build.json`` and
the shards' completion markers, read and written (atomically, through ``fracgen.folder``)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracgen.dataset.names import (
    BUILD_JSON,
    INFO_JSON,
    PARAMS_JSON,
    SPLIT,
    DatasetError,
    marker_path,
    shard_name,
)
from fracgen.errors import UsageError
from fracgen.folder import write_json


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
        DatasetError: not JSON (or nested too deeply to parse), no positive integer num_classes, or a split without filenames and
            shard_lengths of the same length whose sum is num_samples.
    """
    try:
        info = json.loads(data) if isinstance(data, bytes | str) else data
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where} is not valid JSON ({e})") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise DatasetError(f"{where} is not valid JSON (nested too deeply)") from None
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
            f"`fracgen build --resume {root}` finishes it (add --recipe-only to finish a recipe)"
        )
    build = read_json(root / BUILD_JSON)
    if not isinstance(build, dict) or not isinstance(build.get("shards"), list):
        raise UsageError(f"{root / BUILD_JSON} has no 'shards' list")
    return build


def is_recipe(build: dict[str, Any]) -> bool:
    """Whether a ``build.json`` (as ``read_build`` gives it) is a recipe's: its shards are to be rendered."""
    return isinstance(build.get("recipe"), dict)


def recipe_head(build: dict[str, Any]) -> list[dict]:
    """The json of a recipe's first samples, which its build.json records for the card.

    Raises:
        DatasetError: they are not a list of objects.
    """
    head = build["recipe"].get("head")
    if not isinstance(head, list) or not all(isinstance(m, dict) for m in head):
        raise DatasetError(f"{BUILD_JSON} recipe head is not a list of the first samples' json (got {head!r:.60})")
    return head


def changed_records(root: Path | str, records: Any) -> list[str]:
    """What differs between params.json and _info.json and the sha256 build.json ``records`` for them (a build
    without those records has none to compare)."""
    if not isinstance(records, dict):
        return [f"{BUILD_JSON} records is not an object (got {records!r:.60})"]
    problems = []
    for name in (name for name in (PARAMS_JSON, INFO_JSON) if name in records):
        path = Path(root) / name
        try:
            if not path.is_file():
                problems.append(f"{name} is missing or not a regular file ({BUILD_JSON} records its sha256)")
            elif sha256_file(path) != records[name]:
                problems.append(f"{name} was changed after the build: its sha256 is not the one {BUILD_JSON} "
                                "records")
        except OSError as e:
            problems.append(f"{name} cannot be read ({e.strerror or e})")
    return problems


def write_build(root: Path, build: dict) -> None:
    """Write ``build.json`` atomically; write it last, since its presence marks a complete build."""
    write_json(Path(root) / BUILD_JSON, build)


def is_complete(root: Path | str) -> bool:
    """True when the folder holds a finished build (its build.json)."""
    return (Path(root) / BUILD_JSON).is_file()


def read_marker(root: Path, shard: int) -> dict | None:
    """A shard's marker if the shard is complete and its checksum verifies, else None."""
    path = marker_path(root, shard)
    tar = Path(root) / shard_name(shard)
    if not path.is_file() or not tar.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(marker, dict) or marker.get("bytes") != tar.stat().st_size or marker.get("sha256") != sha256_file(tar):
        return None
    return marker


def write_marker(root: Path, marker: dict) -> None:
    """Write a shard's completion marker (after the shard itself)."""
    write_json(marker_path(root, marker["shard"]), marker)
