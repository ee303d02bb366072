"""Builder speed on this machine: the default 1p-frac build, cold and warm, against the chaos game alone.

Run with ``make bench`` (or ``python benchmarks/bench_build.py [--L 1000] [--workers N]``). Prints a Markdown table:

- build, cold: a fresh process with an empty numba cache (JIT compilation included): wall time of the process,
  and CPU time of it and its workers.
- build, warm: the same command again with the cache filled; wall and CPU as above, and wall of ``build()`` alone.
- chaos game alone: the numba chaos game for the same number of images on one core (the physical limit: every
  build must at least run it), CPU time, and its share of the warm whole command's CPU time.
- per-stage CPU costs of one image (one core), and the peak resident memory of the build processes.
- the whole command against the plain reference render: ``fracgen build --sigma 3.5 --delta 0.1 --L L``
  in a new process (interpreter, imports, search, redraws, PNG, tar, metadata), then
  ``benchmarks/reference_render.py`` on the images it wrote (chaos game + patch raster only, warm pool, same
  workers); wall and CPU ratios per round, ``--rounds`` rounds alternated so both see the same machine load.
- a FractalDB-1k-scale row: FractalDB images at 362 px and 200,000 points, about one image per category in each
  shard as in a 1,000 x 1,000 build, rendered and written by ``run_shard`` on one core (images per CPU-second;
  the search is not counted: it is paid once per category, the images 1,000 times).

Figures are medians of ``--repeats`` runs measured in this one invocation, so ratios compare like with like.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import children_cpu, header, load

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from fracgen.build import BuildConfig, build
t1 = time.perf_counter()
r = build(BuildConfig(L={L}, size={size}, points={points}), sys.argv[1], workers={workers}, overwrite=True)
t2 = time.perf_counter()
redraws = json.load(open(sys.argv[1] + "/params.json"))["total_redraws"]
print(json.dumps({{"import": t1 - t0, "build": t2 - t1, "images": r.images, "redraws": redraws,
                  "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


FRACTALDB_CHILD = r"""
import json, sys, time
from pathlib import Path
from fracgen import dataset
from fracgen.config import BuildConfig
from fracgen.plan import make_plan
from fracgen.shard import run_shard
cfg = BuildConfig(preset="fractaldb", fractals={fractals}, instances={instances}, size=362, points=200_000,
                  shard_size={shard_size})
plan = make_plan(cfg)
root = Path(sys.argv[1])
(root / dataset.STATS).mkdir(parents=True, exist_ok=True)
run_shard(plan, 0, root)  # JIT warm
cpu = []
for shard in range(cfg.num_shards):
    start = time.process_time()
    run_shard(plan, shard, root)
    cpu.append(time.process_time() - start)
