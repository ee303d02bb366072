"""The contract between the step loop and whatever feeds it: a *source*.

The step loop (``train/loop.py``) never knows where batches come from; it only uses the interface below, so the
streaming source (``train/data/stream.py``), the device-resident one (``train/data/resident.py``) and the
fine-tuning one (``train/data/downstream.py``) are interchangeable.

- ``num_classes: int``: classes of the dataset (from ``_info.json`` for fracgen shards).
- ``micro_batch: int``: images per yielded batch on this rank,
  ``cfg.train.batch_size // (world_size * cfg.train.accum_steps)`` (``micro_batch_size``).
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
- ``head`` (optional): the first raw samples of the dataset in shard order, kept from the source's one read of
  the shards so that the pre-training evaluation set (``data.eval_path`` unset: the first ``data.eval_samples``
  samples) needs no second read; None when not kept.

Mixup/cutmix and label smoothing are *not* the source's job: the loop applies timm's ``Mixup`` on the device to
every source's batches (``train.augment.make_mixup``), so every path shares it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import torch

from train.config import Config
from train.errors import TrainError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class Source(Protocol):
    """What the step loop consumes; see the module docstring."""

    num_classes: int
    micro_batch: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...

    def close(self) -> None: ...


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


def largest_batch(num_images: int, world_size: int, accum_steps: int) -> int:
    """The largest ``train.batch_size`` with which every rank draws a whole optimizer step from its share of
    ``num_images`` images without repeating one (0: none does, whatever the batch)."""
    per_rank = num_images // world_size
    return world_size * accum_steps * (per_rank // accum_steps)


def batch_fix(num_images: int, world_size: int, accum_steps: int) -> str:
    """The options to pass so that a batch fits ``num_images`` images (``largest_batch``), in words."""
    most = largest_batch(num_images, world_size, accum_steps)
    step = world_size * accum_steps
    if most:
        return f"pass --batch-size {most} (train.batch_size) or less" + (f", a multiple of {step}" if step > 1 else "")
    per_rank = num_images // world_size
    if per_rank:
        return f"pass --batch-size {world_size * per_rank} --accum-steps 1 (train.batch_size, train.accum_steps)"
    return f"run on at most {num_images} ranks"


def warn_large_batch(cfg: Config, num_images: int, world_size: int) -> None:
    """Say when a pre-training's batch holds more images than its dataset: every batch then repeats each image,
    under other augmentations (the sources serve it; the tiny config does so on purpose)."""
    batch = cfg.train.batch_size
    if 0 < num_images < batch:
        log.warning("train.batch_size %d is more than the %d images of %s: every batch holds each image about %.0f "
                    "times, under other augmentations; to draw each at most once a step, %s", batch, num_images,
                    cfg.data.path, batch / num_images, batch_fix(num_images, world_size, cfg.train.accum_steps))


def last_line(message: str) -> str:
    """The one line of a ``TrainError`` that torch re-raised from a DataLoader worker with its traceback."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else message
    return last.split("TrainError: ", 1)[-1]
