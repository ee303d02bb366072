"""Dataset presets: 1p-frac, FractalDB, OFDB, noise and single-real-image baselines as plans over the same stages.

Each preset decides three things: which base systems the plan holds (searched in the parent), how many samples a
class has, and how one sample is rendered. Everything else (shards, metadata, resume, verify, publish) is shared.

- ``1p-frac``: one system, ``L`` perturbations, one image per class (the default).
- ``fractaldb``: ``C`` categories found by the FractalDB search (N ~ U{2..7}, parameters ~ U(-1, 1), kept when
  the render fills at least 0.2), each with up to 1,000 instances: 25 weight rows (the identity, and each of the
  6 parameters of every map scaled by 1-2k, 1-k, 1+k, 1+2k, k = 0.4) x 10 patch-mask instances x 4 flips.
- ``ofdb``: the same categories, one image each (weights identity, first patch instance, no flip).
- ``gaussian-noise`` / ``uniform-noise``: one noise image whose distribution parameters are perturbed into ``L``
  classes (paper Table 4); every class shares the same standard draws.
- ``real``: one real image (grey, RGB or Canny edges) whose geometry is perturbed (affine, elastic or
  polynomial) into ``L`` classes (paper Tables 11-12).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fracgen import ifs, render
from fracgen import perturb as perturb_mod
from fracgen.errors import FracgenError, UsageError
from fracgen.search import CHOICES, CLASS, SEARCH, System, choice_uniforms, draw_masks, generator

PRESETS = ("1p-frac", "fractaldb", "ofdb", "gaussian-noise", "uniform-noise", "real")
FRACTAL_PRESETS = ("1p-frac", "fractaldb", "ofdb")

FRACTALDB_K = 0.4
FRACTALDB_PATCHES = 10
FRACTALDB_FLIPS = 4
FRACTALDB_MAPS = (2, 8)  # N ~ U{2..7}
FRACTALDB_MIN_FILL = 0.2

# The options each preset reads; the CLI refuses the others so a contradiction never passes silently.
OPTIONS = {
    "1p-frac": {"sigma", "delta", "L", "maps", "fractals", "perturbation", "style", "size", "points", "min_fill",
                "margin", "seed", "shard_size", "max_redraws", "max_attempts"},
    "fractaldb": {"fractals", "instances", "style", "size", "points", "min_fill", "seed", "shard_size",
                  "max_attempts"},
    "ofdb": {"fractals", "style", "size", "points", "min_fill", "seed", "shard_size", "max_attempts"},
    "gaussian-noise": {"delta", "L", "size", "seed", "shard_size"},
    "uniform-noise": {"delta", "L", "size", "seed", "shard_size"},
    "real": {"delta", "L", "size", "seed", "shard_size", "edges", "color", "transform"},
}


def fractaldb_weights(k: float = FRACTALDB_K) -> np.ndarray:
    """FractalDB's 25 weight rows: (25, 6) float64, row 0 the identity, then parameter j x (1-2k, 1-k, 1+k, 1+2k)."""
    rows = [np.ones(6)]
    for j in range(6):
        for scale in (1 - 2 * k, 1 - k, 1 + k, 1 + 2 * k):
            row = np.ones(6)
            row[j] = scale
            rows.append(row)
    return np.array(rows)


FRACTALDB_GRID = len(fractaldb_weights()) * FRACTALDB_PATCHES * FRACTALDB_FLIPS  # 1,000 instances


def fractaldb_instance(instance: int, instances: int) -> tuple[int, int, int]:
    """(weight row, patch instance, flip) of instance i of M, spread evenly over the 1,000-instance grid."""
    g = instance * FRACTALDB_GRID // instances
    return g // (FRACTALDB_PATCHES * FRACTALDB_FLIPS), (g // FRACTALDB_FLIPS) % FRACTALDB_PATCHES, g % FRACTALDB_FLIPS


