"""The registry of dataset families, and what a family is.

A family module subclasses ``Family``, sets what differs (its options, defaults, classes, rendering, records, card
text) and calls ``register`` with an instance per ``--preset`` name. Everything else (the options' table, the CLI,
the plan, shards, verify, preview, the card) asks the registry and never names a family.

Importing this module imports no numba: families import their kernels when they render.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from fracgen.options import SHARED, Option

if TYPE_CHECKING:  # pragma: no cover
    from fracgen.systems import System

# What a family is handed: a ``fracgen.config.BuildConfig`` (every option an attribute) and a ``fracgen.plan.Plan``.
# Both modules ask this registry for their families, so the names stand for them here rather than import them.
BuildConfig = Any
Plan = Any

# What a stored image is: "fractal" (8-bit grey, values {0, 127}: the chaos-game looks), "L" (8-bit grey), "RGB".
IMAGE_MODES = ("fractal", "L", "RGB")


class Family:
    """One dataset family: everything the builder and the readers need to know of it.

    Attributes:
        name: the ``--preset`` value.
        description: one sentence for the card.
        options: the options it reads (shared ones by name, and its own); the CLI refuses the others.
        own_options: options this family adds to the table.
        defaults: its defaults for options of the table (``size``, ``points``, ``min_fill``, ``instances``...).
        max_instances: the largest ``--instances``.
        systems: it renders base systems found by a search (``--params`` may give them instead).
        takes_source: it transforms one source image (``fracgen build-real IMAGE``).
        fast_png: its images have many grey levels: fracgen's own deflate encodes them.
        card_template: its own card for builds it describes best (``card_template_for``), else the generic one.
        tags: card tags beside the generic ones.
        notes: per-option help text for this family, shown in ``--help``.
        record_bytes: memory the parent holds per class record (``config.check_memory``), measured.
    """

    name: str = ""
    description: str = ""
    options: frozenset[str] = frozenset()
    own_options: tuple[Option, ...] = ()
    defaults: dict[str, Any] = {}
    max_instances: int = 1
    systems: bool = False
    takes_source: bool = False
    fast_png: bool = False
    card_template: str | None = None
    tags: tuple[str, ...] = ()
    notes: dict[str, str] = {}
    record_bytes: float = 6144

    # ------------------------------------------------------------------------------------------ the options

    def num_classes(self, config: BuildConfig) -> int:
        """Classes of a build with these options (default: L)."""
        return config.L

    def dataset_name(self, config: BuildConfig) -> str:
        """The dataset's name in its records and card: the family's, then its Delta and L when it reads them."""
        return "-".join([self.name] + [f"{n}{getattr(config, n)}" for n in ("delta", "L") if n in self.options])

    def problems(self, config: BuildConfig) -> list[str]:
        """What is wrong with options that are each in bounds but not together (one line each)."""
        problems = []
        if "instances" in self.options and config.instances > self.max_instances:
            problems.append(f"--instances must be in [1, {self.max_instances}] for --preset {self.name}, got "
                            f"{config.instances}")
        if "patch_variants" in self.options and config.patch_variants > 1 and config.style != "reference":
            problems.append("--patch-variants needs --style reference (the points style has no patch masks), got "
                            f"{config.style!r}")
        return problems

    def warnings(self, config: BuildConfig) -> list[str]:
        """Lines said after a build whose options are allowed but unusual."""
        return []

    def image_mode(self, config: BuildConfig) -> str:
        """What a stored image is: one of IMAGE_MODES."""
        return "fractal" if self.systems else "L"

    def per_class(self, config: BuildConfig) -> int:
        """Images per class (label = sample index // per_class): by default --instances x --patch-variants."""
        return config.instances * config.patch_variants

    def memory_per_class(self, config: BuildConfig) -> float:
        """Bytes the parent holds for one class's record (params.json): a base system's class records its maps
        (measured 4.1-4.5 KB a class of 2 maps, all included) when it has one image."""
        if self.systems:
            return 1024 + (2048 * config.maps if config.instances == 1 else 0)
        return self.record_bytes

    # -------------------------------------------------------------------------------------------- the plan

    def check_source(self, path: Any, config: BuildConfig) -> None:
        """Refuse a source image (``takes_source``) this family cannot use (UsageError naming it)."""

    def search(self, config: BuildConfig, workers: int, progress: bool) -> list[System]:
        """The base systems of a build (families with ``systems``)."""
        return []

    def prepare(self, config: BuildConfig, workers: int, progress: bool) -> list:
        """What the shards need that the parent finds once before them, when it is not base systems (a category
        search of another kind): JSON-able, in the plan (its digest) and so in every worker. Default: nothing."""
        return []

    def check_systems(self, systems: list[System], config: BuildConfig) -> None:
        """Refuse given base systems (``--params``) this family cannot render (UsageError naming the first)."""

    # ---------------------------------------------------------------------------------- in a shard's worker

    def render(self, plan: Plan, indices: list[int]) -> Iterator[tuple[int, np.ndarray, dict]]:
        """Render samples ``indices`` of a plan, in that order.

        Yields:
            (index, image, record): the image ((size, size) uint8, or (size, size, 3) uint8; it may be a buffer
            the next sample overwrites) and the sample's record (its ``json``; a ``fill`` key is kept for
            params.json only).
        """
        for index in indices:
            label, instance = divmod(index, plan.config.per_class)
            yield (index, *self.render_one(plan, label, instance))

    def render_one(self, plan: Plan, label: int, instance: int) -> tuple[np.ndarray, dict]:  # pragma: no cover
        """One sample: image of class ``label``, its ``instance``-th image."""
        raise NotImplementedError

    def render_fresh(self, plan: Plan, index: int, key: tuple[int, ...], record: dict) -> np.ndarray:
        """Sample ``index`` with its patch masks drawn afresh from ``generator(seed, FRESH, *key, index)`` (the
        paper's "w/ Aug." read as new masks each time an image is shown: ``key`` is, say, the epoch).

        Args:
            record: the sample's class record in params.json (a 1p-frac class's accepted maps).

        Raises:
            UsageError: the family draws no patch masks.
        """
        from fracgen.errors import UsageError

        raise UsageError(f"--preset {self.name} draws no patch masks to draw afresh")

    def class_records(self, plan: Plan, markers: list[dict]) -> list[dict]:
        """params.json's ``classes``, one per label: by default the record of each class's image, which the
        shards' markers collect, where a class has one (``config.instances`` == 1); else its label and image count
        (the images' own records stay in the shards' json)."""
        cfg = plan.config
        if cfg.instances != 1:
            return [{"label": c, "instances": cfg.instances} for c in range(cfg.num_classes)]
        return sorted((s for m in markers for s in m["samples"]), key=lambda s: s["label"])

    def params_extra(self, plan: Plan) -> dict:
        """Keys params.json holds besides ``preset``, ``systems``, ``classes`` and ``total_redraws``."""
        return {}

    # ----------------------------------------------------------------------------- the readers (no numba)

    def card_template_for(self, config: dict) -> str | None:
        """The card template of a build (a file of ``datasets_cards/``), None for the generic one."""
        return self.card_template

    def card_text(self, config: dict, params: dict | None) -> dict[str, str]:
        """The card's family-specific placeholders, from the build's recorded options and its params.json:
        ``differences`` (a Markdown list: where this build departs from the released code and why), any the
        family's own template uses, and the values of options it shows otherwise."""
        return {"differences": f"- The `{self.name}` preset's classes come from parameters drawn from generators "
                               "seeded by (seed, class); every class's parameters are saved in `params.json`."}

    def preview_base(self, params: dict | None, config: dict) -> np.ndarray | None:
        """The picture the preview shows before the classes (the base fractal of a family with base systems, from
        params.json), or None to show class 0."""
        if not self.systems:
            return None
        from fracgen.plain_render import base_image

        return base_image(params, config)


AHEAD = 64  # samples rendered together: bounds what a worker holds at once (images, masks, map choices)


def render_ahead(indices: list[int], batch: Callable[[list[int]], dict], one: Callable[[int], tuple],
                 canvas: Any) -> Iterator[tuple[int, np.ndarray, dict]]:
    """Render ``indices`` in order, AHEAD at a time through a kernel that draws several samples together.

    Args:
        indices: the samples, in the order to yield them.
        batch: renders a chunk of them; returns index -> (bits, record) for those it drew as 1-bit images
            (``kernels.chaos.render_chains``), leaving the others out.
        one: renders one sample alone: index -> (image, record).
        canvas: the worker's ``kernels.chaos.Canvas``; a batched sample's bits are expanded into its image.

    Yields:
        (index, image, record), the bytes of rendering each sample alone.
    """
    from fracgen.kernels import chaos

    for start in range(0, len(indices), AHEAD):
        chunk = indices[start:start + AHEAD]
        ready = batch(chunk)
        for index in chunk:
            if index not in ready:
                yield (index, *one(index))
                continue
            bits, record = ready.pop(index)
            chaos.expand_bits(bits, canvas.image)
            yield index, canvas.image, record


_FAMILIES: dict[str, Family] = {}
_OPTIONS: dict[str, Option] = {o.name: o for o in SHARED}


def register(family: Family) -> Family:
    """Add a family (and its own options) to the registry; returns it.

    Raises:
        ValueError: the name is taken, or an option it declares clashes with another of the same name.
    """
    if not family.name or family.name in _FAMILIES:
        raise ValueError(f"family name {family.name!r} is empty or taken")
    for option in family.own_options:
        known = _OPTIONS.get(option.name)
        if known is not None and known != option:
            raise ValueError(f"family {family.name}: option {option.name} is declared otherwise already")
    unknown = set(family.options) - set(_OPTIONS) - {o.name for o in family.own_options}
    if unknown:
        raise ValueError(f"family {family.name}: reads undeclared option(s) {sorted(unknown)}")
    _OPTIONS.update({o.name: o for o in family.own_options})
    _FAMILIES[family.name] = family
    return family


def get(name: str) -> Family | None:
    """The family of a ``--preset`` name, or None."""
    return _FAMILIES.get(name)


def families() -> dict[str, Family]:
    """Every registered family by name, in registration order."""
    return dict(_FAMILIES)


def option_table() -> dict[str, Option]:
    """Every option of every family, shared ones first."""
    return dict(_OPTIONS)


def unregister(name: str) -> None:
    """Remove a family and the options only it declared: the inverse of ``register``, for toy families in tests."""
    family = _FAMILIES.pop(name, None)
    if family is None:
        return
    kept = {o.name for f in _FAMILIES.values() for o in f.own_options} | {o.name for o in SHARED}
    for option in family.own_options:
        if option.name not in kept:
            _OPTIONS.pop(option.name, None)
