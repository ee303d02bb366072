"""RCDB and VisualAtom per image: fracgen's numba path against the released algorithm, in one run on one core.

Run with ``python benchmarks/bench_contours.py [--images 20] [--repeats 5]``. Fetches nothing: the released
per-image loop (``make_rcdb.py:84-116``, ``render_VisualAtom.py:85-117``) is restated below as released, with
CPython's global ``random`` for the greys and Perlin arguments, ``noise.pnoise1`` when the ``noise`` package is
installed (as released; else a plain-Python float32 restatement, much slower, and the table says so) and one
Pillow ``ImageDraw.line`` per segment on an RGB canvas.

Both paths draw the same images: the category and instance parameters of ``contour_params.image_params(kind,
seed, c, 0)`` for c = 0 .. images - 1 (what an image costs depends mostly on V x K), each path with its own stroke
draws. The fast path's time covers everything one image needs: deriving its generators, the numpy draws and
the numba drawing. PNG encoding (the released scripts save each image) is timed apart, since either path can
pair with any encoder. Times are CPU time of this process (``time.process_time``), so other load on the machine
does not count; the released path runs once per image, the fast path ``--repeats`` times (median); the ratio is
total released time over total fast time. JIT compilation happens before timing.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import random
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracgen import contour_params, contours  # noqa: E402

_F = struct.Struct("f")


def _f32(v: float) -> float:
    return _F.unpack(_F.pack(v))[0]


def plain_pnoise1(u: float) -> float:
    """noise's pnoise1 (octaves 1, repeat 1024, base 0) in plain Python, float32 rounding after each operation."""
    x = _f32(u)
    fl = math.floor(x)
    t = x - fl
    fx = _f32(_f32(_f32(t * t) * t) * _f32(_f32(t * _f32(_f32(t * 6.0) - 15.0)) + 10.0))
    h0, h1 = int(contours.PERM[fl & 255]), int(contours.PERM[(fl + 1) & 255])
    a = _f32((-1.0 if h0 & 8 else float((h0 & 7) + 1)) * t)
    b = _f32((-1.0 if h1 & 8 else float((h1 & 7) + 1)) * _f32(t - 1.0))
    return _f32(_f32(a + _f32(fx * _f32(b - a))) * _f32(0.4))


