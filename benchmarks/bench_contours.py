"""RCDB and VisualAtom: CPU per stored image of the authors' released scripts against fracgen, in one run.

Run:
    python benchmarks/bench_contours.py [--images 100] [--identity 20] [--build N]
    python benchmarks/bench_contours.py --released-rcdb DIR --released-visualatom DIR [...]

Without a checkout it prints fracgen's figures alone and how to get the checkouts. The released code is not
restated here: it runs from the user's own checkout, each script whole (``runpy``):

- ``--released-rcdb DIR``: https://github.com/masora1030/CVPR2022-Pretrained-ViT-PyTorch (commit 7a28054),
  ``rcdb_render/make_rcdb.py`` with the arguments of its ``RCDB_render.sh``;
- ``--released-visualatom DIR``: https://github.com/masora1030/CVPR2023-FDSL-on-VisualAtom (commit de80c69),
  ``visual_atomic_renderer/render_VisualAtom.py`` with the arguments of its ``make_VisualAtom.sh``;

each with ``--numof_classes N --numof_instances 1 --numof_thread 1 --thread_num 0 --save_root TMP``. They need
the ``noise`` package (``pip install noise==1.2.2``). A script draws, saves its RGB PNGs to disk with Pillow and
writes its own side files, as released.

Same draws. While a script runs, its ``import random`` gets a stand-in that answers each call, in the script's
own order, with fracgen's draw for it: category c takes the parameters and strokes of
``fracgen.presets.contours.image_params(kind, seed, c, 0)``. ``uniform(a, b)`` is CPython's arithmetic,
``a + (b - a) * random()``, on a handed-in ``random()`` value chosen so that the result is fracgen's value to the
bit, so a call costs what CPython's does (both are measured and printed). The lists the stand-in serves are built
lazily per image; their CPU is measured and taken off the released time. ``--own-stream`` also runs each script on
its own ``random`` (other images) and prints its cost per 1,000 ring segments (V x K) beside the fed run's.

fracgen per stored image: ``render_image(kind, seed, c, 0)`` (its generators, draws and numba drawing; the category
cache cleared, as a one-instance build pays it) plus ``encode_png(image, fast=True)`` (the encoder a build uses),
median of ``--repeats`` runs, after JIT compilation; ``build()`` of ``--build`` categories x 1 instance on one
worker in this process; and the whole ``fracgen build --preset KIND --categories N --instances 1 --workers 1``
command (interpreter start, imports, numba's cache, shards and records; warm cache). Ratios are released / fracgen
from this one run. Pixel identity: the first ``--identity`` released PNGs (all three channels) against fracgen's
grey image of the same draws.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import os
import random as _real_random
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import numpy.random  # noqa: F401 - numpy imports it lazily, which needs the real `random`
from machine import REPO, children_cpu, header, load
from PIL import Image, ImageDraw  # noqa: F401 - imported before the stand-in replaces `random`
from released import checkout_commit, find_script, uniform_r

sys.path.insert(0, str(REPO))
from fracgen.presets import contours  # noqa: E402

KINDS = contours.KINDS
REPOS = {
    "rcdb": ("https://github.com/masora1030/CVPR2022-Pretrained-ViT-PyTorch", "7a28054"),
    "visualatom": ("https://github.com/masora1030/CVPR2023-FDSL-on-VisualAtom", "de80c69"),
}
SCRIPTS = {"rcdb": "rcdb_render/make_rcdb.py", "visualatom": "visual_atomic_renderer/render_VisualAtom.py"}
# The released shell scripts' arguments (RCDB_render.sh; make_VisualAtom.sh), less classes/instances/threads/root.
RELEASED_ARGS = {
    "rcdb": ["--vertex_num=200", "--perlin_min=0", "--line_width=0.1", "--radius_min=0", "--oval_rate=2",
             "--start_pos=400"],
    "visualatom": ["--start_class=0", "--vertex_num_min=200", "--vertex_num_max=1000", "--perlin_min=0",
                   "--line_num_min=1", "--line_num_max=200", "--line_width=0.1", "--radius_min=10", "--oval_rate=2",
                   "--start_pos=512", "--nami_1_min=0", "--nami_2_min=0", "--nami_1_max=20", "--nami_2_max=20"],
}


class FeedRandom:
    """Stands in for the ``random`` module of a released script: answers each call with the next fed value.

    ``uniform`` does CPython's arithmetic on a fed ``random()`` value; ``randint`` and ``expovariate`` return the
    fed value. ``random`` is the C ``__next__`` of an iterator, as CPython's ``random`` is a C method.
    """

    def __init__(self, values):
        self.random = values.__next__

    def seed(self, *args, **kwargs):
        pass

    def uniform(self, a, b):
        return a + (b - a) * self.random()

    def randint(self, a, b):
        return self.random()

    def expovariate(self, lambd):
        return self.random()


class Feed:
    """The values a released script asks for, image by image, in its call order (built lazily; CPU counted)."""

    def __init__(self, kind: str, seed: int, categories: int, size: int):
        self.kind, self.seed, self.categories, self.size = kind, seed, categories, size
        self.build_cpu = 0.0
        self.images = 0

    def _offset(self, centre: float) -> int:
        n = 2 * centre - self.size  # centre = (size + n) / 2
        if n != int(n):
            raise ValueError(f"centre {centre} is not (size + n) / 2 for an integer n")
        return int(n)

    def _lists(self):
        rcdb = self.kind == "rcdb"
        for c in range(self.categories):
            t0 = time.process_time()
            contours._category_params.cache_clear()
            p, (greys, uniforms) = contours.image_params(self.kind, self.seed, c, 0, self.size)
            if rcdb:  # make_rcdb.py: V, K, perlin, line width, radius, ovals, centre
                head = [float(p["vertices"]), p["rings"], uniform_r(0, 4, p["perlin"]),
                        uniform_r(0.0, 0.1, p["line_width"]), p["radius"], uniform_r(1, 2, p["oval_x"]),
                        uniform_r(1, 2, p["oval_y"]), self._offset(p["centre_y"]), self._offset(p["centre_x"])]
            else:  # render_VisualAtom.py: V, K, perlin, line width, radius, waves, ovals, centre
                head = [p["vertices"], p["rings"], uniform_r(0, 4, p["perlin"]),
                        uniform_r(0.0, 0.1, p["line_width"]), p["radius"], p["wave1"], p["wave2"],
                        uniform_r(1, 2, p["oval_x"]), uniform_r(1, 2, p["oval_y"]),
                        self._offset(p["centre_y"]), self._offset(p["centre_x"])]
            out = list(head)
            g, u = greys.tolist(), uniforms.tolist()  # (K,), (K, 2, V)
            for k in range(len(g)):  # per ring: grey, V x-arguments, V y-arguments
                out.append(g[k])
                out += u[k][0]
                out += u[k][1]
            # the re-draws after the (only) instance: unused by the script's output, served so it runs on
            if rcdb:
                out += [uniform_r(1, 2, p["oval_x"]), uniform_r(1, 2, p["oval_y"]), p["radius"]]
            out += [self._offset(p["centre_y"]), self._offset(p["centre_x"])]
            self.build_cpu += time.process_time() - t0
            self.images += 1
            yield out

    def values(self):
        return itertools.chain.from_iterable(self._lists())


def run_script(script: Path, kind: str, args, out_dir: Path, fake=None) -> float:
    """CPU seconds of one whole run of a released script (``fake``: the ``random`` stand-in, else its own)."""
    argv = [str(script), f"--save_root={out_dir}", f"--numof_classes={args.images}", "--numof_instances=1",
            f"--image_size={args.size}", "--numof_thread=1", "--thread_num=0", *RELEASED_ARGS[kind]]
    saved_argv, saved_random = sys.argv, sys.modules["random"]
    sys.argv = argv
    if fake is not None:
        sys.modules["random"] = fake
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            start = time.process_time()
            runpy.run_path(str(script), run_name="__released__")
            return time.process_time() - start
    finally:
        sys.argv, sys.modules["random"] = saved_argv, saved_random


def run_released(kind: str, script: Path, args, out_dir: Path) -> dict:
    """The released script on fracgen's draws: CPU ms per stored image, the fed lists' CPU taken off."""
    feed = Feed(kind, args.seed, args.images, args.size)
    total = run_script(script, kind, args, out_dir, FeedRandom(feed.values()))
    if feed.images != args.images:
        raise SystemExit(f"{kind}: the released script asked for {feed.images} images' draws, expected {args.images}")
    return {"ms": (total - feed.build_cpu) / args.images * 1e3, "feed_ms": feed.build_cpu / args.images * 1e3}


def replay_vk(kind: str, categories: int, seed: int = 1) -> float:
    """Mean V x K of the images a released script draws from its own stream (``random.seed(thread_num + 1)``),
    one instance per category, its draws replayed in its order."""
    rng = _real_random.Random(seed)
    vk = []
    for _ in range(categories):
        if kind == "rcdb":
            while True:
                v = int(rng.expovariate(1 / 100))
                if 2 < v <= 200:
                    break
            k = rng.randint(1, 200)
            rng.uniform(0, 4), rng.uniform(0.0, 0.1), rng.randint(0, 100), rng.uniform(1, 2), rng.uniform(1, 2)
            rng.randint(-400, 400), rng.randint(-400, 400)
        else:
            v, k = rng.randint(200, 1000), rng.randint(1, 200)
            rng.uniform(0, 4), rng.uniform(0.0, 0.1), rng.randint(10, 60)
            n1 = rng.randint(0, 20)
            while True:
                n2 = rng.randint(0, 20)
                if n2 != n1 or n1 == 0:
                    break
            rng.uniform(1, 2), rng.uniform(1, 2), rng.randint(-512, 512), rng.randint(-512, 512)
        for _ in range(k):
            rng.randint(0, 256 if kind == "rcdb" else 255)
            for _ in range(2 * v):
                rng.random()
        if kind == "rcdb":
            rng.uniform(1, 2), rng.uniform(1, 2), rng.randint(0, 100)
        spread = 400 if kind == "rcdb" else 512
        rng.randint(-spread, spread), rng.randint(-spread, spread)
        vk.append(v * k)
    return float(np.mean(vk))


def released_png(kind: str, out_dir: Path, category: int, vertices: int) -> Path:
    if kind == "rcdb":
        return out_dir / "image" / f"{category:05d}" / f"{category:05d}_{0:04d}.png"
    return out_dir / f"{category:05d}" / f"vertex_{vertices:04d}_instance_{0:04d}.png"


def identity(kind: str, args, out_dir: Path) -> tuple[int, int, int]:
    """(identical, compared, most differing pixels) over the first --identity images."""
    same, worst, n = 0, 0, min(args.identity, args.images)
    for c in range(n):
        contours._category_params.cache_clear()
        image, p = contours.render_image(kind, args.seed, c, 0, args.size)
        rel = np.asarray(Image.open(released_png(kind, out_dir, c, p["vertices"])))
        diff = int((rel != image[:, :, None]).any(axis=2).sum()) if rel.ndim == 3 else int((rel != image).sum())
        same += diff == 0
        worst = max(worst, diff)
    return same, n, worst


def expected_vk(kind: str) -> float:
    """E[V x K] under the released ranges (V and K independent): RCDB's V = int(Exp(mean 100)) redrawn until
    2 < V <= 200, VisualAtom's V uniform on 200..1000; K uniform on 1..200 for both."""
    if kind == "rcdb":
        v = np.arange(3, 201)
        p = np.exp(-v / 100.0) - np.exp(-(v + 1) / 100.0)
        mean_v = float((v * p).sum() / p.sum())
    else:
        mean_v = 600.0
    return mean_v * 100.5


