"""Where pre-training batches come from: the source interface, the dataset on disk, the streaming source.

The step loop (``train/loop.py``) never knows where batches come from. It asks ``make_source`` for a
*source* and only ever uses the interface below, so the streaming path (this module) and the GPU-resident
path (``train/resident.py``, issue 5) are interchangeable.

Source interface (``Source`` protocol below)
--------------------------------------------
- ``num_classes: int``: classes of the dataset (from ``_info.json`` for fracgen shards).
- ``micro_batch: int``: images per yielded batch on this rank,
  ``cfg.train.batch_size // (world_size * cfg.train.accum_steps)`` (see ``micro_batch_size``).
- ``__len__() -> int``: micro-batches per epoch on this rank (a multiple of ``cfg.train.accum_steps``),
  identical on every rank so no rank hangs. An epoch is at least one pass over the data,
  ``ceil(num_samples / global batch)`` optimizer steps; a source may make it longer (the stream uses at
  least ``MIN_EPOCH_STEPS`` steps to amortise worker start-up). Only fine-tuning counts real epochs.
- ``batches(epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]``: yields micro-batches
  ``start .. len-1`` of ``epoch``, each ``(images, targets)`` already on the source's device:
  ``images`` float32 (B, 3, H, W), per-sample augmented (RandomResizedCrop, flips, RandAugment, random
  erasing as configured in ``cfg.aug``) and normalised with ``cfg.aug.mean`` / ``cfg.aug.std``;
  ``targets`` int64 (B,) hard labels in ``[0, num_classes)``. Deterministic given
  ``(cfg.train.seed, epoch, rank)``: that is what makes ``--resume`` exact (the loop resumes with
  ``batches(epoch, start=micro_batches_done)``). Different ranks draw different samples/augmentations.
- ``close() -> None``: release workers / device memory (may do nothing).
- ``head`` (optional): the first raw samples of the dataset in shard order (``shard_samples`` dicts), kept
  from the source's one read of the shards so that the pre-training evaluation set (``data.eval_path`` unset:
  the first ``data.eval_samples`` samples) needs no second read; None when not kept.

Mixup/cutmix and label smoothing are *not* the source's job: the loop applies timm's ``Mixup`` on the
device to every source's batches (``train.augment.make_mixup``), so both paths share it.

Choosing a source: ``cfg.data.source`` is ``auto | stream | resident``. For ``auto`` and ``resident``,
``make_source`` calls::

    train.resident.make_resident_source(cfg, device, rank, world_size, info=info, shards=shards) -> Source

which raises ``train.errors.DoesNotFit`` when the data exceed its memory budget (``auto`` then logs the
message and streams; ``resident`` lets it propagate) and ``train.errors.TrainError`` for other bad input.
The resident path reads its own options from ``cfg.data.resident`` (a free-form dict in the YAML, e.g.
``{memory_budget_gb: 20}``; see ``train/resident.py``). Helpers here: ``read_info`` (the typed ``_info.json``
of a folder, brace pattern or URL), ``micro_batch_size``, ``iter_samples`` (decoded ``(uint8 grey HxW array,
label)`` pairs of shards), and, re-exported from ``train.shards``, ``shard_urls`` and ``shard_samples`` (one
shard's raw samples).

The format on disk (file names, ``_info.json``, the tar layout, PNG decoding) is ``fracgen.dataset``'s alone;
this module only maps its errors to one-line ``TrainError`` messages. Before the first step each source reads
every local shard once through ``train.shards.checked_samples`` (the stream checks them with ``check_shards``,
the resident source loads them): sizes against ``build.json``, sample counts against ``_info.json``, sha256
with ``data.verify``, labels in range, a warning for a single class. ``make_source`` hands the sources the
``ShardSet`` (``train.shards.plan_shards``) it made from one read of ``_info.json``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from webdataset.gopen import gopen

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from train.augment import make_eval_transform, make_train_transform
from train.config import Config
from train.distributed import end_workers, quiet_worker
from train.errors import DoesNotFit, RankError, TrainError
from train.shards import (
    ShardSet,
    checked_samples,
    is_remote,
    plan_shards,
    sample_label,
    shard_samples,
    shard_urls,
)

__all__ = ["Batch", "Source", "StreamSource", "check_eval_set", "check_shards", "iter_samples", "last_line",
           "make_pretrain_eval_loader", "make_source", "micro_batch_size", "read_info", "shard_samples", "shard_urls"]

log = logging.getLogger(__name__)

MIN_EPOCH_STEPS = 200
"""The streaming source's epochs last at least this many optimizer steps (DataLoader workers restart per epoch)."""

