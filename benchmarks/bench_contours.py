"""RCDB and VisualAtom per image: fracgen's numba path against the released algorithm, in one run on one core.

Run with ``python benchmarks/bench_contours.py [--images 200] [--repeats 3]``. Fetches nothing: the released
per-image loop (``make_rcdb.py:84-116``, ``render_VisualAtom.py:85-117``) is restated below as released, with
CPython's global ``random`` for the greys and Perlin arguments, ``noise.pnoise1`` when the ``noise`` package is
installed (as released; else a plain-Python float32 restatement, much slower, and the table says so) and one
Pillow ``ImageDraw.line`` per segment on an RGB canvas.

Both paths draw the same images: the category and instance parameters of ``contour_params.image_params(kind,
seed, c, 0)`` for c = 0 .. images - 1 (what an image costs depends mostly on V x K), each path with its own stroke
draws. Both paths' cost follows the rings' length, V x K on average, so the table prints the sample's mean V x K
against its expectation under the released ranges: a sample lighter than that flatters (b). The first 40
categories of seed 0 are one (RCDB: 5,122 against 7,114): the 0.57-0.60 ms once quoted from them is 0.75-0.77 ms
over 300 images. The fast path's time covers everything one image needs: deriving its generators, the numpy draws and
the numba drawing. A stored image also needs its PNG: the released scripts save an RGB PNG with Pillow (timed
on the released image), fracgen encodes its grey image with its own ``encode_png(image, fast=True)``, as a
build does (``fracgen/encode.py``). Two ratios per stored image (drawing + PNG): (a) against the released
drawing + RGB PNG measured in the same run; (b) against the issue's released per-image CPU times (RCDB 42-60 ms,
VisualAtom 0.27-0.34 s, measured with the released scripts; issue 11), low end and high end.

Times are CPU time of this process (``time.process_time``), so other load on the machine does not count; the
released path runs once per image, the fast path ``--repeats`` times (median); ratios are total over total. JIT
compilation happens before timing. ``--build N`` (default 40; 0 skips) also times ``fracgen build --preset KIND
--categories N --instances 1 --workers 1`` end to end (CPU time of the whole command: interpreter start,
imports, numba's cache, shards, metadata) and ``build()`` alone in this process, per stored image.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracgen import contour_params
from fracgen.encode import encode_png  # noqa: E402
from fracgen.kernels import contours  # noqa: E402

# The issue's released per-image CPU times (issue 11, "Speed"), low end and high end, ms.
ISSUE_MS = {"rcdb": (42.0, 60.0), "visualatom": (270.0, 340.0)}

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


def expected_vk(kind: str) -> float:
    """E[V x K] under the released ranges (V and K are drawn independently): RCDB's V = int(Exp(mean 100)) redrawn
    until 2 < V <= 200, VisualAtom's V uniform on 200..1000; K uniform on 1..200 for both."""
    if kind == "rcdb":
        v = np.arange(3, 201)
        p = np.exp(-v / 100.0) - np.exp(-(v + 1) / 100.0)  # P(int(Exp) = v), before the redraw's normalisation
        mean_v = float((v * p).sum() / p.sum())
    else:
        mean_v = 600.0
    return mean_v * 100.5


def fast_image(kind: str, seed: int, category: int, size: int) -> np.ndarray:
    contour_params._category_params.cache_clear()  # time the category draw too, as a 1-instance build pays it
    params, strokes = contour_params.image_params(kind, seed, category, 0, size)
    return contours.render(kind, params, *strokes, size=size)


