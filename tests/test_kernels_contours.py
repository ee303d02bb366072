"""RCDB and VisualAtom: the numba kernels draw the released pixels, and the draws follow the released ranges.

The reference is ``tests/released_contours.py``: the released drawing restated with Python lists, a plain-Python
float32 Perlin noise and Pillow's own ``ImageDraw.line``, fed the same draws as the kernel.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from released_contours import draw_released, released_stream
from released_contours import pnoise1 as plain_pnoise1

from fracgen.kernels import contours
from fracgen.presets import contours as cp
from fracgen.seeds import LPCE, generator


def released(kind, params, strokes, size=512, scale=None):
    img = draw_released(kind, params, *strokes, size=size, scale=scale)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    return img[..., 0]


def perlin_inputs(n, seed=0):
    """Released-range arguments, plus negatives, lattice points and their float32 neighbours."""
    rng = np.random.default_rng(seed)
    lattice = np.arange(-300, 300, dtype=np.float32)
    near = np.concatenate([lattice, np.nextafter(lattice, np.float32(-1e9)), np.nextafter(lattice, np.float32(1e9))])
    return np.concatenate([rng.uniform(0, 10000, n), rng.uniform(-3e5, 3e5, n // 4), near.astype(np.float64)])


# --- Perlin noise ---------------------------------------------------------------------------------------------


def test_pnoise1_equals_the_noise_package():
    noise = pytest.importorskip("noise")
    x = perlin_inputs(200_000)
    ours = contours.pnoise1(x).astype(np.float64)
    theirs = np.array([noise.pnoise1(float(v)) for v in x])
    assert np.array_equal(ours, theirs)
    # keywords at the released values are the defaults
    assert noise.pnoise1(1234.567, octaves=1, repeat=1024, base=0) == noise.pnoise1(1234.567)


def test_pnoise1_equals_the_plain_restatement():
    x = perlin_inputs(20_000, seed=1)
    ours = contours.pnoise1(x).astype(np.float64)
    assert np.array_equal(ours, [plain_pnoise1(float(v)) for v in x])


def test_pnoise1_statistics_and_shape():
    p = contours.pnoise1(np.random.default_rng(2).uniform(0, 10000, (200, 500)))
    assert p.shape == (200, 500) and p.dtype == np.float32
    assert np.abs(p).max() < 1.0 and abs(float(p.mean())) < 0.01 and 0.3 < float(p.std()) < 0.36
    assert np.all(contours.pnoise1(np.arange(0.0, 50.0)) == 0)  # zero at every lattice point


# --- the line raster ------------------------------------------------------------------------------------------


def test_draw_line_equals_pillow():
    """Random segments, many off the canvas or ending on a boundary, with fractional coordinates of both signs."""
    rng = np.random.default_rng(3)
    size = 24
    ours = np.zeros((size, size), np.uint8)
    im = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(im)
    for n in range(3000):
        x0, y0, x1, y1 = rng.uniform(-12, size + 12, 4)
        if n % 4 == 0:  # short segments, degenerate ones included
            x1, y1 = x0 + rng.uniform(-2, 2), y0 + rng.uniform(-2, 2)
        g = int(rng.integers(0, 256))
        draw.line((x0, y0, x1, y1), fill=(g, g, g), width=1)
        contours.draw_line(ours, int(x0), int(y0), int(x1), int(y1), g)
        if n % 100 == 99:
            assert np.array_equal(ours, np.asarray(im)[..., 0]), n


def test_draw_line_named_cases_equal_pillow():
    """Horizontal, vertical, both diagonals, single points, both directions, and (-1, 0) truncating to column 0."""
    cases = [(2, 5, 17, 5), (17, 5, 2, 5), (4, 1, 4, 18), (4, 18, 4, 1), (1, 1, 15, 15), (15, 1, 1, 15),
             (6, 6, 6, 6), (-0.9, 3.5, 9.99, -0.5), (19.7, 19.2, 25.0, 30.0), (3, 2, 18, 9), (3, 2, 10, 19),
             (-30, 10, 50, 11), (10, -30, 11, 50), (-5, -5, 25, 25)]
    for x0, y0, x1, y1 in cases:
        ours = np.zeros((20, 20), np.uint8)
        contours.draw_line(ours, int(x0), int(y0), int(x1), int(y1), 200)
        im = Image.new("RGB", (20, 20))
        ImageDraw.Draw(im).line((x0, y0, x1, y1), fill=(200, 200, 200), width=1)
        assert np.array_equal(ours, np.asarray(im)[..., 0]), (x0, y0, x1, y1)


# --- whole images against the restatement ----------------------------------------------------------------------


def _images(kind, seed, n, max_work):
    """The first n images of categories whose V * K stays under max_work (the restatement is slow)."""
    found, category = [], 0
    while len(found) < n:
        params, strokes = cp.image_params(kind, seed, category, category % 3)
        if params["vertices"] * params["rings"] <= max_work:
            found.append((params, strokes))
        category += 1
    return found


@pytest.mark.parametrize("kind,seed,n,max_work", [("rcdb", 0, 16, 40_000), ("visualatom", 5, 4, 80_000)])
def test_images_equal_the_released_drawing(kind, seed, n, max_work):
    for params, strokes in _images(kind, seed, n, max_work):
        img = cp.draw(kind, params, *strokes)
        assert img.shape == (512, 512) and img.dtype == np.uint8
        assert np.array_equal(img, released(kind, params, strokes)), params
        assert (img != cp.BACKGROUND[kind]).any()


def test_rcdb_edge_cases_equal_the_released_drawing():
    """Grey 256 (Pillow clips it to 255), radius 0, a centre at the corner, a 3-gon, another canvas size."""
    params, (greys, uniforms) = cp.image_params("rcdb", 7, 0, 0)
    greys = greys.copy()
    greys[::2] = 256
    greys[1] = -3  # never drawn, but Pillow clips it to 0 like any ink
    cases = [
        (dict(params, radius=0), (greys, uniforms), 512),
        (dict(params, centre_x=56.0, centre_y=456.5), (greys, uniforms), 512),
        (dict(params, centre_x=0.0, centre_y=0.0, perlin=3.99), (greys, uniforms), 200),
    ]
    rng = np.random.default_rng(0)
    tri = dict(params, vertices=3, rings=40, radius=100, perlin=0.0, line_width=0.099)
    cases.append((tri, cp.draw_strokes("rcdb", rng, 3, 40), 512))
    for p, strokes, size in cases:
        assert np.array_equal(cp.draw("rcdb", p, *strokes, size=size), released("rcdb", p, strokes, size))


def test_visualatom_edge_cases_equal_the_released_drawing():
    """wave1 = wave2 = 0 (allowed when wave1 is 0), the strongest waves, a centre on the canvas edge."""
    rng = np.random.default_rng(1)
    params = cp.draw_category("visualatom", rng)
    params.update(vertices=300, rings=25, centre_x=0.0, centre_y=512.0)
    strokes = cp.draw_strokes("visualatom", rng, 300, 25)
    for waves in ((0, 0), (20, 19), (0, 7)):
        p = dict(params, wave1=waves[0], wave2=waves[1])
        assert np.array_equal(cp.draw("visualatom", p, *strokes), released("visualatom", p, strokes))
    p = dict(params, centre_x=100.5, centre_y=77.0)
    small = cp.draw("visualatom", p, *strokes, size=160)
    assert small.shape == (160, 160) and np.array_equal(small, released("visualatom", p, strokes, size=160))


@pytest.mark.parametrize("kind", cp.KINDS)
def test_render_is_pure(kind):
    """No state between calls, and the inputs (shared by LPCE classes) stay untouched."""
    params, (greys, uniforms) = cp.image_params(kind, 9, 1, 2)
    before = (dict(params), greys.copy(), uniforms.copy())
    first = cp.draw(kind, params, greys, uniforms)
    other, other_strokes = cp.image_params(kind, 9, 2, 0)
    cp.draw(kind, other, *other_strokes)
    assert np.array_equal(cp.draw(kind, params, greys, uniforms), first)
    assert params == before[0] and np.array_equal(greys, before[1]) and np.array_equal(uniforms, before[2])


SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "rcdb-visualatom-samples.png"


def test_released_random_stream_reproduces_the_authors_samples():
    """Fed the released scripts' own CPython draws, the kernels redraw the reference samples rendered by the
    released scripts (top row RCDB categories 0-3 of ``random.seed(1)`` at 3 instances per category, bottom row
    VisualAtom's at 2), as Pillow's bicubic 256-px thumbnails of them, pixel for pixel."""
    if not SAMPLES.exists():
        pytest.skip("the reference samples live outside the repository (../shared/reference)")
    grid = np.asarray(Image.open(SAMPLES))
    for row, (kind, instances) in enumerate([("rcdb", 3), ("visualatom", 2)]):
        for category, instance, params, greys, uniforms in released_stream(kind, 4, instances):
            if instance:
                continue
            img = cp.draw(kind, params, greys, uniforms)
            if kind == "rcdb":
                assert np.array_equal(img, released(kind, params, (greys, uniforms)))
            thumb = np.asarray(Image.fromarray(img).resize((256, 256), Image.BICUBIC))
            cell = grid[row * 256:(row + 1) * 256, category * 256:(category + 1) * 256]
            assert np.array_equal(thumb, cell), (kind, category)


@pytest.mark.parametrize("kind", cp.KINDS)
@pytest.mark.parametrize("mode", cp.LPCE_MODES)
def test_lpce_classes_equal_the_released_drawing(kind, mode):
    """Each class: the base image's strokes with the start radii multiplied by (1 + u), drawn the released way."""
    base, strokes = cp.lpce_base(kind, 11, base=2)
    if base["vertices"] * base["rings"] > 40_000:  # keep the slow restatement small; the perturbation is the same
        base = dict(base, rings=40_000 // base["vertices"])
        strokes = (strokes[0][: base["rings"]], strokes[1][: base["rings"]])
    classes = [cp.draw_lpce_class(kind, base, 0.1, mode, generator(11, LPCE, label)) for label in range(3)]
    images = []
    for cls in classes:
        scale = cp.lpce_scale(base, cls)
        img = cp.draw(kind, base, *strokes, scale=scale)
        assert np.array_equal(img, released(kind, base, strokes, scale=scale))
        images.append(img)
    assert not np.array_equal(images[0], images[1])


# --- LPCE semantics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", cp.KINDS)
def test_lpce_delta_zero_is_the_base_image_and_classes_share_strokes(kind):
    base, strokes = cp.lpce_base(kind, 4)
    plain = cp.draw(kind, base, *strokes)
    for cls in cp.lpce_classes(kind, 4, L=3, delta=0.0):
        assert np.array_equal(cp.draw(kind, base, *strokes, scale=cp.lpce_scale(base, cls)), plain)
    classes = cp.lpce_classes(kind, 4, L=50, delta=0.1)
    assert classes == cp.lpce_classes(kind, 4, L=50, delta=0.1)  # reproducible
    assert json.loads(json.dumps(classes)) == classes
    u = np.array([c["u"] for c in classes])
    assert u.shape == (50, base["vertices"]) and np.abs(u).max() <= 0.1 and u.std() > 0.05
    scalar = cp.lpce_classes(kind, 4, L=50, delta=0.1, mode="scalar")
    s = np.array([c["u"] for c in scalar])
    assert s.shape == (50,) and np.abs(s).max() <= 0.1 and len(set(s)) == 50
    assert np.all(cp.lpce_scale(base, scalar[0]) == 1 + s[0])


@pytest.mark.parametrize("kind", cp.KINDS)
def test_render_conveniences_agree_with_the_parts(kind):
    img, params = cp.render_image(kind, 2, 5, 1, size=256)
    p, strokes = cp.image_params(kind, 2, 5, 1, size=256)
    assert params == p and np.array_equal(img, cp.draw(kind, p, *strokes, size=256))
    assert img.shape == (256, 256)
    img, cls = cp.render_lpce(kind, 2, 3, 0.2, mode="scalar", base=1)
    base, strokes = cp.lpce_base(kind, 2, base=1)
    assert cls == cp.lpce_classes(kind, 2, L=4, delta=0.2, mode="scalar", base=1)[3]
    assert np.array_equal(img, cp.draw(kind, base, *strokes, scale=cp.lpce_scale(base, cls)))
    assert not strokes[1].flags.writeable  # the cached base is shared by every class


def test_lpce_rcdb_base_skips_a_zero_radius():
    seed = next(s for s in range(5000) if cp.image_params("rcdb", s, 0, 0)[0]["radius"] == 0)
    base, _ = cp.lpce_base("rcdb", seed, base=0)
    assert base["radius"] > 0 and base["category"] >= 1
    assert base == dict(cp.image_params("rcdb", seed, base["category"], 0)[0], category=base["category"])


def test_bad_arguments_raise():
    params, strokes = cp.image_params("rcdb", 0, 0, 0)
    with pytest.raises(ValueError, match="kind"):
        cp.draw("fractal", params, *strokes)
    with pytest.raises(ValueError, match="do not fit"):
        cp.draw("rcdb", dict(params, rings=params["rings"] + 1), *strokes)
    with pytest.raises(ValueError, match="vertices >= 1"):
        cp.draw("rcdb", dict(params, vertices=0), strokes[0], strokes[1][:, :, :0])
    with pytest.raises(ValueError, match="size >= 1"):
        cp.draw("rcdb", params, *strokes, size=0)
    with pytest.raises(ValueError, match="scale"):
        cp.draw("rcdb", params, *strokes, scale=np.ones(params["vertices"] + 1))
    with pytest.raises(ValueError, match="mode"):
        cp.draw_lpce_class("rcdb", params, 0.1, "ring", np.random.default_rng(0))
    with pytest.raises(ValueError, match="delta"):
        cp.draw_lpce_class("rcdb", params, -0.1, "vertex", np.random.default_rng(0))


# --- the draws --------------------------------------------------------------------------------------------------


def test_draws_are_reproducible_and_independent_of_other_images():
    a = cp.image_params("visualatom", 3, 10, 4)
    cp.image_params("visualatom", 3, 10, 5)
    b = cp.image_params("visualatom", 3, 10, 4)
    assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    other = cp.image_params("visualatom", 3, 10, 5)
    assert other[0]["vertices"] == a[0]["vertices"]  # same category, another instance
    assert (other[0]["centre_x"], other[0]["centre_y"]) != (a[0]["centre_x"], a[0]["centre_y"])
    assert not np.array_equal(other[1][1], a[1][1])
    assert cp.image_params("visualatom", 4, 10, 4)[0] != a[0]


def _categories(kind, n=3000, seed=0):
    rows = []
    for c in range(n):
        p = cp.category_params(kind, seed, c)
        p.update(cp.draw_instance(kind, cp.generator(seed, cp.IMAGE, c, 0)))
        rows.append(p)
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _uniform_ok(x, lo, hi):
    """Inside [lo, hi), mean and spread of U(lo, hi) within 5 standard errors."""
    n, width = len(x), hi - lo
    assert x.min() >= lo and x.max() < hi
    assert abs(x.mean() - (lo + hi) / 2) < 5 * width / math.sqrt(12 * n)
    assert abs(x.std() - width / math.sqrt(12)) < 0.05 * width


def _integers_ok(x, lo, hi):
    """Every value of [lo, hi] and nothing else (for ranges small against the sample)."""
    assert set(np.unique(x)) == set(range(lo, hi + 1))


def test_rcdb_parameters_follow_the_released_ranges():
    d = _categories("rcdb")
    k = np.arange(3, 201)
    p = np.exp(-k / 100)  # int(Exp(mean 100)) conditioned on 2 < V <= 200
    mean_v = float((k * p).sum() / p.sum())
    assert 70 < mean_v < 71.5  # the spec's 70.8
    v = d["vertices"]
    assert v.min() == 3 and v.max() <= 200 and abs(v.mean() - mean_v) < 5 * v.std() / math.sqrt(len(v))
    assert abs(np.mean(v <= 50) - p[k <= 50].sum() / p.sum()) < 0.03
    _integers_ok(d["rings"], 1, 200)
    _integers_ok(d["radius"], 0, 100)
    _uniform_ok(d["perlin"], 0, 4)
    _uniform_ok(d["line_width"], 0, 0.1)
    _uniform_ok(d["oval_x"], 1, 2)
    _uniform_ok(d["oval_y"], 1, 2)
    for key in ("centre_x", "centre_y"):
        assert set(np.unique(d[key] * 2 - 512)) <= set(range(-400, 401))
        _uniform_ok(d[key], 56 - 0.25, 456.25)  # 801 half-pixel steps: close to U over the range


def test_visualatom_parameters_follow_the_released_ranges():
    d = _categories("visualatom")
    v = d["vertices"]
    assert v.min() >= 200 and v.max() <= 1000 and abs(v.mean() - 600) < 5 * 231.5 / math.sqrt(len(v))
    _integers_ok(d["rings"], 1, 200)
    _integers_ok(d["radius"], 10, 60)
    _integers_ok(d["wave1"], 0, 20)
    _integers_ok(d["wave2"], 0, 20)
    same = d["wave1"] == d["wave2"]
    assert np.all(d["wave1"][same] == 0) and same.sum() > 0  # equal waves only when wave1 is 0 (then 1/21)
    assert abs(same.sum() / (d["wave1"] == 0).sum() - 1 / 21) < 0.12
    _uniform_ok(d["perlin"], 0, 4)
    _uniform_ok(d["line_width"], 0, 0.1)
    _uniform_ok(d["oval_x"], 1, 2)
    _uniform_ok(d["oval_y"], 1, 2)
    for key in ("centre_x", "centre_y"):
        assert set(np.unique(d[key] * 2 - 512)) <= set(range(-512, 513))
        _uniform_ok(d[key], -0.25, 512.25)  # 1025 half-pixel steps: close to U over the range


@pytest.mark.parametrize("kind,top", [("rcdb", 256), ("visualatom", 255)])
def test_strokes_follow_the_released_ranges(kind, top):
    greys, uniforms = cp.draw_strokes(kind, np.random.default_rng(0), 500, 4000)
    assert greys.shape == (4000,) and uniforms.shape == (4000, 2, 500)
    _integers_ok(greys, 0, top)
    _uniform_ok(uniforms.reshape(-1), 0, 1)


def test_perlin_arguments_are_numpys_uniform_bit_for_bit():
    """The kernels multiply random() by PERLIN_MAX: the same numbers as uniform(0, 10000) on the same state."""
    r = np.random.default_rng(5).random(100_000)
    assert np.array_equal(contours.PERLIN_MAX * r, np.random.default_rng(5).uniform(0, 10000, 100_000))
