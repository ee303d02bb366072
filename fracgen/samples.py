"""Rendering one sample: what each preset's ``sampler`` (``fracgen.presets``) does with one class.

- ``perturbed-ifs`` (1p-frac): class k of fractal f perturbs the base maps with its own generator and redraws
  until the render is finite and fills enough.
- ``fractaldb`` (FractalDB, OFDB): instance i of category c scales the base maps by a weight row, draws one of
  10 patch-mask instances and flips; a render that blows up is truncated as the released FractalDB code does.
  With ``--patch-variants K`` (1p-frac, OFDB) variant v keeps the class's points and draws fresh patch masks.
- ``noise``: the shared standard draws shaped by the class's distribution parameters.
- ``contour`` (RCDB, VisualAtom): instance i of category c (``fracgen.contour_params``, ``fracgen.contours``).
- ``contour-lpce``: class l perturbs the radii of the shared base contour image.
- ``real-image``: the source image under the class's geometric transform.

Fractal samples of the reference look are rendered ahead (issue 13): ``shard`` announces a shard's samples with
``render_ahead``, and the first ``render_sample`` of a chunk renders AHEAD of them together, ``chaos.LANES``
chains at a time (``chaos.render_chains``), with the bytes of rendering each alone. A sampler with no entry in
``BATCHED``, the points look, and systems of more maps than a map choice holds take the one-image path.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fracgen import perturb as perturb_mod
from fracgen.errors import UsageError
from fracgen.kernels import chaos
from fracgen.presets import OFDB_WEIGHTS, PRESETS, fractaldb_instance, fractaldb_weights
from fracgen.seeds import CHOICES, CLASS, choice_uniforms, draw_masks, generator


def render_fill(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray, masks: np.ndarray | None,
                canvas: chaos.Canvas, style: str, truncate: bool = False) -> float:
    """Render into the canvas; return the fill, or -1.0 if the chaos game diverged and ``truncate`` is off.

    With ``truncate`` (FractalDB's behaviour for variations that blow up), the points before the first
    non-finite one, less 100, are drawn instead, as the released FractalDB code does.
    """
    fill = chaos.render(maps, probs, uniforms, masks, canvas.image, canvas.points, style)
    if fill >= 0 or not truncate:
        return fill
    bad = np.flatnonzero(~np.isfinite(canvas.points).all(axis=1))
    n = int(bad[0]) - 100 if len(bad) else 0
    if n < 2:
        canvas.image[:] = 0
        return 0.0
    return chaos.raster(canvas.points[:n], masks[:n] if masks is not None else None, canvas.image, style) / \
        canvas.image.size


def _perturbed_ifs(plan, label: int, instance: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
    cfg = plan.config
    ready = _take_ready(plan, label, canvas)
    if ready is not None:
        chaos.expand_bits(ready[0], canvas.image)
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
            meta = {"label": label, "fractal": fractal, "perturbation": k, "maps": maps.tolist(),
                    "redraws": redraws, "fill": fill}
            if cfg.patch_variants == 1:
                return canvas.image, meta
            if instance > 0:  # the class's points, fresh masks; the fill may differ a little from variant 0's
                masks = draw_masks(generator(cfg.seed, CLASS, fractal, k, instance), cfg.points)
                meta["fill"] = render_fill(maps, base.probabilities, uniforms, masks, canvas, cfg.style)
            return canvas.image, dict(meta, variant=instance)
    raise UsageError(
        f"class {label} (fractal {fractal}, perturbation {k}): no perturbation with a finite chaos game and fill "
        f">= {cfg.min_fill} in {cfg.max_redraws + 1} draws; lower --delta or --min-fill"
    )


_FLIPS = (lambda im: im, lambda im: im[::-1], lambda im: im[:, ::-1], lambda im: im[::-1, ::-1])


def _fractaldb(plan, label: int, instance: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
    cfg = plan.config
    ready = _take_ready(plan, label * cfg.instances + instance, canvas)
    if ready is not None:
        chaos.expand_bits(ready[0], canvas.image)
        return _FLIPS[ready[1]["flip"]](canvas.image), ready[1]
    base = plan.systems[label]
    if cfg.patch_variants > 1 or cfg.ofdb_weights != "identity":
        # OFDB: variant v draws the masks of FractalDB's patch instance v over the same weights, unflipped.
        row, patch, flip = OFDB_WEIGHTS[cfg.ofdb_weights], instance, 0
    else:
        row, patch, flip = fractaldb_instance(instance, cfg.instances)
    maps = base.maps * fractaldb_weights()[row]
    masks = draw_masks(generator(cfg.seed, CLASS, label, patch), cfg.points) if cfg.style == "reference" else None
    fill = render_fill(maps, base.probabilities, choice_uniforms(cfg.seed, label, cfg.points), masks, canvas, cfg.style,
                       truncate=True)
    meta = {"label": label, "fractal": label, "instance": instance, "weights": row, "patch": patch, "flip": flip,
            "fill": fill}
    if cfg.patch_variants > 1:
        meta["variant"] = instance
    return _FLIPS[flip](canvas.image), meta


def _perturbed_ifs_ahead(plan, indices: list[int], canvas: chaos.Canvas) -> None:
    """1p-frac classes rendered fractal by fractal: their chains share the map choices (see
    ``perturb.render_perturbations``). One image per class, so sample index = label."""
    cfg = plan.config
    by_fractal: dict[int, list[int]] = {}
    for label in sorted({i // cfg.instances for i in indices}):
        by_fractal.setdefault(label // cfg.L, []).append(label)
    for fractal, labels in by_fractal.items():
        base = plan.systems[fractal]
        if len(base.maps) > chaos.MAX_CHAIN_MAPS:
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
            # a class with no accepted draw is left to _perturbed_ifs, which redraws it alone and raises


def _fractaldb_ahead(plan, indices: list[int], canvas: chaos.Canvas) -> None:
    """FractalDB/OFDB samples rendered LANES at a time, each chain with its category's map choices. A sample
    whose chain diverges is left to ``_fractaldb`` (it draws the truncated chain, as the released code)."""
    cfg = plan.config
    choices, masks = {}, {}
    samples = []
    for index in indices:
        label, instance = divmod(index, cfg.instances)
        base = plan.systems[label]
        if len(base.maps) > chaos.MAX_CHAIN_MAPS:
            continue  # left to the one-image path
        row, patch, flip = fractaldb_instance(instance, cfg.instances)
        if label not in choices:
            choices[label] = chaos.map_choices(choice_uniforms(cfg.seed, label, cfg.points),
                                                np.cumsum(base.probabilities))
        if (label, patch) not in masks:
            masks[label, patch] = draw_masks(generator(cfg.seed, CLASS, label, patch), cfg.points)
        samples.append((index, label, instance, row, patch, flip))
    if not samples:
        return
    weights = fractaldb_weights()
    most = max(len(plan.systems[s[1]].maps) for s in samples)
    for start in range(0, len(samples), chaos.LANES):
        batch = samples[start:start + chaos.LANES]
        maps = np.zeros((len(batch), most, 6))  # rows past a system's maps are never chosen
        for lane, (_, label, _, row, _, _) in enumerate(batch):
            base = plan.systems[label].maps
            maps[lane, :len(base)] = base * weights[row]
        bits = np.empty((len(batch), cfg.size, chaos.words_per_row(cfg.size)), np.uint64)
        fills = chaos.render_chains(maps, np.stack([choices[s[1]] for s in batch]),
                                     np.stack([masks[s[1], s[4]] for s in batch]), bits)
        for lane, (index, label, instance, row, patch, flip) in enumerate(batch):
            if fills[lane] >= 0:
                canvas.ready[index] = (bits[lane], {"label": label, "fractal": label, "instance": instance,
                                                    "weights": row, "patch": patch, "flip": flip,
                                                    "fill": float(fills[lane])})


@lru_cache(maxsize=2)
def _noise_draws(seed: int, kind: str, size: int) -> np.ndarray:
    from fracgen import noise

    return noise.standard_draw(kind, size, generator(seed, CHOICES, 0))


def _noise(plan, label: int, instance: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
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


def _real(plan, label: int, instance: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
    from fracgen import realimage

    cfg = plan.config
    source = _source(plan.source, cfg.size, cfg.edges, cfg.color)
    wanted = realimage.MIN_KEPT * realimage.fill(source)
    rng = generator(cfg.seed, CLASS, 0, label)
    for redraws in range(cfg.max_redraws + 1):  # a transform that moves the image out of view is drawn again
        params = realimage.draw_transform(cfg.transform, cfg.delta, rng)
        image = realimage.apply_transform(source, cfg.transform, params)
        if realimage.fill(image) >= wanted:
            meta = {"label": label, "perturbation": label, "transform": cfg.transform, "params": params}
            return image, meta | ({"redraws": redraws} if redraws else {})
    raise UsageError(f"class {label}: no {cfg.transform} transform within --delta {cfg.delta} kept the image in "
                       f"view in {cfg.max_redraws + 1} draws; lower --delta")


def _contour(plan, label: int, instance: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
    from fracgen import contour_params

    cfg = plan.config
    image, params = contour_params.render_image(cfg.preset, cfg.seed, label, instance, cfg.size)
    return image, {"label": label, "category": label, "instance": instance, "params": params}


def _contour_lpce(plan, label: int, instance: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
    from fracgen import contour_params

    cfg = plan.config
    image, cls = contour_params.render_lpce(cfg.preset.removesuffix("-lpce"), cfg.seed, label, cfg.delta,
                                            cfg.radius_perturbation, cfg.base_category, cfg.size)
    return image, {"label": label, "perturbation": label, **cls}


SAMPLERS = {"perturbed-ifs": _perturbed_ifs, "fractaldb": _fractaldb, "noise": _noise, "real-image": _real,
            "contour": _contour, "contour-lpce": _contour_lpce}


def class_records(plan) -> list[dict] | None:
    """params.json's class records computed from the plan, for the presets whose per-sample json is not one
    record per class (contours: the category's draws; contour LPCE: the perturbations); None for the others."""
    cfg = plan.config
    sampler = PRESETS[cfg.preset].sampler
    if sampler not in ("contour", "contour-lpce"):
        return None
    from fracgen import contour_params

    if sampler == "contour":
        return [{"label": c, "category": c, "instances": cfg.instances,
                 "params": contour_params.category_params(cfg.preset, cfg.seed, c)} for c in range(cfg.categories)]
    kind = cfg.preset.removesuffix("-lpce")
    perturbations = contour_params.lpce_classes(kind, cfg.seed, cfg.L, cfg.delta, cfg.radius_perturbation,
                                                cfg.base_category, cfg.size)
    return [{"label": k, "perturbation": k, **p} for k, p in enumerate(perturbations)]


def lpce_base_record(plan) -> dict | None:
    """The base image's parameters of a contour LPCE build (params.json "base"), else None."""
    cfg = plan.config
    if PRESETS[cfg.preset].sampler != "contour-lpce":
        return None
    from fracgen import contour_params

    params, _ = contour_params.lpce_base(cfg.preset.removesuffix("-lpce"), cfg.seed, cfg.base_category, cfg.size)
    return params


# Samplers that render several samples together (reference look only: the chains kernel draws that look).
BATCHED = {"perturbed-ifs": _perturbed_ifs_ahead, "fractaldb": _fractaldb_ahead}
AHEAD = 64  # samples rendered together: bounds the memory a shard's images, masks and choices hold at once


def render_ahead(plan, indices: list[int], canvas: chaos.Canvas) -> None:
    """Announce the samples ``render_sample`` will be asked for, in order, so that the fractal samples of the
    reference look are rendered AHEAD at a time (see the module docstring); the bytes are those of
    rendering each alone."""
    canvas.order = list(indices)
    canvas.pending = {index: at for at, index in enumerate(canvas.order)}


def _take_ready(plan, index: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict] | None:
    """The bits and metadata of a sample rendered ahead, rendering the next AHEAD announced ones if
    needed; None when the sample is left to the one-image path."""
    if index not in canvas.ready and index in canvas.pending:
        at = canvas.pending[index]
        chunk = [i for i in canvas.order[at:at + AHEAD] if canvas.pending.pop(i, None) is not None]
        cfg = plan.config
        batched = BATCHED.get(PRESETS[cfg.preset].sampler)
        # the batched kernels draw one image per (class, instance) of the reference look; patch variants and
        # OFDB's released weights take the one-image path
        if batched is not None and cfg.style == "reference" and cfg.patch_variants == 1 and \
                cfg.ofdb_weights == "identity":
            batched(plan, chunk, canvas)
    return canvas.ready.pop(index, None)


def render_sample(plan, index: int, canvas: chaos.Canvas) -> tuple[np.ndarray, dict]:
    """Render sample ``index`` of a plan.

    Args:
        plan: the build's plan.
        index: sample index; label = index // per_class, instance (or patch variant) = index % per_class.
        canvas: reusable buffers (the returned image may be a view of ``canvas.image``).

    Returns:
        The image ((size, size) uint8 grey, or (size, size, 3) uint8) and the sample's metadata (its ``json``).
    """
    label, instance = divmod(index, plan.config.per_class)
    return SAMPLERS[PRESETS[plan.config.preset].sampler](plan, label, instance, canvas)
