"""A dataset rendered on demand from its records: ``open_recipe(folder)[i]`` is stored sample i, bit for bit.

A build decides every byte from its options, its seed and its base systems (the plan), so a folder holding only
its records (``fracgen build --recipe-only``: ``build.json``, ``params.json``, ``_info.json``, the card; a few
hundred KB) describes the whole dataset. ``open_recipe`` reads them, makes the plan once, and renders a sample
when it is asked for: about a millisecond of CPU for a small image to tens of milliseconds for a 512 px 1p-frac
one (a build's own rate per worker, without the PNG). It works on a complete build too, and is picklable, so
DataLoader workers can each hold one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fracgen import dataset
from fracgen.config import BuildConfig, check_memory
from fracgen.dataset import DatasetError
from fracgen.errors import UsageError
from fracgen.plan import Plan, make_plan
from fracgen.systems import class_records, load_systems


class Recipe:
    """Map-style access to a dataset's samples, rendered on demand (see the module docstring).

    Attributes:
        root: the folder.
        plan: the build's plan (its options: ``plan.config``).
        order: sample indices in the stored order (shard 0 first, each shard sorted).
    """

    def __init__(self, root: Path, plan: Plan):
        self.root, self.plan = root, plan
        self.order = [index for shard in plan.shard_samples for index in shard]
        self._classes: list[dict] | None = None  # params.json's class records, read when first needed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample i of the stored order: ``{"__key__", "image", "cls", "json"}``.

        ``image`` is what decoding the stored PNG gives: (size, size) uint8 grey, or (size, size, 3) uint8 RGB;
        ``cls`` the label (int); ``json`` the sample's record (a dict, as its stored ``json`` parses).
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of a dataset of {len(self)}")
        return next(self.render([self.order[i]]))

    def shard(self, shard: int) -> Iterator[dict[str, Any]]:
        """The samples of one shard, in their stored order, rendered together (a family's kernel may draw several
        at once: faster than one by one)."""
        return self.render(self.plan.shard_samples[shard])

    def fresh(self, i: int, key: tuple[int, ...]) -> dict[str, Any]:
        """Sample i with its patch masks drawn afresh from ``(seed, key, sample index)`` (``key``: the epoch, say):
        the paper's "w/ Aug." read as new masks each time an image is shown. ``{"__key__", "image", "cls"}``.

        Raises:
            UsageError: the family draws no patch masks, or params.json holds no record of each class.
        """
        index = self.order[i]
        config = self.plan.config
        label = index // config.per_class
        if self._classes is None:
            self._classes = class_records(dataset.read_params(self.root), config.num_classes,
                                          str(self.root / dataset.PARAMS_JSON))
        image = config.family.render_fresh(self.plan, index, tuple(key), self._classes[label])
        return {"__key__": dataset.sample_key(index), "image": np.array(image, np.uint8, copy=True), "cls": label}

    def render(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        """The samples of these indices (not positions: ``order`` maps one to the other), as ``__getitem__``."""
        from fracgen.shard import sample_json

        for index, image, meta in self.plan.config.family.render(self.plan, indices):
            yield {"__key__": dataset.sample_key(index), "image": np.array(image, np.uint8, copy=True),
                   "cls": int(meta["label"]), "json": json.loads(sample_json(meta))}


def open_recipe(folder: str | Path) -> Recipe:
    """The samples of a recipe or a complete build, rendered on demand.

    Raises:
        UsageError: the folder holds no build record, or one that cannot be rendered (a damaged config, a family
            this fracgen does not know, options that need more memory than the machine has, base systems that do
            not read).
    """
    root = Path(folder)
    build = dataset.read_build(root)
    changed = dataset.changed_records(root, build.get("records", {}))
    if changed:  # its images follow params.json: another one would render other images without a word
        raise UsageError(f"{root}: {changed[0]} (`fracgen verify {root}`)")
    cfg = BuildConfig.from_record(build.get("config"), where=str(root / dataset.BUILD_JSON))
    check_memory(cfg)  # the plan holds every sample index, a render its canvas and points: refused before either
    systems = load_systems(root / dataset.PARAMS_JSON) if cfg.family.systems else None
    source = dataset.inside(root, cfg.source, f"{root / dataset.BUILD_JSON}: 'source'") if cfg.source else ""
    try:
        plan = make_plan(cfg, systems, source=str(source), accepted=True)
    except DatasetError as e:
        raise UsageError(str(e)) from None
    return Recipe(root, plan)
