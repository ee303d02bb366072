"""3D-OFDB: the numba kernels held to a plain NumPy restatement of the released rules (``plain_points3d``), and the
family's builds: verify, same bytes across workers, shard ranges and resumes, records, card, preview, refusals.

The comparison with the released scripts themselves (OpenGL on Mesa llvmpipe) needs their environment:
``benchmarks/bench_ofdb3d.py --released-dir ... --released-python ...``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import plain_points3d as plain
import pytest
from click.testing import CliRunner
from PIL import Image

from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.kernels import points3d
from fracgen.presets import ofdb3d
from fracgen.verify import verify

NAME = ofdb3d.NAME
SMALL = dict(preset=NAME, size=32, points=600, shard_size=50)  # 20 x 12 builds in about a second


def cloud_kernel(maps, probs, uniforms, point_num):
    return points3d.cloud(np.ascontiguousarray(maps), probs, uniforms, float(point_num))


def cloud_plain(maps, probs, uniforms, point_num):
    return plain.normalise(plain.chaos_game(maps, probs, uniforms), point_num)


# ------------------------------------------------------------------------------------------ kernels vs plain rules


def test_det_and_probabilities_are_numpy_122s():
    rng = np.random.default_rng(1)
    maps = rng.uniform(-1, 1, (3000, 12))
    singular = np.zeros(12)
    singular[[1, 5, 6]] = 0.5  # a zero first pivot column after one swap, then a zero pivot
    ties = np.array([0.5, 1, 2, -0.5, 3, 1, 0.5, -2, 1, 0, 0, 0], float)  # equal |pivots|: the first is taken
    for m in [*maps, singular, ties]:
        assert points3d.abs_det3(m) == plain.abs_det(m)
    for n in (2, 3, 7):
        group = maps[:n]
        np.testing.assert_array_equal(points3d.map_probabilities(group), plain.probabilities(group))


def candidates(rng, count, n):
    """Random candidates as the search draws them, some pushed to diverge and some to lose their map choice."""
    out = []
    for t in range(count):
        maps = rng.uniform(-1, 1, (rng.integers(2, 8), 12)) * (1.6 if t % 5 == 4 else 1.0)
        probs = plain.probabilities(maps)
        if t % 7 == 6:
            probs = probs * 0.6  # cumulative sum under 1: a uniform above it keeps the previous point
        uniforms = rng.random(n)
        uniforms[0] = 0.01  # the released loop has no previous point before the first
        out.append((maps, probs, uniforms))
    return out


def test_clouds_and_the_variance_test_follow_the_released_loop():
    rng = np.random.default_rng(2)
    n = 1999
    seen = {"finite": 0, "diverged": 0, "accepted": 0}
    for maps, probs, uniforms in candidates(rng, 40, n):
        got, want = cloud_kernel(maps, probs, uniforms, n + 1), cloud_plain(maps, probs, uniforms, n + 1)
        np.testing.assert_array_equal(got, want)  # NaN where NaN
        ok = plain.accepted(want, 0.05)
        assert points3d.accepted(got, n, 0.05) == ok
        seen["finite" if np.isfinite(want).all() else "diverged"] += 1
        seen["accepted"] += ok
    assert min(seen.values()) > 0, seen


def test_the_released_point_num_with_numpy_122s_buffers():
    """10,000 uniforms, 9,999 points: np.var's sums cross numpy 1.22's 8,192-element buffer."""
    rng = np.random.default_rng(3)
    for maps, probs, uniforms in candidates(rng, 6, 9999)[:4]:
        got, want = cloud_kernel(maps, probs, uniforms, 10000), cloud_plain(maps, probs, uniforms, 10000)
        np.testing.assert_array_equal(got, want)
        if np.isfinite(want).all():
            for r in range(3):
                assert points3d.variance(got[r], 9999) == plain.var_numpy122(want[r])
                assert points3d.variance(got[r], 9999, 0) == np.var(want[r])  # numpy 2: one pairwise sum


@pytest.mark.parametrize("n", [1, 7, 8, 127, 128, 129, 1000, 8192, 8193, 20000])
def test_variance_sums_as_numpy_122(n):
    row = np.random.default_rng(n).normal(size=n) * 1e3 + 1e6
    assert points3d.variance(row, n) == plain.var_numpy122(row)
    assert points3d.variance(row, n, 0) == np.var(row)


def test_first_accepted_is_the_first_candidate_the_plain_test_accepts():
    rng = np.random.default_rng(4)
    batch = candidates(rng, 48, 799)
    counts = np.array([len(m) for m, _, _ in batch])
    params = np.zeros((len(batch), 7, 12))
    for t, (maps, _, _) in enumerate(batch):
        params[t, :len(maps)] = maps
    uniforms = np.array([u for _, _, u in batch])
    accepted = [t for t, (m, _, u) in enumerate(batch)
                if plain.accepted(cloud_plain(m, plain.probabilities(m), u, 800), 0.05)]
    work = np.empty((3, 799))
    for start in range(len(batch)):
        want = next((t - start for t in accepted if t >= start), -1)
        assert points3d.first_accepted(counts[start:], params[start:], uniforms[start:], 0.05, 800.0, work) == want


def test_fma_is_rounded_once():
    rng = np.random.default_rng(5)
    for a, b, c in rng.uniform(-300, 300, (2000, 3)).astype(np.float32):
        assert points3d.fma_f32(a, b, c) == plain.fma32(a, b, c)
    # a * b + c rounds to a float64 exactly halfway between two float32 values, the exact sum just under it
    c = np.float32(112 + 2.0 ** -17)  # odd last bit: ties-to-even of the float64 sum would round up
    a, b = np.float32((2**23 - 1) * 2.0**-32), np.float32((2**23 + 1) * 2.0**-32)
    assert Fraction(float(a)) * Fraction(float(b)) == Fraction(1, 2**18) - Fraction(1, 2**64)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) != c  # rounded twice: the wrong one
    assert points3d.fma_f32(a, b, c) == plain.fma32(a, b, c) == c
    assert points3d.fma_f32(-a, b, -c) == -c


def boundary_cloud(rng, jitters, views, size, per_view=60):
    """Points whose window coordinates sit 1/512 pixel below pixel edges (llvmpipe's snap boundary), near the
    near plane and outside the frustum, for each view (from the float64 inverse of its matrices)."""
    p00 = float(points3d.perspective()[0, 0])
    parts = []
    for v in range(views):
        to_world = np.linalg.inv(points3d.view_matrix(v, views, jitters[v]).astype(np.float64).T)
        k = rng.integers(0, size + 1, (2, per_view))
        xw, yw = k - 1 / 512 + rng.uniform(-3e-5, 3e-5, k.shape)
        ez = np.concatenate([rng.uniform(-6.0, -2.0, per_view - 10), -1.0 + rng.uniform(-2e-6, 2e-6, 10)])
        half = size / 2
        eye = np.stack([(xw - half) / half * -ez / p00, (yw - half) / half * -ez / p00, ez, np.ones_like(ez)])
        parts.append((to_world @ eye)[:3])
    parts.append(rng.uniform(-4.5, 4.5, (3, 200)))  # behind the camera, beside the frustum, across the near plane
    parts.append(np.full((3, 2), np.nan))
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("size", [64, 50, 224])
def test_views_render_as_the_plain_rules(size):
    rng = np.random.default_rng(size)
    views = 12
    jitters = rng.uniform(-math.pi, math.pi, views)
    clouds = [rng.uniform(-1.2, 1.2, (3, 150)), boundary_cloud(rng, jitters, views, size)]
    proj = points3d.perspective()
    np.testing.assert_array_equal(proj, plain.perspective())
    image = np.empty((size, size), np.uint8)
    lit = 0
    for cloud in clouds:
        points = np.ascontiguousarray(cloud.T).astype(np.float32)
        for v in range(views):
            view = points3d.view_matrix(v, views, jitters[v])
            np.testing.assert_array_equal(view, plain.view_matrix(v, views, jitters[v]))
            points3d.render_view(points, view, proj, image, 255)
            np.testing.assert_array_equal(image, plain.render(points, view, proj, size))
            lit += int(image.sum() // 255)
    assert lit > 500


# ----------------------------------------------------------------------------------------------------- the family


def shard_bytes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("train-*.tar"))}


def samples(root: Path) -> dict[int, tuple[np.ndarray, dict, int]]:
    out = {}
    for tar in sorted(root.glob("train-*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name in members:
            key, ext = name.split(".", 1)
            if ext == "png":
                out[int(key)] = (np.asarray(Image.open(io.BytesIO(members[name]))),
                                 json.loads(members[f"{key}.json"]), int(members[f"{key}.cls"]))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ofdb3d") / "ds"
    build(BuildConfig(categories=20, **SMALL), root, workers=1)
    return root


def test_a_20_x_12_build_verifies_with_its_records(built):
    assert verify(built).ok
    got = samples(built)
    assert len(got) == 240
    params = json.loads((built / "params.json").read_text())
    assert [c["label"] for c in params["classes"]] == list(range(20)) and params["systems"] == []
    for index, (image, meta, label) in got.items():
        category, view = divmod(index, 12)
        assert label == meta["label"] == meta["category"] == category and meta["view"] == view
        record = params["classes"][category]
        assert meta["jitter_deg"] == record["jitters_deg"][view] and abs(meta["jitter_deg"]) < math.pi
        assert meta["angle_deg"] == view / 12 * 360 + 30 + meta["jitter_deg"]
        assert image.shape == (32, 32) and image.dtype == np.uint8 and set(np.unique(image)) <= {0, 255}
    for record in params["classes"]:
        maps = np.array(record["maps"])
        assert maps.shape[1] == 12 and 2 <= len(maps) <= 7 and np.all(np.abs(maps) <= 1)
        np.testing.assert_array_equal(record["probabilities"], points3d.map_probabilities(maps))
        assert record["attempts"] >= 1 and record["views"] == 12
    assert params["search"]["attempts"] == sum(c["attempts"] for c in params["classes"])
    assert params["instance_weights"][0] == 0.4 and set(params["instance_weights"][1:]) == {1}


def test_the_images_are_the_kernel_drawing_the_recorded_clouds(built):
    """Each stored view is its category's instance cloud (recorded maps, a x 0.4, its own uniforms) drawn by the
    plain rules at its recorded jitter."""
    params = json.loads((built / "params.json").read_text())
    got = samples(built)
    for category in (0, 7):
        record = params["classes"][category]
        maps = np.array(record["maps"]) * np.array(ofdb3d.INSTANCE_WEIGHTS)
        uniforms = ofdb3d.cloud_uniforms(0, category, 600)
        cloud = cloud_plain(maps, np.array(record["probabilities"]), uniforms, 600)
        points = np.ascontiguousarray(cloud.T).astype(np.float32)
        for view in (0, 5, 11):
            want = plain.render(points, plain.view_matrix(view, 12, record["jitters_deg"][view]), plain.perspective(),
                                32)
            np.testing.assert_array_equal(got[category * 12 + view][0], want)


def test_the_search_replays_from_its_draws(built):
    """The recorded attempts are where the plain released test first accepts the category's candidates."""
    record = json.loads((built / "params.json").read_text())["classes"][3]
    draws = ofdb3d.candidate_draws(0, 3, 600, record["attempts"])
    verdicts = [plain.accepted(cloud_plain(m, plain.probabilities(m), u, 600), 0.05) for m, u in draws]
    assert verdicts[-1] and not any(verdicts[:-1]) and record["clouds_refused"] == 0
    np.testing.assert_array_equal(draws[-1][0], record["maps"])


def test_same_bytes_whatever_the_workers_and_another_seed_differs(built, tmp_path):
    build(BuildConfig(categories=20, **SMALL), tmp_path / "w2", workers=2)
    assert shard_bytes(tmp_path / "w2") == shard_bytes(built)
    for name in ("params.json", "_info.json"):
        assert (tmp_path / "w2" / name).read_bytes() == (built / name).read_bytes()
    build(BuildConfig(categories=20, seed=1, **SMALL), tmp_path / "s1", workers=1)
    assert not set(shard_bytes(tmp_path / "s1").values()) & set(shard_bytes(built).values())


def test_shard_ranges_and_a_resume_give_the_same_bytes(built, tmp_path):
    out = tmp_path / "split"
    config = BuildConfig(categories=20, **SMALL)
    assert not build(config, out, workers=1, shard_range=(2, 4)).complete
    result = build(config, out, workers=2, resume=True)
    assert result.complete and sorted(result.built) == [0, 1, 4] and shard_bytes(out) == shard_bytes(built)
    assert (out / "params.json").read_bytes() == (built / "params.json").read_bytes()


def test_a_tampered_shard_fails_verify(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    shard = copy / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 1
    shard.write_bytes(bytes(data))
    report = verify(copy)
    assert not report.ok and any("train-000001.tar" in line for line in report.lines())


def test_the_card_preview_and_verify_know_the_family(built, tmp_path):
    from fracgen.card import render_card
    from fracgen.preview import preview

    card = render_card(built, license="cc-by-4.0")
    assert "3D-OFDB" in card and "llvmpipe" in card and "w/ Aug." in card and "32 x 32 8-bit greyscale PNG" in card
    assert "| variance threshold (category search) | 0.05 |" in card
    path = preview(built, tmp_path / "p.png")
    with Image.open(path) as im:
        assert im.size[0] > 300
    script = ("import sys\nfrom fracgen.cli import cli\n"
              "for args in (['verify', sys.argv[1]], ['preview', sys.argv[1], '--out', sys.argv[2]]):\n"
              "    try:\n        cli(args, standalone_mode=False)\n"
              "    except SystemExit as e:\n        assert not e.code, e.code\n"
              "print(sorted(m for m in ('numba', 'fracgen.kernels.points3d') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(built), str(tmp_path / "q.png")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_defaults_are_the_released_ones():
    cfg = BuildConfig(preset=NAME)
    cfg.validate()
    assert (cfg.categories, cfg.views, cfg.size, cfg.points, cfg.variance) == (1000, 12, 224, 10000, 0.05)
    assert (cfg.num_classes, cfg.num_samples, cfg.name()) == (1000, 12000, "3d-ofdb-1000-x12")


@pytest.mark.parametrize("args,fragment", [
    (["--views", "0"], "--views"),
    (["--views", "361"], "361 is not in the range 1<=x<=360"),
    (["--size", "15"], "--size"),
    (["--points", "2"], "--points must be >= 3"),
    (["--variance", "-0.1"], "--variance"),
    (["--variance", "1.5"], "--variance"),
    (["--variance", "nan"], "--variance"),
    (["--categories", "0"], "--categories"),
    (["--max-attempts", "0"], "--max-attempts"),
    (["--delta", "0.1"], "takes no --delta"),
    (["--patch-variants", "2"], "takes no --patch-variants"),
    (["--style", "points"], "takes no --style"),
    (["--params", "p.json"], "takes no --params"),
])
def test_bad_options_are_one_line_refusals(tmp_path, args, fragment):
    result = CliRunner().invoke(cli, ["build", "--preset", NAME, *args, str(tmp_path / "out")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("Error:") and fragment.lower() in line.lower() and "\n" not in line
    assert not (tmp_path / "out").exists()


def test_a_search_that_cannot_succeed_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build", "--preset", NAME, "--categories", "2", "--variance", "1",
                                      "--max-attempts", "20", "--points", "100", "--workers", "1", str(out)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "category 0 found no cloud" in line and "--max-attempts" in line
    assert not out.exists() or not any(out.iterdir())


def test_a_size_the_release_cannot_render_warns(tmp_path):
    result = CliRunner().invoke(cli, ["build", "--preset", NAME, "--categories", "2", "--views", "2",
                                      "--size", "30", "--points", "300", "--workers", "1", "--no-progress",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning: --size 30 is not a multiple of 4" in result.output
    assert verify(tmp_path / "out").ok


def test_a_cloud_with_nan_in_y_is_searched_on(monkeypatch):
    """The release renders no image of a category whose instance cloud has NaN in y: the search goes on."""
    first = ofdb3d.search_category(5, 0, 0.05, 300, 10_000)
    real = ofdb3d.instance_cloud
    calls = []

    def once_nan(*args):
        calls.append(1)
        cloud = real(*args)
        if len(calls) == 1:
            cloud[1, 3] = np.nan
        return cloud

    monkeypatch.setattr(ofdb3d, "instance_cloud", once_nan)
    later = ofdb3d.search_category(5, 0, 0.05, 300, 10_000)
    assert later["clouds_refused"] == 1 and later["attempts"] > first["attempts"]
    assert later["maps"] != first["maps"]


def test_bytes_are_pinned(tmp_path):
    """A change of this digest is a change of the dataset: regenerate only for a deliberate one."""
    out = tmp_path / "pin"
    build(BuildConfig(preset=NAME, categories=3, views=4, points=500, shard_size=5, size=40), out,
          workers=1)
    h = hashlib.sha256()
    for name, digest in shard_bytes(out).items():
        h.update(name.encode() + bytes.fromhex(digest))
    for name in ("_info.json", "params.json"):
        h.update(name.encode() + hashlib.sha256((out / name).read_bytes()).digest())
    assert h.hexdigest()[:24] == "f2ae6f7d6877564a43c8ef9e"
