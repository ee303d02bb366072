"""build-real: one real image, loaded, turned into Canny edges and perturbed by the three geometric transforms
(on small synthetic images), and the builds made of it: every image keeps its fill, the source travels with the
dataset, and a resume reads only that source."""

import json

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from conftest import one_line
from PIL import Image

from fracgen import dataset
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import FracgenError, UsageError
from fracgen.presets import real as ri
from fracgen.seeds import generator
from fracgen.verify import verify

SIZE = 64


def square(size=SIZE, lo=16, hi=48, value=200):
    img = np.zeros((size, size), np.uint8)
    img[lo:hi, lo:hi] = value
    return img


def photo(size=SIZE, seed=0):
    """A smooth colour picture with a few shapes: something to warp whose pixels all differ from their neighbours."""
    rows, cols = np.indices((size, size)) / (size - 1)
    img = np.stack([255 * cols, 255 * rows, 255 * (1 - cols) * rows], axis=2)
    img[(rows - 0.4) ** 2 + (cols - 0.6) ** 2 < 0.05] = (250, 40, 40)
    img[10:30, 8:24] = (20, 200, 90)
    img += generator(seed, 99).normal(0, 4, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---- load_image -------------------------------------------------------------------------------------------


def test_load_image_crops_the_centre_square_and_resizes(tmp_path):
    wide = np.zeros((60, 100, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)
    wide[:, 20:80] = (0, 255, 0)
    wide[:, 80:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    img = ri.load_image(tmp_path / "wide.png", 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(np.unique(img.reshape(-1, 3), axis=0), [[0, 255, 0]])  # the side bands are cut off


def test_load_image_converts_grey_and_alpha_to_rgb(tmp_path):
    Image.fromarray(square()).save(tmp_path / "grey.png")
    img = ri.load_image(tmp_path / "grey.png", SIZE)
    assert img.shape == (SIZE, SIZE, 3)
    assert np.array_equal(img[..., 0], square()) and np.array_equal(img[..., 0], img[..., 2])
    rgba = np.dstack([photo(), np.full((SIZE, SIZE), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert np.array_equal(ri.load_image(tmp_path / "alpha.png", SIZE), photo())


def test_load_image_scales_16_bit_grey_to_8_bits(tmp_path):
    # Pillow's own convert("RGB") clips every 16-bit value over 255 to white
    grey = (np.arange(48 * 40).reshape(48, 40) * 7 % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(ri.load_image(tmp_path / "g16.png", 24), ri.load_image(tmp_path / "g8.png", 24))


def test_load_image_reads_a_jpeg(tmp_path):
    Image.fromarray(photo(128)).save(tmp_path / "p.jpg", quality=95)
    img = ri.load_image(tmp_path / "p.jpg", SIZE)
    assert img.shape == (SIZE, SIZE, 3)
    expected = np.asarray(Image.fromarray(photo(128)).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert np.abs(img.astype(int) - expected).mean() < 4  # JPEG's loss only


def test_load_image_rejects_a_folder(tmp_path):
    with pytest.raises(UsageError, match="folder"):
        ri.load_image(tmp_path, SIZE)


# ---- canny --------------------------------------------------------------------------------------------------


def test_canny_finds_the_outline_of_a_square_and_nothing_else():
    edges = ri.canny(square())
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    on = edges > 0
    rows, cols = np.indices(on.shape)
    # distance (chessboard) to the square's boundary, which runs between pixels 15|16 and 47|48
    inside = np.maximum(np.abs(rows - 31.5), np.abs(cols - 31.5))
    off_boundary = np.abs(inside - 16)  # 0.5 on the pixels either side of the boundary
    assert off_boundary[on].max() <= 1.5  # nothing away from the outline
    ring = off_boundary == 0.5
    outer_or_inner = ring & (inside > 16), ring & (inside < 16)
    # one pixel wide: each side of the square is found once, on one of its two candidate pixel lines
    assert on.sum() <= max(r.sum() for r in outer_or_inner)
    assert on.sum() >= 0.95 * min(r.sum() for r in outer_or_inner)
    for line in (on[:, 30], on[30, :]):  # a cut through the middle crosses exactly two edges
        assert line.sum() == 2


def test_canny_is_empty_on_a_flat_image():
    for value in (0, 90, 255):
        assert not ri.canny(np.full((SIZE, SIZE), value, np.uint8)).any()


def test_canny_ignores_the_image_frame_and_weak_noise():
    img = square().astype(float) + generator(0, 5).normal(0, 2, (SIZE, SIZE))
    edges = ri.canny(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    assert not edges[:8].any() and not edges[-8:].any() and not edges[:, :8].any() and not edges[:, -8:].any()
    assert np.array_equal(edges[20:44, 20:44], np.zeros((24, 24)))


def test_canny_hysteresis_keeps_weak_edges_only_when_connected():
    apart = np.zeros((SIZE, SIZE), np.uint8)
    apart[16:48, 8:28] = 200  # strong
    apart[16:48, 36:56] = 30  # weak: 0.15 of the strongest gradient, between low and high
    assert ri.canny(apart)[:, 8:28].any() and not ri.canny(apart)[:, 33:].any()
    assert ri.canny(apart, low=0.1, high=0.12)[:, 33:].any()  # strong enough on its own
    # one straight edge whose contrast fades from 200 at the top to 24 at the bottom: its faint end (under
    # 0.2 of the strongest gradient) is kept only because it continues the strong part
    fading = np.zeros((SIZE, SIZE), np.uint8)
    fading[:, 32:] = np.rint(np.linspace(200, 24, SIZE))[:, None]
    edges = ri.canny(fading) > 0
    assert edges[:, 32].all() and edges.sum() == SIZE
    strong_only = ri.canny(fading, low=0.2, high=0.2) > 0
    assert strong_only[:48, 32].all() and not strong_only[60:].any()


def test_canny_does_not_depend_on_contrast():
    assert np.array_equal(ri.canny(square(value=200)), ri.canny(square(value=40)))


# ---- prepare ------------------------------------------------------------------------------------------------


def test_prepare_shapes_and_values():
    img = photo()
    grey = ri.prepare(img, "none", "grey")
    assert grey.shape == (SIZE, SIZE) and grey.dtype == np.uint8
    assert np.abs(grey.astype(int) - np.asarray(Image.fromarray(img).convert("L"))).max() <= 1  # Pillow's luma
    assert np.array_equal(ri.prepare(img, "none", "rgb"), img)
    edges = ri.prepare(img, "canny", "grey")
    assert edges.shape == (SIZE, SIZE) and set(np.unique(edges)) == {0, 255}
    colour_edges = ri.prepare(img, "canny", "rgb")
    assert colour_edges.shape == (SIZE, SIZE, 3)
    assert np.array_equal(colour_edges[edges > 0], img[edges > 0]) and not colour_edges[edges == 0].any()
    assert ri.prepare(square(), "none", "rgb").shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="edges"):
        ri.prepare(img, "sobel", "grey")
    with pytest.raises(ValueError, match="color"):
        ri.prepare(img, "none", "hsv")


# ---- transforms ---------------------------------------------------------------------------------------------


@pytest.fixture(params=ri.TRANSFORMS)
def kind(request):
    return request.param


def test_delta_zero_gives_back_the_input_exactly(kind):
    for img in (photo(), square(), ri.prepare(photo(), "canny", "grey"), photo()[:40]):
        params = ri.draw_transform(kind, 0.0, generator(0, 1))
        out = ri.apply_transform(img, kind, params)
        assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_params_are_json_and_within_bounds(kind):
    for delta in (0.01, 0.1, 1.0):
        params = ri.draw_transform(kind, delta, generator(0, 2))
        assert json.loads(json.dumps(params)) == params and params["kind"] == kind
        values = np.array(params.get("matrix") or params.get("grid") or params["coefficients"])
        if kind == "affine":
            values = values - np.array([[1, 0, 0], [0, 1, 0]])
        assert values.shape == {"affine": (2, 3), "elastic": (4, 4, 2), "polynomial": (2, 6)}[kind]
        assert np.abs(values).max() <= delta / 2 and np.abs(values).max() > delta / 20


def test_same_rng_state_same_image(kind):
    a = ri.draw_transform(kind, 0.1, generator(4, 2, 9))
    assert a == ri.draw_transform(kind, 0.1, generator(4, 2, 9))
    stored = json.loads(json.dumps(a))  # as params.json would hold it
    assert np.array_equal(ri.apply_transform(photo(), kind, a), ri.apply_transform(photo(), kind, stored))


def test_output_shape_follows_the_input(kind):
    params = ri.draw_transform(kind, 0.2, generator(0, 3))
    for img in (photo(), square(), photo()[:, :48]):
        out = ri.apply_transform(img, kind, params)
        assert out.shape == img.shape and out.dtype == np.uint8


def max_displacement(kind, delta, n=20, shape=(SIZE, SIZE)):
    rows, cols = np.indices(shape)
    worst = 0.0
    for k in range(n):
        r, c = ri.source_coordinates(kind, ri.draw_transform(kind, delta, generator(0, 6, k)), shape)
        worst = max(worst, np.abs(r - rows).max(), np.abs(c - cols).max())
    return worst


def test_displacement_bounded_by_delta(kind):
    # affine: |du| <= Delta/2 (|u| + |v| + 1) <= 3 Delta/2; polynomial: 6 monomials each <= 1 in size; elastic:
    # a convex combination of offsets <= Delta/2 of the side. Normalised units are (SIZE - 1) / 2 pixels.
    scale = (SIZE - 1) / 2
    bound = {"affine": 1.5 * scale, "polynomial": 3 * scale, "elastic": 0.5 * SIZE}[kind]
    for delta in (0.01, 0.1, 0.5):
        assert max_displacement(kind, delta) <= bound * delta + 1e-9


def test_classes_differ_more_as_delta_grows(kind):
    img = photo()
    means = []
    for delta in (0.01, 0.1, 0.5):
        outs = [ri.apply_transform(img, kind, ri.draw_transform(kind, delta, generator(0, 8, k))).astype(int)
                for k in range(6)]
        diffs = [np.abs(a - b).mean() for a, b in zip(outs, outs[1:], strict=False)]
        assert min(diffs) > 0  # every class is its own image
        means.append(np.mean(diffs))
    assert means[0] < means[1] < means[2]
    assert means[0] < 5  # Delta = 0.01 moves pixels by well under a pixel


def test_affine_translation_and_bilinear_sampling():
    # a pure shift by 2 pixels right (the output reads 2 pixels to its left) and 0.5 pixel down
    scale = (SIZE - 1) / 2
    params = {"kind": "affine", "matrix": [[1, 0, -2 / scale], [0, 1, 0.5 / scale]]}
    img = photo()
    out = ri.apply_transform(img, "affine", params).astype(int)
    expected = (img[:-1].astype(int) + img[1:]) / 2
    assert np.abs(out[:-1, 2:] - expected[:, :-2]).max() <= 1  # rounding of the mean of two rows
    assert not out[:, :2].any()  # reads left of the image: 0
    # the last row reads half a row past the bottom: half its value
    assert np.abs(out[-1, 2:] - img[-1, :-2] / 2).max() <= 1


def test_bilinear_reads_zero_far_outside_and_for_nan():
    img = photo()
    rows = np.array([[-5.0, np.nan, 1e300], [0.0, 63.0, 64.0]])
    cols = np.array([[3.0, 3.0, 3.0], [-np.inf, 63.0, 0.0]])
    out = ri.bilinear(img, rows, cols)
    assert out.shape == (2, 3, 3)
    assert not out[0].any() and not out[1, 0].any() and not out[1, 2].any()
    assert np.array_equal(out[1, 1], img[63, 63])


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="transform"):
        ri.draw_transform("swirl", 0.1, generator(0))
    with pytest.raises(ValueError, match="delta"):
        ri.draw_transform("affine", -1.0, generator(0))
    with pytest.raises(ValueError, match="not 'elastic'"):
        ri.apply_transform(photo(), "elastic", ri.draw_transform("affine", 0.1, generator(0)))


# ---- builds -------------------------------------------------------------------------------------------------


def photo_jpeg(tmp_path):
    """A synthetic 'photo': a bright square and a disc on a dark ground, as JPEG."""
    from PIL import ImageDraw

    image = Image.new("RGB", (80, 80), (20, 30, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 40, 40), fill=(220, 200, 180))
    draw.ellipse((45, 35, 75, 70), fill=(90, 200, 90))
    path = tmp_path / "photo.jpg"
    image.save(path, quality=95)
    return path


def test_build_real_perturbs_one_image_and_keeps_it(tmp_path):
    out = tmp_path / "real"
    result = CliRunner().invoke(cli, ["build-real", str(photo_jpeg(tmp_path)), str(out), "--L", "8", "--size", "48",
                                      "--shard-size", "4", "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "source.jpg").read_bytes() == (tmp_path / "photo.jpg").read_bytes()
    urls = sorted(str(p) for p in out.glob("train-*.tar"))
    got = sorted(wds.WebDataset(urls, shardshuffle=False).decode("l8"), key=lambda s: int(s["cls"]))
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


ARGS = ["--L", "4", "--size", "32", "--shard-size", "2", "--workers", "1", "--no-progress"]


def checker(tmp_path, shape=(48, 48)):
    path = tmp_path / "checker.png"
    Image.fromarray(((np.indices(shape).sum(0) // 6) % 2 * 255).astype(np.uint8)).save(path)
    return path


def test_a_delta_that_moves_every_image_out_of_view_is_refused(tmp_path):
    cfg = BuildConfig(preset="real", L=4, size=32, shard_size=2, edges="none", delta=100.0, max_redraws=3)
    with pytest.raises(FracgenError, match="kept the image in view"):
        build(cfg, tmp_path / "out", workers=1, source=checker(tmp_path))
    assert not list((tmp_path / "out").glob("train-*"))  # no blank image was written


def test_every_image_of_a_real_build_keeps_its_fill(tmp_path):
    out = tmp_path / "out"
    assert CliRunner().invoke(cli, ["build-real", str(checker(tmp_path)), str(out), "--edges", "none",
                                    "--delta", "0.5", *ARGS]).exit_code == 0
    source = ri.fill(ri.prepare(ri.load_image(checker(tmp_path), 32), edges="none"))
    for shard in range(2):
        for sample in dataset.iter_shard(out / dataset.shard_name(shard)):
            assert ri.fill(dataset.decode_grey(sample["png"])) >= ri.MIN_KEPT * source


def test_resume_of_a_real_image_build_refuses_another_image(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    args = ["build-real", "--L", "2", "--size", "32", "--shard-size", "2", "--workers", "1", "--no-progress"]
    assert CliRunner().invoke(cli, [*args[:1], str(tmp_path / "a.png"), str(out), *args[1:]]).exit_code == 0
    (out / "build.json").unlink()
    one_line(CliRunner().invoke(cli, [args[0], str(tmp_path / "b.png"), str(out), *args[1:], "--resume"]),
             "built from another image")
    for image in (tmp_path / "a.png", out / "source.png"):  # the same picture: resumed
        (out / "build.json").unlink(missing_ok=True)
        result = CliRunner().invoke(cli, [args[0], str(image), str(out), *args[1:], "--resume"])
        assert result.exit_code == 0, result.output
    assert verify(out).ok


def test_resume_never_copies_an_image_from_outside(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray((np.indices((32, 32)).sum(0) * 4 % 256).astype(np.uint8)).save(image)
    cfg = BuildConfig(preset="real", L=4, size=32, shard_size=2, edges="none")
    out = tmp_path / "real"
    build(cfg, out, workers=1, source=image, shard_range=(0, 1))
    victim = tmp_path / "victim.png"
    victim.write_bytes(image.read_bytes())
    record = json.loads((out / ".fracgen" / "config.json").read_text())
    record["source"] = "../victim.png"
    (out / ".fracgen" / "config.json").write_text(json.dumps(record))
    (out / "source.png").unlink()
    with pytest.raises(FracgenError, match="not a file inside"):
        build(None, out, workers=1, resume=True)
    assert not (out / "victim.png").exists() and not (out / "build.json").exists()
