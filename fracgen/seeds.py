"""Seeds: every random draw of a build comes from a generator derived from ``(seed, purpose, ...)``.

Deriving each stream from its purpose and indices (not from a shared generator) is what makes fractal f, class
k or shard s the same bytes whatever other fractals, workers or shard ranges the build has.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Purposes keep the streams of different draws apart. SEARCH draws base systems, CHOICES the map-choice
# sequence of a fractal, CLASS a class's perturbation, ORDER spreads classes across shards, CHECK draws the masks
# that check a --params system; the contour families draw a CATEGORY's parameters, an IMAGE's, an LPCE class's;
# the 3D family a category's search candidates (CANDIDATES_3D), its cloud's chaos game (CLOUD_3D), its views' jitter
# (VIEWS_3D).
SEARCH, CHOICES, CLASS, ORDER, CHECK = 0, 1, 2, 3, 4
CATEGORY, IMAGE, LPCE = 20, 21, 22
CANDIDATES_3D, CLOUD_3D, VIEWS_3D = 30, 31, 32
FRESH = 40  # patch masks drawn afresh each time a sample is shown (a recipe read live, "w/ Aug.")


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
    """One random non-empty 9-bit patch mask per point: (points,) uint16 in [1, 511].

    ``fracgen.masks.draw_masks_fast`` draws the same values and leaves ``rng`` in the same state, faster (numba;
    this module imports none, so that readers such as ``preview`` can draw masks without it).
    """
    return rng.integers(1, 512, points, dtype=np.uint16)
