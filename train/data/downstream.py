"""Fine-tuning datasets: the train and test splits of a local dataset, and the source that serves them.

``open_downstream(cfg)`` makes ``data.path`` local (``train/data/fetch.py``) and gives the train and test splits
with the recipe's transforms: torchvision's CIFAR, an ImageFolder root (every file's header checked once), or a
WebDataset folder's splits (held in memory encoded, every shard read through the pre-training checks).
``MapSource`` serves a map-style split through the source interface of ``train/data/source.py`` (seeded
per-epoch shuffle across ranks); ``downstream_identity`` is what a fine-tuning checkpoint records of its data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from train.augment import make_eval_transform, make_train_transform
from train.config import Config
from train.data.fetch import TORCHVISION_DATASETS, image_folder_root, resolve_downstream, tv_class, tv_folder
from train.data.remote import is_remote
from train.data.samples import plain_sample, shard_samples
from train.data.shards import read_info, read_split
from train.data.source import Batch, batch_fix, last_line, micro_batch_size
from train.distributed import end_workers, quiet_worker
from train.errors import TrainError

log = logging.getLogger(__name__)


def _load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with a damaged file named in one line."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError... for bad bytes
        raise TrainError(f"image {path}: cannot decode ({type(e).__name__}: {e})") from None


_CHECKED: set[tuple[str, int, int, int]] = set()
"""ImageFolders whose files were checked in this process (repro-small and sweeps fine-tune many times)."""


def _stat(path: str) -> os.stat_result:
    """``os.stat``, with a file that cannot be reached (a broken symlink, no permission) named in one line."""
    try:
        return os.stat(path)
    except OSError as e:
        raise TrainError(f"image {path}: cannot be read ({e.strerror or type(e).__name__})") from None


def _image_folder(folder: Path, transform: Callable) -> Dataset:
    """torchvision's ImageFolder of ``folder``, each file's header checked now (empty, not an image).

    Opening the headers costs about 2 s per 10,000 images on a loaded 2-core machine, once per process; a file
    damaged past its header is still named in one line when it is loaded.
    """
    import torchvision

    try:
        images = torchvision.datasets.ImageFolder(str(folder), transform=transform, loader=_load_rgb)
    except (FileNotFoundError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainError(f"dataset {folder}: {reason}") from None
    from torchvision.datasets.folder import IMG_EXTENSIONS

    # ImageFolder takes a class from a sample's folder: an image beside the class folders is silently left out
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
    if stray:
        log.warning("dataset %s: %d image(s) lie directly in it, outside any class folder, and are not used (%s%s); "
                    "an ImageFolder takes each image's class from its folder", folder, len(stray),
                    ", ".join(stray[:3]), ", ..." if len(stray) > 3 else "")
    stats = [_stat(path) for path, _ in images.samples]  # cheap next to opening them
    images.sizes = [st.st_size for st in stats]  # for a resume's record of the data (train.run.checkpoint), not stat'ed twice
    for (path, _), st in zip(images.samples, stats, strict=True):
        if st.st_size == 0:
            raise TrainError(f"image {path}: empty file (0 bytes)")
    key = (str(folder.resolve()), len(stats), sum(st.st_size for st in stats), max(st.st_mtime_ns for st in stats))
    if key in _CHECKED:
        return images
    if len(images.samples) > 10_000:
        log.info("checking the %d images of %s ...", len(images.samples), folder)
    for path, _ in images.samples:
        try:
            with Image.open(path):
                pass
        except Exception as e:  # noqa: BLE001 - as in _load_rgb
            raise TrainError(f"image {path}: not an image Pillow can read ({type(e).__name__}: {e})") from None
    _CHECKED.add(key)
    return images


class _EncodedImages(Dataset):
    """Encoded image bytes + labels held in memory (a WebDataset split), decoded per item."""

    def __init__(self, items: list[tuple[bytes, int]], transform: Callable | None = None):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        data, label = self.items[i]
        try:
            image = Image.fromarray(dataset.decode_image(data, "RGB"), "RGB")
        except DatasetError as e:
            raise TrainError(f"image {i} of a WebDataset split: {e}") from None
        return (self.transform(image) if self.transform else image), label


_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def _wds_split(path: str, info: DatasetInfo, split: str, verify: str | bool = "auto") -> _EncodedImages:
    """One split of a WebDataset folder, in memory; local shards are read through the checks pre-training uses
    (``train.data.shards.read_split``: sample counts against ``_info.json``, sizes and sha256 against a
    ``build.json`` when there is one, labels in range), so a shard cut short is refused, not trained on."""
    shards, samples = read_split(path, info, verify, split, _IMAGE_KEYS, warn_one_class=False)
    if any(is_remote(u) for u in shards.urls):  # not read before training: read here, each sample checked
        samples = (plain_sample(s, info.num_classes, image_keys=_IMAGE_KEYS) for url in shards.urls
                   for s in shard_samples(url))
    items = [(s.raw[next(e for e in _IMAGE_KEYS if e in s.raw)], s.label) for s in samples]
    return _EncodedImages(items)


def open_downstream(cfg: Config, option: str = "--data") -> tuple[Dataset, Dataset, int]:
    """The train and test splits of ``cfg.data.path`` with the recipe's transforms, and the class count.

    ``data.path`` goes through ``resolve_downstream`` first (torchvision names are downloaded into
    ``data.root`` when missing, tarballs unpacked there), so any of its forms works here.

    Raises:
        TrainError: nothing usable (one line saying what to pass), a missing split, mismatched classes, an
            empty class folder or a file that is not an image.
    """
    path = resolve_downstream(cfg.data.path, cfg.data.root, option)
    train_tf = make_train_transform(cfg.aug, cfg.model.img_size)
    test_tf = make_eval_transform(cfg.aug, cfg.model.img_size)
    root = Path(path)
    name, tv_root = (path, Path(cfg.data.root)) if path in TORCHVISION_DATASETS else (tv_folder(root), root)
    if name is not None:
        cls, num_classes = tv_class(name), TORCHVISION_DATASETS[name][1]
        try:
            train = cls(str(tv_root), train=True, transform=train_tf, download=False)
            test = cls(str(tv_root), train=False, transform=test_tf, download=False)
        except (OSError, RuntimeError) as e:
            raise TrainError(f"dataset {path}: cannot load {name} from {tv_root} ({e})") from None
        return train, test, num_classes
    if (root / dataset.INFO_JSON).is_file():
        info = read_info(path)
        splits = info.splits
        test_name = next((s for s in ("test", "validation", "val") if s in splits), None)
        if "train" not in splits or test_name is None:
            raise TrainError(f"dataset {path}: {dataset.INFO_JSON} needs a train and a test/validation split, "
                             f"has {list(splits)}")
        train = _wds_split(path, info, "train", cfg.data.verify)
        test = _wds_split(path, info, test_name, cfg.data.verify)
        train.transform, test.transform = train_tf, test_tf
        _warn_one_class(path, info.num_classes)
        return train, test, info.num_classes
    found = image_folder_root(root)
    if found is None:
        raise TrainError(f"dataset {path}: an ImageFolder root needs train/ and test/ (or val/) folders")
    test_dir = next(found / s for s in ("test", "val", "validation") if (found / s).is_dir())
    train = _image_folder(found / "train", train_tf)
    test = _image_folder(test_dir, test_tf)
    if train.classes != test.classes:
        raise TrainError(f"dataset {path}: train/ and {test_dir.name}/ have different class folders")
    _warn_one_class(path, len(train.classes))
    return train, test, len(train.classes)


def _warn_one_class(path: str, num_classes: int) -> None:
    """A one-class dataset trains (timm's ImageFolder takes it) but its top-1 is 100 % by construction: say so."""
    if num_classes == 1:
        log.warning("dataset %s has a single class: every image has the same label, so fine-tuning on it learns "
                    "nothing and test top-1 is 100%% by construction", path)


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
                             f"{cfg.train.batch_size} (train.batch_size over {world_size} rank(s) x {accum} "
                             f"accumulation step(s)): {batch_fix(len(dataset), world_size, accum)}")

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
                            persistent_workers=False, prefetch_factor=4 if workers else None,
                            worker_init_fn=quiet_worker)
        non_blocking = self.device.type == "cuda"
        batches = iter(loader)
        try:
            for images, targets in batches:
                yield (images.to(self.device, non_blocking=non_blocking),
                       targets.to(self.device, dtype=torch.int64, non_blocking=non_blocking))
        except TrainError as e:  # from a worker: torch wraps the message in the worker's traceback
            raise TrainError(last_line(str(e))) from None
        finally:
            end_workers(batches)

    def close(self) -> None:
        """Nothing to release."""


