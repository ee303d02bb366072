"""Where training batches come from: sources for pre-training, datasets for fine-tuning.

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

Mixup/cutmix and label smoothing are *not* the source's job: the loop applies timm's ``Mixup`` on the
device to every source's batches (``train.augment.make_mixup``), so both paths share it.

Choosing a source: ``cfg.data.source`` is ``auto | stream | resident``. ``make_source`` imports
``train.resident`` if it exists and calls::

    train.resident.make_resident_source(cfg, device, rank, world_size) -> Source

which raises ``train.errors.DoesNotFit`` when the data exceed its memory budget (``auto`` then logs the
message and streams; ``resident`` lets it propagate) and ``train.errors.TrainError`` for other bad input.
``auto`` streams when ``train.resident`` does not exist yet. The resident path may read its own options from
``cfg.data.resident`` (a free-form dict in the YAML, e.g. ``{memory_budget_gb: 20}``). Useful helpers here
for it: ``read_info`` (validated ``_info.json``), ``shard_urls``, ``micro_batch_size``, ``iter_samples``
(decoded ``(uint8 grey HxW array, label)`` pairs of a list of shards).
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import braceexpand
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import tarfile_samples

from train.augment import make_eval_transform, make_train_transform
from train.config import Config
from train.errors import DoesNotFit, TrainError

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
# The dataset on disk (fracgen/ARCHITECTURE.md): shards + _info.json in timm's schema


def _is_remote(path: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", path)) and not re.match(r"^[A-Za-z]:\\", path)


def _info_location(path: str) -> str:
    """``_info.json`` of a dataset folder, or the one beside a brace pattern / shard URL."""
    if not _is_remote(path) and Path(path).is_dir():
        return str(Path(path) / "_info.json")
    head = path.rsplit("/", 1)[0] if "/" in path else "."
    return f"{head}/_info.json"


def read_info(path: str) -> dict[str, Any]:
    """Read and check a fracgen dataset's ``_info.json``.

    Args:
        path: a dataset folder, a brace pattern of shards (``ds/train-{000000..000009}.tar``) or a URL
            webdataset can open; ``_info.json`` is looked up in the folder of the shards.

    Returns:
        The parsed ``_info.json`` (``num_classes`` a positive int).

    Raises:
        TrainError: missing or malformed ``_info.json``.
    """
    if not path:
        raise TrainError("no dataset given: pass --data DIR (a fracgen build folder)")
    location = _info_location(path)
    if not _is_remote(path):
        if ("{" not in path and not Path(path).exists()) or not Path(location).parent.exists():
            raise TrainError(f"dataset {path}: no such folder")
        if not Path(location).is_file():
            raise TrainError(f"dataset {path}: no _info.json in {Path(location).parent} "
                             "(not a fracgen dataset, or an incomplete build)")
    try:
        with gopen(location, "rb") as f:
            info = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise TrainError(f"dataset {path}: cannot read {location} ({e})") from None
    num_classes = info.get("num_classes") if isinstance(info, dict) else None
    if not isinstance(num_classes, int) or num_classes < 1:
        raise TrainError(f"dataset {path}: {location} has no positive integer num_classes")
    return info


def shard_urls(path: str, info: dict[str, Any], split: str = "train") -> list[str]:
    """The shard files or URLs of ``split``: from ``_info.json`` for a folder, else the expanded pattern."""
    if not _is_remote(path) and Path(path).is_dir():
        names = (info.get("splits", {}).get(split) or {}).get("filenames")
        if not names:
            names = sorted(p.name for p in Path(path).glob(f"{split}-*.tar"))
        urls = [str(Path(path) / n) for n in names]
    else:
        urls = list(braceexpand.braceexpand(path))
    if not urls:
        raise TrainError(f"dataset {path}: no {split} shards")
    return urls


def check_shards(urls: list[str]) -> None:
    """Read the tar headers of local shards so that a missing or corrupt one is named before training.

    Remote shards are not checked here; a read error while streaming names them too.

    Raises:
        TrainError: ``shard <path>: ...``.
    """
    for url in urls:
        if _is_remote(url):
            continue
        if not Path(url).is_file():
            raise TrainError(f"shard {url}: missing")
        try:
            with tarfile.open(url) as tar:
                members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise TrainError(f"shard {url}: corrupt tar ({e})") from None
        if not any(m.name.endswith(".png") for m in members):
            raise TrainError(f"shard {url}: no .png samples")


def _decode(sample: dict[str, Any]) -> tuple[Image.Image, int]:
    """A shard sample -> (PIL image, label); a bad sample is an error naming shard and key."""
    where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    if "png" not in sample or "cls" not in sample:
        raise TrainError(f"{where}: needs png and cls entries, has {sorted(k for k in sample if k[0] != '_')}")
    try:
        image = Image.open(io.BytesIO(sample["png"]))
        image.load()
        label = int(sample["cls"])
    except Exception as e:  # PIL raises many types for bad bytes
        raise TrainError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None
    return image, label


def _raise_named(exn: Exception) -> bool:
    """webdataset handler: re-raise read errors as one line naming the shard (webdataset appends the url)."""
    url = next((a for a in exn.args if isinstance(a, str) and (".tar" in a or "/" in a)), "?")
    raise TrainError(f"shard {url}: cannot read ({type(exn).__name__}: {exn.args[0] if exn.args else ''})")


def iter_samples(urls: list[str]) -> Iterator[tuple[np.ndarray, int]]:
    """Every sample of ``urls`` in order, decoded: (uint8 grey (H, W) array, label).

    For the resident source and for evaluation; shards are read once, sequentially.
    """
    for sample in tarfile_samples([{"url": u} for u in urls], handler=_raise_named):
        image, label = _decode(sample)
        yield np.asarray(image.convert("L"), dtype=np.uint8), label


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
        self.torch = torch.Generator().manual_seed(seed).get_state()

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


class _ShardStream(IterableDataset):
    """An endless, seeded stream of (transformed image, label) for one rank.

    Each of the ``world_size * workers`` readers takes whole shards when they divide evenly among them,
    otherwise every reader scans all shards and decodes every ``n``-th sample (fracgen sets are small), so
    every sample is seen equally often. Passes repeat with a new shard order and shuffle buffer.
    """

    def __init__(self, urls: list[str], transform: Callable, rank: int, world_size: int, seed: int,
                 epoch: int, shuffle_buffer: int):
        self.urls, self.transform = urls, transform
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
        buffer: list[tuple[Image.Image, int]] = []
        for pass_ in range(10**9):
            order = list(self.urls)
            random.Random(base + pass_).shuffle(order)  # same on every reader so whole shards partition
            mine = order[reader::readers] if by_shard else order
            for i, sample in enumerate(tarfile_samples([{"url": u} for u in mine], handler=_raise_named)):
                if not by_shard and i % readers != reader:
                    continue
                image, label = _decode(sample)
                buffer.append((image, label))
                if len(buffer) >= self.shuffle_buffer:
                    image, label = buffer.pop(rng.randrange(len(buffer)))
                    yield transform(image.convert("RGB")), label
            rng.shuffle(buffer)
            while len(buffer) > self.shuffle_buffer // 2:  # keep some for mixing across passes
                image, label = buffer.pop()
                yield transform(image.convert("RGB")), label


class StreamSource:
    """Shards streamed through DataLoader workers with timm's per-sample transforms; see module docstring."""

    def __init__(self, cfg: Config, device: torch.device, rank: int, world_size: int):
        self.cfg, self.device, self.rank, self.world_size = cfg, device, rank, world_size
        info = read_info(cfg.data.path)
        self.urls = shard_urls(cfg.data.path, info)
        check_shards(self.urls)
        self.num_classes = int(info["num_classes"])
        self.num_samples = int((info.get("splits", {}).get("train") or {}).get("num_samples") or 0)
        self.micro_batch = micro_batch_size(cfg, world_size)
        self.transform = make_train_transform(cfg.aug, cfg.model.img_size)
        steps = math.ceil(max(self.num_samples, 1) / cfg.train.batch_size)
        steps = steps * math.ceil(MIN_EPOCH_STEPS / steps)  # whole passes, at least MIN_EPOCH_STEPS
        self._len = steps * cfg.train.accum_steps

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Micro-batches ``start..len-1`` of ``epoch`` on the device (skipping costs decoding them)."""
        cfg = self.cfg
        stream = _ShardStream(self.urls, self.transform, self.rank, self.world_size, cfg.train.seed, epoch,
                              cfg.data.shuffle_buffer)
        loader = DataLoader(
            stream, batch_size=self.micro_batch, num_workers=cfg.data.workers,
            pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed((cfg.train.seed * 7919 + epoch) * 131 + self.rank),
            persistent_workers=False, prefetch_factor=4 if cfg.data.workers else None,
        )
        non_blocking = self.device.type == "cuda"
        try:
            for i, (images, targets) in enumerate(loader):
                if i >= self._len:
                    break
                if i < start:
                    continue
                yield (images.to(self.device, non_blocking=non_blocking),
                       targets.to(self.device, dtype=torch.int64, non_blocking=non_blocking))
        except TrainError as e:  # from a worker: torch wraps the message in the worker's traceback
            raise TrainError(_last_line(str(e))) from None

    def close(self) -> None:
        """Nothing to release: workers end with each epoch's loader."""