def fracgen_side(kind: str, args) -> dict:
    """fracgen's render + PNG per stored image (median of --repeats), and the sample's mean V x K."""
    from fracgen.encode import encode_png

    def one(c: int) -> np.ndarray:
        contours._category_params.cache_clear()  # a one-instance build draws every category once
        return contours.render_image(kind, args.seed, c, 0, args.size)[0]

    encode_png(one(0), fast=True)  # compile or load the kernels
    draw, png, vk = [], [], []
    for c in range(args.images):
        td, tp = [], []
        for _ in range(args.repeats):
            t0 = time.process_time()
            image = one(c)
            t1 = time.process_time()
            encode_png(image, fast=True)
            t2 = time.process_time()
            td.append(t1 - t0)
            tp.append(t2 - t1)
        draw.append(statistics.median(td))
        png.append(statistics.median(tp))
        p = contours.category_params(kind, args.seed, c)
        vk.append(p["vertices"] * p["rings"])
    n = args.images
    return {"draw_ms": sum(draw) / n * 1e3, "png_ms": sum(png) / n * 1e3,
            "stored_ms": (sum(draw) + sum(png)) / n * 1e3, "VK": float(np.mean(vk))}


def measure_build(kind: str, categories: int, seed: int) -> tuple[float, float]:
    """CPU ms per stored image, one worker, warm numba cache: ``build()`` in this process, and the whole
    ``fracgen build`` command (interpreter start, imports, shards, records) in a child."""
    from fracgen.build import build
    from fracgen.config import BuildConfig

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        config = BuildConfig(preset=kind, categories=categories, instances=1, seed=seed)
        build(config, Path(tmp) / "api-warm", workers=1)
        start, start_children = time.process_time(), children_cpu()
        build(config, Path(tmp) / "api", workers=1)
        alone = (time.process_time() - start + children_cpu() - start_children) / categories * 1e3
        command = [sys.executable, "-m", "fracgen.cli", "build", "--preset", kind, "--categories", str(categories),
                   "--instances", "1", "--workers", "1", "--seed", str(seed)]
        subprocess.run([*command, str(Path(tmp) / "cli-warm")], env=env, check=True, capture_output=True)
        start = children_cpu()
        subprocess.run([*command, str(Path(tmp) / "cli")], env=env, check=True, capture_output=True)
        whole = (children_cpu() - start) / categories * 1e3
    return alone, whole