def _file_rows(split: Any) -> list[Any] | None:
    """One row per image of a downstream split: (name relative to its folder, bytes, label); None when unknown.

    An ImageFolder (``samples``) is known by its files (``stat`` only, nothing is read), a WebDataset split held
    in memory (``items``) by its images' sizes and labels; torchvision's CIFAR checks its own md5.
    """
    samples = getattr(split, "samples", None)
    root = getattr(split, "root", None)
    if isinstance(samples, list) and root is not None:
        sizes = getattr(split, "sizes", None)  # what open_downstream stat'ed when it opened the folder
        if not isinstance(sizes, list) or len(sizes) != len(samples):
            sizes = [os.stat(path).st_size for path, _ in samples]
        return [(os.path.relpath(path, root), size, label) for (path, label), size in zip(samples, sizes, strict=True)]
    items = getattr(split, "items", None)
    if isinstance(items, list):
        return [(len(data), label) for data, label in items]
    return None


def downstream_identity(train: Any, test: Any, num_classes: int) -> dict[str, Any]:
    """What a fine-tuning checkpoint records about its data, so that ``--resume`` knows it is the same.

    Args:
        train: the train split (``train.data.downstream.open_downstream``'s).
        test: the test split.
        num_classes: the class count.
    """
    record: dict[str, Any] = {"num_classes": num_classes, "classes": getattr(train, "classes", None),
                              "num_train": len(train), "num_test": len(test)}
    rows = [_file_rows(train), _file_rows(test)]
    if all(r is not None for r in rows):
        record["files_sha256"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return record
