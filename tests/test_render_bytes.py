"""The batched kernels draw the pixels of rendering each image alone: small builds of the chaos-game families,
pinned to the images and records of the one-image path, whatever the worker count.

The digests cover decoded grey values, shapes, tar member names and the cls/json payloads, not the PNG bytes, so
they hold on any zlib and for either PNG format. Regenerate only for a deliberate change of the look: build each
case and print ``_digest`` of the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracgen.build import BuildConfig, build

CASES = {
    "1p-frac": (dict(L=24, size=48, points=3000, shard_size=5, delta=0.3), "f5cc67f270059837"),
    "additive": (dict(L=12, size=40, points=2000, shard_size=5, delta=0.4, perturbation="additive", fractals=2),
                 "583cfa34fb03432e"),
    "points": (dict(L=8, size=40, points=2000, shard_size=5, style="points"), "39a3f651f61deeda"),
    "fractaldb": (dict(preset="fractaldb", fractals=3, instances=6, size=40, points=2000, shard_size=5),
                  "206b8eac0364e4c7"),
    "ofdb": (dict(preset="ofdb", fractals=4, size=40, points=2000, shard_size=3), "6efc45453227c41b"),
    # Delta 1.2: most draws diverge or under-fill (249 redraws), so early stops and redraws are pinned too
    "diverging": (dict(L=16, size=40, points=2000, shard_size=5, delta=1.2, min_fill=0.1), "d8b89e9280cde5db"),
    "fractaldb-wide": (dict(preset="fractaldb", fractals=2, instances=40, size=32, points=1500, shard_size=9),
                       "40de14adb5c5e13f"),
}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                data = tf.extractfile(member).read()
                if member.name.endswith(".png"):
                    image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))  # grey values: any PNG format
                    data = image.tobytes() + str(image.shape).encode()
                h.update(member.name.encode() + data)
    return h.hexdigest()[:16]


@pytest.mark.parametrize("case", CASES)
def test_pixels_and_metadata_match_the_pinned_build(case, tmp_path):
    options, expected = CASES[case]
    build(BuildConfig(**options), tmp_path / "one", workers=1)
    assert _digest(tmp_path / "one") == expected
    if case in ("1p-frac", "diverging"):
        build(BuildConfig(**options), tmp_path / "two", workers=2)
        assert _digest(tmp_path / "two") == expected
        assert (json.loads((tmp_path / "one" / "params.json").read_text())
                == json.loads((tmp_path / "two" / "params.json").read_text()))


def test_systems_of_more_maps_than_a_choice_byte_holds_render_alone(tmp_path, monkeypatch):
    # a --params system of 300 maps cannot go through the uint8 map choices of the batched path
    from fracgen.kernels import chaos

    monkeypatch.setattr(chaos, "MAX_CHAIN_MAPS", 1)  # every system now counts as too large
    options, expected = CASES["1p-frac"]
    build(BuildConfig(**options), tmp_path / "alone", workers=1)
    assert _digest(tmp_path / "alone") == expected
    options, expected = CASES["fractaldb"]
    build(BuildConfig(**options), tmp_path / "fdb", workers=1)
    assert _digest(tmp_path / "fdb") == expected
