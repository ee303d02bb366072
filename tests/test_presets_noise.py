"""The noise baselines (gaussian-noise, uniform-noise): parameters stay valid, classes differ only by their
parameters, Delta sets how much, and a build's classes share one standard draw."""

import json

import numpy as np
import pytest
import webdataset as wds

from fracgen.build import BuildConfig, build
from fracgen.presets import noise
from fracgen.seeds import generator

SIZE = 64


def classes(kind, delta, n, seed=0):
    return [noise.draw_noise_params(kind, delta, generator(seed, 7, k)) for k in range(n)]


@pytest.fixture(params=noise.KINDS)
def kind(request):
    return request.param


def test_delta_zero_is_the_base_distribution(kind):
    z = noise.standard_draw(kind, SIZE, generator(0, 1))
    base = noise.base_params(kind)
    for params in classes(kind, 0.0, 4):
        assert params == base
        assert np.array_equal(noise.noise_image(kind, params, z), noise.noise_image(kind, base, z))


def test_base_image_has_the_base_statistics():
    z = noise.standard_draw("gaussian", 256, generator(0, 1))
    img = noise.noise_image("gaussian", noise.base_params("gaussian"), z).reshape(-1, 3) / 255.0
    assert np.allclose(img.mean(0), 0.5, atol=0.01)
    assert np.allclose(img.std(0), 0.2, atol=0.01)
    assert np.abs(np.corrcoef(img.T) - np.eye(3)).max() < 0.02
    z = noise.standard_draw("uniform", 256, generator(0, 1))
    img = noise.noise_image("uniform", noise.base_params("uniform"), z).reshape(-1, 3)
    assert img.min() == 51 and img.max() == 204  # 255 * [0.2, 0.8]
    assert np.allclose(img.mean(0) / 255.0, 0.5, atol=0.01)


def test_output_shape_dtype_and_json(kind):
    z = noise.standard_draw(kind, SIZE, generator(0, 1))
    assert z.shape == (SIZE, SIZE, 3)
    params = noise.draw_noise_params(kind, 0.1, generator(0, 2))
    assert json.loads(json.dumps(params)) == params
    img = noise.noise_image(kind, params, z)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8


def test_gaussian_params_within_bounds_and_positive_definite():
    base = noise.base_params("gaussian")
    for delta in (0.01, 0.1, 1.0):
        for p in classes("gaussian", delta, 100):
            mean, cov = np.array(p["mean"]), np.array(p["cov"])
            assert not p["projected"]
            assert np.all(np.abs(mean - base["mean"]) <= delta / 2)
            assert np.all(np.abs(cov - np.array(base["cov"])) <= delta / 2)
            assert np.array_equal(cov, cov.T)
            assert np.linalg.eigvalsh(cov).min() >= noise.MIN_EIGENVALUE
            np.linalg.cholesky(cov)
    # the covariance eps (+-Delta/2) is large against the base variance 0.04: Delta = 0.1 often redraws
    assert all(p["redraws"] == 0 for p in classes("gaussian", 0.02, 100))
    assert any(p["redraws"] > 0 for p in classes("gaussian", 0.1, 100))


