"""The streaming source: shards read by DataLoader workers, decoded and augmented per sample with timm's transforms.

Each rank's ``world_size * workers`` readers split the shards among themselves (whole shards when they divide
evenly, every n-th sample otherwise), decode PNGs (or render a recipe's shards: ``train.data.recipe``), keep a
seeded shuffle buffer and apply ``train.augment.make_train_transform``; the batches are copied to the device. Local
shards are read once, checked, before the first step (``shard_files``), so while training only their labels are
read again; remote shards get the lighter checks as they are decoded. Costs: a worker start-up per epoch
(``MIN_EPOCH_STEPS`` amortises it) and, on a mid-epoch resume, decoding (or rendering) the batches already seen.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fracgen.dataset import DatasetInfo
from train.augment import make_train_transform
from train.bounds import check_buffer
from train.config import Config
from train.data.recipe import check_fresh, is_recipe, recipe_data
from train.data.remote import is_remote
from train.data.samples import Sample, decode_image, decode_sample, shard_samples
from train.data.shards import ShardSet, read_info, read_split
from train.data.source import Batch, last_line, micro_batch_size, warn_large_batch
from train.distributed import end_workers, free_memory, quiet_worker
from train.errors import RankError, TrainError

log = logging.getLogger(__name__)

MIN_EPOCH_STEPS = 200
"""The streaming source's epochs last at least this many optimizer steps (DataLoader workers restart per epoch)."""


def keep_head(samples: Iterator[Sample], keep: int) -> list[Sample]:
    """Consume the dataset's one checked read (``train.data.shards.read_split``), keeping its first ``keep`` samples.

    Raises:
        TrainError: ``shard <path>: ...`` naming the damage.
    """
    head = list(itertools.islice(samples, keep))
    collections.deque(samples, maxlen=0)  # the rest, read for its checks
    return head


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


class StreamData(Protocol):
    """What the stream reads while training: shards (files, or a recipe's to render) and their samples.

    ``samples(shards, every, key)`` yields the (grey (H, W) uint8 image, label) of shards ``shards`` (indices, in
    that order), or with ``every`` = (r, n) only those at positions r, r + n, ... of their concatenation; ``key``
    (seed, epoch, pass) names the pass, for what is drawn afresh at each showing.
    """

    num_classes: int
    num_samples: int
    num_shards: int
    size: int | None

    def samples(self, shards: list[int], every: tuple[int, int] | None,
                key: tuple[int, ...]) -> Iterator[tuple[np.ndarray, int]]: ...


class ShardFiles:
    """A dataset's shards as the stream reads them while training (local files or http(s) URLs), PNGs decoded.

    A local shard was read and checked before step 1 (``train.data.shards.read_split``), so only its labels are
    read again; a remote one gets the lighter checks as it is decoded (``decode_sample``).
    """

    def __init__(self, shards: ShardSet, num_samples: int):
        self.urls, self.size, self.num_classes = shards.urls, shards.size, shards.num_classes
        self.num_samples, self.num_shards = num_samples, len(self.urls)
        self.checked = frozenset(u for u in self.urls if not is_remote(u))

    def samples(self, shards: list[int], every: tuple[int, int] | None,
                key: tuple[int, ...]) -> Iterator[tuple[np.ndarray, int]]:
        for i, sample in enumerate(s for k in shards for s in shard_samples(self.urls[k])):
            if every is not None and i % every[1] != every[0]:
                continue  # a tar is read whole: the samples of the other readers are skipped, not decoded
            if sample.get("__url__") in self.checked:
                yield decode_image(sample), int(sample["cls"])
            else:
                yield decode_sample(sample, self.num_classes, self.size)


class _ShardStream(IterableDataset):
    """An endless, seeded stream of (transformed image, label) for one rank.

    Each of the ``world_size * workers`` readers takes whole shards when they divide evenly among them,
    otherwise every reader goes through all shards and keeps every ``n``-th sample (fracgen sets are small), so
    every sample is seen equally often. Passes repeat with a new shard order and shuffle buffer. What a shard
    holds is ``data``'s (``StreamData``): the order and every draw are the same whatever it reads them from.
    """

    def __init__(self, data: StreamData, transform: Callable, rank: int, world_size: int, seed: int,
                 epoch: int, shuffle_buffer: int):
        self.data, self.transform = data, transform
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.shuffle_buffer = max(1, shuffle_buffer)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        base = (self.seed * 1_000_003 + self.epoch) * 10_007
        rng = random.Random(base + reader)
        transform = self.transform if info else (lambda im, p=_PrivateRng(base + reader + 1): p(self.transform, im))
        by_shard = self.data.num_shards % readers == 0
        buffer: list[tuple[np.ndarray, int]] = []
        seen = False
        for pass_ in itertools.count():
            order = list(range(self.data.num_shards))
            random.Random(base + pass_).shuffle(order)  # same on every reader so whole shards partition
            mine = order[reader::readers] if by_shard else order
            every = None if by_shard else (reader, readers)
            for image, label in self.data.samples(mine, every, (self.seed, self.epoch, pass_)):
                seen = True
                buffer.append((image, label))
                if len(buffer) >= self.shuffle_buffer:
                    image, label = buffer.pop(rng.randrange(len(buffer)))
                    yield transform(rgb(image)), label
            if not seen:  # a reader without samples would scan the shards for ever (readers_per_rank avoids it)
                raise TrainError(f"reader {reader} of {readers} (ranks x data.workers) got no sample of the "
                                 f"{self.data.num_shards} shard(s): lower data.workers")
            rng.shuffle(buffer)
            while len(buffer) > self.shuffle_buffer // 2:  # keep some for mixing across passes
                image, label = buffer.pop()
                yield transform(rgb(image)), label