def cpu_ms(task, repeats: int) -> float:
    """Median CPU time of ``task()`` over ``repeats`` runs, ms."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        task()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def measure(kind: str, args, pnoise1) -> dict:
    params = [contour_params.image_params(kind, args.seed, c, 0, args.size)[0] for c in range(args.images)]
    encode_png(fast_image(kind, args.seed, 0, args.size), fast=True)  # compile or load the kernels
    random.seed(1)  # the released thread 0
    released, fast, png_released, png_fast, kb_fast, kb_zlib = [], [], [], [], [], []
    for c, p in enumerate(params):
        start = time.process_time()
        im = released_image(kind, p, args.size, pnoise1)
        released.append(time.process_time() - start)
        fast.append(cpu_ms(partial(fast_image, kind, args.seed, c, args.size), args.repeats) / 1e3)
        img = fast_image(kind, args.seed, c, args.size)
        png_released.append(cpu_ms(partial(im.save, io.BytesIO(), "PNG"), 3) / 1e3)
        png_fast.append(cpu_ms(partial(encode_png, img, fast=True), args.repeats) / 1e3)
        kb_fast.append(len(encode_png(img, fast=True)) / 1e3)
        kb_zlib.append(len(encode_png(img)) / 1e3)  # zlib level 6, what fracgen stored before
    stored = sum(fast) + sum(png_fast)
    n = len(params)
    return {
        "V": np.mean([p["vertices"] for p in params]),
        "K": np.mean([p["rings"] for p in params]),
        "VK": np.mean([p["vertices"] * p["rings"] for p in params]),
        "released_ms": sum(released) / n * 1e3,
        "fast_ms": sum(fast) / n * 1e3,
        "ratio": sum(released) / sum(fast),
        "png_released_ms": sum(png_released) / n * 1e3,
        "png_fast_ms": sum(png_fast) / n * 1e3,
        "stored_ms": stored / n * 1e3,
        "ratio_same_run": (sum(released) + sum(png_released)) / stored,
        "ratio_issue": tuple(ms / (stored / n * 1e3) for ms in ISSUE_MS[kind]),
        "kb_fast": np.mean(kb_fast),
        "kb_zlib": np.mean(kb_zlib),
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_build(kind: str, categories: int, seed: int) -> tuple[float, float]:
    """CPU ms per stored image of ``fracgen build`` (the whole command) and of ``build()`` alone, one worker."""
    from fracgen.build import build
    from fracgen.config import BuildConfig

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        command = [sys.executable, "-m", "fracgen.cli", "build", "--preset", kind, "--categories", str(categories),
                   "--instances", "1", "--workers", "1", "--seed", str(seed), str(Path(tmp) / "cli")]
        subprocess.run(command, env=env, check=True, capture_output=True)  # numba's cache, warm
        start = children_cpu()
        subprocess.run([*command[:-1], str(Path(tmp) / "cli2")], env=env, check=True, capture_output=True)
        whole = children_cpu() - start
        config = BuildConfig(preset=kind, categories=categories, instances=1, seed=seed)
        build(config, Path(tmp) / "warm", workers=1)
        start, start_children = time.process_time(), children_cpu()
        build(config, Path(tmp) / "api", workers=1)
        alone = time.process_time() - start + children_cpu() - start_children
    return whole / categories * 1e3, alone / categories * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images per kind (categories 0 .. images - 1)")
    parser.add_argument("--repeats", type=int, default=3, help="fast-path runs per image (median)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(contours.KINDS))
    parser.add_argument("--build", type=int, default=40, help="categories of the timed build (0: skip it)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.build < 0:
        parser.error("--images and --repeats must be >= 1, --build >= 0")
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
    rows = {kind: measure(kind, args, pnoise1) for kind in kinds}
    print("Drawing alone (released drawing restated vs fracgen params + draw):\n")
    print("| kind | mean V | mean K | mean V x K (expected) | released ms/image | fracgen ms/image | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['V']:.0f} | {r['K']:.0f} | {r['VK']:,.0f} ({expected_vk(kind):,.0f}) | "
              f"{r['released_ms']:.1f} | {r['fast_ms']:.3f} | {r['ratio']:.0f}x |")
    print("\nPer stored image (drawing + PNG). Released: drawing + Pillow RGB PNG save; fracgen: params + draw + "
          "encode_png(fast=True). (a) against the released side of this run; (b) against the issue's released "
          "per-image CPU times (low / high end):\n")
    print("| kind | released draw + PNG ms | fracgen PNG ms | fracgen stored ms | (a) this run | (b) issue low / high "
          "| PNG KB fracgen / zlib 6 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind, r in rows.items():
        low, high = r["ratio_issue"]
        print(f"| {kind} | {r['released_ms'] + r['png_released_ms']:.1f} | {r['png_fast_ms']:.3f} | "
              f"{r['stored_ms']:.3f} | {r['ratio_same_run']:.0f}x | {low:.0f}x / {high:.0f}x | "
              f"{r['kb_fast']:.1f} / {r['kb_zlib']:.1f} |")
    if args.build:
        print(f"\nShard path, CPU ms per stored image, `fracgen build --preset KIND --categories {args.build} "
              "--instances 1 --workers 1` (whole command, warm numba cache) and build() alone:\n")
        print("| kind | whole command | build() alone |")
        print("|---|---:|---:|")
        for kind in kinds:
            whole, alone = measure_build(kind, args.build, args.seed)
            print(f"| {kind} | {whole:.2f} | {alone:.2f} |")


if __name__ == "__main__":
    main()
