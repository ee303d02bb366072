"""3D-OFDB (Nakamura et al., ICCV 2023; 1p-frac paper Tables 8 and 13): 3D fractal categories, each drawn from V
views by a restatement of the released OpenGL pipeline (``3d-ofdb-generator/`` of ryoo-nakamura/OFDB).

The released pipeline, and what this module does for each step:

- category search (``category_search.py``): N ~ U{2..7} maps of 12 parameters ~ U(-1, 1) (a 3 x 3 matrix a..i and a
  translation j, k, l), probabilities |det| / sum; a chaos game of ``point_num`` - 1 points (point_num 10,000: the
  release draws 10,000 uniforms and uses 9,999), min-max to [-1, 1], centred (divided by point_num), kept when
  the variance of x, y and z each exceeds 0.05 (``3d-ofdb_render.sh``). Category c draws its candidates from
  ``generator(seed, CANDIDATES_3D, c)``, BATCH at a time (N for each, 7 maps of parameters of which the first N
  are used, then each candidate's uniforms), so a category is the same whatever the worker count or the others.
- instance (``instance.py``): the category's maps with parameter a x 0.4 (row 0 of ``weights_ins145.csv``, the
  only row it renders), the search's probabilities (not renormalised), a fresh chaos game (``generator(seed,
  CLOUD_3D, c)``), the same normalisation, no variance test. The released script writes no model, so renders no
  image, for a cloud with NaN in y; fracgen searches such a category on (recorded as ``clouds_refused``).
- views (``render1view.py``): view i of V at i / V x 360 degrees, + 30, + a jitter u ~ U(-pi, pi) that the release
  passes to ``glm.radians``: degrees, so +-3.14 degrees (``generator(seed, VIEWS_3D, c)``); camera at distance 4,
  45-degree perspective, near 1, far 100; 1-pixel white points on black, rows bottom-up as glReadPixels returns
  them and the release saves them (``kernels.points3d`` restates Mesa llvmpipe's rules).

Options: ``--categories`` (1,000), ``--views`` V per category (12, the released ``--view_point``), ``--size`` (224), ``--points`` (10,000, the released
``point_num``), ``--variance`` (0.05), ``--max-attempts`` (10,000 candidates per category; about 1.2% pass).
Images are 8-bit grey PNGs with values {0, 255} (the released RGB PNGs have R = G = B). Any size >= 16 renders;
the released render script fails at sizes that are not a multiple of 4 (glReadPixels into a buffer without row
padding), so those images follow the same rules without a released counterpart (the build warns).

"w/ Aug." (Table 13): the released loader (``data.py``, ``ExFractal_dataset``) reads one uniformly random view
of a class each time it loads the class, so an epoch sees every class once. The released code has no patch
augmentation for 3D (only 2D-OFDB's ``draw_patch``; ``instance.py`` names ``patch_gray`` but implements only
``point_gray``). Here every view is its own sample (label = category): ``--views 1`` stores one view per
category, the default 12 all the views the loader samples from.

The search runs once, in the parent on the shared pool (``prepare``); the plan carries every category's record
to the workers, which draw its instance cloud and render its views.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from fracgen.errors import UsageError
from fracgen.options import Option
from fracgen.presets.registry import Family, register
from fracgen.seeds import CANDIDATES_3D, CLOUD_3D, VIEWS_3D, generator

NAME = "3d-ofdb"
CATEGORIES, VIEWS, SIZE, POINT_NUM, VARIANCE = 1000, 12, 224, 10_000, 0.05  # 3d-ofdb_render.sh and the scripts
MAPS = (2, 8)  # N ~ U{2..7}: np.random.randint(2, 8)
INSTANCE_WEIGHTS = (0.4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)  # weights_ins145.csv row 0: parameter a x 0.4
MAX_VIEWS = 360
MIN_POINTS = 3  # point_num - 1 points are drawn, and a variance needs two
MAX_ATTEMPTS = 10_000  # about 1.2% of candidates pass: 1,000 would fail a category of 21,000 one build in eight
BATCH = 16  # candidates drawn per generator call
LIT = 255

VARIANCE_OPTION = Option(
    "variance", float, VARIANCE, "The category search keeps a cloud whose normalised x, y and z each have a "
    "variance above this (the released --variance of 3d-ofdb_render.sh).", lo=0, hi=1, search_only=True,
    label="variance threshold (category search)")


# ------------------------------------------------------------------------------------------- the category search


def candidates(seed: int, category: int, points: int):
    """The candidates of category ``category``, BATCH at a time, from its own generator.

    Yields:
        (counts (BATCH,) int64 in 2..7, params (BATCH, 7, 12) float64 in [-1, 1), uniforms (BATCH, points - 1)
        float64 in [0, 1)): candidate t is the maps params[t, :counts[t]] and the chaos game's uniforms[t].
    """
    rng = generator(seed, CANDIDATES_3D, category)
    lo, hi = MAPS
    while True:
        counts = rng.integers(lo, hi, BATCH)
        params = rng.uniform(-1.0, 1.0, (BATCH, hi - 1, 12))
        yield counts, params, rng.random((BATCH, points - 1))


def cloud_uniforms(seed: int, category: int, points: int) -> np.ndarray:
    """The instance's chaos-game draws: (points - 1,) float64 in [0, 1)."""
    return generator(seed, CLOUD_3D, category).random(points - 1)