def released_image(kind: str, p: dict, size: int, pnoise1) -> Image.Image:
    """One image exactly as the released loop draws it (released names kept), strokes from global ``random``."""
    rcdb = kind == "rcdb"
    vertex_number, line_draw_num = p["vertices"], p["rings"]
    perlin_noise_coefficient, line_width, start_rad = p["perlin"], p["line_width"], p["radius"]
    oval_rate_x, oval_rate_y, start_pos_w, start_pos_h = p["oval_x"], p["oval_y"], p["centre_x"], p["centre_y"]
    im = Image.new("RGB", (size, size), (255, 255, 255) if rcdb else (0, 0, 0))
    draw = ImageDraw.Draw(im)
    angle = (math.pi * 2) / vertex_number
    vertex_x, vertex_y, noise_x, noise_y = [], [], [], []
    for vertex in range(vertex_number):
        if rcdb:
            vertex_x.append(math.cos(angle * vertex) * start_rad * oval_rate_x)
            vertex_y.append(math.sin(angle * vertex) * start_rad * oval_rate_y)
        else:
            vertex_x.append(math.cos(angle * vertex) * start_rad * oval_rate_x + start_pos_w)
            vertex_y.append(math.sin(angle * vertex) * start_rad * oval_rate_y + start_pos_h)
    vertex_x.append(vertex_x[0])
    vertex_y.append(vertex_y[0])
    for _ in range(line_draw_num):
        r = random.randint(0, size // 2) if rcdb else random.randint(0, 255)
        noise_x.clear()
        noise_y.clear()
        c = perlin_noise_coefficient
        if rcdb:
            for vertex in range(vertex_number):
                noise_x.append(random.uniform(0, 10000))
                noise_x[vertex] = pnoise1(noise_x[vertex]) * c * 2 - c
            for vertex in range(vertex_number):
                noise_y.append(random.uniform(0, 10000))
                noise_y[vertex] = pnoise1(noise_y[vertex]) * c * 2 - c
        else:
            n1, n2 = p["wave1"], p["wave2"]
            for vertex in range(vertex_number):
                noise_x.append(random.uniform(0, 10000))
                noise_x[vertex] = (pnoise1(noise_x[vertex]) * c - c - 0.5 * math.sin(angle * vertex * n1)
                                   - 0.5 * math.sin(angle * vertex * n2))
            for vertex in range(vertex_number):
                noise_y.append(random.uniform(0, 10000))
                noise_y[vertex] = (pnoise1(noise_y[vertex]) * c - c - 0.5 * math.sin(angle * vertex * n1)
                                   - 0.5 * math.sin(angle * vertex * n2))
        for vertex in range(vertex_number):
            vertex_x[vertex] -= math.cos(angle * vertex) * (noise_x[vertex] - line_width)
            vertex_y[vertex] -= math.sin(angle * vertex) * (noise_y[vertex] - line_width)
        vertex_x[vertex_number] = vertex_x[0]
        vertex_y[vertex_number] = vertex_y[0]
        for i in range(vertex_number):
            if rcdb:
                draw.line((vertex_x[i] + start_pos_w, vertex_y[i] + start_pos_h, vertex_x[i + 1] + start_pos_w,
                           vertex_y[i + 1] + start_pos_h), fill=(r, r, r), width=1)
            else:
                draw.line((vertex_x[i], vertex_y[i], vertex_x[i + 1], vertex_y[i + 1]), fill=(r, r, r), width=1)
    return im


def fast_image(kind: str, seed: int, category: int, size: int) -> np.ndarray:
    contour_params._category_params.cache_clear()  # time the category draw too, as a 1-instance build pays it
    params, strokes = contour_params.image_params(kind, seed, category, 0, size)
    return contours.render(kind, params, *strokes, size=size)


def png_ms(image: Image.Image, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        image.save(io.BytesIO(), "PNG")
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def measure(kind: str, args, pnoise1) -> dict:
    params = [contour_params.image_params(kind, args.seed, c, 0, args.size)[0] for c in range(args.images)]
    fast_image(kind, args.seed, 0, args.size)  # compile or load the kernels
    random.seed(1)  # the released thread 0
    released, fast, png_released, png_fast = [], [], [], []
    for c, p in enumerate(params):
        start = time.process_time()
        im = released_image(kind, p, args.size, pnoise1)
        released.append(time.process_time() - start)
        runs = []
        for _ in range(args.repeats):
            start = time.process_time()
            img = fast_image(kind, args.seed, c, args.size)
            runs.append(time.process_time() - start)
        fast.append(statistics.median(runs))
        png_released.append(png_ms(im))
        png_fast.append(png_ms(Image.fromarray(img)))
    return {
        "V": np.mean([p["vertices"] for p in params]),
        "K": np.mean([p["rings"] for p in params]),
        "released_ms": np.mean(released) * 1e3,
        "fast_ms": np.mean(fast) * 1e3,
        "ratio": sum(released) / sum(fast),
        "png_released_ms": np.mean(png_released),
        "png_fast_ms": np.mean(png_fast),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20, help="images per kind (categories 0 .. images - 1)")
    parser.add_argument("--repeats", type=int, default=5, help="fast-path runs per image (median)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(contours.KINDS))
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be >= 1")
    kinds = args.kinds.split(",")
    if set(kinds) - set(contours.KINDS):
        parser.error(f"--kinds: unknown {sorted(set(kinds) - set(contours.KINDS))}; expected {contours.KINDS}")
    try:
        import noise

        pnoise1, perlin = noise.pnoise1, "noise.pnoise1 (C, as released)"
    except ImportError:
        pnoise1, perlin = plain_pnoise1, "plain-Python restatement (noise not installed: the released side is slower)"
    import numba
    import PIL

    print(f"# RCDB / VisualAtom per image, {args.size} px, one core, CPU time: released algorithm against fracgen")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}, numba {numba.__version__}, Pillow {PIL.__version__}; released Perlin: {perlin}; "
          f"{args.images} images per kind, fast path median of {args.repeats} runs\n")
    print("| kind | mean V | mean K | released ms/image | fracgen ms/image | ratio | PNG encode ms (released RGB / grey) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        r = measure(kind, args, pnoise1)
        print(f"| {kind} | {r['V']:.0f} | {r['K']:.0f} | {r['released_ms']:.1f} | {r['fast_ms']:.3f} | "
              f"{r['ratio']:.0f}x | {r['png_released_ms']:.1f} / {r['png_fast_ms']:.1f} |")


if __name__ == "__main__":
    main()