def test_gaussian_projection_when_redraws_run_out(monkeypatch):
    monkeypatch.setattr(noise, "MAX_REDRAWS", 0)
    ps = classes("gaussian", 1.0, 50)
    assert any(p["projected"] for p in ps)
    for p in ps:
        cov = np.array(p["cov"])
        assert np.array_equal(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() >= noise.MIN_EIGENVALUE * (1 - 1e-6)
        np.linalg.cholesky(cov)


def test_uniform_params_within_bounds_and_ordered():
    base = noise.base_params("uniform")
    for delta in (0.01, 0.1, 2.0):
        for p in classes("uniform", delta, 200):
            lo, hi = np.array(p["lo"]), np.array(p["hi"])
            assert not p["projected"]
            assert np.all(hi - lo >= noise.MIN_WIDTH)
            assert np.all(np.abs(lo - base["lo"]) <= delta / 2)
            assert np.all(np.abs(hi - base["hi"]) <= delta / 2)
    assert any(p["redraws"] > 0 for p in classes("uniform", 2.0, 50))
    assert all(p["redraws"] == 0 for p in classes("uniform", 0.5, 200))  # widths >= 0.6 - Delta


def test_uniform_projection_when_redraws_run_out(monkeypatch):
    monkeypatch.setattr(noise, "MAX_REDRAWS", 0)
    ps = classes("uniform", 2.0, 50)
    assert any(p["projected"] for p in ps)
    for p in ps:
        assert np.all(np.array(p["hi"]) - np.array(p["lo"]) >= noise.MIN_WIDTH * (1 - 1e-9))


def test_same_rng_state_same_params_and_image(kind):
    z = noise.standard_draw(kind, SIZE, generator(3, 1))
    assert np.array_equal(z, noise.standard_draw(kind, SIZE, generator(3, 1)))
    a = noise.draw_noise_params(kind, 0.1, generator(3, 2, 5))
    b = noise.draw_noise_params(kind, 0.1, generator(3, 2, 5))
    assert a == b
    stored = json.loads(json.dumps(b))  # as params.json would hold it
    assert np.array_equal(noise.noise_image(kind, a, z), noise.noise_image(kind, stored, z))


def mean_abs_diff(kind, delta, n=8):
    z = noise.standard_draw(kind, SIZE, generator(0, 1))
    imgs = [noise.noise_image(kind, p, z).astype(np.int64) for p in classes(kind, delta, n)]
    return [np.abs(imgs[i] - imgs[i + 1]) for i in range(n - 1)]


def test_classes_differ_and_the_difference_grows_with_delta(kind):
    means = []
    for delta in (0.01, 0.1, 0.5):
        diffs = mean_abs_diff(kind, delta)
        assert all(d.max() > 0 for d in diffs)  # every pair of neighbouring classes differs
        means.append(np.mean([d.mean() for d in diffs]))
    assert means[0] < means[1] < means[2]


def test_uniform_difference_bounded_by_delta():
    # |lo1 + (hi1 - lo1) z - lo2 - (hi2 - lo2) z| <= max(|dlo|, |dhi|) <= Delta, +1 for rounding
    for delta in (0.01, 0.1):
        for d in mean_abs_diff("uniform", delta):
            assert d.max() <= 255 * delta + 1


def test_gaussian_difference_bounded_by_delta():
    # |dmean + (L1 - L2) z| <= Delta / 2 + ||L1 - L2|| |z|; for small Delta, ||L1 - L2|| ~ ||dcov|| / (2 std)
    z = noise.standard_draw("gaussian", SIZE, generator(0, 1))
    zmax = np.linalg.norm(z, axis=2).max()
    for delta in (0.001, 0.01):
        ps = classes("gaussian", delta, 8)
        for p, q in zip(ps, ps[1:], strict=False):
            d = np.abs(noise.noise_image("gaussian", p, z).astype(int) - noise.noise_image("gaussian", q, z))
            lp, lq = np.linalg.cholesky(np.array(p["cov"])), np.linalg.cholesky(np.array(q["cov"]))
            bound = delta / 2 + np.linalg.norm(lp - lq, 2) * zmax
            assert d.max() <= 255 * bound + 1
            assert np.linalg.norm(lp - lq, 2) <= 3 * delta / (2 * noise.BASE_STD)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        noise.draw_noise_params("pink", 0.1, generator(0))
    with pytest.raises(ValueError, match="delta"):
        noise.draw_noise_params("gaussian", -0.1, generator(0))
    with pytest.raises(ValueError, match="not 'uniform'"):
        noise.noise_image("uniform", noise.base_params("gaussian"), np.zeros((4, 4, 3)))


@pytest.mark.parametrize("preset", ["gaussian-noise", "uniform-noise"])
def test_noise_presets_perturb_the_distribution_not_the_draw(tmp_path, preset):
    def class_images(delta):
        out = tmp_path / f"{preset}-{delta}"
        build(BuildConfig(preset=preset, L=6, delta=delta, size=32, shard_size=4), out, workers=1)
        urls = sorted(str(p) for p in out.glob("train-*.tar"))
        got = sorted(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"), key=lambda s: int(s["cls"]))
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
