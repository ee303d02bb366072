"""FractalDB variations whose chaos game diverges, against the released code restated (tests/released_fractaldb.py):
wherever the released image is defined, fracgen draws it pixel for pixel."""

import numpy as np
from released_fractaldb import released_image

from fracgen.config import BuildConfig
from fracgen.presets.fractaldb import released_cut, search_category, truncated_fill, weights
from fracgen.seeds import CLASS, choice_uniforms, draw_masks, generator

SIZE, POINTS = 96, 20_000


def _diverging_pairs(categories: int):
    """(maps, probs, uniforms, masks) of every diverging (category, weight row) of the first categories."""
    from fracgen.kernels import chaos

    points = np.empty((POINTS, 2))
    for c in range(categories):
        base = search_category(c, 0, 0.2, 1000)
        uniforms = choice_uniforms(0, c, POINTS)
        for row, w in enumerate(weights()):
            maps = base.maps * w
            if not chaos.chaos_game(maps, np.cumsum(base.probabilities), uniforms, points):
                masks = draw_masks(generator(0, CLASS, c, row, 0), POINTS)
                yield maps, base.probabilities, uniforms, masks


def test_diverging_variations_are_the_released_pixels():
    from fracgen.kernels import chaos

    canvas = chaos.Canvas(SIZE, POINTS)
    checked = blank = 0
    for maps, probs, uniforms, masks in _diverging_pairs(40):
        released = released_image(maps, probs, uniforms, masks, SIZE, POINTS)
        fill = truncated_fill(maps, probs, uniforms, masks, canvas, "reference")
        if released["status"] == "ok":
            np.testing.assert_array_equal(canvas.image, released["image"])
            checked += 1
        else:  # the released code raises or casts an infinity: fracgen leaves the image blank
            assert fill == 0.0 and not canvas.image.any()
            blank += 1
    assert checked >= 10, (checked, blank)


def test_the_cut_is_x_s_first_nan_less_100_even_when_y_turns_nan_first():
    """The released cut is not the first non-finite point less 100: an overflow turns inf a few steps before nan,
    and y often turns nan a step before x, whose first nan decides."""
    from fracgen.kernels import chaos

    points = np.empty((POINTS, 2))
    y_first = 0
    for maps, probs, uniforms, masks in _diverging_pairs(40):
        released = released_image(maps, probs, uniforms, masks, SIZE, POINTS)
        if released["status"] != "ok":
            continue
        chaos.chaos_game(maps, np.cumsum(probs), uniforms, points)
        first_bad = int(np.flatnonzero(~np.isfinite(points).all(axis=1))[0])
        assert released_cut(maps, np.cumsum(probs), uniforms, points) == released["kept"] != first_bad - 100
        nan_x, nan_y = (int(np.flatnonzero(np.isnan(v))[0]) for v in (released["xs"], released["ys"]))
        y_first += nan_y < nan_x
    assert y_first >= 5


def test_fractaldb_masks_are_fresh_for_every_render_and_shared_by_its_flips(tmp_path):
    from fracgen.build import build
    from fracgen.dataset import iter_shard

    cfg = BuildConfig(preset="fractaldb", fractals=1, instances=8, size=48, points=2000, shard_size=8)
    build(cfg, tmp_path / "db", workers=1)
    images = {}
    for sample in iter_shard(tmp_path / "db" / "train-000000.tar"):
        import json

        from fracgen.dataset import decode_grey

        meta = json.loads(sample["json"])
        images[meta["weights"], meta["flip"]] = decode_grey(sample["png"])
    rows = sorted({row for row, _ in images})
    assert len(rows) == 2
    flips = {f for row, f in images if row == rows[0]}
    unflip = [lambda im: im, lambda im: im[::-1], lambda im: im[:, ::-1], lambda im: im[::-1, ::-1]]
    for flip in flips:  # one render, flipped four ways
        np.testing.assert_array_equal(unflip[flip](images[rows[0], flip]), images[rows[0], 0])
