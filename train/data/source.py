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

from collections.abc import Iterator
from typing import Protocol

import torch

from train.config import Config
from train.errors import TrainError

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


def last_line(message: str) -> str:
    """The one line of a ``TrainError`` that torch re-raised from a DataLoader worker with its traceback."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else message
    return last.split("TrainError: ", 1)[-1]
