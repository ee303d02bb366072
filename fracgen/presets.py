"""Dataset presets as data: one record per family, read by the config, the plan, the CLI, the card and the preview.

Each record says which options the family reads, what a class is (so how many there are), the defaults that
differ by family, how its base systems are drawn (``fracgen.search``), how one sample is rendered
(``fracgen.samples``), how the CLI builds it, and how the dataset is named and described. Everything else
(shards, metadata, resume, verify, publish) is shared.

- ``1p-frac``: one system, ``L`` perturbations, one image per class (the default).
- ``fractaldb``: ``C`` categories found by the FractalDB search (N ~ U{2..7}, parameters ~ U(-1, 1), kept when
  the render fills at least 0.2), each with up to 1,000 instances: 25 weight rows (the identity, and each of the
  6 parameters of every map scaled by 1-2k, 1-k, 1+k, 1+2k, k = 0.4) x 10 patch-mask instances x 4 flips.
- ``ofdb``: the same categories, one image each (weights identity, first patch instance, no flip; ``--ofdb-weights
  released`` scales parameter a by 0.2, what the shipped OFDB scripts render; ``--patch-variants K``: K images
  per category with freshly drawn patch masks, the "w/ Aug." of the paper's Table 13).
- ``rcdb`` / ``visualatom``: C contour categories x I instances (``fracgen.contour_params``), 512 px.
- ``rcdb-lpce`` / ``visualatom-lpce``: one base contour image, L classes perturbing its start polygon's radii.
- ``gaussian-noise`` / ``uniform-noise``: one noise image whose distribution parameters are perturbed into ``L``
  classes (paper Table 4); every class shares the same standard draws.
- ``real``: one real image (grey, RGB or Canny edges) whose geometry is perturbed (affine, elastic or
  polynomial) into ``L`` classes (paper Tables 11-12).

No numba here: `fracgen verify`, `fracgen preview` and the CLI's option parsing read these records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FRACTALDB_K = 0.4
FRACTALDB_PATCHES = 10
FRACTALDB_FLIPS = 4
FRACTALDB_MAPS = (2, 8)  # N ~ U{2..7}
FRACTALDB_MIN_FILL = 0.2
DEFAULT_MIN_FILL = 0.05
# FractalDB's and OFDB's released render scripts: 362 px, 200,000 points.
FRACTALDB_SIZE, FRACTALDB_POINTS = 362, 200_000
DEFAULT_SIZE, DEFAULT_POINTS = 512, 100_000
# OFDB weights: "identity" (the paper's text) or "released" (row 0 of the shipped weights_0.4.csv, (0.2, 1, 1, 1,
# 1, 1), which is row 1 of fractaldb_weights()).
OFDB_WEIGHTS = {"identity": 0, "released": 1}
CONTOUR_MAX_INSTANCES = 100_000


def fractaldb_weights(k: float = FRACTALDB_K) -> np.ndarray:
    """FractalDB's 25 weight rows: (25, 6) float64, row 0 the identity, then parameter j x (1-2k, 1-k, 1+k, 1+2k)."""
    rows = [np.ones(6)]
    for j in range(6):
        for scale in (1 - 2 * k, 1 - k, 1 + k, 1 + 2 * k):
            row = np.ones(6)
            row[j] = round(scale, 12)  # the decimals of the released weights_0.4.csv (0.2, not 1 - 0.8)
            rows.append(row)
    return np.array(rows)


FRACTALDB_GRID = len(fractaldb_weights()) * FRACTALDB_PATCHES * FRACTALDB_FLIPS  # 1,000 instances


