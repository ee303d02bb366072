"""FractalDB/OFDB category search: wall time for C categories across W workers (issue 15's goal: 1,000 in under
15 s on 2 cores).

Run with ``python benchmarks/bench_search.py [--categories 1000] [--workers 2]``. The kernel is compiled before
timing; the figure is wall time of the family's ``search`` (``fracgen.presets.fractaldb``) (what `fracgen build --preset ofdb`
spends before rendering), with the mean attempts per category (FractalDB's acceptance rate is about 2.5%).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fracgen.config import BuildConfig  # noqa: E402
from fracgen.presets.fractaldb import search_category  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    search_category(0, args.seed, 0.0, 1)  # JIT (or load the numba cache) outside the timing
    config = BuildConfig(preset="ofdb", fractals=args.categories, seed=args.seed)
    cpu, start = time.process_time(), time.perf_counter()
    systems = config.family.search(config, args.workers, sys.stderr.isatty())
    wall = time.perf_counter() - start
    attempts = sum(s.attempts for s in systems)
    print(f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}, "
          f"Python {platform.python_version()}")
    print("| categories | workers | wall s | parent CPU s | attempts/category | acceptance |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.categories} | {args.workers} | {wall:.1f} | {time.process_time() - cpu:.1f} | "
          f"{attempts / len(systems):.1f} | {len(systems) / attempts:.2%} |")


if __name__ == "__main__":
    main()
