"""A plain reference render: the chaos game and the 3 x 3 patch raster of a build's images, nothing else.

A yardstick: the whole ``fracgen build`` command (interpreter start, imports, search, redraws,
PNG, tar, metadata) should take no longer than this script's render of the same images on the same number of
processes. It reads a finished build's ``params.json`` (each class's accepted maps and its redraw count),
replays each class's generator to get the accepted patch masks, and then, timed, runs the straightforward
kernels (one chain per image, a patch lookup and one byte store per
patch pixel) on a pool of already-started processes. Not timed: imports, JIT, the pool start and the mask replay (the masks
are drawn into memory before the clock starts), so the reference is the bare arithmetic of the images.

Run: ``python benchmarks/reference_render.py OUT [--workers 2] [--check 20]``; prints seconds and images/s.
``--check N`` decodes the first N PNGs of the build and asserts that the reference renders them byte for byte.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import numba
import numpy as np

PAD = 6
VALUE = 127


@numba.njit(cache=True, nogil=True)
def plain_chaos_game(maps, cumprob, uniforms, points):
    n = maps.shape[0]
    x = 0.0
    y = 0.0
    points[0, 0] = 0.0
    points[0, 1] = 0.0
    for t in range(points.shape[0] - 1):
        r = uniforms[t]
        j = n - 1
        for k in range(n):
            if r <= cumprob[k]:
                j = k
                break
        nx = maps[j, 0] * x + maps[j, 1] * y + maps[j, 4]
        y = maps[j, 2] * x + maps[j, 3] * y + maps[j, 5]
        x = nx
        points[t + 1, 0] = x
        points[t + 1, 1] = y


PATCHES = (VALUE * ((np.arange(512)[:, None] >> np.arange(8, -1, -1)) & 1)).astype(np.uint8).reshape(512, 3, 3)


@numba.njit(cache=True, nogil=True)
def plain_patch_raster(points, masks, image):
    size = image.shape[0]
    image[:] = 0
    xmin = xmax = points[0, 0]
    ymin = ymax = points[0, 1]
    for t in range(1, points.shape[0]):
        x = points[t, 0]
        y = points[t, 1]
        if x < xmin:
            xmin = x
        elif x > xmax:
            xmax = x
        if y < ymin:
            ymin = y
        elif y > ymax:
            ymax = y
    wx = xmax - xmin
    wy = ymax - ymin
    span = float(size - 2 * PAD)
    top = size - 1
    for t in range(points.shape[0]):
        px = int((points[t, 0] - xmin) / wx * span + PAD)
        py = int((points[t, 1] - ymin) / wy * span + PAD)
        patch = PATCHES[masks[t]]
        for i in range(3):
            row = top - (py + 1 + i)
            image[row, px + 1] = patch[i, 0]
            image[row, px + 2] = patch[i, 1]
            image[row, px + 3] = patch[i, 2]
    lit = 0
    flat = image.ravel()
    for k in range(flat.size):
        if flat[k] != 0:
            lit += 1
    return lit


_work: dict = {}


def _render(part: int) -> tuple[int, float]:
    """Render one process's share of the images; returns the lit pixels summed (so nothing is optimised away)
    and the CPU seconds it took."""
    start = time.process_time()
    w = _work
    image = np.zeros((w["size"], w["size"]), np.uint8)
    points = np.empty((w["points"], 2))
    lit = 0
    for i in range(part, len(w["maps"]), w["workers"]):
        plain_chaos_game(w["maps"][i], w["cumprob"], w["uniforms"], points)
        lit += plain_patch_raster(points, w["masks"][i], image)
    return lit, time.process_time() - start


def load_images(root: Path) -> dict:
    """The maps and masks of every image of a default (1p-frac, reference look, one fractal) build."""
    from fracgen.perturb import perturb
    from fracgen.seeds import CLASS, choice_uniforms, draw_masks, generator

    build = json.loads((root / "build.json").read_text())
    cfg = build["config"]
    if cfg["preset"] != "1p-frac" or cfg["style"] != "reference" or cfg["fractals"] != 1:
        raise SystemExit("reference_render.py renders default-style 1p-frac builds of one fractal")
    params = json.loads((root / "params.json").read_text())
    system = params["systems"][0]
    maps, masks = [], []
    for c in params["classes"]:
        rng = generator(cfg["seed"], CLASS, c["fractal"], c["perturbation"])
        for _ in range(c["redraws"] + 1):  # replay the class's stream up to the accepted draw
            drawn = perturb(np.asarray(system["maps"]), cfg["delta"], cfg["perturbation"], rng)
            mask = draw_masks(rng, cfg["points"])
        assert np.array_equal(drawn, np.asarray(c["maps"])), "replayed maps differ from params.json"
        maps.append(drawn)
        masks.append(mask)
    return {"maps": maps, "masks": masks, "cumprob": np.cumsum(system["probabilities"]),
            "uniforms": np.asarray(choice_uniforms(cfg["seed"], 0, cfg["points"])), "size": cfg["size"],
            "points": cfg["points"], "labels": [c["label"] for c in params["classes"]]}


def check(root: Path, work: dict, n: int) -> None:
    """Assert that the reference renders the build's first n images (decoded from its shards) exactly."""
    import io

    import webdataset as wds
    from PIL import Image

    image = np.zeros((work["size"], work["size"]), np.uint8)
    points = np.empty((work["points"], 2))
    index = {label: i for i, label in enumerate(work["labels"])}
    urls = sorted(str(p) for p in root.glob("*.tar"))
    for k, sample in enumerate(wds.WebDataset(urls, shardshuffle=False)):
        if k >= n:
            break
        i = index[int(sample["cls"])]
        plain_chaos_game(work["maps"][i], work["cumprob"], work["uniforms"], points)
        plain_patch_raster(points, work["masks"][i], image)
        stored = np.asarray(Image.open(io.BytesIO(sample["png"])).convert("L"))
        assert np.array_equal(stored, image), f"image {sample['__key__']} differs from the reference render"


def reference_seconds(root: Path, workers: int, repeats: int = 1, check_images: int = 0) -> list[tuple[float, float]]:
    """Wall and CPU seconds (all processes) the plain reference takes to render every image of the build in
    ``root``, once per repeat (see the module docstring)."""
    global _work
    _work = dict(load_images(Path(root)), workers=workers)
    if check_images:
        check(Path(root), _work, check_images)
    points = np.empty((_work["points"], 2))
    plain_chaos_game(_work["maps"][0], _work["cumprob"], _work["uniforms"], points)  # JIT before the fork
    plain_patch_raster(points, _work["masks"][0], np.zeros((_work["size"],) * 2, np.uint8))
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(abs, range(workers), chunksize=1)  # every process started before the clock
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            parts = pool.map(_render, range(workers), chunksize=1)
            times.append((time.perf_counter() - start, sum(cpu for _, cpu in parts)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a finished default-look 1p-frac build")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=0, help="verify the first N images against the build's PNGs")
    args = parser.parse_args()
    times = reference_seconds(args.out, args.workers, args.repeats, args.check)
    n = len(_work["maps"])
    print(json.dumps({"images": n, "workers": args.workers, "seconds": [wall for wall, _ in times],
                      "cpu_seconds": [cpu for _, cpu in times], "images_per_s": n / min(w for w, _ in times)}))


if __name__ == "__main__":
    main()
