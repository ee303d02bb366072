"""The noise baselines of the 1p-frac paper (Table 4), ``gaussian-noise`` and ``uniform-noise``: one noise image per
class, perturbed through the parameters of its distribution.

Every class renders the same standard draw ``z`` (made once per build by ``standard_draw``) through its own
parameters, so two classes differ only by their parameters, as the fractal classes of 1p-frac share one
map-choice sequence and differ only by their maps.

Kinds (values are intensities in [0, 1], scaled by 255 and clipped into uint8):
    gaussian: each pixel's RGB ~ N(mean, cov); base mean 0.5 and std 0.2 per channel, no correlation. Rendered
        as mean + chol(cov) z with z standard normal. A class adds eps ~ U[-Delta/2, Delta/2]^3 to the mean and
        a symmetric eps (its 6 upper-triangular entries ~ U[-Delta/2, Delta/2]) to the covariance.
    uniform: each channel c of each pixel ~ U(lo_c, hi_c); base bounds [0.2, 0.8]. Rendered as
        lo + (hi - lo) z with z ~ U(0, 1). A class adds eps ~ U[-Delta/2, Delta/2]^3 to lo and another to hi.
The additive U[-Delta/2, Delta/2] draws follow the paper's Eq. 9; Delta = 0 gives the base parameters exactly.

Validity, as the fractal build handles a diverging perturbation: an eps that leaves the covariance with an
eigenvalue under MIN_EIGENVALUE, or a width hi - lo under MIN_WIDTH, is redrawn (so eps is uniform on the valid
part of the cube), up to MAX_REDRAWS times; after that the last draw is projected (eigenvalues raised to
MIN_EIGENVALUE; a narrow pair set to its midpoint -/+ MIN_WIDTH / 2). The covariance eps is large against the
base variance 0.04: with std 0.2, about 13% of first draws at Delta = 0.05 and 75% at Delta = 0.1 are not
positive-definite, and 98.5% at Delta = 1 (then about 65 draws on average). Bounds need redraws only for
Delta > 0.6 - MIN_WIDTH.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fracgen.presets.registry import Family, register
from fracgen.seeds import CHOICES, CLASS, generator

KINDS = ("gaussian", "uniform")
BASE_MEAN = (0.5, 0.5, 0.5)
BASE_STD = 0.2
BASE_LO = (0.2, 0.2, 0.2)
BASE_HI = (0.8, 0.8, 0.8)
MIN_EIGENVALUE = 1e-4  # std 0.01: the covariance stays positive-definite and its Cholesky factor well defined
MIN_WIDTH = 1e-3  # in intensity units; keeps lo < hi strictly
MAX_REDRAWS = 10_000  # enough for Delta = 1 (1.5% of covariance draws valid): failure odds about 1e-65


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {KINDS}")


def base_params(kind: str) -> dict:
    """The unperturbed distribution of ``kind``, in the format of ``draw_noise_params``.

    Args:
        kind: one of KINDS.

    Returns:
        gaussian: {"kind", "mean": 3 floats, "cov": 3 x 3 nested list, "redraws": 0, "projected": False};
        uniform: {"kind", "lo": 3 floats, "hi": 3 floats, "redraws": 0, "projected": False}.
    """
    _check_kind(kind)
    if kind == "gaussian":
        cov = (BASE_STD**2 * np.eye(3)).tolist()
        return {"kind": kind, "mean": list(BASE_MEAN), "cov": cov, "redraws": 0, "projected": False}
    return {"kind": kind, "lo": list(BASE_LO), "hi": list(BASE_HI), "redraws": 0, "projected": False}


def draw_noise_params(kind: str, delta: float, rng: np.random.Generator) -> dict:
    """One class's perturbed distribution parameters (see the module docstring).

    Args:
        kind: one of KINDS.
        delta: perturbation degree Delta >= 0; every eps ~ U[-Delta/2, Delta/2].
        rng: the class's generator; a gaussian draw takes 3 + 6 uniforms per try from it, a uniform draw 6.

    Returns:
        JSON-able dict. gaussian: {"kind": "gaussian", "mean": [3 floats], "cov": [[3 floats] x 3] symmetric
        with eigenvalues >= MIN_EIGENVALUE, "redraws": int, "projected": bool}. uniform: {"kind": "uniform",
        "lo": [3 floats], "hi": [3 floats] with hi - lo >= MIN_WIDTH, "redraws": int, "projected": bool}.
        ``redraws`` counts the rejected draws, ``projected`` says MAX_REDRAWS ran out and the last was repaired.
    """
    _check_kind(kind)
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    half = delta / 2
    if kind == "gaussian":
        mean = np.array(BASE_MEAN) + rng.uniform(-half, half, 3)
        rows, cols = np.triu_indices(3)
        for redraws in range(MAX_REDRAWS + 1):
            eps = np.zeros((3, 3))
            eps[rows, cols] = rng.uniform(-half, half, 6)
            eps[cols, rows] = eps[rows, cols]  # exactly symmetric, so Delta = 0 leaves the base untouched
            cov = BASE_STD**2 * np.eye(3) + eps
            values, vectors = np.linalg.eigh(cov)
            if values.min() >= MIN_EIGENVALUE:
                return {"kind": kind, "mean": mean.tolist(), "cov": cov.tolist(), "redraws": redraws,
                        "projected": False}
        cov = (vectors * np.maximum(values, MIN_EIGENVALUE)) @ vectors.T
        cov = (cov + cov.T) / 2
        return {"kind": kind, "mean": mean.tolist(), "cov": cov.tolist(), "redraws": MAX_REDRAWS,
                "projected": True}
    for redraws in range(MAX_REDRAWS + 1):
        lo = np.array(BASE_LO) + rng.uniform(-half, half, 3)
        hi = np.array(BASE_HI) + rng.uniform(-half, half, 3)
        narrow = hi - lo < MIN_WIDTH
        if not narrow.any():
            return {"kind": kind, "lo": lo.tolist(), "hi": hi.tolist(), "redraws": redraws, "projected": False}
    mid = (lo + hi) / 2
    lo = np.where(narrow, mid - MIN_WIDTH / 2, lo)
    hi = np.where(narrow, mid + MIN_WIDTH / 2, hi)
    return {"kind": kind, "lo": lo.tolist(), "hi": hi.tolist(), "redraws": MAX_REDRAWS, "projected": True}


def standard_draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The draw every class of a build shares.

    Args:
        kind: one of KINDS.
        size: image side in pixels, >= 1.
        rng: the build's generator for this draw (not a class's).

    Returns:
        (size, size, 3) float64: standard normals for gaussian, U(0, 1) for uniform.
    """
    _check_kind(kind)
    if kind == "gaussian":
        return rng.standard_normal((size, size, 3))
    return rng.random((size, size, 3))


