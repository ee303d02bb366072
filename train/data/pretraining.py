"""The data of a pre-training: which source serves it, and the images its accuracy is measured on.

``data.source`` is ``auto | stream | resident``. For ``auto`` and ``resident``, ``make_source`` first asks
``train.data.resident.make_resident_source``, which raises ``DoesNotFit`` when the data exceed its memory budget
(``auto`` then logs the message and streams; ``resident`` lets it propagate). ``_info.json`` and ``build.json`` are
read once here and handed to the source, which reads every local shard once before the first step.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from train.augment import make_eval_transform
from train.config import Config
from train.data.recipe import (
    check_fresh,
    is_recipe,
    open_data_recipe,
    recipe_data,
    recipe_head,
    recipe_identity,
    render_images,
)
from train.data.samples import Sample, iter_samples
from train.data.shards import dataset_identity, read_info, read_split, shard_urls
from train.data.source import Source, micro_batch_size
from train.data.stream import StreamSource, make_stream_source, rgb
from train.errors import DoesNotFit, TrainError

log = logging.getLogger(__name__)


def make_source(cfg: Config, device: torch.device, rank: int, world_size: int) -> Source:
    """Pick the pre-training source for ``cfg.data.source`` (``auto | stream | resident``).

    The dataset check is made here, once (``train.data.shards.read_split``): ``_info.json`` and ``build.json`` are
    read, then the source chosen consumes the one read of every local shard, so both sources refuse the same damage
    (size, sample count, sha256 with ``data.verify``, members, labels) with the same one line. When the resident
    source gives up (``DoesNotFit``), the stream goes on with what it had read.

    Raises:
        TrainError: bad dataset, or ``resident`` forced but impossible.
    """
    mode = cfg.data.source
    micro_batch_size(cfg, world_size)
    if is_recipe(cfg.data.path):
        return _recipe_source(cfg, device, rank, world_size)
    check_fresh(cfg, None)  # before the shards are read
    info = read_info(cfg.data.path)
    shards, samples = read_split(cfg.data.path, info, cfg.data.verify)
    if mode in ("auto", "resident"):
        from train.data import resident

        try:
            return resident.make_resident_source(cfg, device, rank, world_size, info, shards, samples)
        except DoesNotFit as e:
            if mode == "resident":
                raise
            log.info("streaming instead of the resident source: %s", e)
            samples = itertools.chain(e.read, samples)
    return make_stream_source(cfg, device, rank, world_size, info, shards, samples)


class _SampleList(Dataset):
    """Decoded samples held in memory (evaluation of pre-training on its own classes)."""

    def __init__(self, samples: list[tuple[np.ndarray, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.samples[i]
        return self.transform(rgb(image)), label


def _recipe_source(cfg: Config, device: torch.device, rank: int, world_size: int) -> Source:
    """The pre-training source of the recipe ``cfg.data.path`` for ``cfg.data.source`` (``auto``: resident when the
    images fit its budget and no fresh masks are asked for, else stream).

    Raises:
        TrainError: a recipe verify refuses, ``data.fresh_masks`` where it cannot apply, or ``resident`` forced
            but over its budget.
    """
    from train.data import resident

    data, head = recipe_data(cfg)
    recipe = data.recipe
    if cfg.data.source == "resident" or (cfg.data.source == "auto" and not cfg.data.fresh_masks):
        size = recipe.plan.config.size
        try:
            need = resident.check_budget(cfg, device, world_size, len(recipe), size, size)
        except DoesNotFit as e:
            if cfg.data.source == "resident":
                raise
            log.info("streaming instead of the resident source: %s", e)
        else:
            opts = cfg.data.resident or {}
            images, labels = render_images(recipe, rank, world_size, bool(opts.get("split_ranks")),
                                           opts.get("load_workers"))
            source = resident.resident_source(cfg, device, rank, world_size, images, labels, recipe.plan.config.
                                              num_classes, len(recipe), need)
            source.head = head
            return source
    return StreamSource(cfg, device, rank, world_size, data, head)


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


def make_pretrain_eval_loader(cfg: Config, head: list[Sample] | None = None) -> DataLoader | None:
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
        samples = [(s.grey(), s.label) for s in head[:cfg.data.eval_samples]]
    elif is_recipe(path):
        samples = [(s.grey(), s.label) for s in recipe_head(open_data_recipe(path), cfg.data.eval_samples)]
    else:
        samples = []
        for sample in iter_samples(shard_urls(path, read_info(path))):
            samples.append(sample)
            if len(samples) >= cfg.data.eval_samples:
                break
    images = _SampleList(samples, make_eval_transform(cfg.aug, cfg.model.img_size))
    return DataLoader(images, batch_size=cfg.finetune.eval_batch_size, num_workers=0)


def data_identity(cfg: Config, source: Source) -> dict[str, Any]:
    """What a pre-training checkpoint records of its data (``train.data.shards.dataset_identity``, or a recipe's
    ``train.data.recipe.recipe_identity``), so that ``--resume`` refuses other data."""
    name = type(source).__name__
    return recipe_identity(cfg.data.path, name) if is_recipe(cfg.data.path) else dataset_identity(cfg.data.path, name)
