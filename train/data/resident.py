"""The GPU-resident source: the dataset lives on the device as uint8, every batch is drawn and augmented there.

A 1p-frac dataset is small (1,000 grey 512 px images are 262 MB as bytes), so instead of decoding PNGs and
augmenting on CPU workers every step, the shards are read once, kept on the device as one channel of uint8,
and each micro-batch is gathered and augmented with a handful of batched tensor ops (``train/data/device_augment.py``,
timm's recipe of ``cfg.aug``): no per-sample Python loop, no host-device copy, no CPU-GPU sync point on the hot
path.

Mixup/cutmix and label smoothing stay in the loop (timm ``Mixup`` on the device), shared with the streaming
source. The source interface is the one documented at the top of ``train/data/source.py``.

Options (``cfg.data.resident``, all optional):
    memory_budget_gb: device memory the images may take (default: half of the free device memory on CUDA,
        a quarter of the available RAM on CPU).
    split_ranks: under DDP, rank r holds only every world_size-th sample instead of the whole dataset.
    antialias: keep a 2x box-filtered copy for downscaling crops (default true; +25 % memory).
    load_workers: threads decoding PNGs at start-up (default min(16, cpu count)).
    prefetch: on CUDA, draw the next batch on a side stream while the model trains (default true).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from train.data.device_augment import DeviceAugment
from train.data.samples import Sample
from train.data.shards import ShardSet, read_info, read_split
from train.data.source import warn_large_batch
from train.distributed import free_memory
from train.errors import DoesNotFit, TrainError

log = logging.getLogger(__name__)

_RESIDENT_KEYS = ("memory_budget_gb", "split_ranks", "antialias", "load_workers", "prefetch")


# --------------------------------------------------------------------------------------------- loading


def _seed(*parts: int) -> int:
    """A 64-bit seed from integer parts (seed, epoch, rank, step), independent of any global state."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])


def _read_info(root: Path) -> DatasetInfo:
    """``_info.json`` of a fracgen dataset folder (``train.data.shards.read_info``), with a train split.

    Raises:
        TrainError: missing, malformed, or no train split.
    """
    info = read_info(str(root))
    try:
        info.train  # noqa: B018 - raises DatasetError when there is none
    except DatasetError as e:
        raise TrainError(f"dataset {root}: {e}") from None
    return info