def jitters(seed: int, category: int, views: int) -> np.ndarray:
    """Each view's jitter: (views,) float64 ~ U(-pi, pi), in degrees as the release uses it."""
    return generator(seed, VIEWS_3D, category).uniform(-math.pi, math.pi, views)


def instance_cloud(maps: np.ndarray, probabilities: np.ndarray, uniforms: np.ndarray, points: int) -> np.ndarray:
    """instance.py's cloud: maps (N, 12) with parameter a x 0.4, the search's probabilities (N,), uniforms (n,)
    -> (3, n) float64, NaN and infinities kept as released."""
    from fracgen.kernels import points3d

    weighted = np.ascontiguousarray(maps * np.array(INSTANCE_WEIGHTS))
    return points3d.cloud(weighted, np.ascontiguousarray(probabilities), uniforms, float(points))


def search_category(category: int, seed: int, variance: float, points: int, max_attempts: int) -> dict:
    """Category ``category``: its first candidate the released search accepts and whose instance cloud has no NaN
    in y (the release renders no image of such a category).

    Returns:
        JSON-able {"maps": N x 12, "probabilities": N, "attempts": candidates drawn up to the one kept,
        "clouds_refused": accepted candidates passed over for their instance cloud}.

    Raises:
        UsageError: nothing acceptable within ``max_attempts`` candidates.
    """
    from fracgen.kernels import points3d

    work = np.empty((3, points - 1))
    done = refused = 0
    for counts, params, uniforms in candidates(seed, category, points):
        size = min(BATCH, max_attempts - done)
        start = 0
        while start < size:
            t = points3d.first_accepted(counts[start:size], params[start:size], uniforms[start:size], variance,
                                        float(points), work)
            if t < 0:
                break
            t += start
            maps = params[t, :counts[t]].copy()
            probs = points3d.map_probabilities(maps)
            cloud = instance_cloud(maps, probs, cloud_uniforms(seed, category, points), points)
            if not np.isnan(cloud[1]).any():
                return {"maps": maps.tolist(), "probabilities": probs.tolist(), "attempts": done + t + 1,
                        "clouds_refused": refused}
            refused += 1
            start = t + 1
        done += size
        if done >= max_attempts:
            raise UsageError(f"3D category search: category {category} found no cloud whose x, y and z variances "
                             f"exceed --variance {variance} in {max_attempts} attempts; lower --variance or raise "
                             "--max-attempts")
    raise AssertionError("unreachable: candidates() never ends")  # pragma: no cover


