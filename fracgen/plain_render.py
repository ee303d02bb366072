"""The renderer's rules in plain Python and numpy, for one picture where importing numba costs more than it saves.

`fracgen preview` draws one base fractal; importing numba (and loading the compiled kernels) takes longer than
running this chaos game once in Python (~0.1 s for 100,000 points), and it keeps `fracgen preview` free of
numba. It follows ``fracgen.kernels.chaos`` operation by operation (same map choice, same float expressions, same
truncation, later patches overwrite earlier ones), so its pixels equal the kernel's: tests/test_preview.py
checks that for both styles. The builder always uses ``fracgen.kernels.chaos``.
"""

from __future__ import annotations

import numpy as np

from fracgen.raster import PAD, STYLES, VALUE


def _patches() -> np.ndarray:
    """(512, 3, 3) uint8: the 3 x 3 patch of every 9-bit mask, bit 8 = top-left (fracgen.kernels.chaos)."""
    bits = (np.arange(512)[:, None] >> np.arange(8, -1, -1)) & 1
    return (VALUE * bits).astype(np.uint8).reshape(512, 3, 3)


def chaos_game(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray | None:
    """The points of the chaos game from (0, 0): (len(uniforms) + 1, 2) float64, or None when one is not finite."""
    cumprob = np.cumsum(probs)
    # the first map whose cumulative probability is >= the draw, else the last (the kernel's rule)
    choice = np.minimum(np.searchsorted(cumprob, uniforms, side="left"), len(maps) - 1).tolist()
    rows = np.asarray(maps, np.float64).tolist()
    xs = [0.0] * (len(choice) + 1)
    ys = [0.0] * (len(choice) + 1)
    x = y = 0.0
    for t, j in enumerate(choice, start=1):
        a, b, c, d, e, f = rows[j]
        x, y = a * x + b * y + e, c * x + d * y + f
        xs[t] = x
        ys[t] = y
    points = np.column_stack([xs, ys])
    return points if np.isfinite(points).all() else None


def render(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray, masks: np.ndarray | None, size: int,
           style: str = "reference") -> tuple[np.ndarray, float]:
    """Render one system as ``fracgen.kernels.chaos.render`` does.

    Returns:
        The (size, size) uint8 image and its fill (lit fraction), or fill -1.0 when the chaos game diverged.
    """
    image = np.zeros((size, size), np.uint8)
    points = chaos_game(maps, probs, uniforms)
    if points is None:
        return image, -1.0
    xs, ys = points[:, 0], points[:, 1]
    xmin, xmax, ymin, ymax = xs.min(), xs.max(), ys.min(), ys.max()
    span = float(size - 2 * PAD)
    top = size - 1
    if style == "reference":
        wx, wy = xmax - xmin, ymax - ymin
        if not (wx > 0.0 and wy > 0.0 and np.isfinite(wx) and np.isfinite(wy)):
            return image, 0.0
        px = ((xs - xmin) / wx * span + PAD).astype(np.int64)
        py = ((ys - ymin) / wy * span + PAD).astype(np.int64)
        rows = top - (py[:, None] + 1 + np.arange(3))  # (T, 3)
        cols = px[:, None] + 1 + np.arange(3)  # (T, 3)
        flat = (rows[:, :, None] * size + cols[:, None, :]).ravel()  # write order: point, patch row, column
        values = _patches()[masks].ravel()
        last, first_from_end = np.unique(flat[::-1], return_index=True)  # the last write to a pixel wins
        image.ravel()[last] = values[::-1][first_from_end]
    else:
        extent = max(xmax - xmin, ymax - ymin)
        if not (extent > 0.0 and np.isfinite(extent)):
            return image, 0.0
        scale = span / extent
        ox = PAD + (span - (xmax - xmin) * scale) / 2.0
        oy = PAD + (span - (ymax - ymin) * scale) / 2.0
        px = ((xs - xmin) * scale + ox).astype(np.int64)
        py = ((ys - ymin) * scale + oy).astype(np.int64)
        image[top - py, px] = VALUE
    return image, np.count_nonzero(image) / image.size


PREVIEW = 9001  # a seed purpose outside the builder's (small integers): the preview never reuses a class's draws


def base_image(params: dict | None, config: dict) -> np.ndarray | None:
    """The unperturbed base fractal of a build (``params["systems"][0]``), as the preview shows it.

    It uses the build's own map-choice draws for fractal 0 (shared by all its classes), so the base lines up
    with the classes; its patch masks come from a separate seeded generator. The base itself is not a class of
    the dataset.

    Args:
        params: the build's params.json (None when it has none).
        config: its recorded options (size, points, seed, style).

    Returns:
        (size, size) uint8 grey image, or None when there is no usable system or it does not render.
    """
    from fracgen.seeds import choice_uniforms, draw_masks, generator

    try:
        system = params["systems"][0]
        maps = np.asarray(system["maps"], np.float64)
        probs = np.asarray(system["probabilities"], np.float64)
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    size, npoints = int(config.get("size", 512)), int(config.get("points", 100_000))
    seed = int(config.get("seed", 0))
    style = config.get("style", "reference") if config.get("style") in STYLES else "reference"
    masks = draw_masks(generator(seed, PREVIEW), npoints)
    image, fill = render(maps, probs, choice_uniforms(seed, 0, npoints), masks, size, style)
    return image if fill > 0 else None