def call_cost_ns() -> tuple[float, float]:
    """ns per call of CPython's random.uniform(0, 10000) and of the stand-in's."""
    n, res = 200_000, []
    for fn in (_real_random.uniform, FeedRandom(itertools.repeat(0.5)).uniform):
        best = math.inf
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(n):
                fn(0, 10000)
            best = min(best, time.process_time() - t0)
        res.append(best / n * 1e9)
    return res[0], res[1]


def how_to_get() -> str:
    lines = ["To compare with the released scripts, check them out and pass their folders (they need "
             "`pip install noise==1.2.2`):", ""]
    for url, commit in REPOS.values():
        lines.append(f"    git clone {url} && git -C {url.rsplit('/', 1)[1]} checkout {commit}")
    lines += ["    python benchmarks/bench_contours.py --released-rcdb CVPR2022-Pretrained-ViT-PyTorch "
              "--released-visualatom CVPR2023-FDSL-on-VisualAtom"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--released-rcdb", metavar="DIR", help="checkout of masora1030/CVPR2022-Pretrained-ViT-PyTorch")
    ap.add_argument("--released-visualatom", metavar="DIR", help="checkout of masora1030/CVPR2023-FDSL-on-VisualAtom")
    ap.add_argument("--images", type=int, default=100, help="categories per kind, one image each: 0 .. images - 1")
    ap.add_argument("--repeats", type=int, default=3, help="fracgen render + PNG runs per image (median)")
    ap.add_argument("--identity", type=int, default=20, help="released images compared pixel by pixel (0: none)")
    ap.add_argument("--build", type=int, default=None,
                    help="categories of the timed build() and `fracgen build` [default: --images; 0 skips]")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of: " + ", ".join(KINDS))
    ap.add_argument("--own-stream", action="store_true",
                    help="also run each released script on its own random stream (other images), as a cost check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args(argv)
    args.build = args.images if args.build is None else args.build
    if args.images < 1 or args.repeats < 1 or args.identity < 0 or args.build < 0:
        ap.error("--images and --repeats must be >= 1, --identity and --build >= 0")
    kinds = args.kinds.split(",")
    if set(kinds) - set(KINDS):
        ap.error(f"--kinds: unknown {sorted(set(kinds) - set(KINDS))}; expected some of {', '.join(KINDS)}")
    given = {"rcdb": args.released_rcdb, "visualatom": args.released_visualatom}
    scripts = {k: find_script(given[k], Path(SCRIPTS[k]), f"--released-{k}") for k in kinds if given[k]}
    if scripts:
        try:
            import noise  # noqa: F401 - the released scripts need it; imported before the stand-in goes in
        except ImportError:
            ap.error("the released scripts need the noise package: pip install noise==1.2.2")

    print(header(f"RCDB / VisualAtom: CPU per stored image, {args.size} px, categories 0-{args.images - 1} x 1 "
                 f"image, seed {args.seed}, one core"))
    print(f"- command: `python benchmarks/bench_contours.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    for kind, script in scripts.items():
        print(f"- released {kind}: {script} @ {checkout_commit(script)}")
    if scripts:
        real_ns, fake_ns = call_cost_ns()
        print(f"- random.uniform(0, 10000), CPU per call: CPython {real_ns:.0f} ns, the stand-in {fake_ns:.0f} ns")
    print()

    rows = {}
    for kind in kinds:
        rel = same = None
        if kind in scripts:
            with tempfile.TemporaryDirectory() as tmp:
                rel = run_released(kind, scripts[kind], args, Path(tmp) / "fed")
                same = identity(kind, args, Path(tmp) / "fed") if args.identity else None
                if args.own_stream:
                    rel["own_ms"] = run_script(scripts[kind], kind, args, Path(tmp) / "own") / args.images * 1e3
                    rel["own_vk"] = replay_vk(kind, args.images)
        fg = fracgen_side(kind, args)
        fg["build"], fg["command"] = measure_build(kind, args.build, args.seed) if args.build else (None, None)
        rows[kind] = (rel, fg, same)

    def ratio(rel: dict | None, ms: float | None) -> str:
        if not (rel and ms):
            return "-"
        r = rel["ms"] / ms
        return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x"

    def ms(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print("CPU ms per stored image. fracgen render + PNG: `render_image` + `encode_png(fast=True)`; build(): "
          f"{args.build} categories x 1 on one worker, in-process; command: the whole `fracgen build` of the same "
          "(interpreter start and imports spread over its images). Ratios: released / fracgen, this run.\n")
    print("| kind | mean V x K (expected) | released script | fracgen render + PNG | ratio | fracgen build() | "
          "ratio | fracgen command | ratio | pixel-identical |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind, (rel, fg, same) in rows.items():
        ident = "-" if same is None else f"{same[0]}/{same[1]}" + (f" (worst {same[2]} px)" if same[0] < same[1] else "")
        print(f"| {kind} | {fg['VK']:,.0f} ({expected_vk(kind):,.0f}) | {ms(rel and rel['ms'], 1)} | "
              f"{fg['stored_ms']:.3f} ({fg['draw_ms']:.3f} + {fg['png_ms']:.3f}) | {ratio(rel, fg['stored_ms'])} | "
              f"{ms(fg['build'])} | {ratio(rel, fg['build'])} | {ms(fg['command'])} | {ratio(rel, fg['command'])} | "
              f"{ident} |")
    if scripts:
        feeds = ", ".join(f"{kind} {r[0]['feed_ms']:.2f}" for kind, r in rows.items() if r[0])
        print(f"\nReleased: the whole script's CPU / images, less the CPU of building the fed lists (ms/image: {feeds}).")
    if args.own_stream and scripts:
        print("\nCost check, the released scripts on their own random stream (other images), same arguments:\n")
        print("| kind | own stream: mean V x K | ms/image | ms per 1k V x K | fed run: ms per 1k V x K |")
        print("|---|---:|---:|---:|---:|")
        for kind, (rel, fg, _) in rows.items():
            if rel:
                print(f"| {kind} | {rel['own_vk']:,.0f} | {rel['own_ms']:.1f} | {rel['own_ms'] / rel['own_vk'] * 1e3:.2f} "
                      f"| {rel['ms'] / fg['VK'] * 1e3:.2f} |")
    missing = [k for k in kinds if k not in scripts]
    if missing:
        print(f"\nNo released checkout given for {', '.join(missing)}: fracgen's figures only.\n")
        print(how_to_get())
    print(f"\nload average at end (1 / 5 / 15 min): {load()}")


if __name__ == "__main__":
    main()
