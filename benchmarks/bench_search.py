"""FractalDB/OFDB category search: wall time for C categories across W workers (the goal: 1,000 in under 15 s on
2 cores).

Run with ``python benchmarks/bench_search.py [--categories 1000] [--workers 2]``. The kernel is compiled before
timing; the figure is wall time of the family's ``search`` (``fracgen.presets.fractaldb``) (what `fracgen build --preset ofdb`
spends before rendering), with the mean attempts per category (FractalDB's acceptance rate is about 2.5%).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from machine import cpu_now, header, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracgen.config import BuildConfig  # noqa: E402
from fracgen.presets.fractaldb import search_category  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(header(f"FractalDB/OFDB category search: {args.categories} categories, {args.workers} workers"))
    print(f"- command: `python benchmarks/bench_search.py {' '.join(sys.argv[1:])}`")
    search_category(0, args.seed, 0.0, 1)  # JIT (or load the numba cache) outside the timing
    config = BuildConfig(preset="ofdb", fractals=args.categories, seed=args.seed)
    cpu, start = cpu_now(), time.perf_counter()
    parent = time.process_time()
    systems = config.family.search(config, args.workers, sys.stderr.isatty())
    wall = time.perf_counter() - start
    cpu, parent = cpu_now() - cpu, time.process_time() - parent
    attempts = sum(s.attempts for s in systems)
    print(f"- load average at end (1 / 5 / 15 min): {load()}\n")
    print("| categories | workers | wall s | parent CPU s | CPU s, all processes | attempts/category | acceptance |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.categories} | {args.workers} | {wall:.1f} | {parent:.1f} | {cpu:.1f} | "
          f"{attempts / len(systems):.1f} | {len(systems) / attempts:.2%} |")

if __name__ == "__main__":
    main()
