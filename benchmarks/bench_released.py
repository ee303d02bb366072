"""1p-frac: CPU time of fracgen against the released generator, per render and per accepted image.

Run with ``python benchmarks/bench_released.py [--images 3]``. Fetches nothing: the released per-class loop
(``SUPER-TADORY/1p-frac``, ``1p-frac_generater/src/render_from_oneparam_mp.py`` ``generate_image`` and
``ifs_function.py``) is restated below step by step: six ``random.uniform(1 - Delta, 1 + Delta)`` weights per map,
a Python chaos game over ``np.random.seed(100)`` draws, numpy rescaling, one Pillow ``paste`` of a 3 x 3 patch
(built pixel by pixel from ``'{:09b}'.format(random.randrange(1, 512))``) per point, the fill check (> 5% of the
RGB values lit), the flip, and saving an RGB PNG (to memory here, to disk there); a class that fails the check is
drawn again. Both sides use the same base system (fracgen's search, sigma 3.5, seed 0).

Figures are CPU time of this process (``time.process_time``), so other load on the machine counts less. fracgen's
per-image figure is a whole ``fracgen build`` at the default options (search, redraws, rendering, PNG encoding,
shards and records) on one worker with a warm JIT cache, divided by its images; its per-render figure is one
perturbation rendered (masks drawn, chaos game, raster).
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracgen.build import BuildConfig, build  # noqa: E402
from fracgen.kernels import chaos  # noqa: E402
from fracgen.search import search  # noqa: E402
from fracgen.seeds import draw_masks  # noqa: E402

SIZE, PAD, POINTS, THRESHOLD = 512, 6, 100_000, 0.05


def released_render(maps: np.ndarray, probs: np.ndarray, delta: float) -> Image.Image | None:
    """One try of the released per-class loop: the flipped RGB image, or None when it fills too little."""
    functions, cumulative, running = [], [], 0.0
    for row, p in zip(maps.tolist(), probs.tolist(), strict=True):
        weights = [random.uniform(1 - delta, 1 + delta) for _ in range(6)]
        functions.append([v * w for v, w in zip(row, weights, strict=True)])
        running += p
        cumulative.append(running)
    np.random.seed(100)
    rand = np.random.random(POINTS)
    xs, ys = [0.0], [0.0]
    x = y = 0.0
    for i in range(POINTS - 1):
        for j, c in enumerate(cumulative):
            if rand[i] <= c:
                a, b, cc, d, e, f = functions[j]
                x, y = x * a + y * b + e, x * cc + y * d + f
                break
        xs.append(x)
        ys.append(y)
    xs, ys = np.array(xs), np.array(ys)
    for v in (xs, ys):  # the released shift, only when negative (always, since the origin is a point)
        if v.min() < 0.0:
            v -= v.min()
    span = float(SIZE - 2 * PAD)
    px = np.uint16(xs / (xs.max() - xs.min()) * span + PAD)
    py = np.uint16(ys / (ys.max() - ys.min()) * span + PAD)
    image = Image.new("RGB", (SIZE, SIZE))
    colour = np.array([127, 127, 127])
    for i in range(len(px)):
        mask = f"{random.randrange(1, 512):09b}"
        cells = np.zeros((3, 3, 3), np.uint8)
        for r in range(3):
            for c in range(3):
                cells[r, c, :] = colour * int(mask[r * 3 + c])
        image.paste(Image.fromarray(cells), (int(px[i]) + 1, int(py[i]) + 1))
    if np.sum(np.array(image) > 1) / (SIZE * SIZE * 3) <= THRESHOLD:
        return None
    return image.transpose(Image.FLIP_TOP_BOTTOM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="accepted images the released loop makes")
    parser.add_argument("--delta", type=float, default=0.1)
    args = parser.parse_args()
    random.seed(0)
    base = search(3.5)

    renders, start = 0, time.process_time()
    for _ in range(args.images):
        while True:
            renders += 1
            image = released_render(base.maps, base.probabilities, args.delta)
            if image is not None:
                image.save(io.BytesIO(), format="PNG")
                break
    released_image = (time.process_time() - start) / args.images
    released_per_render = (time.process_time() - start) / renders  # saving included: a small share

    with tempfile.TemporaryDirectory() as tmp:
        build(BuildConfig(L=16), Path(tmp) / "warm", workers=1)  # JIT and numba cache outside the timing
        start = time.process_time()
        build(BuildConfig(L=1000), Path(tmp) / "ds", workers=1)
        fracgen_image = (time.process_time() - start) / 1000
    canvas = chaos.Canvas(SIZE, POINTS)
    rng = np.random.default_rng(0)
    uniforms = rng.random(POINTS - 1)
    start, count = time.process_time(), 200
    for _ in range(count):
        maps = base.maps * rng.uniform(1 - args.delta, 1 + args.delta, base.maps.shape)
        chaos.render(maps, base.probabilities, uniforms, draw_masks(rng, POINTS), canvas.image, canvas.points)
    fracgen_render = (time.process_time() - start) / count

    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy "
          f"{np.__version__}; released: {args.images} accepted images in {renders} renders")
    print("| | released CPU s | fracgen CPU ms | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| per accepted image (whole pipeline) | {released_image:.2f} | {1e3 * fracgen_image:.2f} | "
          f"{released_image / fracgen_image:.0f}x |")
    print(f"| per render | {released_per_render:.2f} | {1e3 * fracgen_render:.2f} | "
          f"{released_per_render / fracgen_render:.0f}x |")


if __name__ == "__main__":
    main()