def fractaldb_instance(instance: int, instances: int) -> tuple[int, int, int]:
    """(weight row, patch instance, flip) of instance i of M, as FractalDB's own subsets take them.

    FractalDB renders, per patch instance, every weight row in all 4 flips (its 100-instance set is 25 weights x
    4 flips, the 1,000-instance set adds 10 patch instances). So instance i takes patch i // 100, and within a
    round of n <= 100 instances the flip cycles fastest and the n / 4 weight slots spread evenly over the 25 rows:
    any M >= 4 covers all 4 flips, M = 100 all 25 rows x 4 flips, M = 1,000 the whole grid once.
    """
    cells = len(fractaldb_weights()) * FRACTALDB_FLIPS  # 100 per patch instance
    patch, j = divmod(instance, cells)
    n = min(cells, instances - patch * cells)
    slots = -(-n // FRACTALDB_FLIPS)
    return (j // FRACTALDB_FLIPS) * len(fractaldb_weights()) // slots, patch, j % FRACTALDB_FLIPS


@dataclass(frozen=True)
class Preset:
    """One dataset family.

    Attributes:
        name: the ``--preset`` value (and ``config.preset``).
        options: the options it reads; the CLI refuses the others so a contradiction never passes silently.
        classes: what a class is: "fractal x perturbation" (C x L classes), "system" (C), "perturbation" (L) or
            "category" (``--categories`` C, the contour presets).
        systems: how its base systems are drawn: "sigma" (by sigma-factor), "fractaldb" (the FractalDB search),
            or None (it renders no fractal).
        sampler: how one sample is rendered: a key of ``fracgen.samples.SAMPLERS``.
        command: the CLI command that builds it: "build" or "build-real" (which takes the source image).
        naming: the dataset's name from its config (``_info.json``, the card).
        description: one sentence for the generic card.
        min_fill: default ``--min-fill``.
        max_instances: the largest ``--instances`` (images per class); the default too unless ``instances``.
        card: the card template of a one-system build, when the family has its own.
        instances: default ``--instances`` when it is not ``max_instances``.
        size: default ``--size``.
        points: default ``--points`` (chaos-game presets).
        tags: extra card tags (the Hub's ``tags``), beside the generic ones.
    """

    name: str
    options: frozenset[str]
    classes: str
    systems: str | None
    sampler: str
    command: str
    naming: Callable[[object], str]
    description: str
    min_fill: float = DEFAULT_MIN_FILL
    max_instances: int = 1
    card: str | None = None
    instances: int | None = None
    size: int = DEFAULT_SIZE
    points: int = DEFAULT_POINTS
    tags: tuple[str, ...] = ()

    @property
    def renders_fractals(self) -> bool:
        """True when its images are chaos-game renders of base systems (two grey levels)."""
        return self.systems is not None

    def num_classes(self, config) -> int:
        """Classes of a build with these options."""
        if self.classes == "fractal x perturbation":
            return config.fractals * config.L
        if self.classes == "system":
            return config.fractals
        if self.classes == "category":
            return config.categories
        return config.L

    @property
    def default_instances(self) -> int:
        """``--instances`` when not given."""
        return self.instances if self.instances is not None else self.max_instances


_FRACTAL = {"style", "size", "points", "min_fill", "seed", "shard_size", "max_attempts"}
_NOISE = {"delta", "L", "size", "seed", "shard_size"}


def _one_p_frac_name(c) -> str:
    head = "1p-frac" if c.fractals == 1 else f"{c.fractals}p-frac"
    variants = "" if c.patch_variants == 1 else f"-aug{c.patch_variants}"  # as OFDB's name
    systems = "params" if c.params_source == "file" else f"sigma{c.sigma}"  # --sigma did not steer a file's systems
    return f"{head}-{systems}-delta{c.delta}-L{c.L}{variants}"


def _noise_name(c) -> str:
    return f"{c.preset}-delta{c.delta}-L{c.L}"


def _ofdb_name(c) -> str:
    weights = "" if c.ofdb_weights == "identity" else f"-{c.ofdb_weights}"
    variants = "" if c.patch_variants == 1 else f"-aug{c.patch_variants}"
    return f"ofdb-{c.fractals}{weights}{variants}"


_CONTOUR = {"categories", "instances", "size", "seed", "shard_size"}
_CONTOUR_LPCE = {"delta", "L", "size", "seed", "shard_size", "radius_perturbation", "base_category"}
_RCDB = ("RCDB, radial contour images (Kataoka et al., CVPR 2022, released renderer of "
         "masora1030/CVPR2022-Pretrained-ViT-PyTorch)")
_VISUALATOM = ("VisualAtom, contours with two sine waves (Takashima et al., CVPR 2023, released renderer of "
               "masora1030/CVPR2023-FDSL-on-VisualAtom)")
_LPCE_TEXT = (", LPCE variant of the 1p-frac paper (Table 3): one base image whose start polygon's radii are "
              "multiplied by (1 + u), u ~ U(-Delta, Delta), into L classes that share its noise and ring greys "
              "(fracgen's reading of the paper: no code was released for it).")


def _lpce_name(c) -> str:
    mode = "" if c.radius_perturbation == "vertex" else f"-{c.radius_perturbation}"
    return f"{c.preset}{mode}-delta{c.delta}-L{c.L}"


_NOISE_TEXT = ("noise baseline of the 1p-frac paper (Table 4): one noise image whose distribution parameters are "
               "perturbed into L classes that share the same standard draws.")

_RECORDS = [
    Preset(
        name="1p-frac",
        options=frozenset(_FRACTAL | {"sigma", "delta", "L", "maps", "fractals", "perturbation", "margin",
                                      "max_redraws", "patch_variants", "base_min_fill"}),
        classes="fractal x perturbation", systems="sigma", sampler="perturbed-ifs", command="build",
        naming=_one_p_frac_name, card="1p-frac.md",
        description="1p-frac (Nakamura et al., ECCV 2024): L perturbations of the parameters of each base fractal, "
        "each perturbation its own class, one image per class.",
    ),
    Preset(
        name="fractaldb", options=frozenset(_FRACTAL | {"fractals", "instances"}),
        classes="system", systems="fractaldb", sampler="fractaldb", command="build",
        naming=lambda c: f"fractaldb-{c.fractals}-x{c.instances}",
        min_fill=FRACTALDB_MIN_FILL, max_instances=FRACTALDB_GRID, size=FRACTALDB_SIZE, points=FRACTALDB_POINTS,
        tags=("fractaldb",),
        description="FractalDB (Kataoka et al., ACCV 2020 / IJCV 2022): C categories, each an iterated function "
        "system found by the FractalDB search, each with instances from scaled parameters, patch masks and flips.",
    ),
    Preset(
        name="ofdb", options=frozenset(_FRACTAL | {"fractals", "patch_variants", "ofdb_weights"}),
        classes="system", systems="fractaldb", sampler="fractaldb", command="build",
        naming=_ofdb_name, min_fill=FRACTALDB_MIN_FILL, size=FRACTALDB_SIZE, points=FRACTALDB_POINTS,
        tags=("ofdb",),
        description="OFDB, the one-instance FractalDataBase (Nakamura et al., ICCV 2023): C fractal categories, one "
        "image each.",
    ),
    Preset(
        name="rcdb", options=frozenset(_CONTOUR), classes="category", systems=None, sampler="contour",
        command="build", naming=lambda c: f"rcdb-{c.categories}-x{c.instances}", min_fill=0.0,
        max_instances=CONTOUR_MAX_INSTANCES, instances=1, tags=("contours", "rcdb"),
        description=_RCDB + ": C categories of nested polygon rings pushed out by Perlin noise, I instances each "
        "(new size, stretch and centre).",
    ),
    Preset(
        name="visualatom", options=frozenset(_CONTOUR), classes="category", systems=None, sampler="contour",
        command="build", naming=lambda c: f"visualatom-{c.categories}-x{c.instances}", min_fill=0.0,
        max_instances=CONTOUR_MAX_INSTANCES, instances=1, tags=("contours", "visualatom"),
        description=_VISUALATOM + ": C categories of nested rings shaped by Perlin noise and two sine waves, I "
        "instances each (new centre).",
    ),
    Preset(
        name="rcdb-lpce", options=frozenset(_CONTOUR_LPCE), classes="perturbation", systems=None,
        sampler="contour-lpce", command="build", naming=_lpce_name, min_fill=0.0, tags=("contours", "rcdb", "lpce"),
        description=_RCDB + _LPCE_TEXT,
    ),
    Preset(
        name="visualatom-lpce", options=frozenset(_CONTOUR_LPCE), classes="perturbation", systems=None,
        sampler="contour-lpce", command="build", naming=_lpce_name, min_fill=0.0,
        tags=("contours", "visualatom", "lpce"), description=_VISUALATOM + _LPCE_TEXT,
    ),
    Preset(
        name="gaussian-noise", options=frozenset(_NOISE), classes="perturbation", systems=None, sampler="noise",
        command="build", naming=_noise_name, description="Gaussian " + _NOISE_TEXT,
    ),
    Preset(
        name="uniform-noise", options=frozenset(_NOISE), classes="perturbation", systems=None, sampler="noise",
        command="build", naming=_noise_name, description="uniform " + _NOISE_TEXT,
    ),
    Preset(
        name="real", options=frozenset(_NOISE | {"edges", "color", "transform"}), classes="perturbation",
        systems=None, sampler="real-image", command="build-real",
        naming=lambda c: f"real-{c.transform}-{c.edges}-{c.color}-delta{c.delta}-L{c.L}",
        description="single real image baseline of the 1p-frac paper (Tables 11-12): one real image whose geometry "
        "is perturbed into L classes.",
    ),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _RECORDS}
DEFAULT_PRESET = "1p-frac"