Batch = tuple[torch.Tensor, torch.Tensor]


class Source(Protocol):
    """What the step loop consumes; see the module docstring."""

    num_classes: int
    micro_batch: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# The dataset on disk: fracgen.dataset (shards + _info.json in timm's schema)


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


def check_shards(shards: ShardSet, keep: int = 0) -> list[dict[str, Any]] | None:
    """Read the local shards once, checked (``train.shards.checked_samples``), before training.

    Remote shards are not read here; the stream checks their labels as it decodes them.

    Args:
        shards: the dataset's shards and their records.
        keep: return the first ``keep`` raw samples read (the source's ``head``).

    Returns:
        Those samples, or None when a shard is remote (it was not read).

    Raises:
        TrainError: ``shard <path>: ...`` naming the damage.
    """
    head: list[dict[str, Any]] = []
    for sample in checked_samples(shards):
        if len(head) < keep:
            head.append(sample)
    return None if any(is_remote(u) for u in shards.urls) else head


def _decode(sample: dict[str, Any], num_classes: int | None = None,
            size: int | None = None) -> tuple[np.ndarray, int]:
    """A shard sample -> (uint8 grey (H, W) array, label); a bad sample is an error naming shard and key.

    ``sample_label`` checks the label against ``num_classes`` and the sample's json, and the PNG header against
    ``size`` (the build's image size, when known).
    """
    label = sample_label(sample, num_classes, size)
    return _decode_image(sample), label


def _decode_image(sample: dict[str, Any]) -> np.ndarray:
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
            yield _decode(sample)


def micro_batch_size(cfg: Config, world_size: int) -> int:
    """Images per rank per micro-step: ``batch_size / (world_size * accum_steps)``.

    Raises:
        TrainError: when it does not divide evenly.
    """
    b, a = cfg.train.batch_size, cfg.train.accum_steps
    if b % (world_size * a):
        raise TrainError(f"train.batch_size {b} does not divide across {world_size} ranks x {a} accumulation "
                         f"steps; use a multiple of {world_size * a}")
    return b // (world_size * a)


# ---------------------------------------------------------------------------------------------------------
# Streaming source: webdataset shards, timm transforms in DataLoader workers


class _PrivateRng:
    """Run the transform under its own python/numpy/torch RNG states when there are no worker processes.

    Without it a main-process loader would share the global RNG with drop path and mixup, and a resumed
    run (which skips batches) would diverge; with workers the DataLoader seeds each worker instead.
    """

    def __init__(self, seed: int):
        self.py = random.Random(seed).getstate()
        self.np = np.random.RandomState(seed % 2**32).get_state()
        # a stream's seed grows with train.seed (up to 2**32) past what torch takes (2**64): reduced, a seed that
        # fits is unchanged, so the order of every run that worked before stays as it was
        self.torch = torch.Generator().manual_seed(seed % 2**64).get_state()

    def __call__(self, fn: Callable, *args: Any) -> Any:
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.setstate(self.py)
        np.random.set_state(self.np)
        torch.set_rng_state(self.torch)
        try:
            return fn(*args)
        finally:
            self.py, self.np, self.torch = random.getstate(), np.random.get_state(), torch.get_rng_state()
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def readers_per_rank(workers: int, num_samples: int, world_size: int) -> int:
    """``data.workers``, lowered so that every reader (ranks x workers) has a sample of its own to stream.

    A reader with none would scan the shards for ever (its pass yields nothing). ``num_samples`` 0: unknown
    (a remote dataset without counts), left as asked.

    Raises:
        TrainError: fewer samples than ranks.
    """
    if num_samples <= 0:
        return workers
    if num_samples < world_size:
        raise TrainError(f"the dataset has {num_samples} samples, fewer than the {world_size} ranks: each rank "
                         "streams samples of its own")
    most = num_samples // world_size  # readers a rank may have; one is the main process itself (0 workers)
    if max(workers, 1) <= most:
        return workers
    lowered = most if most > 1 else 0
    log.info("data.workers %d lowered to %d: %d samples over %d rank(s) give every reader (rank x worker) one "
             "sample at least only so", workers, lowered, num_samples, world_size)
    return lowered