def noise_image(kind: str, params: dict, z: np.ndarray) -> np.ndarray:
    """Render one class: the shared draw ``z`` pushed through the class's distribution.

    Args:
        kind: one of KINDS; must match ``params["kind"]`` when present.
        params: from ``draw_noise_params`` or ``base_params`` (only mean/cov or lo/hi are read).
        z: (H, W, 3) float64 from ``standard_draw`` (standard normals, or uniforms in [0, 1)).

    Returns:
        (H, W, 3) uint8: round(255 * value), clipped to [0, 255].
    """
    _check_kind(kind)
    if params.get("kind", kind) != kind:
        raise ValueError(f"params are for {params['kind']!r}, not {kind!r}")
    if z.ndim != 3 or z.shape[2] != 3:
        raise ValueError(f"z must be (H, W, 3), got {z.shape}")
    if kind == "gaussian":
        chol = np.linalg.cholesky(np.asarray(params["cov"], np.float64))
        values = np.asarray(params["mean"], np.float64) + z @ chol.T
    else:
        lo = np.asarray(params["lo"], np.float64)
        values = lo + (np.asarray(params["hi"], np.float64) - lo) * z
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


_TEXT = ("noise baseline of the 1p-frac paper (Table 4): one noise image whose distribution parameters are "
         "perturbed into L classes that share the same standard draws.")


@lru_cache(maxsize=2)
def _standard(seed: int, kind: str, size: int) -> np.ndarray:
    return standard_draw(kind, size, generator(seed, CHOICES, 0))


class Noise(Family):
    """One noise image of a kind, its distribution's parameters perturbed into L classes."""

    options = frozenset({"delta", "L", "size", "seed", "shard_size"})
    fast_png = True  # noise does not compress: fracgen's own deflate stores it at zlib's size, much faster

    def __init__(self, kind: str, adjective: str):
        self.kind, self.name, self.description = kind, f"{kind}-noise", f"{adjective} {_TEXT}"

    def image_mode(self, config) -> str:
        return "RGB"

    def render_one(self, plan, label: int, instance: int) -> tuple[np.ndarray, dict]:
        cfg = plan.config
        params = draw_noise_params(self.kind, cfg.delta, generator(cfg.seed, CLASS, 0, label))
        image = noise_image(self.kind, params, _standard(cfg.seed, self.kind, cfg.size))
        return image, {"label": label, "perturbation": label, "params": params}


register(Noise("gaussian", "Gaussian"))
register(Noise("uniform", "uniform"))