def fractaldb_search(category: int, *, seed: int, size: int, points: int, style: str, min_fill: float,
                     max_attempts: int) -> System:
    """FractalDB's category search: random unconstrained systems until one renders finite and fills enough.

    Raises:
        UsageError: nothing acceptable within ``max_attempts``.
    """
    rng = generator(seed, SEARCH, category)
    uniforms = choice_uniforms(seed, category, points)
    canvas = render.Canvas(size, points)
    best = 0.0
    for attempt in range(1, max_attempts + 1):
        n = int(rng.integers(*FRACTALDB_MAPS))
        maps = rng.uniform(-1.0, 1.0, (n, 6))
        probs = ifs.probabilities(maps)
        fill = render.render(maps, probs, uniforms, draw_masks(rng, points), canvas.image, canvas.points, style)
        best = max(best, fill)
        if fill >= min_fill:
            return System(maps=maps, probabilities=probs, sigma=ifs.sigma_factor(maps), fill=fill, attempts=attempt)
    raise UsageError(f"FractalDB search: category {category} found nothing filling --min-fill {min_fill} in "
                     f"{max_attempts} attempts (best {best:.3f}); lower --min-fill or raise --max-attempts")


def search_systems(config) -> list[System]:
    """The plan's base systems for a preset (none for noise and real images)."""
    from fracgen.search import search

    common = dict(seed=config.seed, size=config.size, points=config.points, style=config.style,
                  min_fill=config.min_fill, max_attempts=config.max_attempts)
    if config.preset == "1p-frac":
        return [search(config.sigma, maps=config.maps, fractal=f, margin=config.margin, **common)
                for f in range(config.fractals)]
    if config.preset in ("fractaldb", "ofdb"):
        return [fractaldb_search(c, **common) for c in range(config.fractals)]
    return []


def render_fill(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray, masks: np.ndarray | None,
                canvas: render.Canvas, style: str, truncate: bool = False) -> float:
    """Render into the canvas; return the fill, or -1.0 if the chaos game diverged and ``truncate`` is off.

    With ``truncate`` (FractalDB's behaviour for variations that blow up), the points before the first
    non-finite one, less 100, are drawn instead, as the released FractalDB code does.
    """
    fill = render.render(maps, probs, uniforms, masks, canvas.image, canvas.points, style)
    if fill >= 0 or not truncate:
        return fill
    bad = np.flatnonzero(~np.isfinite(canvas.points).all(axis=1))
    n = int(bad[0]) - 100 if len(bad) else 0
    if n < 2:
        canvas.image[:] = 0
        return 0.0
    return render.raster(canvas.points[:n], masks[:n] if masks is not None else None, canvas.image, style) / \
        canvas.image.size


AHEAD = 64  # samples rendered together: bounds the memory a shard's images, masks and choices hold at once


def render_ahead(plan, indices: list[int], canvas: render.Canvas) -> None:
    """Announce the samples ``render_sample`` will be asked for, in order, so that fractal samples of the
    reference look are rendered AHEAD at a time, LANES chains together (``render.render_chains``); the bytes are
    those of rendering each alone."""
    canvas.order = list(indices)
    canvas.pending = {index: at for at, index in enumerate(canvas.order)}


def _take_ready(plan, index: int, canvas: render.Canvas) -> tuple[np.ndarray, dict] | None:
    """The bits and metadata of a sample rendered ahead, rendering the next AHEAD announced ones if needed."""
    if index not in canvas.ready and index in canvas.pending:
        at = canvas.pending[index]
        chunk = [i for i in canvas.order[at:at + AHEAD] if canvas.pending.pop(i, None) is not None]
        _render_chunk(plan, chunk, canvas)
    return canvas.ready.pop(index, None)


