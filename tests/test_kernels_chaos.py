"""The chaos-game kernels: the one-image renderer against short, obviously-correct NumPy versions of the same
rules, and the batched kernels against rendering each image alone.

The batched path is pinned by small builds of the chaos-game families to the images and records of the one-image
path, whatever the worker count. Those digests cover decoded grey values, shapes, tar member names and the
cls/json payloads, not the PNG bytes, so they hold on any zlib and for either PNG format. Regenerate them only for
a deliberate change of the look: build each case and print ``_digest`` of the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracgen import ifs
from fracgen.build import BuildConfig, build
from fracgen.kernels import chaos
from fracgen.seeds import draw_masks


def numpy_chaos_game(maps, probs, uniforms):
    cum = np.cumsum(probs)
    pts = [(0.0, 0.0)]
    x = y = 0.0
    for u in uniforms:
        j = next((k for k in range(len(maps)) if u <= cum[k]), len(maps) - 1)
        a, b, c, d, e, f = maps[j]
        x, y = a * x + b * y + e, c * x + d * y + f
        pts.append((x, y))
    return np.array(pts)


def numpy_reference_raster(points, masks, size):
    """The released look, written the slow and plain way: paste a 3x3 patch per point, then flip."""
    img = np.zeros((size, size), np.uint8)
    xs, ys = points[:, 0], points[:, 1]
    xs = ((xs - xs.min()) / (xs.max() - xs.min()) * (size - 12) + 6).astype(np.int64)
    ys = ((ys - ys.min()) / (ys.max() - ys.min()) * (size - 12) + 6).astype(np.int64)
    for x, y, m in zip(xs, ys, masks, strict=True):
        bits = [int(ch) for ch in f"{int(m):09b}"]
        patch = 127 * np.array(bits, np.uint8).reshape(3, 3)
        img[y + 1: y + 4, x + 1: x + 4] = patch
    return img[::-1]


def numpy_points_raster(points, size):
    img = np.zeros((size, size), np.uint8)
    lo = points.min(axis=0)
    extent = (points.max(axis=0) - lo)
    scale = (size - 12) / extent.max()
    offset = 6 + ((size - 12) - extent * scale) / 2
    for x, y in points:
        px = int((x - lo[0]) * scale + offset[0])
        py = int((y - lo[1]) * scale + offset[1])
        img[py, px] = 127
    return img[::-1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("size", [32, 128, 512])
def test_reference_look_matches_numpy_pixel_for_pixel(seed, size):
    rng = np.random.default_rng(seed)
    maps, _ = ifs.sample_system(2 + seed % 2, 3.5, rng)
    probs = ifs.probabilities(maps)
    uniforms = rng.random(2999)
    masks = draw_masks(rng, 3000)
    canvas = chaos.Canvas(size, 3000)
    fill = chaos.render(maps, probs, uniforms, masks, canvas.image, canvas.points, "reference")
    expected_points = numpy_chaos_game(maps, probs, uniforms)
    np.testing.assert_allclose(canvas.points, expected_points, rtol=1e-12, atol=1e-12)
    expected = numpy_reference_raster(expected_points, masks, size)
    np.testing.assert_array_equal(canvas.image, expected)
    assert fill == pytest.approx(np.count_nonzero(expected) / size**2)
    assert set(np.unique(canvas.image)) <= {0, 127}


@pytest.mark.parametrize("seed", range(3))
def test_points_style_matches_numpy_and_keeps_the_aspect(seed):
    rng = np.random.default_rng(seed)
    maps, _ = ifs.sample_system(2, 3.0, rng)
    probs = ifs.probabilities(maps)
    uniforms = rng.random(1999)
    canvas = chaos.Canvas(96, 2000)
    chaos.render(maps, probs, uniforms, None, canvas.image, canvas.points, "points")
    np.testing.assert_array_equal(canvas.image, numpy_points_raster(canvas.points, 96))


def test_points_style_centres_a_flat_shape():
    # A system squeezed in y: the points style keeps it flat, the reference style stretches it to the square.
    maps = np.array([[0.5, 0, 0, 0.1, 0.5, 0.0], [0.5, 0, 0, 0.1, -0.5, 0.05]])
    probs = ifs.probabilities(maps)
    uniforms = np.random.default_rng(0).random(4999)
    canvas = chaos.Canvas(128, 5000)
    chaos.render(maps, probs, uniforms, None, canvas.image, canvas.points, "points")
    rows = np.flatnonzero(canvas.image.any(axis=1))
    cols = np.flatnonzero(canvas.image.any(axis=0))
    assert cols[0] == 6 and cols[-1] == 122
    assert rows[-1] - rows[0] < 40
    assert abs((rows[0] + rows[-1]) / 2 - 63.5) < 2


def test_divergent_system_reports_minus_one():
    maps = np.array([[3.0, 0, 0, 3.0, 1, 1], [2.5, 0.1, 0, 2.5, -1, 0]])
    canvas = chaos.Canvas(64, 5000)
    fill = chaos.render(maps, ifs.probabilities(maps), np.random.default_rng(0).random(4999),
                         draw_masks(np.random.default_rng(1), 5000), canvas.image, canvas.points, "reference")
    assert fill == -1.0


def test_degenerate_system_has_zero_fill():
    maps = np.zeros((2, 6))
    canvas = chaos.Canvas(64, 100)
    fill = chaos.render(maps, ifs.probabilities(maps), np.random.default_rng(0).random(99),
                         draw_masks(np.random.default_rng(1), 100), canvas.image, canvas.points, "reference")
    assert fill == 0.0
    assert not canvas.image.any()


@pytest.mark.parametrize("size", [16, 40, 64, 65, 130])
@pytest.mark.parametrize("chains", [1, 3, 4, 9])
def test_chains_rendered_together_match_each_alone(size, chains):
    # the batched kernel: same fills and pixels as render(), with a diverging and a degenerate chain mixed in
    rng = np.random.default_rng(size * 10 + chains)
    base, _ = ifs.sample_system(3, 3.5, rng)
    probs = ifs.probabilities(base)
    maps = base * (1 + rng.uniform(-0.3, 0.3, (chains, 3, 6)))
    if chains > 2:
        maps[1] *= 4.0  # diverges
        maps[2] = 0.0  # one point: no extent
    uniforms = rng.random(2999)
    masks = draw_masks(rng, 3000 * chains).reshape(chains, 3000)
    bits = np.empty((chains, size, chaos.words_per_row(size)), np.uint64)
    fills = chaos.render_chains(maps, chaos.map_choices(uniforms, np.cumsum(probs)), masks, bits)
    canvas = chaos.Canvas(size, 3000)
    image = np.empty((size, size), np.uint8)
    for c in range(chains):
        fill = chaos.render(maps[c], probs, uniforms, masks[c], canvas.image, canvas.points, "reference")
        assert fills[c] == fill
        if fill >= 0:
            chaos.expand_bits(bits[c], image)
            np.testing.assert_array_equal(image, canvas.image)
    if chains > 2:
        assert fills[1] == -1.0 and fills[2] == 0.0


def test_chaos_game_stops_at_the_first_non_finite_point():
    maps = np.array([[3.0, 0, 0, 3.0, 1, 1], [2.5, 0.1, 0, 2.5, -1, 0]])
    points = np.full((5000, 2), 7.0)
    assert not chaos.chaos_game(maps, np.cumsum(ifs.probabilities(maps)), np.random.default_rng(0).random(4999),
                                 points)
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    assert len(bad) == 1 and 100 < bad[0] < 4999  # written up to the first non-finite point, the rest untouched
    assert np.all(np.isfinite(points[: bad[0]])) and np.all(points[bad[0] + 1:] == 7.0)


# --- the batched kernels in whole builds ------------------------------------------------------------------

BATCHED = {
    "1p-frac": (dict(L=24, size=48, points=3000, shard_size=5, delta=0.3), "f5cc67f270059837"),
    "additive": (dict(L=12, size=40, points=2000, shard_size=5, delta=0.4, perturbation="additive", fractals=2),
                 "583cfa34fb03432e"),
    "points": (dict(L=8, size=40, points=2000, shard_size=5, style="points"), "39a3f651f61deeda"),
    "fractaldb": (dict(preset="fractaldb", fractals=3, instances=6, size=40, points=2000, shard_size=5),
                  "206b8eac0364e4c7"),
    "ofdb": (dict(preset="ofdb", fractals=4, size=40, points=2000, shard_size=3), "6efc45453227c41b"),
    # Delta 1.2: most draws diverge or under-fill (249 redraws), so early stops and redraws are pinned too
    "diverging": (dict(L=16, size=40, points=2000, shard_size=5, delta=1.2, min_fill=0.1), "d8b89e9280cde5db"),
    "fractaldb-wide": (dict(preset="fractaldb", fractals=2, instances=40, size=32, points=1500, shard_size=9),
                       "40de14adb5c5e13f"),
}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                data = tf.extractfile(member).read()
                if member.name.endswith(".png"):
                    image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))  # grey values: any PNG format
                    data = image.tobytes() + str(image.shape).encode()
                h.update(member.name.encode() + data)
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", BATCHED)
def test_pixels_and_metadata_match_the_pinned_build(case, tmp_path):
    options, expected = BATCHED[case]
    build(BuildConfig(**options), tmp_path / "one", workers=1)
    assert _digest(tmp_path / "one") == expected
    if case in ("1p-frac", "diverging"):
        build(BuildConfig(**options), tmp_path / "two", workers=2)
        assert _digest(tmp_path / "two") == expected
        assert (json.loads((tmp_path / "one" / "params.json").read_text())
                == json.loads((tmp_path / "two" / "params.json").read_text()))


def test_systems_of_more_maps_than_a_choice_byte_holds_render_alone(tmp_path, monkeypatch):
    # a --params system of 300 maps cannot go through the uint8 map choices of the batched path
    monkeypatch.setattr(chaos, "MAX_CHAIN_MAPS", 1)  # every system now counts as too large
    options, expected = BATCHED["1p-frac"]
    build(BuildConfig(**options), tmp_path / "alone", workers=1)
    assert _digest(tmp_path / "alone") == expected
    options, expected = BATCHED["fractaldb"]
    build(BuildConfig(**options), tmp_path / "fdb", workers=1)
    assert _digest(tmp_path / "fdb") == expected
