"""Iterated function systems: sampling by sigma-factor (Anderson & Farrell, WACV 2022) and map probabilities.

A system of N affine maps is stored as ``maps``: (N, 6) float64, one row ``(a, b, c, d, e, f)`` per map, so
that ``w(x, y) = (a x + b y + e, c x + d y + f)``. This is the parameter order of the released 1p-frac code.
"""

from __future__ import annotations

import numpy as np

SIGMA_MARGIN = 0.1  # the released code draws the target from U(sigma - 0.1, sigma + 0.1)


def sigma_factor(maps: np.ndarray) -> float:
    """The sigma-factor sum_i (s_i1 + 2 s_i2) of a system's linear parts.

    Args:
        maps: (N, 6) float64 rows (a, b, c, d, e, f).

    Returns:
        The weighted sum of singular values; 0 < sigma <= 3N for a contractive system.
    """
    linear = np.asarray(maps, dtype=np.float64)[:, :4].reshape(-1, 2, 2)
    s = np.linalg.svd(linear, compute_uv=False)
    return float(np.sum(s[:, 0] + 2.0 * s[:, 1]))


def probabilities(maps: np.ndarray) -> np.ndarray:
    """Map probabilities p_i = |det A_i| / sum_j |det A_j|, as the released code computes them.

    Args:
        maps: (N, 6) float64.

    Returns:
        (N,) float64 summing to 1 (uniform when every determinant is 0).
    """
    maps = np.asarray(maps, dtype=np.float64)
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    total = det.sum()
    if not np.isfinite(total) or total <= 0.0:
        return np.full(len(maps), 1.0 / len(maps))
    return det / total


def sample_singular_values(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Singular values of n maps whose weighted sum is exactly ``sigma`` (Anderson & Farrell's split).

    The pairs are drawn one after another so that every remaining pair can still meet the target:
    1 >= s_i1 >= s_i2 >= 0 and sum_i (s_i1 + 2 s_i2) = sigma (the bounds to within rounding, about 1e-13, where
    sigma is within rounding of 3n and every map is at the top of its range).

    Args:
        n: number of maps, >= 1.
        sigma: target, 0 < sigma <= 3n.
        rng: the generator every draw comes from.

    Returns:
        (n, 2) float64, column 0 the larger singular value.
    """
    s = np.empty((n, 2))
    p = sigma  # what the remaining pairs must add up to
    q = sigma - 3 * n + 3  # what this pair must at least take so the rest (each <= 3) can finish
    for i in range(n - 1):
        s1 = _uniform(rng, max(0.0, q / 3), min(1.0, p))
        q -= s1
        p -= s1
        s2 = _uniform(rng, max(0.0, q / 2), min(s1, p / 2))
        q = q - 2 * s2 + 3
        p -= 2 * s2
        s[i] = s1, s2
    s2 = _uniform(rng, max(0.0, (p - 1) / 2), p / 3)
    s[-1] = p - 2 * s2, s2
    return s


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``rng.uniform(low, high)``, where rounding at sigma = 3n can leave ``high`` a hair below ``low``."""
    return rng.uniform(low, max(low, high))


def sample_system(
    n: int, sigma: float, rng: np.random.Generator, margin: float = SIGMA_MARGIN
) -> tuple[np.ndarray, float]:
    """One random contractive system with a sigma-factor near ``sigma``.

    Each map is U diag(s1, s2) V with U, V random rotations with random reflections, and translations
    e, f ~ U(-1, 1). The target is drawn from U(sigma - margin, sigma + margin), clipped to (0, 3n].

    Args:
        n: number of maps.
        sigma: the sigma-factor asked for.
        rng: the generator every draw comes from.
        margin: half-width of the target's range.

    Returns:
        maps (n, 6) float64 and the target sigma that was drawn.
    """
    base = np.sign(rng.random((2 * n, 2, 1)) - 0.5) * np.eye(2)
    angle = rng.uniform(-np.pi, np.pi, 2 * n)
    c, s_ = np.cos(angle), np.sin(angle)
    rot = np.empty((2 * n, 2, 2))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = c, -s_, s_, c
    uv = rot @ base
    u, v = uv[:n], uv[n:]
    lo, hi = max(sigma - margin, 1e-9), min(sigma + margin, 3.0 * n)
    drawn = float(rng.uniform(lo, hi))
    sv = sample_singular_values(n, drawn, rng)
    linear = (u * sv[:, None, :]) @ v
    translation = rng.uniform(-1.0, 1.0, (n, 2))
    maps = np.column_stack([linear.reshape(n, 4), translation])
    return maps, drawn
