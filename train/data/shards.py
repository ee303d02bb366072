"""A fracgen dataset on disk: ``_info.json``, its shards read once before the first step and checked against what
the build recorded, and what identifies the dataset for ``--resume``.

The dataset check is one call, ``read_split`` (``plan_shards`` for the records, then ``checked_samples`` for the one
read of every local shard); every reader of a dataset before the first step goes through it (the pre-training
sources by ``train.data.pretraining.make_source``, a fine-tuning WebDataset by ``train.data.downstream``), so each
gets the same checks from its one read. A fracgen build (a local folder with ``build.json``) is checked with
``fracgen verify``'s own functions, so the trainer refuses what verify refuses, in its words:

- before any shard is read, ``_info.json``'s ``num_classes`` and ``num_samples`` against ``build.json``'s; every
  shard ``_info.json`` lists is one ``build.json`` records, and no other ``train-*.tar`` lies beside them; each is a
  regular file inside the folder (not a link leaving it) of the recorded size (``fracgen.dataset.file_problem``);
- while a shard is read, every member is a regular file, and every sample passes ``fracgen.dataset.check_sample``
  (exactly png, cls and json; its key; a label in range equal to its json's and its key's; a whole PNG, every
  chunk's CRC and nothing after IEND, of the build's colour type, 8-bit, of the build's size, that decodes): the
  image it decodes is the one the sources keep;
- after it is read, its sample count against ``_info.json`` (a tar cut at a member boundary reads as a
  valid, shorter tar) and, when ``data.verify`` is on, its sha256 against ``build.json``, hashed while read;
- after all, a warning when the dataset has a single class (top-1 is then 100 % by construction).

Any other dataset (a toy folder without ``build.json``, a brace pattern, a downstream WebDataset, shards over
HTTP(S)) keeps the trainer's lighter checks (``train.data.samples.plain_sample``: names inside the shard, an integer
label in range and equal to its json's, the PNG header's size), and its images are decoded when used.

``data.verify`` (``--verify-data`` / ``--no-verify-data``): ``auto`` checks sha256 when the dataset is a local
folder with a ``build.json`` and its shards add up to at most ``VERIFY_AUTO_MAX_BYTES``; ``true`` insists
(an error when there is nothing to check against); ``false`` skips it. Remote shards (http(s) only,
``train/data/remote.py``) are not read before training; the streaming source checks their samples as it decodes
them.

The format on disk is ``fracgen.dataset``'s: this module only compares and maps its errors to ``TrainError``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand

from fracgen import dataset
from fracgen.config import expect_of
from fracgen.dataset import DatasetError, DatasetInfo
from fracgen.errors import FracgenError
from fracgen.folder import read_regular
from train.bounds import cpus
from train.data.remote import check_url, is_remote, read_url
from train.data.samples import Sample, build_sample, cause, plain_sample
from train.errors import TrainError

log = logging.getLogger(__name__)

MOST_INFO_BYTES = 1 << 28  # _info.json lists every shard by name: about 40 bytes each
VERIFY_AUTO_MAX_BYTES = 4 * 2**30
"""``data.verify: auto`` hashes the shards when they add up to at most this (about 2 s per GB here)."""


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
        data = read_regular(Path(location), MOST_INFO_BYTES)  # a FIFO swapped in after the look cannot block
        if data is None:
            raise TrainError(f"dataset {path}: cannot read {location} (not a readable regular file of at most "
                             f"{MOST_INFO_BYTES >> 20} MiB)")
    try:
        return dataset.parse_info(data, location)
    except DatasetError as e:
        raise TrainError(f"dataset {path}: {e}") from None


def shard_urls(path: str, info: DatasetInfo, split: str = "train", follow: bool = True) -> list[str]:
    """The shard files or URLs of ``split``: from ``_info.json`` for a folder, else the expanded pattern.

    Args:
        follow: also refuse a name that leads out of the folder once links are followed (a fracgen build's shards
            are judged by ``fracgen.dataset.file_problem`` instead, which says that a link leaves the folder).

    Raises:
        TrainError: no shards, or a file name in ``_info.json`` that points outside the folder.
    """
    if not is_remote(path) and Path(path).is_dir():
        root = Path(path)
        names = info.splits[split].filenames if split in info.splits else ()
        for name in names:  # a hostile _info.json must not make the trainer read files elsewhere
            if Path(name).is_absolute() or ".." in Path(name).parts or \
                    (follow and not (root / name).resolve().is_relative_to(root.resolve())):
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
    """The shards of a dataset's split, with the records they are checked against.

    Attributes:
        path: the dataset as given (folder, brace pattern or URL).
        num_classes: from ``_info.json``.
        shards: in ``_info.json`` order (folder) or pattern order.
        verify: sha256 is checked while reading.
        labels: the distinct labels met by ``checked_samples`` so far.
        expect: what every sample of a fracgen build is (``fracgen.config.expect_of`` its ``build.json``); None:
            not a build, its samples get the lighter checks.
        image_keys: the entries a sample may hold its image in (the lighter checks).
        threads: samples of a build checked (decoded) at once: PNG decoding and CRCs release the GIL.
    """

    path: str
    num_classes: int
    shards: list[Shard]
    verify: bool = False
    labels: set[int] = field(default_factory=set)
    expect: dataset.Expect | None = None
    image_keys: tuple[str, ...] = ("png",)
    threads: int = 1

    @property
    def urls(self) -> list[str]:
        """The shards' paths or URLs, in order."""
        return [s.url for s in self.shards]

    @property
    def size(self) -> int | None:
        """Every image is ``size`` x ``size`` px (``build.json``'s config; None: not recorded, not checked)."""
        return self.expect.size if self.expect is not None else None

    def check(self, raw: dict[str, Any]) -> Sample:
        """One raw sample of these shards, checked: verify's check for a build, the lighter ones otherwise."""
        if self.expect is not None:
            return build_sample(raw, self.expect)
        return plain_sample(raw, self.num_classes, None, self.image_keys)


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


