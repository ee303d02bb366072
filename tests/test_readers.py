"""Every reader people reach for decodes a stored image to the same pixels, for every preset.

Readers: Pillow (``np.asarray``, ``convert("L")``, ``convert("RGB")``), torchvision ``decode_image`` (default,
GRAY, RGB), webdataset (``l8``, ``rgb8``, ``torchrgb``), timm's wds reader and ``datasets`` (``with_format``
numpy and torch). A grey dataset must give its grey values everywhere (grey readers the (H, W) array, RGB
readers three equal channels); an RGB dataset its RGB values in every reader that returns RGB or the file's
own layout, and in the grey readers the luminance of its library (Pillow's and webdataset's agree; torchvision
uses libpng's weights, so it is only checked to be grey of the right shape).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracgen.build import BuildConfig, build
from fracgen.dataset import decode_image, iter_shard

torch = pytest.importorskip("torch")
tv_io = pytest.importorskip("torchvision.io")
wds = pytest.importorskip("webdataset")

SIZE = 32
PRESETS = {
    "1p-frac": dict(L=4, points=3000),
    "1p-frac points style": dict(L=4, points=3000, style="points", min_fill=0.02),
    "fractaldb": dict(preset="fractaldb", fractals=2, instances=2, points=3000),
    "ofdb": dict(preset="ofdb", fractals=3, points=3000),
    "gaussian-noise": dict(preset="gaussian-noise", L=3),
    "uniform-noise": dict(preset="uniform-noise", L=3),
    "build-real (canny edges)": dict(preset="real", L=3),
    "build-real (rgb)": dict(preset="real", L=3, edges="none", color="rgb"),
}
FRACTAL_LOOKS = ("1p-frac", "1p-frac points style", "fractaldb", "ofdb")


@pytest.fixture(scope="module", params=list(PRESETS), ids=list(PRESETS))
def dataset(request, tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("readers") / "ds"
    source = None
    if PRESETS[request.param].get("preset") == "real":
        rng = np.random.default_rng(0)
        photo = np.zeros((48, 48, 3), np.uint8)
        photo[8:40, 12:36] = rng.integers(40, 255, 3, dtype=np.uint8)  # a block: Canny finds its edges
        photo[20:28, 4:44] = rng.integers(0, 255, (8, 40, 3), dtype=np.uint8)
        source = root.parent / "photo.png"
        Image.fromarray(photo).save(source)
    build(BuildConfig(**{"size": SIZE, "shard_size": 4, "seed": 0, **PRESETS[request.param]}), root, workers=1,
          source=source)
    return request.param, root


def stored(root: Path) -> dict[str, tuple[bytes, int]]:
    """key -> (png bytes, label), read with the standard library alone."""
    return {s["__key__"]: (s["png"], int(s["cls"])) for shard in sorted(root.glob("train-*.tar"))
            for s in iter_shard(shard)}


def as_hwc(array) -> np.ndarray:
    """A reader's output as a uint8 numpy array, channels last (float tensors in [0, 1] scaled back)."""
    if isinstance(array, torch.Tensor):
        if array.is_floating_point():
            array = (array * 255).round()
        array = array.to(torch.uint8).numpy()
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)  # C, H, W -> H, W, C
    array = np.asarray(array)
    assert array.dtype == np.uint8, array.dtype
    return array


def check(name: str, got, grey: np.ndarray | None, rgb: np.ndarray, kind: str) -> None:
    """``kind``: "grey" (a grey reader), "rgb" (an RGB reader) or "native" (the file's own layout)."""
    got = as_hwc(got)
    if kind == "native":
        expected = grey if grey is not None else rgb
        got = got[..., 0] if grey is not None and got.ndim == 3 and got.shape[2] == 1 else got
    elif kind == "rgb":
        expected = rgb
    else:
        expected = grey
        got = got[..., 0] if got.ndim == 3 and got.shape[2] == 1 else got
        if expected is None:  # an RGB image read as grey: the library's own luminance
            assert got.shape == rgb.shape[:2], name
            return
    np.testing.assert_array_equal(got, expected, err_msg=name)


