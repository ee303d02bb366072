"""A recipe as pre-training data: its samples rendered while the run trains, instead of read from shards.

``data.path`` may name a recipe (``fracgen build --recipe-only``, ``docs/recipes.md``: a folder whose ``build.json``
holds ``recipe`` and lists shards it does not hold). It is checked as ``fracgen verify`` checks a recipe, opened
with ``fracgen.recipe.open_recipe``, and served by either source (``train.data.pretraining`` picks one):

- stream: ``RecipeShards`` is what the DataLoader workers read: each reader renders its shards
  (``Recipe.shard``), in the order and partition the stream gives a full build's shards, so a run on a recipe sees
  the images and labels a run on the full build of the same options sees, in the same order;
- resident: every image rendered once into memory (this rank's share with ``data.resident.split_ranks``), then
  held on the device as the shards' images would be.

``data.fresh_masks: true`` draws new patch masks each time a sample is shown (``Recipe.fresh``, the papers'
"w/ Aug."), from (the build's seed, ``train.seed``, epoch, pass, sample): a resumed run draws the same ones.
It needs a recipe (a built folder's images are stored), a family that draws masks (1p-frac, FractalDB, OFDB), and
the stream: the resident source renders once, so it is refused there (``auto`` streams).

A recipe holds no shards, so ``data.verify: true`` (a sha256 check of every shard) is refused; its images are
rendered by this machine's fracgen, numpy and numba (``fracgen build --resume`` of a recipe that records its shards'
sha256 tells whether they render the published bytes).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fracgen import dataset
from fracgen.errors import FracgenError
from fracgen.recipe import Recipe, open_recipe
from train.bounds import cpus
from train.config import Config
from train.data.samples import Sample, grey
from train.errors import TrainError


def is_recipe(path: str) -> bool:
    """Whether ``path`` is a local folder holding a recipe (a ``build.json`` with ``recipe``, as verify tells)."""
    folder = Path(path) if path and "://" not in path else None
    if folder is None or not folder.is_dir() or not dataset.is_complete(folder):
        return False
    try:
        return dataset.is_recipe(dataset.read_build(folder))
    except FracgenError:
        return False  # the dataset check names what is wrong with it


def open_data_recipe(path: str) -> Recipe:
    """The recipe at ``path``, checked as ``fracgen verify`` checks a recipe (its config, its records' sha256, no
    shard beside it), then opened.

    Raises:
        TrainError: naming the first problem verify finds, or why the recipe cannot be rendered.
    """
    from fracgen.verify import verify

    try:
        report = verify(path)
        if not report.ok:
            raise TrainError(f"recipe {path}: {report.lines()[1]}; `fracgen verify {path}` checks it")
        return open_recipe(path)
    except FracgenError as e:
        raise TrainError(f"recipe {path}: {e}") from None


def check_fresh(cfg: Config, recipe: Recipe | None) -> None:
    """Refuse ``data.fresh_masks`` where it cannot apply (see the module docstring), in one line.

    Raises:
        TrainError: not a recipe, the resident source, or a family without patch masks.
    """
    if not cfg.data.fresh_masks:
        return
    if recipe is None:
        raise TrainError(f"data.fresh_masks: {cfg.data.path} is not a recipe; fresh masks are drawn while a recipe "
                         "renders (`fracgen build --recipe-only`), a built dataset's images are stored")
    if cfg.data.source == "resident":
        raise TrainError("data.fresh_masks: the resident source renders the recipe once; fresh masks need "
                         "data.source=stream (or auto)")
    try:
        recipe.fresh(0, (cfg.train.seed, 0, 0))
    except FracgenError as e:
        raise TrainError(f"data.fresh_masks: {e}") from None


class RecipeShards:
    """A recipe's shards as the streaming source reads them (``train.data.stream.StreamData``), rendered.

    Args:
        recipe: the recipe (picklable; every DataLoader worker holds it).
        fresh: draw the patch masks afresh at each showing (``data.fresh_masks``).
    """

    def __init__(self, recipe: Recipe, fresh: bool = False):
        self.recipe, self.fresh = recipe, fresh
        config = recipe.plan.config
        self.num_classes, self.num_samples, self.size = config.num_classes, len(recipe), config.size
        self.num_shards = len(recipe.plan.shard_samples)
        starts = np.cumsum([0, *map(len, recipe.plan.shard_samples)]).tolist()
        self._positions = [range(a, b) for a, b in itertools.pairwise(starts)]  # stored positions of each shard

    def samples(self, shards: list[int], every: tuple[int, int] | None,
                key: tuple[int, ...]) -> Iterator[tuple[np.ndarray, int]]:
        """(grey image, label) of ``shards`` in order, or every ``every[1]``-th of them (``StreamData``)."""
        if every is None and not self.fresh:
            for shard in shards:  # a shard's samples rendered together (faster than one by one)
                yield from ((grey(s["image"]), s["cls"]) for s in self.recipe.shard(shard))
            return
        positions = [p for shard in shards for p in self._positions[shard]]
        if every is not None:
            positions = positions[every[0]::every[1]]
        if self.fresh:
            for p in positions:
                sample = self.recipe.fresh(p, key)
                yield grey(sample["image"]), sample["cls"]
            return
        for chunk in _chunks(positions, 64):
            yield from ((grey(s["image"]), s["cls"]) for s in self.recipe.render([self.recipe.order[p] for p in chunk]))


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def recipe_head(recipe: Recipe, keep: int) -> list[Sample]:
    """The first ``keep`` samples in stored order, rendered (the evaluation set when ``data.eval_path`` is unset)."""
    head: list[Sample] = []
    for shard in range(len(recipe.plan.shard_samples)):
        if len(head) >= keep:
            break
        for s in recipe.shard(shard):
            head.append(Sample({"__key__": s["__key__"], "__url__": str(recipe.root)}, s["cls"], grey(s["image"])))
    return head[:keep]


def render_images(recipe: Recipe, rank: int, world_size: int, split: bool,
                  threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image of the recipe (this rank's share with ``split``), rendered once, in key order as the resident
    source holds a build's: (N, H, W) uint8 grey and (N,) int64 labels. The kernels release the GIL, so chunks
    render ``threads`` at a time (default: up to 8, the CPUs this process may use)."""
    indices = list(range(len(recipe)))
    if split and world_size > 1:
        indices = indices[rank::world_size]
    chunks = list(_chunks(indices, recipe.plan.config.shard_size))

    def render(chunk: list[int]) -> list[tuple[np.ndarray, int]]:
        return [(grey(s["image"]), s["cls"]) for s in recipe.render(chunk)]

    with ThreadPoolExecutor(max_workers=threads or min(8, cpus())) as pool:
        rendered = [pair for part in pool.map(render, chunks) for pair in part]
    return np.stack([image for image, _ in rendered]), np.array([label for _, label in rendered], np.int64)


