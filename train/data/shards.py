"""A fracgen dataset on disk: ``_info.json``, its shards read once before the first step and checked against what
the build recorded, and what identifies the dataset for ``--resume``.

The dataset check is one call, ``read_split`` (``plan_shards`` for the records, then ``checked_samples`` for the one
read of every local shard); every reader of a dataset before the first step goes through it (the pre-training
sources by ``train.data.pretraining.make_source``, a fine-tuning WebDataset by ``train.data.downstream``), so each
gets the same checks from its one read:

- before any is read, ``_info.json``'s ``num_classes`` and ``num_samples`` against ``build.json``'s, and every
  shard ``_info.json`` lists must be one ``build.json`` records (with its size and sha256);
- before a shard is read, its size against ``build.json`` (a cut or replaced file is refused unread);
- while it is read, every member is a regular file named inside the shard, every sample has a ``png`` and an integer ``cls`` in ``[0, num_classes)`` (a label out of
  range is one line naming the shard and the key, not a CUDA assert or a RuntimeError in the loss), equal to
  its ``json``'s ``label``, and a PNG header of ``build.json``'s image size (the stream repeats these checks
  on every sample it decodes, remote shards included);
- after it is read, its sample count against ``_info.json`` (a tar cut at a member boundary reads as a
  valid, shorter tar) and, when ``data.verify`` is on, its sha256 against ``build.json``, hashed while read
  (a flipped byte inside a PNG that still decodes);
- after all, a warning when the dataset has a single class (top-1 is then 100 % by construction).

``data.verify`` (``--verify-data`` / ``--no-verify-data``): ``auto`` checks sha256 when the dataset is a local
folder with a ``build.json`` and its shards add up to at most ``VERIFY_AUTO_MAX_BYTES``; ``true`` insists
(an error when there is nothing to check against); ``false`` skips it. Remote shards (http(s) only,
``train/data/remote.py``) are not read before training; the streaming source checks their samples as it decodes
them.

The format on disk is ``fracgen.dataset``'s: this module only compares and maps its errors to ``TrainError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import braceexpand

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from fracgen.errors import FracgenError
from train.data.remote import check_url, is_remote, read_url
from train.data.samples import cause, sample_label
from train.errors import TrainError

log = logging.getLogger(__name__)

VERIFY_AUTO_MAX_BYTES = 4 * 2**30
"""``data.verify: auto`` hashes the shards when they add up to at most this (about 2 s per GB here)."""

_CHUNK = 1 << 20


def _info_location(path: str) -> str:
    """``_info.json`` of a dataset folder, or the one beside a brace pattern / shard URL."""
    if not is_remote(path) and Path(path).is_dir():
        return str(Path(path) / dataset.INFO_JSON)
    head = path.rsplit("/", 1)[0] if "/" in path else "."
    return f"{head}/{dataset.INFO_JSON}"


def read_info(path: str) -> DatasetInfo:
    """Read and check a fracgen dataset's ``_info.json``.

    Args:
        path: a dataset folder, a brace pattern of shards (``ds/train-{000000..000009}.tar``) or a URL
            webdataset can open; ``_info.json`` is looked up in the folder of the shards.

    Returns:
        The typed ``_info.json`` (``fracgen.dataset.DatasetInfo``).

    Raises:
        TrainError: missing or malformed ``_info.json``.
    """
    if not path:
        raise TrainError("no dataset given: pass --data DIR (a fracgen build folder)")
    location = _info_location(path)
    if is_remote(path):
        check_url(path, "dataset")
        data = read_url(location, "dataset")
    else:
        if ("{" not in path and not Path(path).exists()) or not Path(location).parent.exists():
            raise TrainError(f"dataset {path}: no such folder")
        if not Path(location).is_file():
            raise TrainError(f"dataset {path}: no {dataset.INFO_JSON} in {Path(location).parent} "
                             "(not a fracgen dataset, or an incomplete build)")
        try:
            data = Path(location).read_bytes()
        except OSError as e:
            raise TrainError(f"dataset {path}: cannot read {location} ({e.strerror or e})") from None
    try:
        return dataset.parse_info(data, location)
    except DatasetError as e:
        raise TrainError(f"dataset {path}: {e}") from None


def shard_urls(path: str, info: DatasetInfo, split: str = "train") -> list[str]:
    """The shard files or URLs of ``split``: from ``_info.json`` for a folder, else the expanded pattern.

    Raises:
        TrainError: no shards, or a file name in ``_info.json`` that points outside the folder.
    """
    if not is_remote(path) and Path(path).is_dir():
        root = Path(path)
        names = info.splits[split].filenames if split in info.splits else ()
        for name in names:  # a hostile _info.json must not make the trainer read files elsewhere
            if Path(name).is_absolute() or not (root / name).resolve().is_relative_to(root.resolve()):
                raise TrainError(f"dataset {path}: {dataset.INFO_JSON} names shard {name!r} outside the folder")
        urls = [str(root / n) for n in names]
    else:
        urls = list(braceexpand.braceexpand(path))
        for url in urls:
            if is_remote(url):
                check_url(url, "shard")
    if not urls:
        raise TrainError(f"dataset {path}: no {split} shards")
    return urls


@dataclass(frozen=True)
class Shard:
    """One shard and what the dataset recorded about it (None: not recorded, not checked)."""

    url: str
    num_samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None


@dataclass
class ShardSet:
    """The shards of a dataset's train split, with the records they are checked against.

    Attributes:
        path: the dataset as given (folder, brace pattern or URL).
        num_classes: from ``_info.json``.
        shards: in ``_info.json`` order (folder) or pattern order.
        verify: sha256 is checked while reading.
        labels: the distinct labels met by ``checked_samples`` so far.
        size: every image is ``size`` x ``size`` px (``build.json``'s config; None: not recorded, not checked).
        image_keys: the entries a sample may hold its image in (``sample_label``).
    """

    path: str
    num_classes: int
    shards: list[Shard]
    verify: bool = False
    labels: set[int] = field(default_factory=set)
    size: int | None = None
    image_keys: tuple[str, ...] = ("png",)

    @property
    def urls(self) -> list[str]:
        """The shards' paths or URLs, in order."""
        return [s.url for s in self.shards]


def _read_build(folder: Path, info: DatasetInfo) -> dict[str, Any] | None:
    """``build.json`` of ``folder`` (None when it holds none), checked to agree with ``_info.json``.

    Raises:
        TrainError: an unreadable ``build.json``, or one whose ``num_classes`` / ``num_samples`` differ from
            ``_info.json``'s (one of the two was changed since the build).
    """
    if not dataset.is_complete(folder):
        return None
    try:
        build = dataset.read_build(folder)
    except FracgenError as e:
        raise TrainError(f"dataset {folder}: {e}") from None
    split = info.splits.get("train")
    for key, ours in (("num_classes", info.num_classes), ("num_samples", split.num_samples if split else None)):
        theirs = build.get(key)
        if ours is not None and isinstance(theirs, int) and theirs != ours:
            raise TrainError(f"dataset {folder}: {dataset.INFO_JSON} says {key} {ours}, {dataset.BUILD_JSON} "
                             f"says {theirs}; one was changed since the build (`fracgen verify {folder}`)")
    return build


def _parse_verify(verify: str | bool) -> str:
    value = ("true" if verify else "false") if isinstance(verify, bool) else str(verify).lower()
    if value not in ("auto", "true", "false"):
        raise TrainError(f"data.verify must be auto, true or false (got {verify!r})")
    return value


def plan_shards(path: str, info: DatasetInfo, verify: str | bool = "auto", split_name: str = "train") -> ShardSet:
    """The shards of ``path``'s ``split_name`` (train unless told) with their expected counts (``_info.json``) and sizes/sha256 (``build.json``).

    Args:
        path: a dataset folder, a brace pattern of shards or a URL.
        info: its ``_info.json``.
        verify: ``auto``, ``true`` or ``false`` (see the module docstring).
        split_name: the split of ``_info.json`` (fine-tuning reads ``test`` too).

    Raises:
        TrainError: bad ``build.json``, or ``verify`` true with nothing to check against.
    """
    mode = _parse_verify(verify)
    urls = shard_urls(path, info, split_name)
    split = info.splits.get(split_name)
    counts = dict(zip(split.filenames, split.shard_lengths, strict=True)) if split else {}
    local = not any(is_remote(u) for u in urls)
    folder = Path(path) if local and Path(path).is_dir() else Path(urls[0]).parent
    build = _read_build(folder, info) if local else None
    records = {str(r.get("filename")): r for r in build["shards"] if isinstance(r, dict)} if build else None
    config = build.get("config") if build else None
    side = config.get("size") if isinstance(config, dict) else None
    shards = []
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        if records is not None and name not in records:
            raise TrainError(f"shard {url}: not listed in {dataset.BUILD_JSON}, so nothing records its size or "
                             f"sha256 (the dataset was changed since the build; `fracgen verify {folder}` checks it)")
        record = (records or {}).get(name, {})
        size, digest = record.get("bytes"), record.get("sha256")
        shards.append(Shard(url, counts.get(name), size if isinstance(size, int) else None,
                            digest if isinstance(digest, str) else None))
    hashed = [s for s in shards if s.sha256]
    if mode == "true" and (not local or len(hashed) != len(shards)):
        raise TrainError(f"data.verify=true: {path} has no {dataset.BUILD_JSON} with the sha256 of every shard "
                         "to check against (a local fracgen build has one); pass --no-verify-data")
    on = False
    if mode == "true":
        on = True
    elif mode == "auto" and hashed and len(hashed) == len(shards):
        total = sum(s.bytes or 0 for s in shards)
        on = total <= VERIFY_AUTO_MAX_BYTES
        if not on:
            log.info("data.verify=auto: %.1f GB of shards, sha256 not checked (--verify-data checks it)",
                     total / 1e9)
    if not on:
        shards = [Shard(s.url, s.num_samples, s.bytes) for s in shards]
    return ShardSet(path, info.num_classes, shards, verify=on,
                    size=side if isinstance(side, int) and not isinstance(side, bool) else None)


class _HashingReader:
    """A read-only binary stream over a file that hashes every byte read (the shard is read once)."""

    def __init__(self, f: IO[bytes], name: str, digest: Any):
        self._f, self.name, self._digest = f, name, digest

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if self._digest is not None:
            self._digest.update(data)
        return data

    def hexdigest(self) -> str:
        """The sha256 of the bytes read so far."""
        return self._digest.hexdigest()

    def drain(self) -> None:
        """Read what the tar reader left (end-of-archive blocks), so the digest covers the whole file."""
        while self.read(_CHUNK):
            pass


def read_shard(shard: Shard, num_classes: int, labels: set[int] | None = None,
               side: int | None = None, image_keys: tuple[str, ...] = ("png",)) -> Iterator[dict[str, Any]]:
    """The samples of one local shard, read once and checked (see the module docstring).

    Args:
        shard: the shard and its records.
        num_classes: labels must be in ``[0, num_classes)``.
        labels: when given, the labels met are added to it.
        side: the images' size in px (square), when recorded.
        image_keys: the entries a sample may hold its image in.

    Yields:
        The raw samples (``fracgen.dataset.iter_shard`` dicts), in tar order.

    Raises:
        TrainError: one line naming the shard (and the key, for a bad sample) and the damage.
    """
    url = shard.url
    path = Path(url)
    if not path.is_file():
        raise TrainError(f"shard {url}: missing")
    size = path.stat().st_size
    if shard.bytes is not None and size != shard.bytes:
        raise TrainError(f"shard {url}: {size} bytes, {dataset.BUILD_JSON} records {shard.bytes} (cut short or "
                         f"replaced since the build; `fracgen verify {path.parent}` checks the whole dataset)")
    count = 0
    try:
        with open(path, "rb") as f:
            reader = _HashingReader(f, url, hashlib.sha256() if shard.sha256 else None)
            for sample in dataset.iter_shard(reader, strict=True):
                label = sample_label(sample, num_classes, side, image_keys)
                if labels is not None:
                    labels.add(label)
                count += 1
                yield sample
            reader.drain()
    except (DatasetError, OSError) as e:
        raise TrainError(f"shard {url}: corrupt tar ({cause(e, url)})") from None
    if count == 0:
        raise TrainError(f"shard {url}: no samples")
    if shard.num_samples is not None and count != shard.num_samples:
        raise TrainError(f"shard {url}: {count} samples, {dataset.INFO_JSON} lists {shard.num_samples} (cut short "
                         f"or replaced since the build; `fracgen verify {path.parent}` checks the whole dataset)")
    if shard.sha256 is not None:
        digest = reader.hexdigest()
        if digest != shard.sha256:
            raise TrainError(f"shard {url}: sha256 {digest[:12]}... does not match {dataset.BUILD_JSON} "
                             f"({shard.sha256[:12]}...): its bytes changed since the build (--no-verify-data "
                             "trains on it anyway)")


def checked_samples(shards: ShardSet, warn_one_class: bool = True) -> Iterator[dict[str, Any]]:
    """Every sample of the local shards of ``shards``, each shard read once and checked, in order.

    Remote shards are skipped (they are read while streaming). At the end, a dataset of one class is warned
    about (unless ``warn_one_class`` is false: fine-tuning says it its own way).
    """
    for shard in shards.shards:
        if not is_remote(shard.url):
            yield from read_shard(shard, shards.num_classes, shards.labels, shards.size, shards.image_keys)
    if warn_one_class and (shards.num_classes == 1 or len(shards.labels) == 1):
        label = next(iter(shards.labels), 0)
        log.warning("dataset %s has a single class (label %d of num_classes %d): every image has the same label, "
                    "so pre-training on it learns nothing and top-1 is 100%% by construction", shards.path, label,
                    shards.num_classes)


def read_split(path: str, info: DatasetInfo, verify: str | bool = "auto", split: str = "train",
               image_keys: tuple[str, ...] = ("png",),
               warn_one_class: bool = True) -> tuple[ShardSet, Iterator[dict[str, Any]]]:
    """The dataset check: the shards of ``split`` with their records, and the one read of them, checked.

    Nothing is read until the samples are iterated; then every local shard is read once, in order, and refused in
    one line at the first damage (the module docstring lists the checks).

    Args:
        path: a dataset folder, a brace pattern of shards or a URL.
        info: its ``_info.json``.
        verify: ``data.verify``.
        split: the split of ``_info.json``.
        image_keys: the entries a sample may hold its image in.
        warn_one_class: warn when the split has a single class (fine-tuning says it its own way).

    Returns:
        (the shards and their records, the raw samples of the local shards in order).

    Raises:
        TrainError: a ``build.json`` that disagrees with ``_info.json``, a shard it does not list, or (while the
            samples are read) a damaged shard or sample.
    """
    shards = plan_shards(path, info, verify, split)
    shards.image_keys = image_keys
    return shards, checked_samples(shards, warn_one_class)


def dataset_identity(path: str, source: str) -> dict[str, Any]:
    """What a pre-training checkpoint records about its data, so that ``--resume`` knows it is the same.

    A local fracgen build is known by ``build.json`` (its name and every shard's name, size and sha256, hashed
    into one digest); anything else (a brace pattern, a URL, a folder without ``build.json``) only by its
    path and counts.

    Args:
        path: ``data.path``, a dataset already opened (its ``_info.json`` is read again, for the counts).
        source: the source that served it (``StreamSource``, ``ResidentSource``): they draw different batches.
    """
    info = read_info(path)
    train = info.splits.get("train")
    record: dict[str, Any] = {"num_classes": info.num_classes, "num_samples": train.num_samples if train else None,
                              "source": source}
    folder = Path(path)
    build = None
    if "://" not in path and folder.is_dir() and dataset.is_complete(folder):
        try:
            build = dataset.read_build(folder)
        except FracgenError:
            build = None
    shards = build.get("shards") if isinstance(build, dict) else None
    if isinstance(shards, list) and shards and all(isinstance(s, dict) and s.get("sha256") for s in shards):
        rows = sorted((str(s.get("filename")), s.get("bytes"), str(s.get("sha256"))) for s in shards)
        record["name"] = build.get("name")
        record["shards_sha256"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    else:
        record["path"] = path
    return record
