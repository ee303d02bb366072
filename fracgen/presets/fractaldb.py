"""FractalDB (Kataoka et al., ACCV 2020) and OFDB (Nakamura et al., ICCV 2023), with their category search.

- ``fractaldb``: C categories, each an IFS found by FractalDB's search (N ~ U{2..7} maps, parameters ~ U(-1, 1),
  kept when a one-pixel-per-point render at 512 px fills at least 0.2), each with up to 1,000 instances: 25
  weight rows (the identity, and each of the 6 parameters of every map scaled by 1-2k, 1-k, 1+k, 1+2k, k = 0.4)
  x 10 patch-mask instances x 4 flips.
- ``ofdb``: the same categories, one image each (weights identity, first patch instance, no flip;
  ``--ofdb-weights released`` scales parameter a by 0.2, what the shipped OFDB scripts render;
  ``--patch-variants K``: K images per category with freshly drawn patch masks, Table 13's "w/ Aug.").

Category c draws from ``generator(seed, SEARCH, c)`` and its map choices from ``choice_uniforms(seed, c, ...)``,
so a category is the same whatever the worker count or the other categories. The search runs on the shared pool
(``fracgen.distribute``). The released renderer's settings: 362 px, 200,000 points.
"""

from __future__ import annotations

import math

import numpy as np

from fracgen import ifs
from fracgen.errors import UsageError
from fracgen.options import CHAOS_GAME, Option
from fracgen.presets.registry import Family, register, render_ahead
from fracgen.raster import raster_text
from fracgen.seeds import CLASS, FRESH, SEARCH, choice_uniforms, draw_masks, generator
from fracgen.systems import System

K = 0.4
PATCHES = 10
FLIPS = 4
MAPS = (2, 8)  # N ~ U{2..7}
MIN_FILL = 0.2
SIZE, POINTS = 362, 200_000  # the released render scripts
BATCH = 64  # candidate systems drawn per generator call
# OFDB weights: "identity" (the paper's text) or "released" (row 0 of the shipped weights_0.4.csv, (0.2, 1, 1, 1,
# 1, 1), which is row 1 of weights()).
OFDB_WEIGHTS = {"identity": 0, "released": 1}


def weights(k: float = K) -> np.ndarray:
    """FractalDB's 25 weight rows: (25, 6) float64, row 0 the identity, then parameter j x (1-2k, 1-k, 1+k, 1+2k)."""
    rows = [np.ones(6)]
    for j in range(6):
        for scale in (1 - 2 * k, 1 - k, 1 + k, 1 + 2 * k):
            row = np.ones(6)
            row[j] = round(scale, 12)  # the decimals of the released weights_0.4.csv (0.2, not 1 - 0.8)
            rows.append(row)
    return np.array(rows)


GRID = len(weights()) * PATCHES * FLIPS  # 1,000 instances