def _render_chunk(plan, indices: list[int], canvas: render.Canvas) -> None:
    """Render samples together into ``canvas.ready``; 1p-frac classes go fractal by fractal (their chains share
    the map choices, see ``perturb.render_perturbations``)."""
    cfg = plan.config
    if cfg.preset in ("fractaldb", "ofdb") and cfg.style == "reference":
        return _fractaldb_ahead(plan, indices, canvas)
    if cfg.preset != "1p-frac" or cfg.style != "reference":
        return
    by_fractal: dict[int, list[int]] = {}
    for label in sorted({i // cfg.instances for i in indices}):
        by_fractal.setdefault(label // cfg.L, []).append(label)
    for fractal, labels in by_fractal.items():
        base = plan.systems[fractal]
        if len(base.maps) > render.MAX_CHAIN_MAPS:
            continue  # left to the one-image path
        rngs = [generator(cfg.seed, CLASS, fractal, label % cfg.L) for label in labels]
        done = perturb_mod.render_perturbations(
            base.maps, base.probabilities, choice_uniforms(cfg.seed, fractal, cfg.points), rngs, delta=cfg.delta,
            mode=cfg.perturbation, points=cfg.points, size=cfg.size, min_fill=cfg.min_fill,
            max_redraws=cfg.max_redraws)
        for label, result in zip(labels, done, strict=True):
            if not isinstance(result, int):
                bits, maps, redraws, fill = result
                canvas.ready[label] = (bits, {"label": label, "fractal": fractal, "perturbation": label % cfg.L,
                                              "maps": maps.tolist(), "redraws": redraws, "fill": fill})
            # a class with no accepted draw is left to _one_p_frac, which redraws it alone and raises


def _fractaldb_ahead(plan, indices: list[int], canvas: render.Canvas) -> None:
    """FractalDB/OFDB samples of a shard rendered LANES at a time, each chain with its category's map choices.
    A sample whose chain diverges is left to ``_fractaldb`` (it draws the truncated chain, as the released code)."""
    cfg = plan.config
    choices, masks = {}, {}
    samples = []
    for index in indices:
        label, instance = divmod(index, cfg.instances)
        if len(plan.systems[label].maps) > render.MAX_CHAIN_MAPS:
            continue  # left to the one-image path
        row, patch, flip = fractaldb_instance(instance, cfg.instances)
        base = plan.systems[label]
        if label not in choices:
            choices[label] = render.map_choices(choice_uniforms(cfg.seed, label, cfg.points),
                                                np.cumsum(base.probabilities))
        if (label, patch) not in masks:
            masks[label, patch] = draw_masks(generator(cfg.seed, CLASS, label, patch), cfg.points)
        samples.append((index, label, instance, row, patch, flip))
    if not samples:
        return
    weights = fractaldb_weights()
    most = max(len(plan.systems[s[1]].maps) for s in samples)
    for start in range(0, len(samples), render.LANES):
        batch = samples[start:start + render.LANES]
        maps = np.zeros((len(batch), most, 6))  # rows past a system's maps are never chosen
        for lane, (_, label, _, row, _, _) in enumerate(batch):
            base = plan.systems[label].maps
            maps[lane, :len(base)] = base * weights[row]
        bits = np.empty((len(batch), cfg.size, render.words_per_row(cfg.size)), np.uint64)
        fills = render.render_chains(maps, np.stack([choices[s[1]] for s in batch]),
                                     np.stack([masks[s[1], s[4]] for s in batch]), bits)
        for lane, (index, label, instance, row, patch, flip) in enumerate(batch):
            if fills[lane] >= 0:
                canvas.ready[index] = (bits[lane], {"label": label, "fractal": label, "instance": instance,
                                                    "weights": row, "patch": patch, "flip": flip,
                                                    "fill": float(fills[lane])})


def _one_p_frac(plan, label: int, canvas: render.Canvas) -> tuple[np.ndarray, dict]:
    cfg = plan.config
    ready = _take_ready(plan, label, canvas)
    if ready is not None:
        render.expand_bits(ready[0], canvas.image)
        return canvas.image, ready[1]
    fractal, k = divmod(label, cfg.L)
    base = plan.systems[fractal]
    rng = generator(cfg.seed, CLASS, fractal, k)
    uniforms = choice_uniforms(cfg.seed, fractal, cfg.points)
    for redraws in range(cfg.max_redraws + 1):
        maps = perturb_mod.perturb(base.maps, cfg.delta, cfg.perturbation, rng)
        masks = draw_masks(rng, cfg.points) if cfg.style == "reference" else None
        fill = render_fill(maps, base.probabilities, uniforms, masks, canvas, cfg.style)
        if fill >= cfg.min_fill:
            return canvas.image, {"label": label, "fractal": fractal, "perturbation": k, "maps": maps.tolist(),
                                  "redraws": redraws, "fill": fill}
    raise FracgenError(
        f"class {label} (fractal {fractal}, perturbation {k}): no perturbation with a finite chaos game and fill "
        f">= {cfg.min_fill} in {cfg.max_redraws + 1} draws; lower --delta or --min-fill"
    )


_FLIPS = (lambda im: im, lambda im: im[::-1], lambda im: im[:, ::-1], lambda im: im[::-1, ::-1])


def _fractaldb(plan, label: int, instance: int, canvas: render.Canvas) -> tuple[np.ndarray, dict]:
    cfg = plan.config
    ready = _take_ready(plan, label * cfg.instances + instance, canvas)
    if ready is not None:
        render.expand_bits(ready[0], canvas.image)
        return _FLIPS[ready[1]["flip"]](canvas.image), ready[1]
    base = plan.systems[label]
    row, patch, flip = fractaldb_instance(instance, cfg.instances)
    maps = base.maps * fractaldb_weights()[row]
    masks = draw_masks(generator(cfg.seed, CLASS, label, patch), cfg.points) if cfg.style == "reference" else None
    fill = render_fill(maps, base.probabilities, choice_uniforms(cfg.seed, label, cfg.points), masks, canvas, cfg.style,
                       truncate=True)
    return _FLIPS[flip](canvas.image), {"label": label, "fractal": label, "instance": instance, "weights": row,
                                        "patch": patch, "flip": flip, "fill": fill}


@lru_cache(maxsize=2)
def _noise_draws(seed: int, kind: str, size: int) -> np.ndarray:
    from fracgen import noise

    return noise.standard_draw(kind, size, generator(seed, CHOICES, 0))


def _noise(plan, label: int) -> tuple[np.ndarray, dict]:
    from fracgen import noise

    cfg = plan.config
    kind = cfg.preset.removesuffix("-noise")
    params = noise.draw_noise_params(kind, cfg.delta, generator(cfg.seed, CLASS, 0, label))
    image = noise.noise_image(kind, params, _noise_draws(cfg.seed, kind, cfg.size))
    return image, {"label": label, "perturbation": label, "params": params}


@lru_cache(maxsize=2)
def _source(path: str, size: int, edges: str, color: str) -> np.ndarray:
    from fracgen import realimage

    return realimage.prepare(realimage.load_image(path, size), edges=edges, color=color)


def _real(plan, label: int) -> tuple[np.ndarray, dict]:
    from fracgen import realimage

    cfg = plan.config
    params = realimage.draw_transform(cfg.transform, cfg.delta, generator(cfg.seed, CLASS, 0, label))
    image = realimage.apply_transform(_source(plan.source, cfg.size, cfg.edges, cfg.color), cfg.transform, params)
    return image, {"label": label, "perturbation": label, "transform": cfg.transform, "params": params}


def render_sample(plan, index: int, canvas: render.Canvas) -> tuple[np.ndarray, dict]:
    """Render sample ``index`` of a plan.

    Args:
        plan: the build's plan.
        index: sample index; label = index // instances, instance = index % instances.
        canvas: reusable buffers (the returned image may be a view of ``canvas.image``).

    Returns:
        The image ((size, size) uint8 grey, or (size, size, 3) uint8) and the sample's metadata (its ``json``).
    """
    label, instance = divmod(index, plan.config.instances)
    preset = plan.config.preset
    if preset == "1p-frac":
        return _one_p_frac(plan, label, canvas)
    if preset in ("fractaldb", "ofdb"):
        return _fractaldb(plan, label, instance, canvas)
    if preset in ("gaussian-noise", "uniform-noise"):
        return _noise(plan, label)
    return _real(plan, label)
