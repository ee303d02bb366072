"""Downstream datasets for fine-tuning and probing: ImageFolder, WebDataset splits, torchvision names.

``open_downstream(cfg)`` gives the train and test splits with the recipe's transforms; ``MapSource`` serves a
map-style split through the source interface of ``train/data.py`` (seeded per-epoch shuffle across ranks).
"""

from __future__ import annotations

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
from train.data import Batch, micro_batch_size, read_info, shard_samples, shard_urls
from train.errors import TrainError

TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", 10), "cifar100": ("CIFAR100", 100)}


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


def _wds_split(path: str, info: DatasetInfo, split: str) -> _EncodedImages:
    items = []
    for sample in (s for url in shard_urls(path, info, split) for s in shard_samples(url)):
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
    if (root / dataset.INFO_JSON).is_file():
        info = read_info(path)
        splits = info.splits
        test_name = next((s for s in ("test", "validation", "val") if s in splits), None)
        if "train" not in splits or test_name is None:
            raise TrainError(f"dataset {path}: {dataset.INFO_JSON} needs a train and a test/validation split, "
                             f"has {list(splits)}")
        train, test = _wds_split(path, info, "train"), _wds_split(path, info, test_name)
        train.transform, test.transform = train_tf, test_tf
        return train, test, info.num_classes
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
