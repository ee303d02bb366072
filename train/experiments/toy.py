"""A toy dataset in the fracgen contract (``fracgen/ARCHITECTURE.md``) for tests and smoke runs.

Grey stripe patterns whose orientation and frequency depend on the class: visually distinguishable, with
the same files a fracgen build writes (shards of ``png``/``cls``/``json`` samples and ``_info.json``, written by
``fracgen.dataset``). Use ``fracgen.build`` for real data; this exists so ``train`` can be checked without the
builder.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from fracgen import dataset


def toy_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) uint8 in {0, 127}: stripes at angle ``label % 4 * 45`` deg, period by ``label // 4``."""
    angle = np.pi * (label % 4) / 4 + rng.uniform(-0.05, 0.05)
    period = size / (2 + 2 * (label // 4 % 4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    return np.where(wave > 0, 127, 0).astype(np.uint8)


def write_toy_dataset(out: str | Path, num_classes: int = 16, per_class: int = 1, size: int = 64,
                      shard_size: int = 8, seed: int = 0) -> Path:
    """Write ``num_classes * per_class`` samples as shards plus ``_info.json`` into ``out``.

    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    order = rng.permutation(len(labels))
    shards = []
    for shard, first in enumerate(range(0, len(labels), shard_size)):
        samples = []
        for i in sorted(order[first:first + shard_size]):
            label = labels[i]
            buf = io.BytesIO()
            Image.fromarray(toy_image(label, size, rng)).save(buf, format="PNG")
            samples.append({"__key__": dataset.sample_key(i), "png": buf.getvalue(), "cls": str(label).encode(),
                            "json": json.dumps({"label": label}).encode()})
        _, count, _ = dataset.write_shard(out, shard, samples)
        shards.append({"filename": dataset.shard_name(shard), "num_samples": count})
    dataset.write_info(out, dataset.DatasetInfo.from_shards("toy", num_classes, shards))
    return out
