"""Toy data generated on the spot, for tests and the offline quick start (nothing is downloaded).

- ``write_toy_dataset``: a pre-training set in the fracgen contract (``fracgen/ARCHITECTURE.md``): grey stripe
  patterns whose orientation and frequency depend on the class, in the files a fracgen build writes (shards of
  ``png``/``cls``/``json`` samples and ``_info.json``, written by ``fracgen.dataset``), so ``train`` can be checked
  without the builder. Use ``fracgen build`` for real data.
- ``write_toy_imagefolder``: a small labelled ImageFolder (``train/``, ``test/``, a folder per class) of coloured
  stripes under noise, what ``fracgen-train toy-data`` writes: fine-tuning on it checks the pipeline offline in
  seconds and says nothing about transfer.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fracgen import dataset
from fracgen import folder as fs
from fracgen.errors import FracgenError
from train.errors import TrainError


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


def toy_colour_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: ``toy_image``'s stripes of ``label`` in a colour of its own, under noise (sigma 25)."""
    colour = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256], np.float64)
    stripes = toy_image(label, size, rng) / 127.0
    img = colour * (0.4 + 0.6 * stripes[..., None]) + rng.normal(0, 25, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_toy_imagefolder(out: str | Path, num_classes: int = 10, train_per_class: int = 50,
                          test_per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Write a labelled ImageFolder into ``out``: ``train/class-NN/NNNN.png`` and ``test/...``, PNG, RGB.

    The folder appears whole or not at all: it is written under a temporary name beside ``out`` and renamed.
    Cost: about 1 ms per image of 32 px.

    Returns:
        ``out`` as a Path.

    Raises:
        TrainError: ``out`` exists and is not an empty folder, or cannot be written.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise TrainError(f"{out} exists and is not an empty folder: give a new folder for the toy data")
    try:
        made = fs.make_folders(out.parent, "toy data folder")
    except FracgenError as e:
        raise TrainError(str(e)) from None
    tmp = fs.tmp_path(out)
    rng = np.random.default_rng(seed)
    try:
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for label in range(num_classes):
                folder = tmp / split / f"class-{label:02d}"
                folder.mkdir(parents=True)
                for i in range(count):
                    Image.fromarray(toy_colour_image(label, size, rng)).save(folder / f"{i:04d}.png")
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        fs.remove_made(made)
        raise TrainError(f"toy data {out}: cannot be written ({e.strerror or e})") from None
    return out