def recipe_data(cfg: Config) -> tuple[RecipeShards, list[Sample]]:
    """The recipe ``cfg.data.path`` as the stream reads it, and its first samples for the evaluation set.

    Raises:
        TrainError: a recipe verify refuses, ``data.fresh_masks`` where it cannot apply, or ``data.verify`` true.
    """
    if cfg.data.verify is True:
        raise TrainError(f"data.verify=true: {cfg.data.path} is a recipe, whose images are rendered: it holds no shard "
                         "to check a sha256 against (--no-verify-data, or data.verify=auto)")
    recipe = open_data_recipe(cfg.data.path)
    check_fresh(cfg, recipe)
    head = recipe_head(recipe, cfg.data.eval_samples if cfg.data.eval_path is None else 0)
    return RecipeShards(recipe, cfg.data.fresh_masks), head


def recipe_identity(path: str, source: str) -> dict[str, Any]:
    """What a pre-training checkpoint records about a recipe, so that ``--resume`` knows it is the same: its name,
    counts and a digest of its options and records (``build.json``'s ``config`` and ``records``)."""
    build = dataset.read_build(path)
    decided = json.dumps({"config": build.get("config"), "records": build.get("records")}, sort_keys=True)
    return {"num_classes": build.get("num_classes"), "num_samples": build.get("num_samples"), "source": source,
            "name": build.get("name"), "recipe_sha256": hashlib.sha256(decided.encode()).hexdigest()}