class _ShardStream(IterableDataset):
    """An endless, seeded stream of (transformed image, label) for one rank.

    Each of the ``world_size * workers`` readers takes whole shards when they divide evenly among them,
    otherwise every reader scans all shards and decodes every ``n``-th sample (fracgen sets are small), so
    every sample is seen equally often. Passes repeat with a new shard order and shuffle buffer.
    """

    def __init__(self, urls: list[str], transform: Callable, rank: int, world_size: int, seed: int,
                 epoch: int, shuffle_buffer: int, num_classes: int | None = None, size: int | None = None,
                 checked: frozenset[str] = frozenset()):
        self.urls, self.transform, self.num_classes, self.size = urls, transform, num_classes, size
        self.checked = checked  # shards whose every sample was checked before step 1: only their labels are read
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.shuffle_buffer = max(1, shuffle_buffer)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        base = (self.seed * 1_000_003 + self.epoch) * 10_007
        rng = random.Random(base + reader)
        transform = self.transform if info else (lambda im, p=_PrivateRng(base + reader + 1): p(self.transform, im))
        by_shard = len(self.urls) % readers == 0
        buffer: list[tuple[np.ndarray, int]] = []
        seen = False
        for pass_ in range(10**9):
            order = list(self.urls)
            random.Random(base + pass_).shuffle(order)  # same on every reader so whole shards partition
            mine = order[reader::readers] if by_shard else order
            for i, sample in enumerate(s for url in mine for s in shard_samples(url)):
                if not by_shard and i % readers != reader:
                    continue
                seen = True
                if sample.get("__url__") in self.checked:
                    image, label = _decode_image(sample), int(sample["cls"])
                else:
                    image, label = _decode(sample, self.num_classes, self.size)
                buffer.append((image, label))
                if len(buffer) >= self.shuffle_buffer:
                    image, label = buffer.pop(rng.randrange(len(buffer)))
                    yield transform(_rgb(image)), label
            if not seen:  # a reader without samples would scan the shards for ever (readers_per_rank avoids it)
                raise TrainError(f"reader {reader} of {readers} (ranks x data.workers) got no sample of the "
                                 f"{len(self.urls)} shard(s): lower data.workers")
            rng.shuffle(buffer)
            while len(buffer) > self.shuffle_buffer // 2:  # keep some for mixing across passes
                image, label = buffer.pop()
                yield transform(_rgb(image)), label


def _rgb(grey: np.ndarray) -> Image.Image:
    """The PIL RGB image timm's transforms take, from a grey (H, W) uint8 array."""
    return Image.fromarray(grey, "L").convert("RGB")


class StreamSource:
    """Shards streamed through DataLoader workers with timm's per-sample transforms; see module docstring.

    ``info`` is the dataset's ``_info.json`` and ``shards`` its shards with their records, when the caller has
    them already; local shards are read once here (``check_shards``) so that a bad one is named before the
    first step.
    """

    def __init__(self, cfg: Config, device: torch.device, rank: int, world_size: int,
                 info: DatasetInfo | None = None, shards: ShardSet | None = None):
        self.cfg, self.device, self.rank, self.world_size = cfg, device, rank, world_size
        info = info or read_info(cfg.data.path)
        shards = shards or plan_shards(cfg.data.path, info, cfg.data.verify)
        self.urls, self.size = shards.urls, shards.size
        self.head = check_shards(shards, keep=cfg.data.eval_samples if cfg.data.eval_path is None else 0)
        self.checked = frozenset(u for u in self.urls if not is_remote(u))  # check_shards read every sample
        self.num_classes = info.num_classes
        self.num_samples = info.splits["train"].num_samples if "train" in info.splits else 0
        self.micro_batch = micro_batch_size(cfg, world_size)
        self.transform = make_train_transform(cfg.aug, cfg.model.img_size)
        self.workers = readers_per_rank(cfg.data.workers, self.num_samples, world_size)
        steps = math.ceil(max(self.num_samples, 1) / cfg.train.batch_size)
        steps = steps * math.ceil(MIN_EPOCH_STEPS / steps)  # whole passes, at least MIN_EPOCH_STEPS
        self._len = steps * cfg.train.accum_steps

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Micro-batches ``start..len-1`` of ``epoch`` on the device (skipping costs decoding them)."""
        cfg = self.cfg
        stream = _ShardStream(self.urls, self.transform, self.rank, self.world_size, cfg.train.seed, epoch,
                              cfg.data.shuffle_buffer, self.num_classes, self.size, self.checked)
        loader = DataLoader(
            stream, batch_size=self.micro_batch, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed((cfg.train.seed * 7919 + epoch) * 131 + self.rank),
            persistent_workers=False, prefetch_factor=4 if self.workers else None, worker_init_fn=quiet_worker,
        )
        non_blocking = self.device.type == "cuda"
        batches = iter(loader)
        try:
            for i, (images, targets) in enumerate(batches):
                if i >= self._len:
                    break
                if i < start:
                    continue
                yield (images.to(self.device, non_blocking=non_blocking),
                       targets.to(self.device, dtype=torch.int64, non_blocking=non_blocking))
        except TrainError as e:  # from a worker, torch wraps the message in the worker's traceback
            raise RankError(last_line(str(e))) from None  # this rank's shards: the others never see it
        finally:
            end_workers(batches)

    def close(self) -> None:
        """Nothing to release: workers end with each epoch's loader."""


