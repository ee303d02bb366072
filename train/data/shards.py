"""A fracgen dataset on disk: ``_info.json``, its shards read once before the first step and checked against what
the build recorded, a sample's label and image, and what identifies the dataset for ``--resume``.

Every pre-training source (``train/data/stream.py``, ``train/data/resident.py``) reads its shards through
``checked_samples``, so each gets the same checks from its one read:

- before any is read, ``_info.json``'s ``num_classes`` and ``num_samples`` against ``build.json``'s;
- before a shard is read, its size against ``build.json`` (a cut or replaced file is refused unread);
- while it is read, every sample has a ``png`` and an integer ``cls`` in ``[0, num_classes)`` (a label out of
  range is one line naming the shard and the key, not a CUDA assert or a RuntimeError in the loss), equal to
  its ``json``'s ``label``, and a PNG header of ``build.json``'s image size (the stream repeats these checks
  on every sample it decodes, remote shards included);
- after it is read, its sample count against ``_info.json`` (a tar cut at a member boundary reads as a
  valid, shorter tar) and, when ``data.verify`` is on, its sha256 against ``build.json``, hashed while read
  (a flipped byte inside a PNG that still decodes);
- after all, a warning when the dataset has a single class (top-1 is then 100 % by construction).

``data.verify`` (``--verify-data`` / ``--no-verify-data``): ``auto`` checks sha256 when the dataset is a local
folder with a ``build.json`` and its shards add up to at most ``VERIFY_AUTO_MAX_BYTES``; ``true`` insists
(an error when there is nothing to check against); ``false`` skips it. Remote shards are not read before
training; the streaming source checks their labels as it decodes them.

The format on disk is ``fracgen.dataset``'s: this module only compares and maps its errors to ``TrainError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import braceexpand
import numpy as np
from webdataset.gopen import gopen

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from fracgen.errors import FracgenError
from train.errors import TrainError

log = logging.getLogger(__name__)

VERIFY_AUTO_MAX_BYTES = 4 * 2**30
"""``data.verify: auto`` hashes the shards when they add up to at most this (about 2 s per GB here)."""

_CHUNK = 1 << 20


def is_remote(path: str) -> bool:
    """True for a URL webdataset opens (``https://``, ``pipe:``, ``s3://``...), false for a local path."""
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", path)) and not re.match(r"^[A-Za-z]:\\", path)


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
    if not is_remote(path):
        if ("{" not in path and not Path(path).exists()) or not Path(location).parent.exists():
            raise TrainError(f"dataset {path}: no such folder")
        if not Path(location).is_file():
            raise TrainError(f"dataset {path}: no {dataset.INFO_JSON} in {Path(location).parent} "
                             "(not a fracgen dataset, or an incomplete build)")
    try:
        with gopen(location, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TrainError(f"dataset {path}: cannot read {location} ({e})") from None
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
    if not urls:
        raise TrainError(f"dataset {path}: no {split} shards")
    return urls


def shard_samples(url: str) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard (``fracgen.dataset.iter_shard``), a local path or a URL gopen reads.

    Unchecked: ``read_shard`` is the checked read.

    Yields:
        ``{"__key__", "__url__", "png": bytes, "cls": bytes, ...}`` in tar order.

    Raises:
        TrainError: ``shard <url>: missing`` or ``shard <url>: corrupt tar (...)`` (after the samples before
            the damage).
    """
    remote = is_remote(url)
    if not remote and not Path(url).is_file():
        raise TrainError(f"shard {url}: missing")
    try:
        if remote:
            with gopen(url, "rb") as stream:
                for sample in dataset.iter_shard(stream):
                    yield {**sample, "__url__": url}
        else:
            yield from dataset.iter_shard(url)
    except (DatasetError, OSError) as e:
        raise TrainError(f"shard {url}: corrupt tar ({_cause(e, url)})") from None


def _cause(e: Exception, url: str) -> str:
    return str(e).removeprefix(f"shard {url}: ")


def sample_label(sample: dict[str, Any], num_classes: int | None = None, size: int | None = None,
                 image_keys: tuple[str, ...] = ("png",)) -> int:
    """The integer label of a raw sample, checked to be in ``[0, num_classes)`` and to agree with the sample's own
    ``json`` (its ``label``); with ``size``, the PNG's header must say ``size`` x ``size`` (read without decoding).
    The sample must hold one of ``image_keys`` (fracgen writes ``png``; a downstream WebDataset may hold JPEGs).

    Raises:
        TrainError: naming the shard and the key: no png/cls, a cls that is not an integer, out of range, unlike
            the json's label, or an image of another size.
    """
    where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    if not any(k in sample for k in image_keys) or "cls" not in sample:
        raise TrainError(f"{where}: needs {' or '.join(image_keys)} and cls entries, has {sorted(k for k in sample if k[0] != '_')}")
    try:
        label = int(sample["cls"])
    except ValueError:
        raise TrainError(f"{where}: cls {sample['cls'][:20]!r} is not an integer") from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise TrainError(f"{where}: label {label} is out of range for the {num_classes} classes of "
                         f"{dataset.INFO_JSON} (num_classes); the dataset is damaged or mislabelled")
    if "json" in sample:  # a few hundred bytes: parsing it is small next to the PNG decode
        try:
            meta = json.loads(sample["json"])
        except (UnicodeDecodeError, ValueError):
            raise TrainError(f"{where}: its json entry is not valid JSON; the dataset is damaged") from None
        # fracgen writes the integer label there; another writer's json may name the class instead
        recorded = meta.get("label") if isinstance(meta, dict) else None
        if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != label:
            raise TrainError(f"{where}: cls {label} but its json says label {meta['label']!r}; the dataset is "
                             "damaged or mislabelled")
    png = sample.get("png")
    if size is not None and png is not None and dataset.png_colour_type(png) is not None:  # not a PNG: decoding names it
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        if (width, height) != (size, size):
            raise TrainError(f"{where}: image is {width}x{height} px, {dataset.BUILD_JSON} records size {size}; "
                             "the dataset is damaged")
    return label


def decode_sample(sample: dict[str, Any], num_classes: int | None = None,
                  size: int | None = None) -> tuple[np.ndarray, int]:
    """A shard sample -> (uint8 grey (H, W) array, label); a bad sample is an error naming shard and key.

    ``sample_label`` checks the label against ``num_classes`` and the sample's json, and the PNG header against
    ``size`` (the build's image size, when known).
    """
    label = sample_label(sample, num_classes, size)
    return decode_image(sample), label


def decode_image(sample: dict[str, Any]) -> np.ndarray:
    """A sample's PNG as (H, W) uint8 grey; one line naming shard and key when it does not decode."""
    try:
        return dataset.decode_grey(sample["png"])
    except DatasetError as e:
        where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
        raise TrainError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None


def iter_samples(urls: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """Every sample of ``urls`` in order, decoded: (uint8 grey (H, W) array, label).

    For evaluation; shards are read once, sequentially.
    """
    for url in urls:
        for sample in shard_samples(url):
            yield decode_sample(sample)


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
            for sample in dataset.iter_shard(reader):
                label = sample_label(sample, num_classes, side, image_keys)
                if labels is not None:
                    labels.add(label)
                count += 1
                yield sample
            reader.drain()
    except (DatasetError, OSError) as e:
        raise TrainError(f"shard {url}: corrupt tar ({_cause(e, url)})") from None
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