def test_every_reader_gives_the_stored_pixels(dataset):
    preset, root = dataset
    samples = stored(root)
    urls = [str(p) for p in sorted(root.glob("train-*.tar"))]
    expected = {}
    for key, (png, _) in samples.items():
        with Image.open(io.BytesIO(png)) as im:
            is_grey = im.mode == "L"
        rgb = decode_image(png, "RGB")
        grey = decode_image(png, "L") if is_grey else None
        if grey is not None:
            np.testing.assert_array_equal(rgb, np.repeat(grey[..., None], 3, axis=2))
        expected[key] = grey, rgb
    if preset in FRACTAL_LOOKS:
        for grey, _ in expected.values():
            assert grey is not None and set(np.unique(grey)) <= {0, 127} and grey.max() == 127
    if preset in ("gaussian-noise", "uniform-noise", "build-real (rgb)"):
        assert all(grey is None for grey, _ in expected.values())  # RGB datasets stay RGB
    if preset == "build-real (canny edges)":
        assert all(grey is not None for grey, _ in expected.values())  # interpolated edges: grey levels

    for key, (png, _) in samples.items():
        grey, rgb = expected[key]
        with Image.open(io.BytesIO(png)) as im:
            check(f"{preset} {key} PIL asarray", np.asarray(im), grey, rgb, "native")
            check(f"{preset} {key} PIL L", np.asarray(im.convert("L")), grey, rgb, "grey")
            if grey is None:  # Pillow's luminance is the reference for the grey readers of RGB images
                np.testing.assert_array_equal(np.asarray(im.convert("L")), decode_image(png, "L"))
            check(f"{preset} {key} PIL RGB", np.asarray(im.convert("RGB")), grey, rgb, "rgb")
        data = torch.frombuffer(bytearray(png), dtype=torch.uint8)
        for mode, kind in (("UNCHANGED", "native"), ("GRAY", "grey"), ("RGB", "rgb")):
            first = tv_io.decode_image(data, mode=getattr(tv_io.ImageReadMode, mode))
            second = tv_io.decode_image(data, mode=getattr(tv_io.ImageReadMode, mode))
            assert torch.equal(first, second), f"{preset} {key} torchvision {mode}: two reads differ"
            check(f"{preset} {key} torchvision {mode}", first, grey, rgb, kind)

    for decoder, kind in (("l8", "grey"), ("rgb8", "rgb"), ("torchrgb", "rgb")):
        for s in wds.WebDataset(urls, shardshuffle=False).decode(decoder):
            grey, rgb = expected[s["__key__"]]
            if decoder == "l8" and grey is None:
                np.testing.assert_array_equal(s["png"], decode_image(samples[s["__key__"]][0], "L"))
            check(f"{preset} {s['__key__']} webdataset {decoder}", s["png"], grey, rgb, kind)


def test_timm_and_datasets_read_the_same_pixels(dataset):
    timm_data = pytest.importorskip("timm.data")
    hf = pytest.importorskip("datasets")
    preset, root = dataset
    samples = stored(root)
    by_label: dict[int, list[np.ndarray]] = {}
    for png, label in samples.values():
        by_label.setdefault(label, []).append(decode_image(png, "RGB"))

    ds = timm_data.create_dataset("wds/fracgen", root=str(root), split="train", is_training=False, batch_size=1)
    seen = 0
    for image, target in ds:
        # timm yields no key: the image must be one of its class's (FractalDB has several per class)
        assert any(np.array_equal(np.asarray(image), im) for im in by_label[int(target)]), f"{preset} timm"
        seen += 1
    assert seen == len(samples)

    files = [str(p) for p in sorted(root.glob("train-*.tar"))]
    loaded = hf.load_dataset("webdataset", data_files={"train": files}, split="train",
                             cache_dir=str(root.parent / "hf-cache"))
    for fmt in ("numpy", "torch"):
        rows = loaded.with_format(fmt)
        for i in range(len(rows)):
            row = rows[i]
            png = samples[row["__key__"]][0]
            with Image.open(io.BytesIO(png)) as im:
                native = np.asarray(im)
            got = as_hwc(row["png"])  # torch: channels first, (1, H, W) for grey
            got = got[..., 0] if got.ndim == 3 and got.shape[2] == 1 else got
            np.testing.assert_array_equal(got, native, err_msg=f"{preset} datasets {fmt}")
            assert int(row["json"]["label"]) == int(row["cls"])
