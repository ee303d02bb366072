"""The contour presets as builds: rcdb, visualatom (C x I) and their LPCE variants, through build, verify and
preview, their defaults, and the sweep that names them. The drawing itself is held to the released one in
tests/test_kernels_contours.py."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fracgen import dataset
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.presets import contours as contour_params
from fracgen.verify import verify

SMALL = dict(size=96, shard_size=5)


def images(root) -> dict[str, tuple[np.ndarray, dict]]:
    """key -> (grey image, json) of every sample."""
    out = {}
    for shard in sorted(root.glob("train-*.tar")):
        for s in dataset.iter_shard(shard):
            out[s["__key__"]] = (dataset.decode_image(s["png"], "L"), json.loads(s["json"]))
    return out


@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
def test_categories_x_instances_build_verify_and_redraw(tmp_path, kind):
    out = tmp_path / kind
    result = CliRunner().invoke(cli, ["build", "--preset", kind, "--categories", "4", "--instances", "3",
                                      "--shard-size", "5", "--workers", "1", "--no-progress", str(out)])
    assert result.exit_code == 0, result.output
    assert verify(out).ok
    got = images(out)
    assert len(got) == 12
    for key, (image, meta) in got.items():
        label, instance = divmod(int(key), 3)
        assert meta["label"] == label == meta["category"] and meta["instance"] == instance
        expected, params = contour_params.render_image(kind, 0, label, instance, 512)
        np.testing.assert_array_equal(image, expected)  # the stored pixels are the kernel's, losslessly
        assert meta["params"] == json.loads(json.dumps(params))
    assert len({im.tobytes() for im, _ in got.values()}) == 12  # at 512 px (smaller, RCDB centres leave the canvas)
    background = 255 if kind == "rcdb" else 0
    assert np.mean([np.mean(im == background) for im, _ in got.values()]) > 0.2  # rings on a plain ground
    params = json.loads((out / "params.json").read_text())
    assert params["preset"] == kind and params["systems"] == []
    assert [c["label"] for c in params["classes"]] == list(range(4))
    assert params["classes"][2]["params"] == contour_params.category_params(kind, 0, 2)
    build_json = json.loads((out / "build.json").read_text())
    assert build_json["name"] == f"{kind}-4-x3" and build_json["num_classes"] == 4
    command = build_json["command"]
    assert command.startswith(f"fracgen build --preset {kind} ") and "--categories 4" in command
    assert "--instances 3" in command and "--delta" not in command


def test_instance_0_of_a_c_x_i_build_is_the_c_x_1_build(tmp_path):
    build(BuildConfig(preset="rcdb", categories=3, instances=2, **SMALL), tmp_path / "a", workers=1)
    build(BuildConfig(preset="rcdb", categories=3, **SMALL), tmp_path / "b", workers=1)
    a, b = images(tmp_path / "a"), images(tmp_path / "b")
    assert len(b) == 3
    for c in range(3):
        np.testing.assert_array_equal(a[dataset.sample_key(2 * c)][0], b[dataset.sample_key(c)][0])


@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
@pytest.mark.parametrize("mode", ["vertex", "scalar"])
def test_lpce_builds_perturb_one_base_image(tmp_path, kind, mode):
    out = tmp_path / f"{kind}-{mode}"
    result = CliRunner().invoke(cli, ["build", "--preset", f"{kind}-lpce", "--delta", "0.1", "--L", "8",
                                      "--radius-perturbation", mode, "--size", "128", "--shard-size", "5",
                                      "--workers", "1", "--no-progress", str(out)])
    assert result.exit_code == 0, result.output
    assert verify(out).ok
    got = images(out)
    assert len(got) == 8 and len({im.tobytes() for im, _ in got.values()}) == 8
    params = json.loads((out / "params.json").read_text())
    base = params["base"]
    assert base["radius"] > 0 and base["category"] >= 0
    for key, (_image, meta) in got.items():
        assert meta["perturbation"] == meta["label"] == int(key) and meta["mode"] == mode
        u = np.atleast_1d(meta["u"])
        assert len(u) == (base["vertices"] if mode == "vertex" else 1) and np.all(np.abs(u) <= 0.1)
        assert params["classes"][int(key)]["u"] == meta["u"]
    # the classes share the base's strokes: closer to each other than two categories are
    pair = [im.astype(int) for im, _ in list(got.values())[:2]]
    other = contour_params.render_image(kind, 0, base["category"] + 1, 0, 128)[0].astype(int)
    assert np.abs(pair[0] - pair[1]).mean() < np.abs(pair[0] - other).mean()


def test_lpce_delta_0_gives_the_base_image_in_every_class(tmp_path):
    build(BuildConfig(preset="visualatom-lpce", delta=0.0, L=3, size=64), tmp_path / "d0", workers=1)
    got = images(tmp_path / "d0")
    params, strokes = contour_params.lpce_base("visualatom", 0, 0, 64)

    base = contour_params.draw("visualatom", params, *strokes, size=64)
    for image, _ in got.values():
        np.testing.assert_array_equal(image, base)


def test_previews_of_contour_builds(tmp_path):
    from fracgen.preview import preview

    build(BuildConfig(preset="rcdb", categories=3, **SMALL), tmp_path / "r", workers=1)
    build(BuildConfig(preset="rcdb-lpce", L=3, **SMALL), tmp_path / "l", workers=1)
    for name in "rl":
        path = preview(tmp_path / name)
        from PIL import Image

        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 300


def test_contour_defaults_follow_the_released_scripts():
    for kind in ("rcdb", "visualatom"):
        cfg = BuildConfig(preset=kind)
        assert (cfg.size, cfg.categories, cfg.instances, cfg.num_classes) == (512, 1000, 1, 1000)
    lpce = BuildConfig(preset="rcdb-lpce")
    assert (lpce.num_classes, lpce.delta, lpce.radius_perturbation) == (1000, 0.1, "vertex")


def test_the_table3_sweep_names_valid_builds():
    from train.experiments.sweep import load_sweep, points

    spec = load_sweep("sweep-table3")
    built = []
    for point in points(spec):
        config = BuildConfig(**{**spec["build"], **point})
        config.validate()
        built.append((config.preset, config.num_classes))
    assert built == [(p, 1000) for p in ("rcdb", "rcdb-lpce", "visualatom", "visualatom-lpce", "1p-frac")]
    assert set(spec["paper"]["values"]) == {p for p, _ in built}


def test_the_table3_sweep_fine_tunes_on_what_its_paper_column_reports_and_needs_no_shared_copy():
    """The paper column is CIFAR-100 top-1: fine-tuning on CIFAR-10 would set the two side by side wrongly; and
    a user has no ../shared, so the sweep names torchvision's CIFAR (a local copy is an option)."""
    from train.experiments.sweep import load_sweep

    spec = load_sweep("sweep-table3")
    assert "CIFAR-100" in spec["paper"]["title"]
    assert spec["finetune"]["data"] == "cifar100"