def instance_of(instance: int, instances: int) -> tuple[int, int, int]:
    """(weight row, patch instance, flip) of instance i of M, as FractalDB's own subsets take them.

    FractalDB renders, per patch instance, every weight row in all 4 flips (its 100-instance set is 25 weights x
    4 flips, the 1,000-instance set adds 10 patch instances). So instance i takes patch i // 100, and within a
    round of n <= 100 instances the flip cycles fastest and the n / 4 weight slots spread evenly over the 25 rows:
    any M >= 4 covers all 4 flips, M = 100 all 25 rows x 4 flips, M = 1,000 the whole grid once.
    """
    cells = len(weights()) * FLIPS  # 100 per patch instance
    patch, j = divmod(instance, cells)
    n = min(cells, instances - patch * cells)
    slots = -(-n // FLIPS)
    return (j // FLIPS) * len(weights()) // slots, patch, j % FLIPS


_FLIPS = (lambda im: im, lambda im: im[::-1], lambda im: im[:, ::-1], lambda im: im[::-1, ::-1])


class FractalDB(Family):
    name = "fractaldb"
    description = ("FractalDB (Kataoka et al., ACCV 2020 / IJCV 2022): C categories, each an iterated function "
                   "system found by the FractalDB search, each with instances from scaled parameters, patch masks "
                   "and flips.")
    options = CHAOS_GAME | {"fractals", "instances"}
    defaults = {"min_fill": MIN_FILL, "size": SIZE, "points": POINTS, "instances": GRID}
    max_instances = GRID
    systems = True
    tags = ("fractaldb",)
    notes = {"fractals": "C categories", "instances": f"images per category over its {GRID} variations (25 weights "
             "x 10 patches x 4 flips, flips first)"}

    def num_classes(self, config) -> int:
        return config.fractals

    def dataset_name(self, config) -> str:
        return f"fractaldb-{config.fractals}-x{config.instances}"

    def search(self, config, workers: int, progress: bool) -> list[System]:
        from fracgen.distribute import run_jobs

        search_category(0, config.seed, 0.0, 1)  # compile in the parent, so forked workers inherit the kernel
        job = _CategoryJob(config.seed, config.min_fill, config.max_attempts)
        return run_jobs(job, range(config.fractals), [1] * config.fractals, workers, progress, unit="category",
                        what="category")

    def check_systems(self, systems: list[System], config) -> None:
        from fracgen.search import judge_systems

        # the test the categories were searched with, so a build's own params.json passes
        judge_systems(systems, lambda c, system: category_fill(system, config.seed, c), config.min_fill,
                      "--min-fill")

    def render(self, plan, indices: list[int]):
        from fracgen.kernels import chaos

        cfg = plan.config
        canvas = chaos.Canvas(cfg.size, cfg.points)
        # the chains kernel draws the reference look, one image per (category, instance) of FractalDB's grid
        batched = cfg.style == "reference" and cfg.patch_variants == 1 and cfg.ofdb_weights == "identity"
        batch = (lambda chunk: _render_chains(plan, chunk)) if batched else (lambda chunk: {})
        for index, image, record in render_ahead(indices, batch, lambda i: _render_one(plan, i, canvas), canvas):
            yield index, _FLIPS[record["flip"]](image), record

    def masks_path(self, label: int, row: int, patch: int) -> tuple[int, ...]:
        """The generator path of a render's patch masks: fresh for every render, as the released code draws a
        mask per point of every render; a render is (category, weight row, patch instance), its 4 flips share
        it (the released script saves one render flipped four ways)."""
        return (CLASS, label, row, patch)

    def render_fresh(self, plan, index: int, key: tuple[int, ...], record: dict) -> np.ndarray:
        from fracgen.kernels import chaos

        cfg = plan.config
        if cfg.style != "reference":
            raise UsageError("--style points draws no patch masks to draw afresh")
        label, instance = divmod(index, cfg.per_class)
        row, _, flip = _variation(cfg, instance)
        canvas = chaos.Canvas(cfg.size, cfg.points)
        base = plan.systems[label]
        truncated_fill(base.maps * weights()[row], base.probabilities, choice_uniforms(cfg.seed, label, cfg.points),
                       draw_masks(generator(cfg.seed, FRESH, *key, index), cfg.points), canvas, cfg.style)
        return _FLIPS[flip](canvas.image)

    def class_records(self, plan, markers: list[dict]) -> list[dict]:
        if plan.config.instances == 1:
            return super().class_records(plan, markers)
        # a category's images differ in weights, patch and flip: their records stay in the shards' json
        return [{"label": c, "fractal": c, "instances": plan.config.instances} for c in range(plan.config.fractals)]

    def card_text(self, config: dict, params: dict | None) -> dict[str, str]:
        return {"differences": "\n".join(f"- {item}" for item in _differences(config))}


class OFDB(FractalDB):
    name = "ofdb"
    description = ("OFDB, the one-instance FractalDataBase (Nakamura et al., ICCV 2023): C fractal categories, one "
                   "image each.")
    options = CHAOS_GAME | {"fractals", "patch_variants", "ofdb_weights"}
    own_options = (Option("ofdb_weights", str, "identity", "identity (the paper's text) or released (parameter a x "
                          "0.2, the shipped scripts).", choices=tuple(OFDB_WEIGHTS), absent_default=True),)
    defaults = {"min_fill": MIN_FILL, "size": SIZE, "points": POINTS}
    max_instances = 1
    tags = ("ofdb",)

    def masks_path(self, label: int, row: int, patch: int) -> tuple[int, ...]:
        """Variant v of a category is its own render with patch instance v's masks (the weight row is fixed)."""
        return (CLASS, label, patch)

    def dataset_name(self, config) -> str:
        weights_name = "" if config.ofdb_weights == "identity" else f"-{config.ofdb_weights}"
        variants = "" if config.patch_variants == 1 else f"-aug{config.patch_variants}"
        return f"ofdb-{config.fractals}{weights_name}{variants}"


class _CategoryJob:
    """A picklable ``category -> System`` for the pool."""

    def __init__(self, seed: int, min_fill: float, max_attempts: int):
        self.task = (seed, min_fill, max_attempts)

    def __call__(self, category: int) -> System:
        return search_category(category, *self.task)


def search_category(category: int, seed: int, min_fill: float, max_attempts: int) -> System:
    """Category ``category``: the first draw whose one-pixel render fills >= ``min_fill`` (FractalDB's test).

    Candidates are drawn ``BATCH`` at a time (N ~ U{2..7} for each, then U(-1, 1) parameters for 7 maps, of which
    the first N are used), so a category is one stream of candidates whatever is accepted when.

    Raises:
        UsageError: nothing acceptable within ``max_attempts``.
    """
    from fracgen.kernels.categories import SEARCH_POINTS, SEARCH_SIZE, first_accepted

    rng = generator(seed, SEARCH, category)
    uniforms = choice_uniforms(seed, category, SEARCH_POINTS)
    points = np.empty((2, SEARCH_POINTS))
    image = np.zeros((SEARCH_SIZE, SEARCH_SIZE), np.uint8)
    need = math.ceil(min_fill * image.size)
    best = 0
    lo, hi = MAPS
    for start in range(0, max_attempts, BATCH):
        counts = rng.integers(lo, hi, BATCH)
        params = rng.uniform(-1.0, 1.0, (BATCH, hi - 1, 6))
        size = min(BATCH, max_attempts - start)
        index, lit = first_accepted(counts[:size], params[:size], uniforms, points, image, need)
        best = max(best, lit)
        if index >= 0:
            maps = params[index, : counts[index]].copy()
            return System(maps=maps, probabilities=ifs.probabilities(maps), sigma=ifs.sigma_factor(maps),
                          fill=lit / image.size, attempts=start + index + 1)
    raise UsageError(f"FractalDB search: category {category} found nothing filling --min-fill {min_fill} in "
                     f"{max_attempts} attempts (best {best / image.size:.3f}); lower --min-fill or raise "
                     "--max-attempts")


def category_fill(system: System, seed: int, category: int) -> float:
    """The fill the search measures for a given system as category ``category`` (-1.0 when it diverges)."""
    from fracgen.kernels.categories import SEARCH_POINTS, SEARCH_SIZE, point_lit

    points = np.empty((2, SEARCH_POINTS))
    image = np.zeros((SEARCH_SIZE, SEARCH_SIZE), np.uint8)
    lit = point_lit(system.maps, np.cumsum(system.probabilities), choice_uniforms(seed, category, SEARCH_POINTS),
                    points, image, 0)
    return lit / image.size if lit >= 0 else -1.0


CUT = 100  # the released __rescale deletes the 100 points before the first nan


def truncated_fill(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray, masks: np.ndarray | None, canvas,
                   style: str) -> float:
    """Render into the canvas; a chaos game that diverges is drawn from the points the released FractalDB code
    keeps (``released_cut``). Where it keeps none (it raises) or keeps an infinity (its pixels are undefined), the
    image is blank."""
    from fracgen.kernels import chaos

    fill = chaos.render(maps, probs, uniforms, masks, canvas.image, canvas.points, style)
    if fill >= 0:
        return fill
    n = released_cut(maps, np.cumsum(probs), uniforms, canvas.points)
    if n is None:
        canvas.image[:] = 0
        return 0.0
    return chaos.raster(canvas.points[:n], masks[:n] if masks is not None else None, canvas.image, style) / \
        canvas.image.size


def released_cut(maps: np.ndarray, cumprob: np.ndarray, uniforms: np.ndarray, points: np.ndarray) -> int | None:
    """How many leading points of a diverged chain FractalDB's ``__rescale`` keeps, when they are all finite.

    The released code (``ifs_function.py``) runs the chain in Python floats to the end, where an overflow gives
    inf and then nan, and deletes the 100 points before the first nan of x and every nan point (then the same for
    y); a nan reaches the other coordinate a step later, so what it keeps is the prefix before (the first nan of x,
    or of y when x has none) - 100. ``chaos_game`` stopped at the first non-finite point t0; the chain goes on here
    from t0, at most 100 steps (a nan later than that leaves an inf in the kept points).

    Args:
        maps, cumprob, uniforms: the chain's, as ``kernels.chaos.chaos_game`` took them.
        points: (T, 2) float64 as ``chaos_game`` left it: written up to and including t0.

    Returns:
        The count kept, or None when the released code keeps none (it raises) or an infinite point.
    """
    total = points.shape[0]
    t0 = int(np.flatnonzero(~np.isfinite(points).all(axis=1))[0])
    x, y = float(points[t0, 0]), float(points[t0, 1])
    nan_x = t0 if math.isnan(x) else -1
    nan_y = t0 if math.isnan(y) else -1
    rows, t = maps.tolist(), t0  # Python floats: inf and nan without numpy's warnings, as released
    while nan_x < 0 and t < total - 1 and t < t0 + CUT:
        a, b, c, d, e, f = rows[int(np.searchsorted(cumprob[:-1], uniforms[t], side="left"))]  # chaos_game's rule
        x, y = a * x + b * y + e, c * x + d * y + f
        t += 1
        nan_y = t if nan_y < 0 and math.isnan(y) else nan_y
        nan_x = t if math.isnan(x) else nan_x
    first = nan_x if nan_x >= 0 else (nan_y if t == total - 1 else -1)  # x never nan: y's nan is the last point
    kept = first - CUT
    return kept if first >= 0 and 1 <= kept <= t0 else None


def _variation(cfg, instance: int) -> tuple[int, int, int]:
    """(weight row, patch instance, flip) of an image: FractalDB's grid, or OFDB's fixed weights whose variant v
    draws the masks of patch instance v, unflipped."""
    if cfg.patch_variants > 1 or cfg.ofdb_weights != "identity":
        return OFDB_WEIGHTS[cfg.ofdb_weights], instance, 0
    return instance_of(instance, cfg.instances)


def _render_one(plan, index: int, canvas) -> tuple[np.ndarray, dict]:
    """Image ``index`` alone (unflipped; ``render`` flips it)."""
    cfg = plan.config
    label, instance = divmod(index, cfg.per_class)
    base = plan.systems[label]
    row, patch, flip = _variation(cfg, instance)
    maps = base.maps * weights()[row]
    path = cfg.family.masks_path(label, row, patch)
    masks = draw_masks(generator(cfg.seed, *path), cfg.points) if cfg.style == "reference" else None
    fill = truncated_fill(maps, base.probabilities, choice_uniforms(cfg.seed, label, cfg.points), masks, canvas,
                          cfg.style)
    meta = {"label": label, "fractal": label, "instance": instance, "weights": row, "patch": patch, "flip": flip,
            "fill": fill}
    if cfg.patch_variants > 1:
        meta["variant"] = instance
    return canvas.image, meta


def _render_chains(plan, indices: list[int]) -> dict[int, tuple[np.ndarray, dict]]:
    """Images rendered LANES at a time, each chain with its category's map choices. A chain that diverges is left
    to the one-image path, which draws its truncated chain as the released code does."""
    from fracgen.kernels import chaos

    cfg = plan.config
    choices, masks, samples = {}, {}, []
    for index in indices:
        label, instance = divmod(index, cfg.instances)
        base = plan.systems[label]
        if len(base.maps) > chaos.MAX_CHAIN_MAPS:
            continue  # map choices are bytes: left to the one-image path
        row, patch, flip = instance_of(instance, cfg.instances)
        if label not in choices:
            choices[label] = chaos.map_choices(choice_uniforms(cfg.seed, label, cfg.points),
                                               np.cumsum(base.probabilities))
        path = cfg.family.masks_path(label, row, patch)
        if path not in masks:
            masks[path] = draw_masks(generator(cfg.seed, *path), cfg.points)
        samples.append((index, label, instance, row, patch, flip, path))
    ready = {}
    for start in range(0, len(samples), chaos.LANES):
        ready.update(_lanes(plan, samples[start:start + chaos.LANES], choices, masks))
    return ready


def _lanes(plan, batch: list[tuple], choices: dict, masks: dict) -> dict[int, tuple[np.ndarray, dict]]:
    """One kernel call over up to LANES images: index -> (bits, record) for those whose chain stayed finite."""
    from fracgen.kernels import chaos

    cfg = plan.config
    most = max(len(plan.systems[s[1]].maps) for s in batch)
    maps = np.zeros((len(batch), most, 6))  # rows past a system's maps are never chosen
    for lane, (_, label, _, row, _, _, _) in enumerate(batch):
        base = plan.systems[label].maps
        maps[lane, :len(base)] = base * weights()[row]
    bits = np.empty((len(batch), cfg.size, chaos.words_per_row(cfg.size)), np.uint64)
    fills = chaos.render_chains(maps, np.stack([choices[s[1]] for s in batch]),
                                np.stack([masks[s[6]] for s in batch]), bits)
    return {index: (bits[lane], {"label": label, "fractal": label, "instance": instance, "weights": row,
                                 "patch": patch, "flip": flip, "fill": float(fills[lane])})
            for lane, (index, label, instance, row, patch, flip, _) in enumerate(batch) if fills[lane] >= 0}


def _differences(config: dict) -> list[str]:
    """FractalDB/OFDB: the differences from their released scripts (no perturbation, no redraw: a category search)."""
    return [
        "**Map probabilities** p_i = |det A_i| / sum_j |det A_j| of the category's maps, as the released code.",
        f"**Chaos game**: {config.get('points', '?')} points from (0, 0), no burn-in, one map-choice sequence per "
        "category (released FractalDB/OFDB scripts: 200,000 points, the same sequence for every category); a "
        "variation whose chaos game diverges keeps the points the released code keeps (those before x's first "
        "NaN, less 100), and is blank where the released code has no image (it raises, or casts an infinity).",
        raster_text(config),
        f"**Image size** {config.get('size', '?')} px (released: 362).",
        f"**Categories** from FractalDB's search: N ~ U{{2..7}} maps, parameters ~ U(-1, 1), kept when a render at "
        f"its fixed settings (100,000 points, one pixel per point, 512 x 512) lights at least "
        f"{config.get('min_fill', 0.2)} of the pixels, whatever the images' size and points, and stays finite.",
        "**Seeds and records**: every draw comes from a generator seeded by (seed, category) for the map choices "
        "and by the render (seed, category, weight row, patch instance; OFDB: seed, category, variant) for the "
        "patch masks, fresh for every render as the released code draws them and shared by a render's 4 flips; "
        "every category's system is saved in `params.json` (the released scripts draw from unseeded global random "
        "streams and save parameters as CSV).",
    ]


register(FractalDB())
register(OFDB())