def _last_line(message: str) -> str:
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else message
    return last.split("TrainError: ", 1)[-1]


def make_stream_source(cfg: Config, device: torch.device, rank: int, world_size: int) -> StreamSource:
    """The streaming source of ``cfg.data.path`` for this rank (shards checked up front)."""
    return StreamSource(cfg, device, rank, world_size)


def make_source(cfg: Config, device: torch.device, rank: int, world_size: int) -> Source:
    """Pick the pre-training source for ``cfg.data.source`` (``auto | stream | resident``).

    Raises:
        TrainError: bad dataset, or ``resident`` forced but impossible.
    """
    mode = cfg.data.source
    # the same one-line errors for a bad dataset or shard, whichever source reads it
    check_shards(shard_urls(cfg.data.path, read_info(cfg.data.path)))
    micro_batch_size(cfg, world_size)
    if mode in ("auto", "resident"):
        try:
            from train import resident  # issue 5: the GPU-resident path, when it exists
        except ImportError:
            if mode == "resident":
                raise TrainError("data.source=resident: train.resident is not available in this version") from None
            resident = None
        if resident is not None:
            try:
                return resident.make_resident_source(cfg, device, rank, world_size)
            except DoesNotFit as e:
                if mode == "resident":
                    raise
                log.info("streaming instead of the resident source: %s", e)
    return make_stream_source(cfg, device, rank, world_size)


