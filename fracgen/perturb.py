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
