"""Finding acceptable base systems: a finite chaos game and a render that fills enough of the canvas.

Every random draw comes from a generator derived from ``(seed, purpose, fractal index)``, so fractal f of a
build is the same whatever other fractals, workers or shard ranges the build has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from fracgen import ifs, render
from fracgen.errors import UsageError

# Purposes: every generator is derived from (seed, purpose, ...), which keeps the streams of different draws
# apart. ORDER spreads classes across shards; CHECK draws the masks that check a --params system.
SEARCH, CHOICES, CLASS, ORDER, CHECK = 0, 1, 2, 3, 4


def generator(seed: int, *path: int) -> np.random.Generator:
    """A generator for one purpose of one build, independent of every other path."""
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


@lru_cache(maxsize=8)
def choice_uniforms(seed: int, fractal: int, points: int) -> np.ndarray:
    """The map-choice draws of one fractal, shared by all its classes as in the released code: (points - 1,).

    Cached (every class of a fractal reuses them) and read-only, since the cache hands out one array.
    """
    uniforms = generator(seed, CHOICES, fractal).random(points - 1)
    uniforms.flags.writeable = False
    return uniforms


def draw_masks(rng: np.random.Generator, points: int) -> np.ndarray:
    """One random non-empty 9-bit patch mask per point: (points,) uint16 in [1, 511]."""
    return rng.integers(1, 512, points, dtype=np.uint16)


@dataclass
class System:
    """An accepted base system.

    Attributes:
        maps: (N, 6) float64 rows (a, b, c, d, e, f).
        probabilities: (N,) float64.
        sigma: the sigma-factor target that was drawn (equal to the maps' sigma-factor).
        fill: lit fraction of its base render.
        attempts: systems drawn before this one was accepted (1 = the first).
    """

    maps: np.ndarray
    probabilities: np.ndarray
    sigma: float
    fill: float
    attempts: int = 1
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "maps": self.maps.tolist(),
            "probabilities": self.probabilities.tolist(),
            "sigma": self.sigma,
            "fill": self.fill,
            "attempts": self.attempts,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict) -> System:
        """Read a system; raises UsageError naming what is malformed."""
        try:
            maps = np.asarray(data["maps"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"a system needs 'maps', a list of [a, b, c, d, e, f] rows ({e})") from None
        if maps.ndim != 2 or maps.shape[1] != 6 or len(maps) < 1 or not np.all(np.isfinite(maps)):
            raise UsageError(f"'maps' must be N >= 1 rows of 6 finite numbers, got shape {maps.shape}")
        probs = data.get("probabilities")
        try:
            probs = ifs.probabilities(maps) if probs is None else np.asarray(probs, dtype=np.float64)
        except (TypeError, ValueError):
            probs = np.array([-1.0])
        if probs.shape != (len(maps),) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
            raise UsageError("'probabilities' must be one non-negative number per map, summing to 1")
        known = {"maps", "probabilities", "sigma", "fill", "attempts"}
        values = {}
        for key, kind, default in (("sigma", float, ifs.sigma_factor(maps)), ("fill", float, float("nan")),
                                   ("attempts", int, 1)):
            try:
                values[key] = kind(data.get(key, default))
            except (TypeError, ValueError):
                raise UsageError(f"'{key}' must be a number, got {data.get(key)!r}") from None
        return cls(maps=maps, probabilities=probs, extra={k: v for k, v in data.items() if k not in known}, **values)


def search(
    sigma: float,
    *,
    maps: int = 2,
    seed: int = 0,
    fractal: int = 0,
    margin: float = ifs.SIGMA_MARGIN,
    min_fill: float = 0.05,
    size: int = 512,
    points: int = 100_000,
    style: str = "reference",
    max_attempts: int = 1000,
) -> System:
    """Sample systems with a sigma-factor near ``sigma`` until one renders finite and fills >= ``min_fill``.

    Args:
        sigma: target sigma-factor, 0 < sigma <= 3 * maps.
        maps: number of affine maps N.
        seed: the build's seed.
        fractal: index of this fractal in the build (selects an independent stream).
        margin: the target is drawn from U(sigma - margin, sigma + margin).
        min_fill: lit fraction the base render must reach, in [0, 1].
        size: render side in pixels.
        points: chaos-game points.
        style: raster style used for the fill check.
        max_attempts: systems drawn before giving up.

    Returns:
        The accepted system.

    Raises:
        UsageError: no acceptable system within ``max_attempts``.
    """
    rng = generator(seed, SEARCH, fractal)
    uniforms = choice_uniforms(seed, fractal, points)
    canvas = render.Canvas(size, points)
    best = 0.0
    for attempt in range(1, max_attempts + 1):
        m, drawn = ifs.sample_system(maps, sigma, rng, margin)
        p = ifs.probabilities(m)
        fill = render.render(m, p, uniforms, draw_masks(rng, points), canvas.image, canvas.points, style)
        best = max(best, fill)
        if fill >= min_fill:
            return System(maps=m, probabilities=p, sigma=drawn, fill=fill, attempts=attempt)
    raise UsageError(
        f"no system with sigma {sigma} and {maps} maps filled --min-fill {min_fill} in {max_attempts} attempts "
        f"(best fill {best:.4f}); lower --min-fill, raise --sigma, or add --points"
    )
