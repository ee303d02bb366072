"""Two figures of docs/fidelity.md, measured: released-style 1p-frac base draws that fill under 5%, and how
little OFDB's two weight readings overlap.

Run with ``python benchmarks/readme_figures.py [--bases 2000] [--categories 100]`` (seconds on 2 cores):

- Base draws: the released code takes the first finite system drawn for the sigma-factor target and never
  renders it (fracgen's ``--base-min-fill 0``); this renders each such base as the build would (512 px, 100,000
  points, the reference raster) and counts those lighting under 5% of the pixels, which fracgen's default search
  (``--base-min-fill`` = ``--min-fill`` = 0.05) would never pick.
- OFDB weights: the same categories built with ``--ofdb-weights identity`` (the paper's text, fracgen's default)
  and ``released`` (parameter a of every map scaled by 0.2, what the shipped scripts render); the IoU of their lit
  pixels per category.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracgen import dataset  # noqa: E402
from fracgen.build import BuildConfig, build  # noqa: E402
from fracgen.search import search  # noqa: E402


def base_fills(count: int, sigma: float) -> np.ndarray:
    """The fill of the first finite base system of seeds 0..count-1 (the released draw)."""
    return np.array([search(sigma, seed=seed, min_fill=0.0).fill for seed in range(count)])


def ofdb_images(root: Path, categories: int, weights: str, workers: int) -> dict[int, np.ndarray]:
    """Category -> lit mask of an OFDB build with these weights (one image per category)."""
    build(BuildConfig(preset="ofdb", fractals=categories, ofdb_weights=weights), root, workers=workers)
    images = {}
    for name in sorted(root.glob("train-*.tar")):
        for sample in dataset.iter_shard(name):
            images[int(sample["cls"])] = dataset.decode_grey(sample["png"]) > 0
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=int, default=2000, help="1p-frac seeds whose released base is rendered")
    parser.add_argument("--sigma", type=float, default=3.5)
    parser.add_argument("--categories", type=int, default=100, help="OFDB categories compared")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    fills = base_fills(args.bases, args.sigma)
    print(f"released base draws (sigma {args.sigma}, {args.bases} seeds): {np.mean(fills < 0.05):.1%} fill under 0.05 "
          f"(median fill {np.median(fills):.3f})")
    with tempfile.TemporaryDirectory() as tmp:
        identity = ofdb_images(Path(tmp) / "identity", args.categories, "identity", args.workers)
        released = ofdb_images(Path(tmp) / "released", args.categories, "released", args.workers)
    ious = np.array([(identity[c] & released[c]).sum() / max(1, (identity[c] | released[c]).sum())
                     for c in sorted(identity)])
    print(f"OFDB identity vs released weights ({len(ious)} categories): IoU of lit pixels {ious.min():.2f}-"
          f"{ious.max():.2f} (median {np.median(ious):.2f})")


if __name__ == "__main__":
    main()