def _build_files(folder: Path, urls: list[str], build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``build.json``'s record of every shard in ``urls``, each checked as ``fracgen verify`` checks the files of a
    build: listed there, no other ``train-*.tar`` beside them, a regular file inside the folder of the recorded
    size (``fracgen.dataset.file_problem``); then ``_info.json`` and ``params.json`` as build.json records them.

    Raises:
        TrainError: naming the shard and the problem, in verify's words.
    """
    records = {str(r.get("filename")): r for r in build["shards"] if isinstance(r, dict)}
    then = f"; `fracgen verify {folder}` checks the whole dataset"
    for name in dataset.stray_shards(folder, records):
        raise TrainError(f"shard {folder / name}: {dataset.UNLISTED}{then}")
    for url in urls:
        name = os.path.relpath(url, folder)
        if name not in records:
            raise TrainError(f"shard {url}: not listed in {dataset.BUILD_JSON}, so nothing records its size or "
                             f"sha256 (the dataset was changed since the build){then}")
        problem = dataset.file_problem(folder, name, records[name].get("bytes"))
        if problem:
            raise TrainError(f"shard {url}: {problem}{then}")
    for problem in dataset.changed_records(folder, build.get("records", {})):  # _info.json, params.json
        raise TrainError(f"dataset {folder}: {problem}{then}")
    return records


def _parse_verify(verify: str | bool) -> str:
    value = ("true" if verify else "false") if isinstance(verify, bool) else str(verify).lower()
    if value not in ("auto", "true", "false"):
        raise TrainError(f"data.verify must be auto, true or false (got {verify!r})")
    return value


def _hashes(shards: list[Shard], mode: str, path: str) -> bool:
    """Whether sha256 is checked while reading (``data.verify`` ``mode``, see the module docstring).

    Raises:
        TrainError: ``true`` with nothing to check against.
    """
    hashed = [s for s in shards if s.sha256]
    every = bool(hashed) and len(hashed) == len(shards)
    if mode == "true" and not every:
        raise TrainError(f"data.verify=true: {path} has no {dataset.BUILD_JSON} with the sha256 of every shard "
                         "to check against (a local fracgen build has one); pass --no-verify-data")
    if mode != "auto" or not every:
        return mode == "true"
    total = sum(s.bytes or 0 for s in shards)
    if total > VERIFY_AUTO_MAX_BYTES:
        log.info("data.verify=auto: %.1f GB of shards, sha256 not checked (--verify-data checks it)", total / 1e9)
    return total <= VERIFY_AUTO_MAX_BYTES


def plan_shards(path: str, info: DatasetInfo, verify: str | bool = "auto", split_name: str = "train") -> ShardSet:
    """The shards of ``path``'s ``split_name`` (train unless told) with their expected counts (``_info.json``) and
    sizes/sha256 (``build.json``), the files of a build checked as ``fracgen verify`` checks them.

    Args:
        path: a dataset folder, a brace pattern of shards or a URL.
        info: its ``_info.json``.
        verify: ``auto``, ``true`` or ``false`` (see the module docstring).
        split_name: the split of ``_info.json`` (fine-tuning reads ``test`` too).

    Raises:
        TrainError: bad ``build.json``, a shard file verify refuses, or ``verify`` true with nothing to check.
    """
    mode = _parse_verify(verify)
    local = not is_remote(path)
    folder = Path(path) if local and Path(path).is_dir() else None
    urls = shard_urls(path, info, split_name, follow=folder is None or not dataset.is_complete(folder))
    folder = folder or Path(urls[0]).parent
    build = _read_build(folder, info) if local else None
    records = _build_files(folder, urls, build) if build else {}
    split = info.splits.get(split_name)
    counts = dict(zip(split.filenames, split.shard_lengths, strict=True)) if split else {}
    shards = []
    for url in urls:
        record = records.get(os.path.relpath(url, folder), {}) if build else {}
        size, digest = record.get("bytes"), record.get("sha256")
        shards.append(Shard(url, counts.get(url.rsplit("/", 1)[-1]), size if type(size) is int else None,
                            digest if isinstance(digest, str) else None))
    on = _hashes(shards, mode, path)
    if not on:
        shards = [Shard(s.url, s.num_samples, s.bytes) for s in shards]
    expect = expect_of(build.get("config"), info.num_classes) if build else None
    return ShardSet(path, info.num_classes, shards, verify=on, expect=expect)


def _in_threads(check: Callable[[dict[str, Any]], Sample], raws: Iterator[dict[str, Any]],
                threads: int) -> Iterator[Sample]:
    """``check`` of every raw sample, in order, ``threads`` at a time (the tar is read in this thread)."""
    if threads <= 1:
        yield from map(check, raws)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while chunk := list(itertools.islice(raws, threads * 4)):
            yield from pool.map(check, chunk)


def read_shard(shard: Shard, shards: ShardSet) -> Iterator[Sample]:
    """The samples of one local shard of ``shards``, read once and checked (see the module docstring).

    Yields:
        The checked samples, in tar order (their labels added to ``shards.labels``).

    Raises:
        TrainError: one line naming the shard (and the key, for a bad sample) and the damage.
    """
    url = shard.url
    path = Path(url)
    if not path.is_file():
        raise TrainError(f"shard {url}: missing")
    count = 0
    threads = shards.threads if shards.expect is not None else 1  # the lighter checks decode nothing
    try:
        with open(path, "rb") as f:
            reader = dataset.HashingReader(f, url) if shard.sha256 else f
            for sample in _in_threads(shards.check, dataset.iter_shard(reader, strict=True), threads):
                shards.labels.add(sample.label)
                count += 1
                yield sample
            digest = reader.hexdigest() if shard.sha256 else None
    except (DatasetError, OSError) as e:
        raise TrainError(f"shard {url}: corrupt tar ({cause(e, url)})") from None
    if count == 0:
        raise TrainError(f"shard {url}: no samples")
    if shard.num_samples is not None and count != shard.num_samples:
        raise TrainError(f"shard {url}: {count} samples, {dataset.INFO_JSON} lists {shard.num_samples} (cut short "
                         f"or replaced since the build; `fracgen verify {path.parent}` checks the whole dataset)")
    if digest is not None and digest != shard.sha256:
        raise TrainError(f"shard {url}: sha256 {digest[:12]}... does not match {dataset.BUILD_JSON} "
                         f"({shard.sha256[:12]}...): its bytes changed since the build (--no-verify-data "
                         "trains on it anyway)")


def checked_samples(shards: ShardSet, warn_one_class: bool = True) -> Iterator[Sample]:
    """Every sample of the local shards of ``shards``, each shard read once and checked, in order.

    Remote shards are skipped (they are read while streaming). At the end, a dataset of one class is warned
    about (unless ``warn_one_class`` is false: fine-tuning says it its own way).
    """
    for shard in shards.shards:
        if not is_remote(shard.url):
            yield from read_shard(shard, shards)
    if warn_one_class and (shards.num_classes == 1 or len(shards.labels) == 1):
        label = next(iter(shards.labels), 0)
        log.warning("dataset %s has a single class (label %d of num_classes %d): every image has the same label, "
                    "so pre-training on it learns nothing and top-1 is 100%% by construction", shards.path, label,
                    shards.num_classes)


def read_split(path: str, info: DatasetInfo, verify: str | bool = "auto", split: str = "train",
               image_keys: tuple[str, ...] = ("png",), warn_one_class: bool = True,
               threads: int | None = None) -> tuple[ShardSet, Iterator[Sample]]:
    """The dataset check: the shards of ``split`` with their records, and the one read of them, checked.

    The records and the files of a build are checked now; no shard is read until the samples are iterated, then
    every local shard is read once, in order, and refused in one line at the first damage (the module docstring
    lists the checks).

    Args:
        path: a dataset folder, a brace pattern of shards or a URL.
        info: its ``_info.json``.
        verify: ``data.verify``.
        split: the split of ``_info.json``.
        image_keys: the entries a sample may hold its image in (a dataset that is not a fracgen build).
        warn_one_class: warn when the split has a single class (fine-tuning says it its own way).
        threads: samples of a build checked at once (default: up to 8, the CPUs this process may use).

    Returns:
        (the shards and their records, the checked samples of the local shards in order).

    Raises:
        TrainError: a ``build.json`` that disagrees with ``_info.json``, a shard file verify refuses, or (while the
            samples are read) a damaged shard or sample.
    """
    shards = plan_shards(path, info, verify, split)
    shards.image_keys = image_keys
    shards.threads = threads or min(8, cpus())
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
