"""LIEP perturbations of an IFS's parameters, one per class, drawn from the class's own generator.

multiplicative (the released code, which produced the paper's numbers): theta' = theta * (1 + u),
    u ~ U(-Delta, Delta) independently for each of the 6 parameters of each map.
additive (the paper's Eq. 9): theta' = theta + eps, eps ~ U[-Delta/2, Delta/2]^(6N).
The map probabilities stay those of the base system, as in the released code.
"""

from __future__ import annotations

import numpy as np

MODES = ("multiplicative", "additive")


def perturb(maps: np.ndarray, delta: float, mode: str, rng: np.random.Generator) -> np.ndarray:
    """One perturbed copy of ``maps``.

    Args:
        maps: (N, 6) float64 base parameters.
        delta: perturbation degree, >= 0.
        mode: one of MODES.
        rng: the class's generator.

    Returns:
        (N, 6) float64.
    """
    if mode == "multiplicative":
        return maps * (1.0 + rng.uniform(-delta, delta, maps.shape))
    if mode == "additive":
        return maps + rng.uniform(-delta / 2, delta / 2, maps.shape)
    raise ValueError(f"unknown perturbation mode {mode!r}; expected one of {MODES}")


def render_perturbations(base_maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray,
                         rngs: list[np.random.Generator], *, delta: float, mode: str, points: int, size: int,
                         min_fill: float, max_redraws: int) -> list[tuple[np.ndarray, np.ndarray, int, float] | int]:
    """Draw and render (reference look) the accepted perturbation of several classes of one fractal at once.

    Each class draws from its own generator exactly as a class rendered alone does (perturbation, then patch
    masks, again for every redraw), so the bytes do not depend on which classes are batched together; the
    classes' chains share the fractal's map-choice draws, so ``chaos.render_chains`` runs them together.

    Args:
        base_maps: (N, 6) float64 base system.
        probs: (N,) float64 its map probabilities.
        uniforms: (points - 1,) float64 the fractal's map-choice draws.
        rngs: one generator per class.
        delta, mode: the perturbation (see ``perturb``).
        points, size: chaos-game points and image side.
        min_fill: lit fraction an accepted image reaches.
        max_redraws: redraws allowed per class.

    Returns:
        Per class, in the order of ``rngs``: (bits (size, words) uint64, maps (N, 6), redraws, fill), or the
        number of draws made when no draw within ``max_redraws + 1`` was accepted.
    """
    from fracgen.kernels import chaos
    from fracgen.kernels.masks import draw_masks_fast

    choices = chaos.map_choices(uniforms, np.cumsum(probs))
    results: list = [None] * len(rngs)
    draws = [0] * len(rngs)
    pending = list(range(len(rngs)))
    lanes = chaos.LANES
    masks = np.empty((lanes, points), np.uint16)
    bits = np.empty((lanes, size, chaos.words_per_row(size)), np.uint64)
    while pending:
        batch, pending = pending[:lanes], pending[lanes:]
        maps = np.empty((len(batch),) + base_maps.shape)
        for lane, i in enumerate(batch):
            maps[lane] = perturb(base_maps, delta, mode, rngs[i])
            masks[lane] = draw_masks_fast(rngs[i], points)
            draws[i] += 1
        fills = chaos.render_chains(maps, choices, masks[:len(batch)], bits[:len(batch)])
        for lane, i in enumerate(batch):
            if fills[lane] >= min_fill:
                results[i] = (bits[lane].copy(), maps[lane], draws[i] - 1, float(fills[lane]))
            elif draws[i] > max_redraws:
                results[i] = draws[i]
            else:
                pending.append(i)
    return results