def last_line(message: str) -> str:
    """The one line of a ``TrainError`` that torch re-raised from a DataLoader worker with its traceback."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else message
    return last.split("TrainError: ", 1)[-1]


def make_stream_source(cfg: Config, device: torch.device, rank: int, world_size: int,
                       info: DatasetInfo | None = None, shards: ShardSet | None = None) -> StreamSource:
    """The streaming source of ``cfg.data.path`` for this rank (shards checked up front)."""
    return StreamSource(cfg, device, rank, world_size, info, shards)


def make_source(cfg: Config, device: torch.device, rank: int, world_size: int) -> Source:
    """Pick the pre-training source for ``cfg.data.source`` (``auto | stream | resident``).

    ``_info.json`` (and ``build.json``) are read once here and handed to the source, which reads every local
    shard once before the first step through ``train.shards.checked_samples``: both sources refuse the same
    damage (size, sample count, sha256 with ``data.verify``, labels out of range) with the same one line.

    Raises:
        TrainError: bad dataset, or ``resident`` forced but impossible.
    """
    mode = cfg.data.source
    info = read_info(cfg.data.path)
    shards = plan_shards(cfg.data.path, info, cfg.data.verify)
    micro_batch_size(cfg, world_size)
    if mode in ("auto", "resident"):
        from train import resident

        try:
            return resident.make_resident_source(cfg, device, rank, world_size, info=info, shards=shards)
        except DoesNotFit as e:
            if mode == "resident":
                raise
            log.info("streaming instead of the resident source: %s", e)
    return make_stream_source(cfg, device, rank, world_size, info, shards)


class _SampleList(Dataset):
    """Decoded samples held in memory (evaluation of pre-training on its own classes)."""

    def __init__(self, samples: list[tuple[np.ndarray, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.samples[i]
        return self.transform(_rgb(image)), label


def check_eval_set(cfg: Config) -> None:
    """Refuse a ``data.eval_path`` whose classes are not the training set's (top-1 on its labels means nothing).

    Only the two ``_info.json`` are read, so this runs on every rank before any shard is.

    Raises:
        TrainError: ``data.eval_path X has N classes, data.path Y has M``, or a bad ``_info.json``.
    """
    if not cfg.data.eval_path:
        return
    ours, theirs = read_info(cfg.data.path).num_classes, read_info(cfg.data.eval_path).num_classes
    if ours != theirs:
        raise TrainError(f"data.eval_path {cfg.data.eval_path} has {theirs} classes, data.path {cfg.data.path} has "
                         f"{ours}: top-1 is measured on the training classes, so evaluate on a build of the same "
                         "L (or data.eval_path='' for none)")


def make_pretrain_eval_loader(cfg: Config, head: list[dict[str, Any]] | None = None) -> DataLoader | None:
    """Un-augmented images of ``data.eval_path`` (default: the training set) for top-1 on its classes.

    Takes the first ``data.eval_samples`` samples in shard order; None when ``eval_path`` is empty.

    Args:
        cfg: the run config.
        head: the training source's ``head`` (its first raw samples), used instead of reading the shards
            again when the evaluation set is the training set.
    """
    path = cfg.data.path if cfg.data.eval_path is None else cfg.data.eval_path
    if not path:
        return None
    if cfg.data.eval_path is None and head is not None:
        samples = [_decode(s) for s in head[:cfg.data.eval_samples]]
    else:
        samples = []
        for sample in iter_samples(shard_urls(path, read_info(path))):
            samples.append(sample)
            if len(samples) >= cfg.data.eval_samples:
                break
    images = _SampleList(samples, make_eval_transform(cfg.aug, cfg.model.img_size))
    return DataLoader(images, batch_size=cfg.finetune.eval_batch_size, num_workers=0)
