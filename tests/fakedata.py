"""A small dataset in fracgen's on-disk contract, written without the builder.

Used by the publishing tests until (and where) the real builder's `tiny_dataset` fixture is not available.
Images are random-walk point clouds as grey 1-bit palette PNGs with values {0, 127}, like the reference look.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image


def encode_png(grey: np.ndarray) -> bytes:
    """Grey image (h, w) uint8 with values {0, 127} -> 1-bit palette PNG bytes."""
    image = Image.fromarray((grey > 0).astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 127, 127, 127])
    buf = io.BytesIO()
    image.save(buf, format="PNG", bits=1, optimize=True)
    return buf.getvalue()


def make_dataset(root: Path, L: int = 16, size: int = 64, shard_size: int = 8, seed: int = 0) -> Path:
    """Write an L-class, one-image-per-class dataset into `root` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    maps = rng.uniform(-0.5, 0.5, size=(2, 6)).round(6).tolist()
    classes = []
    images = []
    base = rng.normal(0, 0.15, size=(400, 2)).cumsum(axis=0) * 0.2
    for label in range(L):
        pts = base + rng.normal(0, 0.01, size=base.shape)
        pts = (pts - pts.min(0)) / (np.ptp(pts, 0) + 1e-9) * (size - 3) + 1
        grey = np.zeros((size, size), np.uint8)
        grey[pts[:, 1].astype(int), pts[:, 0].astype(int)] = 127
        images.append(grey)
        classes.append(
            {"label": label, "fractal": 0, "perturbation": label, "maps": maps, "redraws": 0, "fill": 0.1}
        )
    order = rng.permutation(L)
    shards = []
    for start in range(0, L, shard_size):
        name = f"train-{start // shard_size:06d}.tar"
        labels = sorted(int(k) for k in order[start : start + shard_size])
        with wds.TarWriter(str(root / name), mtime=0) as sink:
            for label in labels:
                sink.write(
                    {
                        "__key__": f"{label:08d}",
                        "png": encode_png(images[label]),
                        "cls": str(label).encode(),
                        "json": json.dumps(
                            {
                                k: classes[label][k]
                                for k in ("label", "fractal", "perturbation", "maps", "redraws")
                            }
                        ).encode(),
                    }
                )
        data = (root / name).read_bytes()
        shards.append(
            {
                "filename": name,
                "num_samples": len(labels),
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
        )
    info = {
        "name": "1p-frac",
        "num_classes": L,
        "splits": {
            "train": {
                "name": "train",
                "num_samples": L,
                "filenames": [s["filename"] for s in shards],
                "shard_lengths": [s["num_samples"] for s in shards],
            }
        },
    }
    (root / "_info.json").write_text(json.dumps(info, indent=1))
    params = {
        "systems": [{"maps": maps, "probabilities": [0.5, 0.5], "sigma": 3.5, "fill": 0.1}],
        "classes": classes,
    }
    (root / "params.json").write_text(json.dumps(params))
    (root / ".fracgen").mkdir(exist_ok=True)
    (root / ".fracgen" / "config.json").write_text("{}")
    config = {
        "preset": "1p-frac",
        "sigma": 3.5,
        "delta": 0.1,
        "L": L,
        "size": size,
        "points": 5000,
        "seed": seed,
        "shard_size": shard_size,
        "perturbation": "multiplicative",
    }
    build = {
        "config": config,
        "command": f"fracgen build out --sigma 3.5 --delta 0.1 --L {L} --size {size} --seed {seed}",
        "versions": {"fracgen": "0.1.0", "numpy": np.__version__, "python": "3.11"},
        "shards": shards,
        "num_samples": L,
        "num_classes": L,
        "timing": {"total_s": 1.25, "render_s": 1.0},
    }
    (root / "build.json").write_text(json.dumps(build, indent=1))
    return root


@pytest.fixture
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of a sound dataset (the builder's `tiny_dataset` when conftest offers it)."""
    try:
        source = Path(request.getfixturevalue("tiny_dataset"))
    except pytest.FixtureLookupError:
        source = make_dataset(tmp_path / "source")
    copy = tmp_path / "ds"
    shutil.copytree(source, copy)
    return copy