def _decode_members(root: Path, members: list[Sample], rank: int, world_size: int, split_ranks: bool,
                    workers: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, H, W) and labels (N,) of the checked samples (this rank's share of them, in key order); a
    fracgen build's were decoded by its check, any other dataset's are decoded here, ``workers`` at a time."""
    members = sorted(members, key=lambda m: m.key)
    if split_ranks and world_size > 1:
        members = members[rank::world_size]
    if not members:
        raise TrainError(f"{root}: no samples for rank {rank} of {world_size}")
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(Sample.grey, members, chunksize=64))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise TrainError(f"{root}: images of different sizes {sorted(shapes)[:3]}; the resident source needs one size")
    labels = np.array([m.label for m in members], dtype=np.int64)
    return np.stack(arrays), labels


def load_images(root: str | Path, *, rank: int = 0, world_size: int = 1, split_ranks: bool = False,
                workers: int | None = None, info: DatasetInfo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and decode every sample of a dataset folder (or this rank's share of them); each shard read once.

    Args:
        root: a fracgen dataset folder.
        rank, world_size: this process's place in DDP.
        split_ranks: keep only the samples whose position (in key order) is rank modulo world_size.
        workers: decoding threads (PIL releases the GIL while decoding).
        info: its ``_info.json`` when the caller has read it already.

    Returns:
        images (N, H, W) uint8 and labels (N,) int64, in key order.

    Raises:
        TrainError: a damaged shard (``train.data.shards``), or images of different sizes.
    """
    root = Path(root)
    info = info or _read_info(root)
    members = list(read_split(str(root), info, threads=workers)[1])
    return _decode_members(root, members, rank, world_size, split_ranks, workers)


def default_budget(device: torch.device) -> int:
    """Bytes the images may take: half of the free memory of a CUDA device, a quarter of available RAM else."""
    device = torch.device(device)
    free = free_memory(device)
    if free is None:  # the system cannot tell: a quarter of the physical memory
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return free // 2 if device.type == "cuda" else free // 4


def dataset_bytes(num_images: int, height: int, width: int, antialias: bool) -> int:
    """Device bytes of ``num_images`` resident images: one uint8 channel, plus the 2x mip level if antialiased."""
    return num_images * (height * width + ((height // 2) * (width // 2) if antialias else 0))


def estimate_batch_bytes(batch: int, height: int, width: int, size: int, antialias: bool = True) -> int:
    """Rough peak transient bytes of one augmented micro-batch (gathered sources, grids, LUT indices, output)."""
    src = height * width * (1 + 4) * (1.25 if antialias else 1.0)  # gathered uint8 + its float copy
    per_pixel = 2 * 2 * 4 + 6 * 4 + 8 + 2 * 3 * 4  # two grids, float transients, int64 indices, out + noise
    return int(batch * (src + per_pixel * size * size))


# --------------------------------------------------------------------------------------------- source


class ResidentSource:
    """Batches drawn and augmented on the device from images held there (``train/data/source.py``'s interface).

    Epochs follow the streaming source's bookkeeping: ``ceil(num_samples / batch_size)`` optimizer steps of
    ``accum_steps`` micro-batches each. An epoch's order is one random permutation of the dataset (shared by
    all ranks when every rank holds everything, rank r taking micro-batch slots r, r + world_size, ...; per
    rank otherwise), wrapping around at the end; every micro-batch's augmentation draws come from a generator
    seeded by ``(seed, epoch, rank, index)``, so ``batches(epoch, start)`` resumes exactly.

    Args:
        images: (N, H, W) uint8 grey images (numpy or tensor), moved to ``augment.device``.
        labels: (N,) int64 labels.
        num_classes: classes of the whole dataset.
        augment: the augmentation, on the device where the images live and batches are made.
        antialias: keep a 2x box-filtered mip level for downscaling crops (+25 % memory).
        batch_size: global batch (all ranks, all accumulation micro-steps).
        accum_steps: gradient-accumulation micro-steps per optimizer step.
        seed: base seed.
        rank, world_size: DDP place.
        split_ranks: ``images`` are this rank's share only (sampling stays within it).
        num_samples: samples of the whole dataset (defines the epoch length); default ``len(images)``.
        prefetch: on CUDA, draw the next batch on a side stream (see ``batches``).
    """

    def __init__(self, images: np.ndarray | Tensor, labels: np.ndarray | Tensor, num_classes: int,
                 augment: DeviceAugment, *, antialias: bool = True, batch_size: int, accum_steps: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, split_ranks: bool = False,
                 num_samples: int | None = None, prefetch: bool = True) -> None:
        if batch_size % (world_size * accum_steps):
            raise TrainError(f"train.batch_size {batch_size} does not divide into {world_size} ranks x "
                             f"{accum_steps} accumulation steps")
        self.device = augment.device
        self.num_classes = int(num_classes)
        self.micro_batch = batch_size // (world_size * accum_steps)
        self.rank, self.world_size, self.seed, self.split_ranks = rank, world_size, seed, split_ranks
        images = torch.as_tensor(images)
        self.images = images.to(self.device).unsqueeze(1)  # (N, 1, H, W) uint8
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.mip = None
        if antialias:
            # 2x box filter, in chunks so the float transient stays small
            self.mip = torch.cat([F.avg_pool2d(c.float(), 2).round_().to(torch.uint8)
                                  for c in self.images.split(256)])
        self.augment = augment
        total = num_samples if num_samples is not None else len(self.labels)
        self._len = math.ceil(total / batch_size) * accum_steps
        self._gen = torch.Generator(device=self.device)
        self._stream = torch.cuda.Stream(self.device) if prefetch and self.device.type == "cuda" else None
        self._perm: tuple[int, Tensor] | None = None
        self.head: list[Sample] | None = None  # set by make_resident_source (train/data/source.py)

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Device bytes held by the images (and their mip level)."""
        return self.images.nbytes + (self.mip.nbytes if self.mip is not None else 0) + self.labels.nbytes

    def _epoch_perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            parts = (self.seed, epoch, self.rank) if self.split_ranks else (self.seed, epoch)
            self._gen.manual_seed(_seed(*parts))
            # argsort of uniforms: a permutation made on the device by a sort, with no host round trip
            keys = torch.rand(len(self.labels), generator=self._gen, device=self.device)
            self._perm = (epoch, torch.argsort(keys))
        return self._perm[1]

    def indices(self, epoch: int, index: int) -> Tensor:
        """Dataset rows of micro-batch ``index`` of ``epoch`` on this rank: (micro_batch,) int64 on the device."""
        perm = self._epoch_perm(epoch)
        slot = index if self.split_ranks else index * self.world_size + self.rank
        pos = slot * self.micro_batch + torch.arange(self.micro_batch, device=self.device)
        return perm[pos % len(perm)]

    def draw(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Micro-batch ``index`` of ``epoch``: images (B, 3, S, S) float32 normalised, targets (B,) int64."""
        rows = self.indices(epoch, index)
        self._gen.manual_seed(_seed(self.seed, epoch, self.rank, index, 1))  # no sync: a host-side seed
        mip = self.mip.index_select(0, rows) if self.mip is not None else None
        images = self.augment(self.images.index_select(0, rows), self._gen, mip)
        return images, self.labels.index_select(0, rows)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield micro-batches ``start .. len-1`` of ``epoch`` (see the class docstring).

        On CUDA with ``prefetch``, batch k + 1 is drawn on a side stream while the caller's stream trains on
        batch k, so the augmentation kernels can overlap the model's; the batches are the same either way.
        """
        if self._stream is None:
            for index in range(start, self._len):
                yield self.draw(epoch, index)
            return
        main, side = torch.cuda.current_stream(self.device), self._stream
        side.wait_stream(main)  # the images were uploaded on the main stream

        def produce(index: int) -> tuple[Tensor, Tensor] | None:
            if index >= self._len:
                return None
            with torch.cuda.stream(side):
                return self.draw(epoch, index)

        ahead = produce(start)
        for index in range(start, self._len):
            batch = ahead
            main.wait_stream(side)  # no host wait: the main stream waits on the GPU for the batch
            for t in batch:
                t.record_stream(main)  # the allocator must not reuse it before main is done with it
            ahead = produce(index + 1)
            yield batch

    def close(self) -> None:
        """Drop the device copies."""
        self.images = self.mip = self.labels = None
        self._perm = self.head = None


def make_resident_source(cfg: Any, device: torch.device, rank: int = 0, world_size: int = 1,
                         info: DatasetInfo | None = None, shards: ShardSet | None = None,
                         samples: Iterator[Sample] | None = None) -> ResidentSource:
    """The resident source of a run config (``train.config.Config``), as ``train.data.pretraining.make_source`` asks.

    The dataset's one checked read (``samples``, from ``train.data.shards.read_split``; made here when the caller
    has none) is consumed here: its first sample tells the image size, so the memory budget is checked before the
    rest is read.

    Raises:
        DoesNotFit: the images exceed the memory budget, the device ran out of memory while loading them, or
            ``cfg.data.path`` is not a local dataset folder (the streaming source handles patterns and URLs); its
            ``read`` holds the samples taken so far, for the stream to go on with.
        TrainError: bad options, a bad dataset, or no memory left for one augmented micro-batch (the message
            says which micro-batch would fit).
    """
    device = torch.device(device)
    opts = _options(cfg)
    root = Path(cfg.data.path)
    if not root.is_dir():
        raise DoesNotFit(f"resident source: data.path {cfg.data.path!r} is not a local dataset folder")
    info = info or _read_info(root)
    if not info.train.filenames:
        raise TrainError(f"{root}: {dataset.INFO_JSON} lists no shards")
    if samples is None:
        _, samples = read_split(str(root), info, getattr(cfg.data, "verify", "auto"), threads=opts["load_workers"])
    first = next(samples)  # read_shard refuses an empty shard, so there is one
    height, width = first.grey().shape
    try:
        need = check_budget(cfg, device, world_size, info.train.num_samples, height, width)
    except DoesNotFit as e:
        raise DoesNotFit(str(e), read=[first]) from None
    members = [first, *samples]
    # the evaluation set (data.eval_path unset) is the first samples in shard order: keep them for it
    head = members[:cfg.data.eval_samples] if getattr(cfg.data, "eval_path", "") is None else []
    images, labels = _decode_members(root, members, rank, world_size, opts["split_ranks"], opts["load_workers"])
    try:
        source = resident_source(cfg, device, rank, world_size, images, labels, info.num_classes,
                                 info.train.num_samples, need)
    except DoesNotFit as e:
        raise DoesNotFit(str(e), read=members) from None
    source.head = head
    return source


def check_budget(cfg: Any, device: torch.device, world_size: int, num_samples: int, height: int, width: int) -> int:
    """The device bytes ``num_samples`` images of ``height`` x ``width`` take on this rank, checked against the
    resident source's memory budget (``data.resident.memory_budget_gb``) before any is loaded.

    Raises:
        DoesNotFit: over the budget.
    """
    opts = _options(cfg)
    split, device = opts["split_ranks"], torch.device(device)
    n_local = math.ceil(num_samples / world_size) if split else num_samples
    need = dataset_bytes(n_local, height, width, opts["antialias"])
    budget = int(opts["memory_budget_gb"] * 2**30) if opts["memory_budget_gb"] else default_budget(device)
    if need > budget:
        hint = "" if split or world_size == 1 else "; data.resident.split_ranks: true holds 1/world_size per rank"
        raise DoesNotFit(
            f"resident source: {n_local} images of {height}x{width} need {need / 2**30:.2f} GiB "
            f"on {device}, over the budget of {budget / 2**30:.2f} GiB (data.resident.memory_budget_gb{hint})")
    return need


def resident_source(cfg: Any, device: torch.device, rank: int, world_size: int, images: np.ndarray,
                    labels: np.ndarray, num_classes: int, num_samples: int, need: int) -> ResidentSource:
    """The resident source of images already in memory ((N, H, W) uint8 grey, this rank's share with
    ``data.resident.split_ranks``; ``need``: their bytes, as ``check_budget`` counted them), one micro-batch drawn.

    Raises:
        DoesNotFit: the device ran out of memory while loading them.
        TrainError: no memory left for one augmented micro-batch (the message says which micro-batch would fit).
    """
    opts, device = _options(cfg), torch.device(device)
    augment = DeviceAugment(cfg.aug, cfg.model.img_size, device)
    try:
        source = ResidentSource(images, labels, num_classes, augment,
                                antialias=opts["antialias"], batch_size=cfg.train.batch_size,
                                accum_steps=cfg.train.accum_steps, seed=cfg.train.seed, rank=rank,
                                world_size=world_size, split_ranks=opts["split_ranks"], num_samples=num_samples,
                                prefetch=opts["prefetch"])
    except torch.OutOfMemoryError:
        raise DoesNotFit(f"resident source: out of device memory loading {need / 2**30:.2f} GiB of images on "
                         f"{device}; lower data.resident.memory_budget_gb") from None
    height, width = images.shape[1:3]
    _first_draw(source, height, width, need)
    warn_large_batch(cfg, num_samples, world_size)
    log.info("resident source: %d images %dx%d on %s (%.1f MiB)", len(labels), height, width,
             device, source.nbytes / 2**20)
    return source


def _options(cfg: Any) -> dict[str, Any]:
    """``cfg.data.resident`` with its defaults (the types are ``train.bounds``'s to check).

    Raises:
        TrainError: an option this source does not know.
    """
    opts = dict(cfg.data.resident or {})
    unknown = sorted(set(opts) - set(_RESIDENT_KEYS))
    if unknown:
        raise TrainError(f"data.resident: unknown option(s) {unknown} (known: {', '.join(_RESIDENT_KEYS)})")
    return {"split_ranks": bool(opts.get("split_ranks", False)), "antialias": bool(opts.get("antialias", True)),
            "memory_budget_gb": opts.get("memory_budget_gb"), "load_workers": opts.get("load_workers"),
            "prefetch": bool(opts.get("prefetch", True))}


def _first_draw(source: ResidentSource, height: int, width: int, need: int) -> None:
    """Draw one micro-batch, so that the batch op's transients are allocated once and an OOM shows here, not mid-run.

    Raises:
        TrainError: no memory for it (the source is closed), naming the micro-batch that would fit.
    """
    device = source.device
    try:
        source.draw(0, 0)
    except torch.OutOfMemoryError:
        per = estimate_batch_bytes(1, height, width, source.augment.img_size, source.mip is not None)
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 4 * default_budget(device)
        fit = max(int(free * 0.8) // per, 0)
        source.close()
        raise TrainError(
            f"resident source: out of device memory drawing a micro-batch of {source.micro_batch} "
            f"(about {per * source.micro_batch / 2**20:.0f} MiB; {free / 2**30:.2f} GiB free after the "
            f"{need / 2**30:.2f} GiB of images): a micro-batch of at most {fit} would fit; raise "
            "train.accum_steps or lower train.batch_size or data.resident.memory_budget_gb") from None
