"""Patch variants (1p-frac and OFDB "w/ Aug."), FractalDB's instance subsets and defaults, OFDB's weights, the
FractalDB category search (its released acceptance test, across workers) and 1p-frac's --base-min-fill."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

from fracgen import dataset
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import FracgenError
from fracgen.verify import verify

SMALL = dict(size=64, points=3000, shard_size=16)


def samples(root) -> list[tuple[str, np.ndarray, dict]]:
    out = []
    for shard in sorted(root.glob("train-*.tar")):
        for s in dataset.iter_shard(shard):
            out.append((s["__key__"], dataset.decode_image(s["png"], "L"), json.loads(s["json"])))
    return sorted(out)


def full_patches(meta: dict, params) -> np.ndarray:
    """The class's points rendered with every patch pixel on: no mask can light a pixel outside it."""
    from fracgen.kernels import chaos
    from fracgen.seeds import choice_uniforms
    from fracgen.systems import load_systems

    maps = np.asarray(meta["maps"])
    system = load_systems(params)[0]
    canvas = chaos.Canvas(64, 5000)
    chaos.render(maps, system.probabilities, choice_uniforms(0, 0, 5000), np.full(5000, 511, np.uint16),
                  canvas.image, canvas.points)
    return canvas.image > 0


def test_1p_frac_patch_variants_keep_the_class_and_its_points(tmp_path):
    out = tmp_path / "aug"
    result = CliRunner().invoke(cli, ["build", "--L", "4", "--patch-variants", "4", "--size", "64", "--points",
                                      "5000", "--shard-size", "8", "--workers", "1", "--no-progress", str(out)])
    assert result.exit_code == 0, result.output
    assert verify(out).ok
    got = samples(out)
    assert len(got) == 16
    build(BuildConfig(**{**TINY, "L": 4}), tmp_path / "plain", workers=1)
    plain = samples(tmp_path / "plain")
    for key, _image, meta in got:
        label, variant = divmod(int(key), 4)
        assert meta["label"] == label == meta["perturbation"] and meta["variant"] == variant
    for label in range(4):
        group = [(im, m) for k, im, m in got if int(k) // 4 == label]
        np.testing.assert_array_equal(group[0][0], plain[label][1])  # variant 0 is the one-image build's image
        assert all(m["maps"] == group[0][1]["maps"] for _, m in group)  # one point set per class
        assert len({im.tobytes() for im, _ in group}) == 4  # fresh masks each
        area = full_patches(group[0][1], out / "params.json")
        for im, _ in group:
            assert not np.any((im > 0) & ~area)  # every variant inside the class's patch area
    params = json.loads((out / "params.json").read_text())
    assert [c["label"] for c in params["classes"]] == list(range(4))
    assert json.loads((out / "build.json").read_text())["num_samples"] == 16


def test_ofdb_patch_variants_are_fractaldb_patch_instances(tmp_path):
    build(BuildConfig(preset="ofdb", fractals=2, patch_variants=3, **SMALL), tmp_path / "aug", workers=1)
    build(BuildConfig(preset="ofdb", fractals=2, **SMALL), tmp_path / "one", workers=1)
    assert verify(tmp_path / "aug").ok
    got, one = samples(tmp_path / "aug"), samples(tmp_path / "one")
    assert [m["label"] for _, _, m in got] == [0, 0, 0, 1, 1, 1]
    assert [(m["variant"], m["patch"], m["weights"], m["flip"]) for _, _, m in got[:3]] == [
        (0, 0, 0, 0), (1, 1, 0, 0), (2, 2, 0, 0)]
    np.testing.assert_array_equal(got[3][1], one[1][1])
    assert len({im.tobytes() for _, im, _ in got[:3]}) == 3


def test_ofdb_released_weights_scale_parameter_a_by_0_2(tmp_path):
    from fracgen.presets.fractaldb import OFDB_WEIGHTS
    from fracgen.presets.fractaldb import weights as fractaldb_weights

    np.testing.assert_array_equal(fractaldb_weights()[OFDB_WEIGHTS["released"]], [0.2, 1, 1, 1, 1, 1])
    build(BuildConfig(preset="ofdb", fractals=2, ofdb_weights="released", **SMALL), tmp_path / "r", workers=1)
    build(BuildConfig(preset="ofdb", fractals=2, **SMALL), tmp_path / "i", workers=1)
    released, identity = samples(tmp_path / "r"), samples(tmp_path / "i")
    assert all(m["weights"] == 1 for _, _, m in released) and all(m["weights"] == 0 for _, _, m in identity)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(released, identity, strict=True))
    assert json.loads((tmp_path / "r" / "build.json").read_text())["name"] == "ofdb-2-released"


def test_fractaldb_100_instances_cover_all_four_flips(tmp_path):
    out = tmp_path / "fdb"
    build(BuildConfig(preset="fractaldb", fractals=1, instances=100, size=32, points=2000, shard_size=50), out,
          workers=1)
    got = samples(out)
    cells = {(m["weights"], m["flip"]) for _, _, m in got}
    assert {m["flip"] for _, _, m in got} == {0, 1, 2, 3}
    assert cells == {(w, f) for w in range(25) for f in range(4)}
    assert verify(out).ok


def test_fractaldb_and_ofdb_defaults_are_the_released_scripts():
    for preset in ("fractaldb", "ofdb"):
        cfg = BuildConfig(preset=preset)
        assert (cfg.size, cfg.points, cfg.min_fill) == (362, 200_000, 0.2)
    assert BuildConfig(preset="fractaldb").instances == 1000
    cfg = BuildConfig()
    assert (cfg.size, cfg.points, cfg.min_fill, cfg.base_min_fill, cfg.patch_variants) == (512, 100_000, 0.05,
                                                                                           0.05, 1)
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


def test_base_min_fill_0_takes_the_first_finite_base_and_redraws_stay_bounded(tmp_path):
    def search_systems(cfg):
        return cfg.family.search(cfg, 1, False)

    first = search_systems(BuildConfig(**{**TINY, "base_min_fill": 0.0}))[0]
    assert first.attempts == 1
    picky = search_systems(BuildConfig(**{**TINY, "base_min_fill": 0.3, "max_attempts": 5000}))[0]
    assert picky.fill >= 0.3 and picky.attempts > 1
    with pytest.raises(FracgenError, match="draws"):
        build(BuildConfig(**{**TINY, "base_min_fill": 0.0, "min_fill": 0.99, "max_redraws": 2}), tmp_path / "x",
              workers=1)


def test_base_min_fill_default_keeps_todays_search():
    def search_systems(cfg):
        return cfg.family.search(cfg, 1, False)

    a = search_systems(BuildConfig(**TINY))[0]
    b = search_systems(BuildConfig(**{**TINY, "base_min_fill": TINY.get("min_fill", 0.05)}))[0]
    assert a.maps.tolist() == b.maps.tolist() and math.isclose(a.fill, b.fill)


def test_the_search_benchmark_prints_its_row():
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