class _SampleList(Dataset):
    """Decoded samples held in memory (evaluation of pre-training on its own classes)."""

    def __init__(self, samples: list[tuple[np.ndarray, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.samples[i]
        return self.transform(Image.fromarray(image).convert("RGB")), label


def make_pretrain_eval_loader(cfg: Config) -> DataLoader | None:
    """Un-augmented images of ``data.eval_path`` (default: the training set) for top-1 on its classes.

    Takes the first ``data.eval_samples`` samples in shard order; None when ``eval_path`` is empty.
    """
    path = cfg.data.path if cfg.data.eval_path is None else cfg.data.eval_path
    if not path:
        return None
    urls = shard_urls(path, read_info(path))
    samples = []
    for sample in iter_samples(urls):
        samples.append(sample)
        if len(samples) >= cfg.data.eval_samples:
            break
    dataset = _SampleList(samples, make_eval_transform(cfg.aug, cfg.model.img_size))
    return DataLoader(dataset, batch_size=cfg.finetune.eval_batch_size, num_workers=0)


# ---------------------------------------------------------------------------------------------------------
# Downstream datasets (fine-tuning and probing)

TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", 10), "cifar100": ("CIFAR100", 100)}


class _EncodedImages(Dataset):
    """Encoded image bytes + labels held in memory (a WebDataset split), decoded per item."""

    def __init__(self, items: list[tuple[bytes, int]], transform: Callable | None = None):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        data, label = self.items[i]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return (self.transform(image) if self.transform else image), label


def _wds_split(path: str, info: dict[str, Any], split: str) -> _EncodedImages:
    urls = shard_urls(path, info, split)
    check_shards(urls)
    items = []
    for sample in tarfile_samples([{"url": u} for u in urls], handler=_raise_named):
        ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in sample), None)
        if ext is None or "cls" not in sample:
            raise TrainError(f"shard {sample.get('__url__')}: sample {sample.get('__key__')} has no image or cls")
        items.append((sample[ext], int(sample["cls"])))
    return _EncodedImages(items)


def open_downstream(cfg: Config) -> tuple[Dataset, Dataset, int]:
    """The train and test splits of ``cfg.data.path`` with the recipe's transforms, and the class count.

    ``data.path`` is an ImageFolder root (``train/`` and ``test/`` or ``val/`` inside), a WebDataset folder
    with ``_info.json`` (splits ``train`` and ``test``/``validation``, held in memory encoded), or a
    torchvision name (``cifar10``, ``cifar100``; downloaded to ``data.root`` on machines with internet).

    Raises:
        TrainError: unknown name, missing split, mismatched classes.
    """
    import torchvision

    path = cfg.data.path
    train_tf = make_train_transform(cfg.aug, cfg.model.img_size)
    test_tf = make_eval_transform(cfg.aug, cfg.model.img_size)
    if path.lower() in TORCHVISION_DATASETS:
        cls_name, num_classes = TORCHVISION_DATASETS[path.lower()]
        cls = getattr(torchvision.datasets, cls_name)
        try:
            train = cls(cfg.data.root, train=True, transform=train_tf, download=True)
            test = cls(cfg.data.root, train=False, transform=test_tf, download=True)
        except (OSError, RuntimeError) as e:
            raise TrainError(f"dataset {path}: cannot load or download into {cfg.data.root} ({e})") from None
        return train, test, num_classes
    root = Path(path)
    if not root.is_dir():
        raise TrainError(f"unknown dataset {path!r}: not a folder, and not one of {', '.join(TORCHVISION_DATASETS)}")
    if (root / "_info.json").is_file():
        info = read_info(path)
        splits = info.get("splits", {})
        test_name = next((s for s in ("test", "validation", "val") if s in splits), None)
        if "train" not in splits or test_name is None:
            raise TrainError(f"dataset {path}: _info.json needs a train and a test/validation split, has {list(splits)}")
        train, test = _wds_split(path, info, "train"), _wds_split(path, info, test_name)
        train.transform, test.transform = train_tf, test_tf
        return train, test, int(info["num_classes"])
    test_dir = next((root / s for s in ("test", "val", "validation") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise TrainError(f"dataset {path}: an ImageFolder root needs train/ and test/ (or val/) folders")
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    test = torchvision.datasets.ImageFolder(str(test_dir), transform=test_tf)
    if train.classes != test.classes:
        raise TrainError(f"dataset {path}: train/ and {test_dir.name}/ have different class folders")
    return train, test, len(train.classes)


class MapSource:
    """A map-style dataset as a source: seeded per-epoch shuffle split across ranks, equal counts per rank.

    Resuming mid-epoch skips by index (no decoding). With DataLoader workers, worker seeds depend on where
    the epoch starts, so a mid-epoch resume is exact only for ``data.workers: 0``.
    """

    def __init__(self, dataset: Dataset, num_classes: int, cfg: Config, device: torch.device, rank: int,
                 world_size: int):
        self.dataset, self.num_classes, self.cfg = dataset, num_classes, cfg
        self.device, self.rank, self.world_size = device, rank, world_size
        self.micro_batch = micro_batch_size(cfg, world_size)
        per_rank = len(dataset) // world_size
        accum = cfg.train.accum_steps
        self._len = (per_rank // self.micro_batch) // accum * accum
        if self._len == 0:
            raise TrainError(f"the train split has {len(dataset)} images, fewer than one batch of "
                             f"{cfg.train.batch_size}: lower train.batch_size")

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Micro-batches ``start..len-1`` of ``epoch`` on the device."""
        sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                     seed=self.cfg.train.seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices = list(sampler)[start * self.micro_batch: self._len * self.micro_batch]
        workers = self.cfg.data.workers
        loader = DataLoader(Subset(self.dataset, indices), batch_size=self.micro_batch, shuffle=False,
                            num_workers=workers, drop_last=True, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed((self.cfg.train.seed * 7919 + epoch) * 131
                                                                    + self.rank * 7 + start),
                            persistent_workers=False, prefetch_factor=4 if workers else None)
        non_blocking = self.device.type == "cuda"
        for images, targets in loader:
            yield (images.to(self.device, non_blocking=non_blocking),
                   targets.to(self.device, dtype=torch.int64, non_blocking=non_blocking))

    def close(self) -> None:
        """Nothing to release."""
