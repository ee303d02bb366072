"""Dataset presets: FractalDB variations, OFDB, and the options each preset refuses."""

import json

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner

from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.presets.fractaldb import GRID as FRACTALDB_GRID
from fracgen.presets.fractaldb import instance_of as fractaldb_instance
from fracgen.presets.fractaldb import weights as fractaldb_weights

SMALL = dict(size=64, points=3000, shard_size=16)


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


def samples(root, mode="l8"):
    urls = sorted(str(p) for p in root.glob("train-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode(mode))


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


@pytest.mark.parametrize("preset", ["gaussian-noise", "uniform-noise"])
def test_noise_presets_perturb_the_distribution_not_the_draw(tmp_path, preset):
    def class_images(delta):
        out = tmp_path / f"{preset}-{delta}"
        build(BuildConfig(preset=preset, L=6, delta=delta, size=32, shard_size=4), out, workers=1)
        got = sorted(samples(out, "rgb8"), key=lambda s: int(s["cls"]))
        assert [int(s["cls"]) for s in got] == list(range(6))
        return out, [np.asarray(s["png"], np.int16) for s in got]

    out, images = class_images(0.1)
    assert images[0].shape == (32, 32, 3)
    assert len({im.tobytes() for im in images}) == 6
    # classes share the standard draw: their differences shrink with Delta
    _, close = class_images(0.001)
    gap = np.mean([np.abs(images[0] - im).mean() for im in images[1:]])
    close_gap = np.mean([np.abs(close[0] - im).mean() for im in close[1:]])
    assert close_gap < gap / 5
    params = json.loads((out / "params.json").read_text())["classes"]
    assert [c["label"] for c in params] == list(range(6)) and all("params" in c for c in params)


def photo(tmp_path):
    """A synthetic 'photo': a bright square and a disc on a dark ground, as JPEG."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (80, 80), (20, 30, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 40, 40), fill=(220, 200, 180))
    draw.ellipse((45, 35, 75, 70), fill=(90, 200, 90))
    path = tmp_path / "photo.jpg"
    image.save(path, quality=95)
    return path


def test_build_real_perturbs_one_image_and_keeps_it(tmp_path):
    out = tmp_path / "real"
    result = CliRunner().invoke(cli, ["build-real", str(photo(tmp_path)), str(out), "--L", "8", "--size", "48",
                                      "--shard-size", "4", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "source.jpg").read_bytes() == (tmp_path / "photo.jpg").read_bytes()
    got = sorted(samples(out), key=lambda s: int(s["cls"]))
    assert [int(s["cls"]) for s in got] == list(range(8))
    edges = [s["png"] for s in got]
    for e in edges:  # warped Canny edges: grey, sparse, bright
        assert e.shape == (48, 48) and e.max() > 200 and (e == 0).mean() > 0.5
    assert len({e.tobytes() for e in edges}) == 8
    meta = json.loads((out / "build.json").read_text())
    assert meta["command"].startswith("fracgen build-real source.jpg")
    assert meta["config"]["transform"] == "affine" and len(meta["config"]["source_sha256"]) == 64
    resumed = CliRunner().invoke(cli, ["build", "--resume", str(out), "--no-progress"])
    assert resumed.exit_code == 0 and "2 already complete" in resumed.output


def test_build_real_refuses_a_file_that_is_not_an_image(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    result = CliRunner().invoke(cli, ["build-real", str(text), str(tmp_path / "out")])
    assert result.exit_code == 2 and "notes.txt" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


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


def test_the_plain_patches_are_the_kernels_patch_rows():
    from fracgen import plain_render
    from fracgen.kernels import chaos

    patches = plain_render._patches()  # the renderer pastes each patch row as 3 bits: bit j = pixel (i, j)
    assert set(np.unique(patches)) == {0, chaos.VALUE}
    np.testing.assert_array_equal(((patches > 0) << np.arange(3)).sum(axis=2), chaos.ROW_BITS)


def test_every_family_is_complete():
    from fracgen.config import BuildConfig
    from fracgen.presets import families, option_table

    classes = {"1p-frac": 15, "fractaldb": 3, "ofdb": 3, "rcdb": 7, "visualatom": 7}
    for name, family in families().items():
        assert family.name == name and family.description and family.options <= set(option_table())
        cfg = BuildConfig(preset=name, fractals=3, L=5, categories=7)
        cfg.validate()
        assert cfg.num_classes == classes.get(name, 5)
        command = "build-real" if family.takes_source else "build"
        assert cfg.name() and cfg.command().startswith(f"fracgen {command} ")
