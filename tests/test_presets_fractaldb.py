"""FractalDB and OFDB: the category search (FractalDB's released acceptance test, the same across workers), the
weight rows, flips and patch instances of a category, OFDB's weights and patch variants, the released scripts'
defaults, and the divergent variations drawn as the released code draws them (tests/released_fractaldb.py)."""

import json
import math

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from released_fractaldb import released_image

from fracgen import dataset
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import FracgenError
from fracgen.presets.fractaldb import GRID as FRACTALDB_GRID
from fracgen.presets.fractaldb import instance_of as fractaldb_instance
from fracgen.presets.fractaldb import released_cut, search_category, truncated_fill
from fracgen.presets.fractaldb import weights as fractaldb_weights
from fracgen.seeds import CLASS, choice_uniforms, draw_masks, generator
from fracgen.verify import verify

SMALL = dict(size=64, points=3000, shard_size=16)


def decoded(root) -> list[tuple[str, np.ndarray, dict]]:
    """(key, grey image, json) of every sample, in key order."""
    out = []
    for shard in sorted(root.glob("train-*.tar")):
        for s in dataset.iter_shard(shard):
            out.append((s["__key__"], dataset.decode_image(s["png"], "L"), json.loads(s["json"])))
    return sorted(out)


def samples(root, mode="l8"):
    """Every sample as webdataset decodes it (MODE: its image decoder), in shard order."""
    urls = sorted(str(p) for p in root.glob("train-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode(mode))


def test_fractaldb_weights_are_the_identity_and_24_single_parameter_scalings():
    w = fractaldb_weights()
    assert w.shape == (25, 6)
    assert np.all(w[0] == 1)
    changed = (w[1:] != 1).sum(axis=1)
    assert np.all(changed == 1)
    for j in range(6):
        column = sorted(w[1:, j][w[1:, j] != 1])
        np.testing.assert_allclose(column, [0.2, 0.6, 1.4, 1.8])


def test_fractaldb_instances_cover_the_grid_once():
    cells = {fractaldb_instance(i, FRACTALDB_GRID) for i in range(FRACTALDB_GRID)}
    assert len(cells) == FRACTALDB_GRID == 1000
    assert {c[0] for c in cells} == set(range(25)) and {c[2] for c in cells} == set(range(4))
    assert {fractaldb_instance(i, 10)[0] for i in range(10)} == {0, 8, 16}  # a subset spreads over the rows


@pytest.mark.parametrize("instances", [4, 10, 100, 250, 999])
def test_fractaldb_subsets_cover_all_four_flips_as_fractaldb_does(instances):
    cells = [fractaldb_instance(i, instances) for i in range(instances)]
    assert len(set(cells)) == instances
    assert {c[2] for c in cells} == {0, 1, 2, 3}
    if instances >= 100:  # FractalDB's 100-instance set: 25 weight rows x 4 flips, one patch instance
        hundred = cells[:100]
        assert {(c[0], c[2]) for c in hundred} == {(w, f) for w in range(25) for f in range(4)}
        assert {c[1] for c in hundred} == {0}
    assert all(0 <= w < 25 and 0 <= p < 10 for w, p, _ in cells)


def test_fractaldb_build(tmp_path):
    out = tmp_path / "fdb"
    build(BuildConfig(preset="fractaldb", fractals=3, instances=8, **SMALL), out, workers=1)
    got = samples(out)
    assert len(got) == 24
    labels = [int(s["cls"]) for s in got]
    assert sorted(labels) == sorted(list(range(3)) * 8)
    params = json.loads((out / "params.json").read_text())
    assert len(params["systems"]) == 3 and params["preset"] == "fractaldb"
    for system in params["systems"]:
        assert 2 <= len(system["maps"]) <= 7 and system["fill"] >= 0.2
        assert np.all(np.abs(system["maps"]) <= 1)
    by_label = {}
    for s in got:
        meta = s["json"]
        assert meta["fractal"] == meta["label"] and 0 <= meta["flip"] < 4
        by_label.setdefault(meta["label"], []).append(s["png"])
    # instances of one category differ (weights, patches, flips), but are all drawn
    images = by_label[0]
    assert len({im.tobytes() for im in images}) == 8
    assert all(im.any() for im in images)


def test_ofdb_is_one_image_per_category(tmp_path):
    out = tmp_path / "ofdb"
    build(BuildConfig(preset="ofdb", fractals=5, **SMALL), out, workers=1)
    got = samples(out)
    assert sorted(int(s["cls"]) for s in got) == list(range(5))
    assert all(s["json"]["weights"] == 0 and s["json"]["flip"] == 0 for s in got)
    assert json.loads((out / "_info.json").read_text())["num_classes"] == 5


def test_ofdb_categories_are_fractaldb_categories(tmp_path):
    build(BuildConfig(preset="ofdb", fractals=2, **SMALL), tmp_path / "o", workers=1)
    build(BuildConfig(preset="fractaldb", fractals=2, instances=4, **SMALL), tmp_path / "f", workers=1)
    systems = [json.loads((tmp_path / d / "params.json").read_text())["systems"] for d in "of"]
    assert [s["maps"] for s in systems[0]] == [s["maps"] for s in systems[1]]


def test_resume_checks_options_against_the_stored_preset(tmp_path):
    out = tmp_path / "fdb"
    build(BuildConfig(preset="fractaldb", fractals=2, instances=4, **SMALL), out, workers=1)
    runner = CliRunner()
    changed = runner.invoke(cli, ["build", "--resume", "--preset", "ofdb", str(out)])
    assert changed.exit_code == 2 and "differs from the build being resumed" in changed.output
    more = runner.invoke(cli, ["build", "--resume", "--instances", "8", str(out)])  # a fractaldb option
    assert more.exit_code == 2 and "--instances 8 (stored 4)" in more.output
    same = runner.invoke(cli, ["build", "--resume", "--preset", "fractaldb", str(out)])
    assert same.exit_code == 0, same.output
    assert json.loads((out / "build.json").read_text())["config"]["preset"] == "fractaldb"


def test_ofdb_patch_variants_are_fractaldb_patch_instances(tmp_path):
    build(BuildConfig(preset="ofdb", fractals=2, patch_variants=3, **SMALL), tmp_path / "aug", workers=1)
    build(BuildConfig(preset="ofdb", fractals=2, **SMALL), tmp_path / "one", workers=1)
    assert verify(tmp_path / "aug").ok
    got, one = decoded(tmp_path / "aug"), decoded(tmp_path / "one")
    assert [m["label"] for _, _, m in got] == [0, 0, 0, 1, 1, 1]
    assert [(m["variant"], m["patch"], m["weights"], m["flip"]) for _, _, m in got[:3]] == [
        (0, 0, 0, 0), (1, 1, 0, 0), (2, 2, 0, 0)]
    np.testing.assert_array_equal(got[3][1], one[1][1])
    assert len({im.tobytes() for _, im, _ in got[:3]}) == 3


def test_ofdb_released_weights_scale_parameter_a_by_0_2(tmp_path):
    from fracgen.presets.fractaldb import OFDB_WEIGHTS

    np.testing.assert_array_equal(fractaldb_weights()[OFDB_WEIGHTS["released"]], [0.2, 1, 1, 1, 1, 1])
    build(BuildConfig(preset="ofdb", fractals=2, ofdb_weights="released", **SMALL), tmp_path / "r", workers=1)
    build(BuildConfig(preset="ofdb", fractals=2, **SMALL), tmp_path / "i", workers=1)
    released, identity = decoded(tmp_path / "r"), decoded(tmp_path / "i")
    assert all(m["weights"] == 1 for _, _, m in released) and all(m["weights"] == 0 for _, _, m in identity)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(released, identity, strict=True))
    assert json.loads((tmp_path / "r" / "build.json").read_text())["name"] == "ofdb-2-released"


def test_fractaldb_100_instances_cover_all_four_flips(tmp_path):
    out = tmp_path / "fdb"
    build(BuildConfig(preset="fractaldb", fractals=1, instances=100, size=32, points=2000, shard_size=50), out,
          workers=1)
    got = decoded(out)
    cells = {(m["weights"], m["flip"]) for _, _, m in got}
    assert {m["flip"] for _, _, m in got} == {0, 1, 2, 3}
    assert cells == {(w, f) for w in range(25) for f in range(4)}
    assert verify(out).ok


def test_fractaldb_and_ofdb_defaults_are_the_released_scripts():
    for preset in ("fractaldb", "ofdb"):
        cfg = BuildConfig(preset=preset)
        assert (cfg.size, cfg.points, cfg.min_fill) == (362, 200_000, 0.2)
    assert BuildConfig(preset="fractaldb").instances == 1000
    assert BuildConfig(preset="ofdb").ofdb_weights == "identity"


def released_fill(maps: np.ndarray, uniforms: np.ndarray) -> float:
    """The released search's fill, restated in numpy: 100,000 points from (0, 0), x and y scaled independently
    into [6, 506] of 512 x 512, truncated, one pixel each; lit / 512^2 (-1 when a point is not finite)."""
    from fracgen import ifs

    cum = np.cumsum(ifs.probabilities(maps))
    points = np.zeros((len(uniforms) + 1, 2))
    x = y = 0.0
    with np.errstate(all="ignore"):
        for t, r in enumerate(uniforms):
            hits = np.flatnonzero(r <= cum)
            a, b, c, d, e, f = maps[hits[0] if len(hits) else len(maps) - 1]
            x, y = a * x + b * y + e, c * x + d * y + f
            points[t + 1] = x, y
    if not np.all(np.isfinite(points)):
        return -1.0
    xs, ys = points[:, 0] - points[:, 0].min(), points[:, 1] - points[:, 1].min()
    xs = (xs / (xs.max()) * 500.0 + 6).astype(np.uint16)
    ys = (ys / (ys.max()) * 500.0 + 6).astype(np.uint16)
    image = np.zeros((512, 512), np.uint8)
    image[ys, xs] = 127
    return np.count_nonzero(image) / image.size


def test_the_category_search_counts_as_the_released_search():
    from fracgen import ifs
    from fracgen.kernels.categories import SEARCH_POINTS, point_lit
    from fracgen.seeds import generator

    rng = generator(7, 99)

    def _draw(rng):
        return rng.uniform(-1.0, 1.0, (int(rng.integers(2, 8)), 6))
    uniforms = generator(7, 98).random(SEARCH_POINTS - 1)
    points, image = np.empty((2, SEARCH_POINTS)), np.zeros((512, 512), np.uint8)
    seen = {"diverged": 0, "counted": 0}
    for _ in range(6):
        maps = _draw(rng)
        expected = released_fill(maps, uniforms)
        lit = point_lit(maps, np.cumsum(ifs.probabilities(maps)), uniforms, points, image, 0)
        if expected < 0:
            assert lit == -1
            seen["diverged"] += 1
        else:
            assert lit / image.size == expected
            seen["counted"] += 1
    assert seen["counted"] >= 2
    # with a threshold the count may stop early, but only below it
    maps = _draw(rng)
    full = point_lit(maps, np.cumsum(ifs.probabilities(maps)), uniforms, points, image, 0)
    need = max(full, 0) + 1
    assert point_lit(maps, np.cumsum(ifs.probabilities(maps)), uniforms, points, image, need) < need


def test_the_search_accepts_the_first_candidate_of_its_stream_that_fills_enough():
    from fracgen import ifs
    from fracgen.kernels.categories import SEARCH_POINTS, point_lit
    from fracgen.presets.fractaldb import BATCH, search_category
    from fracgen.seeds import SEARCH, choice_uniforms, generator

    system = search_category(3, 0, 0.2, 1000)
    rng = generator(0, SEARCH, 3)
    uniforms = choice_uniforms(0, 3, SEARCH_POINTS)
    points, image = np.empty((2, SEARCH_POINTS)), np.zeros((512, 512), np.uint8)
    need = math.ceil(0.2 * image.size)
    for start in range(0, system.attempts, BATCH):
        counts, params = rng.integers(2, 8, BATCH), rng.uniform(-1.0, 1.0, (BATCH, 7, 6))
        for b in range(min(BATCH, system.attempts - start)):
            maps = params[b, :counts[b]]
            lit = point_lit(maps, np.cumsum(ifs.probabilities(maps)), uniforms, points, image, need)
            if start + b + 1 < system.attempts:
                assert lit < need
            else:
                assert lit >= need and np.array_equal(maps, system.maps) and system.fill == lit / image.size


def test_the_category_search_is_the_same_across_workers():
    cfg = BuildConfig(preset="ofdb", fractals=3, max_attempts=2000)
    one, two = cfg.family.search(cfg, 1, False), cfg.family.search(cfg, 2, True)
    assert [s.maps.tolist() for s in one] == [s.maps.tolist() for s in two]
    assert all(s.fill >= 0.2 and 2 <= len(s.maps) <= 7 for s in one)


@pytest.mark.slow
def test_the_search_benchmark_prints_its_row():
    """benchmarks/bench_search.py, in a process of its own, prints its table row."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_search.py"), "--categories", "2",
                           "--workers", "1"], capture_output=True, text=True, timeout=300, check=True)
    row = done.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "2" and row[2].strip() == "1" and float(row[3]) > 0


def test_a_fractaldb_build_resumes_and_rebuilds_from_its_params(tmp_path):
    cfg = BuildConfig(preset="ofdb", fractals=2, **SMALL)
    build(cfg, tmp_path / "a", workers=1)
    build(cfg, tmp_path / "b", workers=1, params=tmp_path / "a" / "params.json")
    assert [p.read_bytes() for p in sorted((tmp_path / "a").glob("train-*.tar"))] == [
        p.read_bytes() for p in sorted((tmp_path / "b").glob("train-*.tar"))]
    from fracgen.presets.fractaldb import category_fill
    from fracgen.systems import System

    bad = System(maps=np.array([[0.1, 0, 0, 0.1, 0, 0], [0.1, 0, 0, 0.1, 0.5, 0.5]]),
                 probabilities=np.array([0.5, 0.5]), sigma=0.4, fill=0.0)
    assert 0 <= category_fill(bad, 0, 0) < 0.2
    (tmp_path / "bad.json").write_text(json.dumps(bad.to_json()))
    with pytest.raises(FracgenError, match="under --min-fill 0.2"):
        build(BuildConfig(preset="ofdb", fractals=1, **SMALL), tmp_path / "c", workers=1,
              params=tmp_path / "bad.json")


# --- divergent variations, against the released code restated ---------------------------------------------

SIZE, POINTS = 96, 20_000  # of the divergence tests


def _diverging_pairs(categories: int):
    """(maps, probs, uniforms, masks) of every diverging (category, weight row) of the first categories."""
    from fracgen.kernels import chaos

    points = np.empty((POINTS, 2))
    for c in range(categories):
        base = search_category(c, 0, 0.2, 1000)
        uniforms = choice_uniforms(0, c, POINTS)
        for row, w in enumerate(fractaldb_weights()):
            maps = base.maps * w
            if not chaos.chaos_game(maps, np.cumsum(base.probabilities), uniforms, points):
                masks = draw_masks(generator(0, CLASS, c, row, 0), POINTS)
                yield maps, base.probabilities, uniforms, masks


def test_diverging_variations_are_the_released_pixels():
    """Wherever the released image of a diverging variation is defined, fracgen draws it pixel for pixel."""
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
    cfg = BuildConfig(preset="fractaldb", fractals=1, instances=8, size=48, points=2000, shard_size=8)
    build(cfg, tmp_path / "db", workers=1)
    images = {}
    for sample in dataset.iter_shard(tmp_path / "db" / "train-000000.tar"):
        meta = json.loads(sample["json"])
        images[meta["weights"], meta["flip"]] = dataset.decode_grey(sample["png"])
    rows = sorted({row for row, _ in images})
    assert len(rows) == 2
    flips = {f for row, f in images if row == rows[0]}
    unflip = [lambda im: im, lambda im: im[::-1], lambda im: im[:, ::-1], lambda im: im[::-1, ::-1]]
    for flip in flips:  # one render, flipped four ways
        np.testing.assert_array_equal(unflip[flip](images[rows[0], flip]), images[rows[0], 0])
