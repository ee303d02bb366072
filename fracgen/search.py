"""Finding acceptable base systems: a finite chaos game and a render that fills enough of the canvas.

``search`` draws N maps with a target sigma-factor (Anderson & Farrell) and renders them as the dataset does
(``fracgen search``, and the base systems of a family that draws them so). System f draws from
``generator(seed, SEARCH, f)``, so it is the same whatever other systems, workers or shard ranges the build has.
``judge_systems`` refuses systems given in a params file that a family's own test refuses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fracgen import ifs
from fracgen.errors import UsageError
from fracgen.kernels import chaos
from fracgen.seeds import SEARCH, choice_uniforms, draw_masks, generator
from fracgen.systems import System

# A candidate: (maps (N, 6), the sigma-factor target it was drawn for).
Draw = Callable[[np.random.Generator], tuple[np.ndarray, float]]


def _first_acceptable(draw: Draw, index: int, *, seed: int, size: int, points: int, style: str, min_fill: float,
                      max_attempts: int) -> System | float:
    """Draw candidates for system ``index`` until one renders finite and fills >= ``min_fill``.

    Returns:
        The accepted system, or the best fill seen when none was accepted within ``max_attempts``.
    """
    rng = generator(seed, SEARCH, index)
    uniforms = choice_uniforms(seed, index, points)
    canvas = chaos.Canvas(size, points)
    best = 0.0
    for attempt in range(1, max_attempts + 1):
        maps, target = draw(rng)
        probs = ifs.probabilities(maps)
        fill = chaos.render(maps, probs, uniforms, draw_masks(rng, points), canvas.image, canvas.points, style)
        best = max(best, fill)
        if fill >= min_fill:
            return System(maps=maps, probabilities=probs, sigma=target, fill=fill, attempts=attempt)
    return best


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
    found = _first_acceptable(lambda rng: ifs.sample_system(maps, sigma, rng, margin), fractal, seed=seed,
                              size=size, points=points, style=style, min_fill=min_fill, max_attempts=max_attempts)
    if isinstance(found, System):
        return found
    raise UsageError(
        f"no system with sigma {sigma} and {maps} maps filled --min-fill {min_fill} in {max_attempts} attempts "
        f"(best fill {found:.4f}); lower --min-fill, raise --sigma, or add --points"
    )


def judge_systems(systems: list[System], fill: Callable[[int, System], float], floor: float, option: str) -> None:
    """Refuse base systems (given with ``--params``) whose chaos game diverges or whose render fills too little.

    Args:
        systems: the given systems, one per base system of the build.
        fill: the fill of system f as the build measures it (-1.0 when its chaos game diverges).
        floor: the fill each must reach, and ``option`` the option that sets it.

    Raises:
        UsageError: naming the first bad system.
    """
    for f, system in enumerate(systems):
        measured = fill(f, system)
        if measured < 0:
            raise UsageError(f"--params: system {f} diverges (its chaos game leaves the finite numbers)")
        if measured < floor:
            raise UsageError(f"--params: system {f} fills {measured:.4f} of the image, under {option} {floor}")
        if not np.isfinite(system.fill):  # a params file without fills: record the one measured here
            system.fill = measured
