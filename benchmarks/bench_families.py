"""Every registered family: a build at its default image options, and the size of its headline set.

Run with ``python benchmarks/bench_families.py [--cpu-seconds 3] [--real-image PHOTO]``.

For each family of ``fracgen.presets.families()``, at its defaults (size, points, min fill, ...) except the class
count, seed 0, one worker, in this process: a build of 2 classes (numba's cache and imports, untimed), a pilot of
``--classes`` classes (``--instances`` images per category at most), then the measured build, sized from the
pilot to about ``--cpu-seconds`` of CPU within the headline set (more instances where the headline set has several
per class, else more classes). Printed per family:

- bytes per stored image: the measured build's shard bytes / images (PNG, label, JSON record, tar headers and
  the end-of-archive padding of each shard, at most 10 KB a shard);
- CPU ms per image of that ``build()`` (CPU of this process and its children), and the part of it that is the
  search before the shards (base systems, or what a family prepares instead: timed again alone), since a headline
  set pays the search per system or category, not per image;
- images/s on all cores: wall time of ``build()`` of the same set on ``--workers`` processes, its shards made
  small enough for every worker to get several (the pool's start, the search and the records included), the
  fastest of ``--repeats`` builds, since wall time counts what other processes take of the cores;
- the headline set, its images, its projected size on disk (bytes per image x images) and its projected CPU time
  on one core (render CPU per image x images + search CPU per base system x systems).

The ``real`` family perturbs one photo: ``--real-image`` gives it (without one, its row says so). Output: a
Markdown table for the README, then the measured builds.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from machine import REPO, children_cpu, cores, header, load

sys.path.insert(0, str(REPO))
from fracgen.build import build  # noqa: E402
from fracgen.config import BuildConfig  # noqa: E402
from fracgen.presets import families  # noqa: E402

# The set each family is known by: its label and the options that make it (the rest at the family's defaults).
HEADLINE = {
    "1p-frac": ("1p-frac, L = 1,000", {"L": 1000}),
    "fractaldb": ("FractalDB-1k, 1,000 x 1,000", {"fractals": 1000, "instances": 1000}),
    "ofdb": ("OFDB-1k, 1,000 x 1", {"fractals": 1000}),
    "rcdb": ("RCDB-1K, 1,000 x 1", {"categories": 1000, "instances": 1}),
    "visualatom": ("VisualAtom-1K, 1,000 x 1", {"categories": 1000, "instances": 1}),
    "rcdb-lpce": ("RCDB LPCE, L = 1,000", {"L": 1000}),
    "visualatom-lpce": ("VisualAtom LPCE, L = 1,000", {"L": 1000}),
    "gaussian-noise": ("Gaussian noise, L = 1,000", {"L": 1000}),
    "uniform-noise": ("uniform noise, L = 1,000", {"L": 1000}),
    "real": ("one real image, L = 1,000", {"L": 1000}),
    "3d-ofdb": ("3D-OFDB-1k, 1,000 x 12", {"categories": 1000, "views": 12}),
}


def headline(name: str, family) -> tuple[str, BuildConfig]:
    """The family's headline set and its options; a family not in HEADLINE, or whose options differ, at its
    defaults."""
    label, given = HEADLINE.get(name, (None, {}))
    try:
        return label or f"{name} at its defaults", BuildConfig(preset=name, **given)
    except (TypeError, ValueError):
        return f"{name} at its defaults", BuildConfig(preset=name)


def count_options(family, default: BuildConfig, classes: int, instances: int) -> dict:
    """Options giving ``classes`` classes (its L, categories or fractals) of ``instances`` images at most."""
    options = family.options
    given: dict = {}
    if "L" in options:
        given["L"] = classes
    elif "categories" in options:
        given["categories"] = classes
    elif "fractals" in options:
        given["fractals"] = classes
    if "instances" in options:
        given["instances"] = max(1, min(default.instances, instances))
    return given


def timed_build(config: BuildConfig, out: Path, source: str | None) -> tuple[float, int]:
    """CPU seconds (this process and its children) of ``build()`` on one worker, and its images."""
    start, start_children = time.process_time(), children_cpu()
    result = build(config, out, workers=1, source=source)
    return time.process_time() - start + children_cpu() - start_children, result.images


def measure(name: str, family, args, tmp: Path) -> dict:
    label, head = headline(name, family)
    row = {"name": name, "headline": label, "headline_images": head.num_samples,
           "headline_systems": head.fractals if "fractals" in family.options else 1}
    source = None
    if family.takes_source:
        if not args.real_image:
            return dict(row, skipped="needs --real-image PHOTO")
        source = args.real_image
    default = BuildConfig(preset=name)
    build(BuildConfig(preset=name, seed=args.seed, **count_options(family, default, 2, 1)), tmp / f"{name}-warm",
          workers=1, source=source)  # numba's cache and the imports, untimed

    # a pilot of --classes classes, then the measured build sized to about --cpu-seconds (within the headline set):
    # more instances where the headline set has several per class, else more classes
    given = count_options(family, default, args.classes, args.instances)
    pilot = BuildConfig(preset=name, seed=args.seed, **given)
    pilot_cpu, pilot_images = timed_build(pilot, tmp / f"{name}-pilot", source)
    wanted = args.cpu_seconds / (pilot_cpu / pilot_images)
    if head.per_class > 1 and "instances" in given:
        given["instances"] = int(min(head.per_class, max(given["instances"], wanted / args.classes)))
    else:
        key = next(k for k in ("L", "categories", "fractals") if k in given)
        given[key] = int(min(head.num_classes, max(args.classes, wanted / pilot.per_class)))
    config = BuildConfig(preset=name, seed=args.seed, **given)
    cpu, images = timed_build(config, tmp / f"{name}-1", source)
    shards = sorted((tmp / f"{name}-1").glob("train-*.tar"))
    size = sum(p.stat().st_size for p in shards)

    # the search before the shards, timed again alone: base systems, or what a family prepares instead
    start = time.process_time()
    systems = len(family.search(config, 1, False)) if family.systems else 0
    if hasattr(family, "prepare"):
        systems += len(family.prepare(config, 1, False))
    search_cpu = time.process_time() - start if systems else 0.0
    # a search per class (FractalDB, OFDB) grows with the headline set's classes; 1p-frac's per base fractal
    headline_systems = head.num_classes if systems == config.num_classes else row["headline_systems"]

    shard_size = max(1, min(config.shard_size, math.ceil(images / (4 * args.workers))))
    spread = config.replace(shard_size=shard_size)
    walls = []
    for attempt in range(args.repeats):  # the fastest: wall time counts what other processes take of the cores
        start = time.perf_counter()
        build(spread, tmp / f"{name}-all{attempt}", workers=args.workers, source=source)
        walls.append(time.perf_counter() - start)
    wall = min(walls)

    render_ms = max(0.0, cpu - search_cpu) / images * 1e3  # the search is timed apart: noise can exceed the rest
    projected_cpu = render_ms / 1e3 * row["headline_images"] + (
        search_cpu / systems * headline_systems if systems else 0.0)
    return dict(row, classes=config.num_classes, per_class=config.per_class, images=images, bytes=size / images,
                size_px=config.size, cpu_ms=cpu / images * 1e3, search_ms=search_cpu / images * 1e3,
                systems=systems, rate=images / wall, projected_bytes=size / images * row["headline_images"],
                projected_cpu=projected_cpu, shards=len(shards), all_shards=spread.num_shards)


def human_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def human_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=32, help="classes of each family's pilot build")
    ap.add_argument("--cpu-seconds", type=float, default=3.0, help="CPU the measured build of a family is sized to")
    ap.add_argument("--instances", type=int, default=4, help="most images per category (FractalDB-style families)")
    ap.add_argument("--workers", type=int, default=cores(), help="workers of the all-cores build")
    ap.add_argument("--repeats", type=int, default=2, help="all-cores builds; the fastest is shown")
    ap.add_argument("--families", default=None, help="comma-separated names [default: every registered family]")
    ap.add_argument("--real-image", metavar="PHOTO", help="the photo the `real` family perturbs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.classes < 2 or min(args.instances, args.workers, args.repeats) < 1 or not args.cpu_seconds > 0:
        ap.error("--classes must be >= 2, --instances, --workers and --repeats >= 1, --cpu-seconds > 0")
    registered = families()
    names = args.families.split(",") if args.families else list(registered)
    unknown = sorted(set(names) - set(registered))
    if unknown:
        ap.error(f"--families: unknown {unknown}; registered: {', '.join(registered)}")

    print(header(f"Every family at its default image options: one worker, and {args.workers} workers"))
    print(f"- command: `python benchmarks/bench_families.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, registered[name], args, Path(tmp)))

    print(f"| family | headline set | images | bytes / image | size on disk | CPU ms / image, 1 core | "
          f"images/s, {args.workers} cores | CPU time of the set, 1 core |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['name']} | {r['headline']} | {r['headline_images']:,} | - | - | - | - | - |")
            continue
        print(f"| {r['name']} | {r['headline']} | {r['headline_images']:,} | {r['bytes']:,.0f} | "
              f"{human_bytes(r['projected_bytes'])} | {r['cpu_ms']:.2f} | {r['rate']:,.0f} | "
              f"{human_seconds(r['projected_cpu'])} |")
    print("\nSize on disk and CPU time of the set are projections from the builds below: bytes per image x "
          "images; render CPU per image x images + search CPU per base system x systems. CPU ms / image: `build()` "
          f"on one worker; images/s: `build()` of the same set on all workers, wall time, the fastest of "
          f"{args.repeats}.\n")
    print("| family | measured build | px | images | shards (all cores) | bytes / image | CPU ms / image | "
          "of which search |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['name']} | {r['skipped']} | | | | | | |")
            continue
        search = f"{r['search_ms']:.2f} ({r['systems']:,} searched)" if r["systems"] else "-"
        print(f"| {r['name']} | {r['classes']:,} classes x {r['per_class']} | {r['size_px']} | {r['images']:,} | "
              f"{r['shards']} ({r['all_shards']}) | {r['bytes']:,.0f} | {r['cpu_ms']:.2f} | {search} |")
    print(f"\nload average at end (1 / 5 / 15 min): {load()}")


if __name__ == "__main__":
    main()
