"""RCDB (Kataoka et al., CVPR 2022) and VisualAtom (Takashima et al., CVPR 2023), and their LPCE forms.

- ``rcdb`` / ``visualatom``: C contour categories x I instances, 512 px, drawn by ``kernels.contours``.
- ``rcdb-lpce`` / ``visualatom-lpce``: one base contour image, L classes perturbing its start polygon's radii.

Seeded parameter draws:

The ranges, the drawing order within a category and the per-image stream follow the released scripts
(``make_rcdb.py`` with the arguments of ``RCDB_render.sh``; ``render_VisualAtom.py`` with those of
``make_VisualAtom.sh``); the random source does not. Every draw comes from a numpy generator derived from
``(seed, purpose, category[, instance])``, as in the rest of fracgen, instead of one global ``random.seed(thread
+ 1)`` stream per process, so an image is the same whatever the thread or worker count, and instance 0 of a
C x I build is the image of the C x 1 ("1K") build. The released scripts instead re-draw a category's
per-instance geometry after each instance from the running stream.

Parameters (JSON keys; released names in brackets; "i" marks a per-instance parameter):
    RCDB: vertices V [vertex_number] = int(Exp(mean 100)) redrawn until 2 < V <= 200; rings K [line_draw_num] in
        [1, 200]; perlin c in [0, 4); line_width lw in [0, 0.1) (a radial offset, not a stroke width); i: radius R
        [start_rad] in [0, 100]; i: oval_x, oval_y in [1, 2); i: centre_y [start_pos_h], centre_x [start_pos_w]
        = (size + n) / 2, n in [-400, 400]. Ring greys in [0, size // 2] (256 draws as 255).
    VisualAtom: vertices V in [200, 1000]; rings K in [1, 200]; perlin c in [0, 4); line_width lw in [0, 0.1);
        radius R in [10, 60]; wave1 n1 [nami1] in [0, 20]; wave2 n2 in [0, 20], redrawn while n2 == n1 unless
        n1 == 0; oval_x, oval_y in [1, 2); i: centre_y, centre_x = (size + n) / 2, n in [-512, 512].
        Ring greys in [0, 255].
Integer ranges are inclusive. Strokes: per ring one grey, then 2V uniforms u in [0, 1) (x then y); the
released ``uniform(0, 10000)`` Perlin argument is ``kernels.contours.PERLIN_MAX * u``.

LPCE (paper section 4.1, "perturbations to the radii"; the 1p-frac repository has no code for RCDB or
VisualAtom): one base image (category ``base``, instance 0) and its strokes are shared by all L classes; class l
multiplies the start polygon's radii by (1 + u), u ~ U(-Delta, Delta), one u per vertex ("vertex", the default:
the paper's plural "radii") or one for the whole polygon ("scalar"), drawn from the class's own generator. Every
class is perturbed, as 1p-frac perturbs every class's maps. An RCDB base whose radius is 0 would give L identical
classes, so the base moves to the next category with a non-zero radius (recorded as "category").
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fracgen.options import Option
from fracgen.presets.registry import Family, register
from fracgen.seeds import CATEGORY, IMAGE, LPCE, generator

LPCE_MODES = ("vertex", "scalar")
KINDS = ("rcdb", "visualatom")
CENTRE_SPREAD = {"rcdb": 400, "visualatom": 512}  # the released start_pos
BACKGROUND = {"rcdb": 255, "visualatom": 0}
MOST_VERTICES = {"rcdb": 200, "visualatom": 1000}  # the released vertex ranges


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown contour kind {kind!r}; expected one of {KINDS}")


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """``random.randint(lo, hi)``: both ends included."""
    return int(rng.integers(lo, hi + 1))


def draw_category(kind: str, rng: np.random.Generator) -> dict:
    """One category's parameters, in the released drawing order (see the module docstring).

    Returns:
        JSON-able dict. rcdb: {"vertices", "rings", "perlin", "line_width"}; visualatom: those and {"radius",
        "wave1", "wave2", "oval_x", "oval_y"}. Integers as int, the rest as float.
    """
    _check_kind(kind)
    if kind == "rcdb":
        while True:
            vertices = int(rng.exponential(100.0))  # int(random.expovariate(1 / 100))
            if 2 < vertices <= 200:
                break
    else:
        vertices = _randint(rng, 200, 1000)
    params = {
        "vertices": vertices,
        "rings": _randint(rng, 1, 200),
        "perlin": float(rng.uniform(0.0, 4.0)),
        "line_width": float(rng.uniform(0.0, 0.1)),
    }
    if kind == "visualatom":
        params["radius"] = _randint(rng, 10, 60)
        params["wave1"] = _randint(rng, 0, 20)
        while True:
            params["wave2"] = _randint(rng, 0, 20)
            if params["wave2"] != params["wave1"] or params["wave1"] == 0:
                break
        params["oval_x"] = float(rng.uniform(1.0, 2.0))
        params["oval_y"] = float(rng.uniform(1.0, 2.0))
    return params


def draw_instance(kind: str, rng: np.random.Generator, size: int = 512) -> dict:
    """One instance's parameters, in the order the released scripts draw them for instance 0.

    Returns:
        JSON-able dict. rcdb: {"radius", "oval_x", "oval_y", "centre_y", "centre_x"}; visualatom: {"centre_y",
        "centre_x"}. Centres are (size + n) / 2 for an integer n, so multiples of 0.5.
    """
    _check_kind(kind)
    params = {}
    if kind == "rcdb":
        params["radius"] = _randint(rng, 0, 100)
        params["oval_x"] = float(rng.uniform(1.0, 2.0))
        params["oval_y"] = float(rng.uniform(1.0, 2.0))
    spread = CENTRE_SPREAD[kind]
    params["centre_y"] = (size + _randint(rng, -spread, spread)) / 2
    params["centre_x"] = (size + _randint(rng, -spread, spread)) / 2
    return params


def draw_strokes(kind: str, rng: np.random.Generator, vertices: int, rings: int, size: int = 512):
    """The random input of one image's rings: greys, then the Perlin arguments.

    Returns:
        greys: (rings,) int64, in [0, size // 2] for rcdb (the released ``randint(0, image_size / 2)``) and in
            [0, 255] for visualatom.
        uniforms: (rings, 2, vertices) float64 in [0, 1); [k, 0] moves x, [k, 1] moves y, by pnoise1 of
            contours.PERLIN_MAX times the value (what ``rng.uniform(0, 10000)`` gives, one numpy pass faster).
    """
    _check_kind(kind)
    top = size // 2 if kind == "rcdb" else 255
    greys = rng.integers(0, top + 1, rings, dtype=np.int64)
    uniforms = rng.random((rings, 2, vertices))
    return greys, uniforms


def category_params(kind: str, seed: int, category: int) -> dict:
    """Category ``category`` of a build with ``seed`` (what a build saves per class); a fresh dict."""
    return dict(_category_params(kind, seed, category))


@lru_cache(maxsize=64)
def _category_params(kind: str, seed: int, category: int) -> dict:
    # Cached: the instances of a category reuse it (a generator and its draws cost about 15 us per image).
    return draw_category(kind, generator(seed, CATEGORY, category))


def image_params(kind: str, seed: int, category: int, instance: int, size: int = 512) -> tuple[dict, tuple]:
    """Everything one image needs: the merged category + instance parameters and its strokes.

    Returns:
        (params, (greys, uniforms)); ``draw(kind, params, greys, uniforms, size)`` draws it.
    """
    params = category_params(kind, seed, category)
    rng = generator(seed, IMAGE, category, instance)
    params.update(draw_instance(kind, rng, size))
    return params, draw_strokes(kind, rng, params["vertices"], params["rings"], size)


def render_image(kind: str, seed: int, category: int, instance: int, size: int = 512) -> tuple[np.ndarray, dict]:
    """Image ``instance`` of category ``category``: ((size, size) uint8 grey, its JSON-able parameters)."""
    params, strokes = image_params(kind, seed, category, instance, size)
    return draw(kind, params, *strokes, size=size), params


def lpce_base(kind: str, seed: int, base: int = 0, size: int = 512) -> tuple[dict, tuple]:
    """The image all LPCE classes perturb: instance 0 of category ``base`` (or the next with a radius > 0).

    Cached, since every class reuses it: the stroke arrays are read-only, and the dict is a fresh copy.

    Returns:
        (params with an added "category" key, (greys, uniforms)), as ``image_params``.
    """
    params, strokes = _lpce_base(kind, seed, base, size)
    return dict(params), strokes


@lru_cache(maxsize=4)
def _lpce_base(kind: str, seed: int, base: int, size: int) -> tuple[dict, tuple]:
    category = base
    while True:
        params, strokes = image_params(kind, seed, category, 0, size)
        if params["radius"] > 0:
            for array in strokes:
                array.flags.writeable = False
            return dict(params, category=category), strokes
        category += 1


def draw_lpce_class(kind: str, base: dict, delta: float, mode: str, rng: np.random.Generator) -> dict:
    """One LPCE class: the multipliers (1 + u) of the base start polygon's radii.

    Args:
        kind: "rcdb" or "visualatom".
        base: the base parameters (``lpce_base``), for the vertex count.
        delta: Delta >= 0; u ~ U(-Delta, Delta).
        mode: "vertex" (one u per vertex) or "scalar" (one u for the polygon).
        rng: the class's generator.

    Returns:
        JSON-able {"mode", "u": list of V floats ("vertex") or one float ("scalar")}.
    """
    _check_kind(kind)
    if mode not in LPCE_MODES:
        raise ValueError(f"unknown LPCE mode {mode!r}; expected one of {LPCE_MODES}")
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if mode == "vertex":
        return {"mode": mode, "u": rng.uniform(-delta, delta, int(base["vertices"])).tolist()}
    return {"mode": mode, "u": float(rng.uniform(-delta, delta))}


def lpce_classes(
    kind: str, seed: int, L: int, delta: float, mode: str = "vertex", base: int = 0, size: int = 512
) -> list[dict]:
    """The L class perturbations of an LPCE build; class l draws from ``generator(seed, LPCE, l)``."""
    params, _ = lpce_base(kind, seed, base, size)
    return [draw_lpce_class(kind, params, delta, mode, generator(seed, LPCE, label)) for label in range(L)]


def render_lpce(
    kind: str, seed: int, label: int, delta: float, mode: str = "vertex", base: int = 0, size: int = 512
) -> tuple[np.ndarray, dict]:
    """Class ``label`` of an LPCE build: ((size, size) uint8 grey, its JSON-able perturbation ``{"mode", "u"}``)."""
    params, strokes = lpce_base(kind, seed, base, size)
    cls = draw_lpce_class(kind, params, delta, mode, generator(seed, LPCE, label))
    return draw(kind, params, *strokes, size=size, scale=lpce_scale(params, cls)), cls


def lpce_scale(base: dict, cls: dict) -> np.ndarray:
    """The (V,) float64 radius multipliers ``1 + u`` of a class, for ``draw(..., scale=...)``."""
    u = np.asarray(cls["u"], dtype=np.float64)
    return np.broadcast_to(1.0 + u, (int(base["vertices"]),)).copy()


def draw(
    kind: str,
    params: dict,
    greys: np.ndarray,
    uniforms: np.ndarray,
    size: int = 512,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Draw one RCDB or VisualAtom image with ``kernels.contours``.

    Args:
        kind: "rcdb" or "visualatom".
        params: the image's parameters (``image_params``): vertices V, rings K,
            perlin c, line_width lw, radius R, oval_x, oval_y, centre_x, centre_y, and for VisualAtom wave1, wave2.
        greys: (K,) int, ring greys in [0, 256], clipped into [0, 255] as Pillow clips an ink tuple.
        uniforms: (K, 2, V) float64 in [0, 1): ring k moves x by pnoise1(PERLIN_MAX * uniforms[k, 0, v]), y by
            pnoise1(PERLIN_MAX * uniforms[k, 1, v]).
        size: canvas side in pixels.
        scale: (V,) float64 multipliers of the start polygon's per-vertex radii (the LPCE classes); None = 1.

    Returns:
        (size, size) uint8 grey image (the released RGB has R = G = B).
    """
    from fracgen.kernels import contours

    _check_kind(kind)
    nv, nk = int(params["vertices"]), int(params["rings"])
    if nv < 1 or nk < 0 or size < 1:
        raise ValueError(f"need vertices >= 1, rings >= 0 and size >= 1; got {nv}, {nk}, {size}")
    greys = np.ascontiguousarray(greys, dtype=np.int64)
    uniforms = np.ascontiguousarray(uniforms, dtype=np.float64)
    if greys.shape != (nk,) or uniforms.shape != (nk, 2, nv):
        raise ValueError(f"strokes of shape {greys.shape}, {uniforms.shape} do not fit V={nv}, K={nk}")
    scale = np.ones(nv) if scale is None else np.ascontiguousarray(scale, dtype=np.float64)
    if scale.shape != (nv,):
        raise ValueError(f"scale has shape {scale.shape}, expected ({nv},)")
    centre = (float(params["centre_x"]), float(params["centre_y"]))
    rcdb = kind == "rcdb"
    # RCDB adds the centre when drawing, VisualAtom to the start polygon: both orders are kept for exact pixels.
    start = (0.0, 0.0) if rcdb else centre
    offset = centre if rcdb else (0.0, 0.0)
    n1, n2 = (-1, -1) if rcdb else (int(params["wave1"]), int(params["wave2"]))
    img = np.full((size, size), BACKGROUND[kind], np.uint8)
    geometry = np.array([params["radius"], params["oval_x"], params["oval_y"], *start, params["perlin"],
                         2.0 if rcdb else 1.0, params["line_width"], *offset], np.float64)
    contours.draw_rings(img, greys, uniforms, scale, geometry, n1, n2)
    return img


_RCDB = ("RCDB, radial contour images (Kataoka et al., CVPR 2022, released renderer of "
         "masora1030/CVPR2022-Pretrained-ViT-PyTorch)")
_VISUALATOM = ("VisualAtom, contours with two sine waves (Takashima et al., CVPR 2023, released renderer of "
               "masora1030/CVPR2023-FDSL-on-VisualAtom)")
_CONTOUR_DIFFERENCES = (
    "- **Renderer**: fracgen's numba re-implementation of the released RCDB / VisualAtom drawing (Pillow "
    "`ImageDraw.line` semantics, the `noise` package's float32 `pnoise1`), pixel-identical to it for the same "
    "random draws (the tests restate the released drawing with Pillow).\n"
    "- **Random draws**: numpy generators seeded from (seed, category, instance) instead of one global "
    "`random.seed(thread + 1)` stream per process, so an image does not depend on the thread or worker count and "
    "instance 0 of a C x I build is the image of the C x 1 build; the parameter distributions are the released "
    "ones, so the images follow them without being the released dataset's images.\n"
    "- **Output**: one grey channel (the released PNGs are RGB with R = G = B); every class's parameters are saved "
    "in `params.json` (the released scripts save instance 0's geometry only)."
)
_LPCE_DIFFERENCES = (
    "\n- **LPCE classes**: one base image; class l scales the start polygon's per-vertex radii by (1 + u), "
    "u ~ U(-Delta, Delta), with the base image's noise and greys shared by all classes. This is fracgen's reading "
    "of the paper's \"perturbations to the radii\": the 1p-frac repository has no code for it "
    "(`--radius-perturbation scalar` scales all radii by one u instead)."
)


class Contours(Family):
    """C categories x I instances of one contour kind."""

    options = frozenset({"categories", "instances", "size", "seed", "shard_size"})
    max_instances = 100_000
    fast_png = True  # many grey levels on one background: zlib would cost 5-20x the drawing
    notes = {"categories": "C x --instances images; 1000 x 1 = the 1K sets", "instances": "images per category"}

    def __init__(self, kind: str, description: str):
        self.kind, self.name, self.description = kind, kind, description
        self.tags = ("contours", kind)

    def num_classes(self, config) -> int:
        return config.categories

    def dataset_name(self, config) -> str:
        return f"{self.name}-{config.categories}-x{config.instances}"

    def warnings(self, config) -> list[str]:
        if config.size >= 512:
            return []
        # the released centre spread (+-400 px RCDB, +-512 px VisualAtom) is in pixels, meant for 512 px
        return [f"--size {config.size} is under the 512 px the {self.name} renderer is made for: its centres and "
                "radii are in pixels, so many images are blank or cut"]

    def render_one(self, plan, label: int, instance: int) -> tuple[np.ndarray, dict]:
        cfg = plan.config
        image, params = render_image(self.kind, cfg.seed, label, instance, cfg.size)
        return image, {"label": label, "category": label, "instance": instance, "params": params}

    def class_records(self, plan, markers: list[dict]) -> list[dict]:
        cfg = plan.config
        return [{"label": c, "category": c, "instances": cfg.instances,
                 "params": category_params(self.kind, cfg.seed, c)} for c in range(cfg.categories)]

    def card_text(self, config: dict, params: dict | None) -> dict[str, str]:
        return {"differences": _CONTOUR_DIFFERENCES}


class ContoursLPCE(Contours):
    """One base image of a contour kind and L classes perturbing its start polygon's radii."""

    options = frozenset({"delta", "L", "size", "seed", "shard_size", "radius_perturbation", "base_category"})
    own_options = (
        Option("radius_perturbation", str, "vertex", "One u ~ U(-Delta, Delta) per start vertex (the paper's "
               "'radii') or one for the whole start polygon.", choices=LPCE_MODES, absent_default=True),
        Option("base_category", int, 0, "The category of the base image.", lo=0, absent_default=True),
    )
    max_instances = 1
    notes = {}

    def __init__(self, kind: str, description: str):
        super().__init__(kind, description + (
            ", LPCE variant of the 1p-frac paper (Table 3): one base image whose start polygon's radii are "
            "multiplied by (1 + u), u ~ U(-Delta, Delta), into L classes that share its noise and ring greys "
            "(fracgen's reading of the paper: no code was released for it)."))
        self.name = f"{kind}-lpce"
        self.tags = ("contours", kind, "lpce")

    def num_classes(self, config) -> int:
        return config.L

    def dataset_name(self, config) -> str:
        mode = "" if config.radius_perturbation == "vertex" else f"-{config.radius_perturbation}"
        return f"{self.name}{mode}-delta{config.delta}-L{config.L}"

    def memory_per_class(self, config) -> float:
        # a u per start vertex: visualatom-lpce, 902 vertices, measured 177 KB a class
        return 1024 + (256 * MOST_VERTICES[self.kind] if config.radius_perturbation == "vertex" else 0)

    def render_one(self, plan, label: int, instance: int) -> tuple[np.ndarray, dict]:
        cfg = plan.config
        image, cls = render_lpce(self.kind, cfg.seed, label, cfg.delta, cfg.radius_perturbation,
                                 cfg.base_category, cfg.size)
        return image, {"label": label, "perturbation": label, **cls}

    def class_records(self, plan, markers: list[dict]) -> list[dict]:
        cfg = plan.config
        perturbations = lpce_classes(self.kind, cfg.seed, cfg.L, cfg.delta, cfg.radius_perturbation,
                                     cfg.base_category, cfg.size)
        return [{"label": k, "perturbation": k, **p} for k, p in enumerate(perturbations)]

    def params_extra(self, plan) -> dict:
        cfg = plan.config
        return {"base": lpce_base(self.kind, cfg.seed, cfg.base_category, cfg.size)[0]}

    def card_text(self, config: dict, params: dict | None) -> dict[str, str]:
        return {"differences": _CONTOUR_DIFFERENCES + _LPCE_DIFFERENCES}


register(Contours("rcdb", _RCDB + ": C categories of nested polygon rings pushed out by Perlin noise, I instances each "
                  "(new size, stretch and centre)."))
register(Contours("visualatom", _VISUALATOM + ": C categories of nested rings shaped by Perlin noise and two sine "
                  "waves, I instances each (new centre)."))
register(ContoursLPCE("rcdb", _RCDB))
register(ContoursLPCE("visualatom", _VISUALATOM))
