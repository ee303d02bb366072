"""1p-frac: one base system and L perturbations of it (multiplicative or additive, each inside its box), redraws
bounded and recorded, the base system's own fill floor (--base-min-fill), and patch variants (K images of a
class from one point set, each with fresh patch masks)."""

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
from fracgen.kernels import chaos as render_mod
from fracgen.verify import verify

CFG = BuildConfig(**TINY)


def test_the_defaults_are_the_papers():
    cfg = BuildConfig()
    assert (cfg.size, cfg.points, cfg.min_fill, cfg.base_min_fill, cfg.patch_variants) == (512, 100_000, 0.05,
                                                                                           0.05, 1)


def test_additive_perturbation_stays_in_its_box(tmp_path):
    build(BuildConfig(**{**TINY, "perturbation": "additive", "delta": 0.2}), tmp_path / "a", workers=1)
    params = json.loads((tmp_path / "a" / "params.json").read_text())
    base = np.asarray(params["systems"][0]["maps"])
    diffs = np.array([np.asarray(c["maps"]) - base for c in params["classes"]])
    assert np.all(np.abs(diffs) <= 0.1 + 1e-12) and np.abs(diffs).max() > 0.05


def test_redraws_are_bounded_and_recorded(tmp_path, monkeypatch):
    real = render_mod.render
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # every class's first draw "diverges"
        calls["n"] += 1
        return -1.0 if calls["n"] % 2 == 1 else real(*args, **kwargs)

    real_chains = render_mod.render_chains

    def flaky_chains(*args, **kwargs):  # the same for the classes rendered together (render_ahead)
        fills = real_chains(*args, **kwargs)
        for lane in range(len(fills)):
            calls["n"] += 1
            fills[lane] = -1.0 if calls["n"] % 2 == 1 else fills[lane]
        return fills

    monkeypatch.setattr(render_mod, "render", flaky)
    monkeypatch.setattr(render_mod, "render_chains", flaky_chains)
    build(CFG, tmp_path / "r", workers=1, params=None)
    params = json.loads((tmp_path / "r" / "params.json").read_text())
    assert params["total_redraws"] >= 16

    checked = []

    def only_base(*args, **kwargs):  # the base system passes its check, no class's perturbation does
        checked.append(1)
        return real(*args, **kwargs) if len(checked) == 1 else -1.0

    monkeypatch.setattr(render_mod, "render", only_base)
    monkeypatch.setattr(render_mod, "render_chains", lambda maps, *args: np.full(len(maps), -1.0))
    with pytest.raises(FracgenError, match="no perturbation"):
        build(BuildConfig(**{**TINY, "max_redraws": 3}), tmp_path / "never", workers=1,
              params=tmp_path / "r" / "params.json")


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


def test_the_base_system_is_held_to_min_fill_by_default():
    def search_systems(cfg):
        return cfg.family.search(cfg, 1, False)

    a = search_systems(BuildConfig(**TINY))[0]
    b = search_systems(BuildConfig(**{**TINY, "base_min_fill": TINY.get("min_fill", 0.05)}))[0]
    assert a.maps.tolist() == b.maps.tolist() and math.isclose(a.fill, b.fill)