print(json.dumps({{"images": cfg.num_samples, "cpu": sum(cpu)}}))
"""


def run_build(args, cache: Path, out: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    code = CHILD.format(L=args.L, size=args.size, points=args.points, workers=args.workers)
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, check=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu  # the child's CPU and its workers'
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), wall=wall, cpu=cpu)


def whole_vs_reference(args, cache: Path, out: Path) -> list[dict]:
    """Rounds of (whole command, plain reference render of its images): wall and CPU seconds of each."""
    import resource

    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    command = [sys.executable, "-m", "fracgen.cli", "build", "--sigma", "3.5", "--delta", "0.1", "--L", str(args.L),
               "--size", str(args.size), "--points", str(args.points), "--workers", str(args.workers),
               "--overwrite", str(out)]
    reference = [sys.executable, str(Path(__file__).with_name("reference_render.py")), str(out), "--workers",
                 str(args.workers), "--repeats", "1"]
    rounds = []
    for _ in range(args.rounds):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        proc = subprocess.run(reference, env=env, check=True, capture_output=True, text=True)
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.append({"wall": wall, "cpu": cpu, "ref_wall": ref["seconds"][0], "ref_cpu": ref["cpu_seconds"][0]})
    return rounds


def fractaldb_rate(args, cache: Path, out: Path) -> float:
    """FractalDB images per CPU-second (one core) at 362 px and 200,000 points (see the module docstring)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    code = FRACTALDB_CHILD.format(fractals=args.fractaldb_categories, instances=args.fractaldb_instances,
                                  shard_size=args.fractaldb_categories * args.fractaldb_instances // 2)
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["images"] / result["cpu"]


def stage_costs(args) -> dict:
    """Milliseconds per image for each stage, on one core, and the chaos game's images/s."""
    import numpy as np
    from PIL import Image

    from fracgen.config import BuildConfig
    from fracgen.encode import encode_palette_png, encode_png
    from fracgen.kernels import chaos
    from fracgen.kernels.masks import draw_masks_fast
    from fracgen.perturb import perturb
    from fracgen.plan import make_plan
    from fracgen.seeds import choice_uniforms, draw_masks

    plan = make_plan(BuildConfig(L=args.L, size=args.size, points=args.points))
    base = plan.systems[0]
    cum = np.cumsum(base.probabilities)
    uniforms = choice_uniforms(0, 0, args.points)
    canvas = chaos.Canvas(args.size, args.points)
    rng = np.random.default_rng(0)
    n = args.stage_images
    maps = [perturb(base.maps, 0.1, "multiplicative", rng) for _ in range(n)]
    masks = draw_masks(rng, args.points)
    chaos.chaos_game(maps[0], cum, uniforms, canvas.points)  # compile or load before timing
    chaos.raster_reference(canvas.points, masks, canvas.image)
    lanes = chaos.LANES
    lane_maps = np.array(maps[:lanes])
    lane_masks = np.stack([masks] * lanes)
    lane_bits = np.empty((lanes,) + canvas.bits.shape, np.uint64)
    choices = chaos.map_choices(uniforms, cum)
    chaos.render_chains(lane_maps, choices, lane_masks, lane_bits)
    levels = np.array([0, chaos.VALUE], np.uint8)

    def timed(fn) -> float:
        start = time.process_time()
        for m in maps:
            fn(m)
        return (time.process_time() - start) / n * 1e3

    chaos_ms = timed(lambda m: chaos.chaos_game(m, cum, uniforms, canvas.points))
    images = [image.copy() for _, image, _ in plan.config.family.render(plan, list(range(min(n, 50))))]
    released = []
    for image in images:  # the released code's RGB PNG by Pillow
        buf = io.BytesIO()
        Image.fromarray(np.repeat(image[..., None], 3, axis=2)).save(buf, "PNG")
        released.append(len(buf.getvalue()))
    # The 1-bit palette PNG (``encode_palette_png``) against the 8-bit grey one a build writes, on the same images and
    # alternated, so that the ratio compares like with like on a busy machine: the fastest of the rounds.
    encoders = {"before": encode_palette_png, "now": encode_png}
    seconds = {name: [] for name in encoders}
    for _ in range(args.repeats * 2 + 1):
        for name, encoder in encoders.items():
            start = time.process_time()
            for image in images:
                encoder(image, levels)
            seconds[name].append((time.process_time() - start) / len(images) * 1e3)
    return {
        "chaos game": chaos_ms,
        "patch masks (numpy)": timed(lambda m: draw_masks(rng, args.points)),
        "patch masks (the same draw replayed in numba, as the build draws them)": timed(
            lambda m: draw_masks_fast(rng, args.points)),
        "raster, reference look": timed(lambda m: chaos.raster_reference(canvas.points, masks, canvas.image)),
        f"chaos game + raster, {chaos.LANES} perturbations together (per image)": timed(
            lambda m: chaos.render_chains(lane_maps, choices, lane_masks, lane_bits)) / lanes,
        "PNG encode (8-bit grey)": min(seconds["now"]),
        "PNG encode, 1-bit palette (for comparison)": min(seconds["before"]),
        "chaos_images_per_s": 1e3 / chaos_ms,
        "png_kb": {name: np.mean([len(encoder(im, levels)) for im in images]) / 1024
                   for name, encoder in encoders.items()} | {"released": np.mean(released) / 1024},
        "png_images": len(images),
        "encode_ratio": min(seconds["now"]) / min(seconds["before"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--L", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage-images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="whole command vs reference render, alternated")
    # 64 categories x 2 instances in shards of 64: each shard holds about one image per category, as the shards
    # of FractalDB-1k (1,000 x 1,000 in shards of 100) do, so nothing per category is reused within a shard
    parser.add_argument("--fractaldb-categories", type=int, default=64)
    parser.add_argument("--fractaldb-instances", type=int, default=2)
    args = parser.parse_args()
    load_at_start = load()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = run_build(args, tmp / "cache", tmp / "out")
        warm = [run_build(args, tmp / "cache", tmp / "out") for _ in range(args.repeats)]
        rounds = whole_vs_reference(args, tmp / "cache", tmp / "ratio")
        fractaldb = fractaldb_rate(args, tmp / "cache", tmp / "fractaldb")
    stages = stage_costs(args)

    def med(key: str) -> float:
        return statistics.median(w[key] for w in warm)

    images = args.L
    rate_warm = images / med("build")
    chaos = stages.pop("chaos_images_per_s")
    kb, png_n, encode_ratio = stages.pop("png_kb"), stages.pop("png_images"), stages.pop("encode_ratio")
    print(header(f"fracgen build: L={args.L}, {args.size} px, {args.points:,} points, {args.workers} workers",
                 load_at_start))
    print(f"- command: `python benchmarks/bench_build.py {' '.join(sys.argv[1:])}`")
    print(f"- warm figures are the median of {args.repeats} runs\n")
    print("| measure | wall s | images/s | images/s per core | CPU s (all processes) | CPU ms per image |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| build, cold (new process, empty JIT cache) | {cold['wall']:.2f} | {images / cold['wall']:.0f} | "
          f"{images / cold['wall'] / args.workers:.0f} | {cold['cpu']:.2f} | {cold['cpu'] / images * 1e3:.2f} |")
    print(f"| build, warm (new process, whole command) | {med('wall'):.2f} | {images / med('wall'):.0f} | "
          f"{images / med('wall') / args.workers:.0f} | {med('cpu'):.2f} | {med('cpu') / images * 1e3:.2f} |")
    print(f"| build, warm (build() alone, no interpreter start) | {med('build'):.2f} | {rate_warm:.0f} | "
          f"{rate_warm / args.workers:.0f} | | |")
    print(f"| chaos game alone (one core) | | | | {images / chaos:.2f} | {1e3 / chaos:.2f} |")
    print(f"\nchaos game alone / warm whole command, CPU per image: {images / chaos / med('cpu'):.2f} "
          f"(every image costs {1 + med('redraws') / images:.2f} renders: perturbations that diverge or under-fill "
          f"are redrawn)")
    print(f"imports in the build process: {med('import'):.2f} s")
    print(f"peak memory: build process {med('rss_self_mb'):.0f} MB, each worker at most {med('rss_worker_mb'):.0f} MB "
          f"(total at most {med('rss_self_mb') + args.workers * med('rss_worker_mb'):.0f} MB)\n")
    print(f"PNG size: {kb['now']:.1f} KB per image (8-bit grey, {kb['now'] * 1024:.0f} bytes) against "
          f"{kb['before']:.1f} KB as a 1-bit palette PNG and {kb['released']:.1f} KB as the released code "
          f"saves it (RGB PNG by Pillow), mean of {png_n} images")
    print(f"PNG encode time, 8-bit grey / 1-bit palette, same images: {encode_ratio:.2f}\n")
    wall_ratios = [r["wall"] / r["ref_wall"] for r in rounds]
    cpu_ratios = [r["cpu"] / r["ref_cpu"] for r in rounds]
    print(f"whole command / plain reference render (benchmarks/reference_render.py), {len(rounds)} rounds alternated:")
    print("| round | whole command s (CPU s) | reference render s (CPU s) | wall ratio | CPU ratio |")
    print("|---|---:|---:|---:|---:|")
    for i, r in enumerate(rounds):
        print(f"| {i + 1} | {r['wall']:.2f} ({r['cpu']:.2f}) | {r['ref_wall']:.2f} ({r['ref_cpu']:.2f}) | "
              f"{r['wall'] / r['ref_wall']:.2f} | {r['cpu'] / r['ref_cpu']:.2f} |")
    print(f"\nwall ratio: median {statistics.median(wall_ratios):.2f} (range {min(wall_ratios):.2f}-{max(wall_ratios):.2f}); "
          f"CPU ratio: median {statistics.median(cpu_ratios):.2f} (range {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f})\n")
    print(f"FractalDB-1k scale ({args.fractaldb_categories} categories x {args.fractaldb_instances} instances, 362 px, "
          f"200,000 points, render + PNG + tar, one core): {fractaldb:.1f} images/s per core\n")
    print("| stage, one image, one core | CPU ms |")
    print("|---|---:|")
    for name, ms in stages.items():
        print(f"| {name} | {ms:.3f} |")
    print(f"\nload average at end (1 / 5 / 15 min): {load()}")


if __name__ == "__main__":
    main()