def candidate_draws(seed: int, category: int, points: int, attempts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``attempts`` candidates of a category in the order the search tries them: [(maps (N, 12),
    uniforms (points - 1,))]. What a comparison feeds the released search (np.random.randint, uniform, random)."""
    out = []
    for counts, params, uniforms in candidates(seed, category, points):
        for t in range(BATCH):
            if len(out) == attempts:
                return out
            out.append((params[t, :counts[t]].copy(), uniforms[t].copy()))
    return out  # pragma: no cover


class _CategoryJob:
    """A picklable ``category -> search record`` for the pool."""

    def __init__(self, seed: int, variance: float, points: int, max_attempts: int):
        self.task = (seed, variance, points, max_attempts)

    def __call__(self, category: int) -> dict:
        return search_category(category, *self.task)


def search_all(cfg, workers: int, progress: bool) -> list[dict]:
    """Every category's search record, searched once in the parent on the shared pool (the plan carries them)."""
    from fracgen.distribute import run_jobs

    job = _CategoryJob(cfg.seed, cfg.variance, cfg.points, cfg.max_attempts)
    return run_jobs(job, range(cfg.categories), [1] * cfg.categories, workers, progress, unit="category",
                    what="category")


def _views_of(cfg, category: int, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """What a category's views need: its cloud as the render reads it ((n, 3) float32: the released PLY's doubles
    rounded as render1view.py's np.array(..., dtype=np.float32)) and its jitters ((views,) float64)."""
    maps = tuple(map(tuple, record["maps"]))
    return _views_cached(cfg.seed, cfg.points, cfg.views, category, maps, tuple(record["probabilities"]))


@lru_cache(maxsize=8)  # a shard holds a category's views side by side: its samples are sorted by index
def _views_cached(seed: int, points: int, views: int, category: int, maps: tuple, probabilities: tuple):
    cloud = instance_cloud(np.array(maps), np.array(probabilities), cloud_uniforms(seed, category, points), points)
    return np.ascontiguousarray(cloud.T).astype(np.float32), jitters(seed, category, views)


def angle_deg(view: int, views: int, jitter: float) -> float:
    """The camera's azimuth about y in degrees: view / views x 360 + 30 + the jitter (recorded, not rendered from:
    the renderer rotates by the three angles in turn, as released)."""
    return view / views * 360.0 + 30.0 + jitter


# ------------------------------------------------------------------------------------------------- the family


class OFDB3D(Family):
    name = NAME
    description = ("3D-OFDB (Nakamura et al., ICCV 2023): C categories of 3D fractal point clouds (3D IFS found by "
                   "the released variance search), each drawn from V viewpoints around it as the released OpenGL "
                   "renderer draws them.")
    options = frozenset({"categories", "views", "size", "points", "seed", "shard_size", "max_attempts",
                         "variance"})
    own_options = (Option("views", int, VIEWS, "Views per category (the released --view_point).", lo=1, hi=MAX_VIEWS,
                          label="views per category"), VARIANCE_OPTION)
    defaults = {"categories": CATEGORIES, "size": SIZE, "points": POINT_NUM, "max_attempts": MAX_ATTEMPTS}
    tags = ("3d-ofdb", "3d-fractals", "multi-view")
    notes = {"categories": "C x --views images; 1000 = 3D-OFDB-1k",
             "points": "the released point_num: points - 1 are drawn (10000)"}
    record_bytes = 8192  # a category's search record and class record (7 maps, 12 views): measured 4.5 KB

    def num_classes(self, config) -> int:
        return config.categories

    def per_class(self, config) -> int:
        return config.views

    def prepare(self, config, workers: int, progress: bool) -> list:
        return search_all(config, workers, progress)

    def dataset_name(self, config) -> str:
        return f"{NAME}-{config.categories}-x{config.views}"

    def problems(self, config) -> list[str]:
        problems = super().problems(config)
        if config.points < MIN_POINTS:
            problems.append(f"--points must be >= {MIN_POINTS} for --preset {NAME} (the released point_num: points - "
                            f"1 are drawn, and the variance test needs two), got {config.points}")
        return problems

    def warnings(self, config) -> list[str]:
        if config.size % 4 == 0:
            return []
        return [f"--size {config.size} is not a multiple of 4: the released render script fails at such sizes "
                "(glReadPixels without row padding), so these images follow its rules without a released counterpart"]

    def image_mode(self, config) -> str:
        return "L"

    def render(self, plan, indices: list[int]):
        from fracgen.kernels import points3d

        cfg = plan.config
        image = np.empty((cfg.size, cfg.size), np.uint8)
        proj = points3d.perspective()
        for index in indices:
            label, view = divmod(index, cfg.per_class)
            cloud, jitter = _views_of(cfg, label, plan.prepared[label])
            points3d.render_view(cloud, points3d.view_matrix(view, cfg.views, jitter[view]), proj, image, LIT)
            yield index, image, {"label": label, "category": label, "view": view, "jitter_deg": float(jitter[view]),
                                 "angle_deg": angle_deg(view, cfg.views, float(jitter[view]))}

    def class_records(self, plan, markers: list[dict]) -> list[dict]:
        cfg = plan.config
        return [{"label": c, "category": c, **record, "views": cfg.views,
                 "jitters_deg": jitters(cfg.seed, c, cfg.views).tolist()}
                for c, record in enumerate(plan.prepared)]

    def params_extra(self, plan) -> dict:
        records = plan.prepared
        attempts = sum(r["attempts"] for r in records)
        return {"instance_weights": list(INSTANCE_WEIGHTS),
                "search": {"categories": len(records), "attempts": attempts,
                           "acceptance_rate": len(records) / attempts}}

    def card_text(self, config: dict, params: dict | None) -> dict[str, str]:
        points = config.get("points", "?")
        drawn = f"{points - 1:,}" if isinstance(points, int) else "?"
        return {"differences": "\n".join(f"- {item}" for item in _differences(config, params)),
                "points": f"{points} (the released point_num: {drawn} points drawn)"}


def _differences(config: dict, params: dict | None) -> list[str]:
    """Where a 3D-OFDB build departs from the released scripts (and where it does not)."""
    search = (params or {}).get("search") or {}
    rate = f" ({search['acceptance_rate']:.2%} of candidates passed in this build)" if "acceptance_rate" in search \
        else ""
    return [
        "**Renderer**: the released images come from OpenGL (PyGLM matrices, EGL on Mesa's llvmpipe); fracgen "
        "restates that pipeline operation by operation in numba (float32 matrices with the C library's cosf, sinf "
        "and tanf, the vertex shader without FMA, llvmpipe's clip test, the viewport as one fused multiply-add, "
        "1-pixel points snapped to 1/256 pixel, the rows bottom-up as the release saves them), so the same draws "
        "give the same pixels as the released script on llvmpipe with FMA. A GPU driver may round pixel "
        "boundaries otherwise.",
        f"**Categories**: the released search: N ~ U{{2..7}} maps of 12 parameters ~ U(-1, 1), probabilities "
        f"|det| / sum (numpy 1.22's bits), point_num {config.get('points', '?')} (one point fewer drawn), kept "
        f"when the variance of x, y and z each exceeds {config.get('variance', '?')}{rate}. A category whose "
        "instance cloud has NaN in y (the release renders no image of it) is searched on.",
        f"**Views**: {config.get('views', '?')} per category (the released --view_point): view i at i / V x "
        "360 + 30 degrees plus a jitter u ~ U(-pi, pi) read as degrees (the release's glm.radians(random.uniform("
        "-pi, pi))); each sample's json records its view, jitter and angle.",
        "**Seeds and records**: every draw comes from generators seeded by (seed, category) for the search "
        "candidates, the instance's chaos game and the jitters (the released scripts draw from unseeded global "
        "streams); every category's maps and probabilities are in `params.json`.",
        "**\"w/ Aug.\"**: the released loader reads one random view of a class each time it loads the class, so an "
        "epoch sees each class once; here every view is a sample of its class, so an epoch over these shards sees "
        "each class V times. The released code has no patch augmentation for 3D.",
        f"**Image**: {config.get('size', '?')} px (released 224), stored as 8-bit grey PNGs with values {{0, 255}} "
        "(the released PNGs are RGB with R = G = B), upside down as the released ones are. Sizes that are not a "
        "multiple of 4 crash the released render script; fracgen draws them with the same rules.",
    ]


register(OFDB3D())