def rgb(grey: np.ndarray) -> Image.Image:
    """The PIL RGB image timm's transforms take, from a grey (H, W) uint8 array."""
    return Image.fromarray(grey, "L").convert("RGB")


class StreamSource:
    """Samples streamed through DataLoader workers with timm's per-sample transforms; see module docstring.

    ``data`` is what the workers read (``ShardFiles``: a dataset's shards; ``train.data.recipe.RecipeShards``: a
    recipe's, rendered) and ``head`` the first samples in shard order, kept for the evaluation set. Without them,
    ``cfg.data.path`` is opened here (its shards read once and checked by ``shard_files``, or a recipe's
    ``recipe_data``).
    """

    def __init__(self, cfg: Config, device: torch.device, rank: int, world_size: int,
                 data: StreamData | None = None, head: list[Sample] | None = None):
        self.cfg, self.device, self.rank, self.world_size = cfg, device, rank, world_size
        if data is None:
            data, head = recipe_data(cfg) if is_recipe(cfg.data.path) else shard_files(cfg)
        self.data, self.head = data, head
        self.num_classes, self.num_samples = data.num_classes, data.num_samples
        self.micro_batch = micro_batch_size(cfg, world_size)
        warn_large_batch(cfg, self.num_samples, world_size)
        self.transform = make_train_transform(cfg.aug, cfg.model.img_size)
        self.workers = readers_per_rank(cfg.data.workers, self.num_samples, world_size)
        check_buffer(cfg, data.size, self.workers, free_memory(torch.device("cpu")))
        steps = math.ceil(max(self.num_samples, 1) / cfg.train.batch_size)
        steps = steps * math.ceil(MIN_EPOCH_STEPS / steps)  # whole passes, at least MIN_EPOCH_STEPS
        self._len = steps * cfg.train.accum_steps

    def __len__(self) -> int:
        return self._len

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Micro-batches ``start..len-1`` of ``epoch`` on the device (skipping costs decoding them)."""
        cfg = self.cfg
        stream = _ShardStream(self.data, self.transform, self.rank, self.world_size, cfg.train.seed, epoch,
                              cfg.data.shuffle_buffer)
        loader = DataLoader(
            stream, batch_size=self.micro_batch, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed((cfg.train.seed * 7919 + epoch) * 131 + self.rank),
            persistent_workers=False, prefetch_factor=4 if self.workers else None, worker_init_fn=quiet_worker,
        )
        non_blocking = self.device.type == "cuda"
        batches = iter(loader)
        try:
            for images, targets in itertools.islice(batches, start, self._len):
                yield (images.to(self.device, non_blocking=non_blocking),
                       targets.to(self.device, dtype=torch.int64, non_blocking=non_blocking))
        except TrainError as e:  # from a worker, torch wraps the message in the worker's traceback
            raise RankError(last_line(str(e))) from None  # this rank's shards: the others never see it
        finally:
            end_workers(batches)

    def close(self) -> None:
        """Nothing to release: workers end with each epoch's loader."""


def shard_files(cfg: Config, info: DatasetInfo | None = None, shards: ShardSet | None = None,
                samples: Iterator[Sample] | None = None) -> tuple[ShardFiles, list[Sample] | None]:
    """The shards of ``cfg.data.path`` for the stream, and the first samples kept for the evaluation set (None when
    a shard is remote, so not read before training). The one checked read (``read_split``; made here when the
    caller has none) is consumed here, so that a bad shard is named before the first step.
    """
    check_fresh(cfg, None)
    info = info or read_info(cfg.data.path)
    if shards is None or samples is None:
        shards, samples = read_split(cfg.data.path, info, cfg.data.verify)
    head = keep_head(samples, cfg.data.eval_samples if cfg.data.eval_path is None else 0)
    data = ShardFiles(shards, info.splits["train"].num_samples if "train" in info.splits else 0)
    return data, head if len(data.checked) == data.num_shards else None


def make_stream_source(cfg: Config, device: torch.device, rank: int, world_size: int,
                       info: DatasetInfo | None = None, shards: ShardSet | None = None,
                       samples: Iterator[Sample] | None = None) -> StreamSource:
    """The streaming source of ``cfg.data.path``'s shards for this rank (checked up front)."""
    data, head = shard_files(cfg, info, shards, samples)
    return StreamSource(cfg, device, rank, world_size, data, head)
