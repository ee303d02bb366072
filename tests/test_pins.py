"""Every family's bytes, pinned: a small build of each, its shards, ``_info.json`` and ``params.json``.

Shards are pinned byte for byte where fracgen's own deflate encodes them (the fractal, contour and noise looks);
the real-image family's PNGs come from zlib, whose bytes may differ between zlib builds, so its images are pinned
by their decoded pixels. A change of a digest is a change of the dataset: regenerate only for a deliberate one
(build each case and print ``_digest``), and say so in the commit.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracgen.build import BuildConfig, build
from fracgen.seeds import generator

CASES = {
    "1p-frac": (dict(L=12, points=3000, shard_size=5, size=64), "34090d3bbf1d463331dd643d"),
    "1p-frac-2fractals-points": (dict(L=5, fractals=2, points=3000, shard_size=4, size=64, style="points"),
                                 "784542a0fb039e8f87585bbc"),
    "1p-frac-additive": (dict(L=5, maps=3, perturbation="additive", points=2000, shard_size=4, sigma=4.0, size=48),
                         "6eaca9518cf71b7b090bf0f0"),
    "1p-frac-variants": (dict(L=6, patch_variants=3, points=3000, shard_size=5, size=64), "b0c2f8afc4ee1902ec86a528"),
    "fractaldb": (dict(preset="fractaldb", fractals=3, instances=7, points=2000, shard_size=6, size=48),
                  "8459325ca7f0758740f0870a"),
    "ofdb": (dict(preset="ofdb", fractals=5, points=2000, shard_size=3, size=48), "c263661f2aeb5c273731d6ae"),
    "ofdb-variants-released": (dict(preset="ofdb", fractals=3, ofdb_weights="released", patch_variants=2,
                                    points=2000, shard_size=3, size=48), "4d93776d55b8600efd29a60a"),
    "rcdb": (dict(preset="rcdb", categories=4, instances=2, shard_size=3, size=96), "e366879a84b03fe7e9338be8"),
    "visualatom": (dict(preset="visualatom", categories=3, instances=2, shard_size=4, size=96),
                   "9a9d6f87209bd5ed90da0d29"),
    "rcdb-lpce": (dict(preset="rcdb-lpce", L=5, shard_size=2, size=96), "408974a8ba1ee08fd39ee5ed"),
    "visualatom-lpce": (dict(preset="visualatom-lpce", L=4, radius_perturbation="scalar", shard_size=3, size=96),
                        "321a2c998cdf2fc08d802c63"),
    "gaussian-noise": (dict(preset="gaussian-noise", L=5, shard_size=2, size=32), "8db200d50ebb60642c404a8b"),
    "uniform-noise": (dict(preset="uniform-noise", L=4, shard_size=3, size=32), "8eb342b092f1d95563a9b2d1"),
    "3d-ofdb": (dict(preset="3d-ofdb", categories=3, views=4, points=500, shard_size=5, size=40),
                "f2ae6f7d6877564a43c8ef9e"),
    "real-affine-canny": (dict(preset="real", L=5, shard_size=2, size=48), "b344d54ff1bbaa1eacfa1c74"),
    "real-elastic-rgb": (dict(preset="real", L=4, color="rgb", edges="none", shard_size=3, size=48,
                              transform="elastic"), "cf9236e67421a7386355c400"),
    "real-polynomial": (dict(preset="real", L=3, edges="none", shard_size=3, size=48, transform="polynomial"),
                        "ebbf4dd8c3cec06e0a6274f1"),
}


def photo(folder: Path, size: int = 64) -> Path:
    """A smooth colour picture with a few shapes, as a PNG (the real-image family's source)."""
    rows, cols = np.indices((size, size)) / (size - 1)
    img = np.stack([255 * cols, 255 * rows, 255 * (1 - cols) * rows], axis=2)
    img[(rows - 0.4) ** 2 + (cols - 0.6) ** 2 < 0.05] = (250, 40, 40)
    img[10:30, 8:24] = (20, 200, 90)
    img += generator(7, 99).normal(0, 4, img.shape)
    path = folder / "photo.png"
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(path)
    return path


def _digest(root: Path, exact: bool) -> str:
    """sha256 over the shards (their bytes, or member names and decoded pixels), _info.json and params.json."""
    h = hashlib.sha256()
    for tar in sorted(root.glob("train-*.tar")):
        if exact:
            h.update(tar.name.encode() + hashlib.sha256(tar.read_bytes()).digest())
            continue
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                data = tf.extractfile(member).read()
                if member.name.endswith(".png"):
                    image = np.asarray(Image.open(io.BytesIO(data)))
                    data = image.tobytes() + str(image.shape).encode()
                h.update(member.name.encode() + data)
    for name in ("_info.json", "params.json"):
        h.update(name.encode() + hashlib.sha256((root / name).read_bytes()).digest())
    return h.hexdigest()[:24]


@pytest.mark.parametrize("case", CASES)
def test_every_familys_bytes_are_pinned(case, tmp_path):
    options, expected = CASES[case]
    real = options.get("preset") == "real"
    build(BuildConfig(**options), tmp_path / "out", workers=1, source=photo(tmp_path) if real else None)
    assert _digest(tmp_path / "out", exact=not real) == expected
