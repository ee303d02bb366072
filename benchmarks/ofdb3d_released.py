"""Run the released 3D-OFDB scripts, unmodified, on draws given in a folder: the released half of bench_ofdb3d.py.

Run it with the Python of an environment that runs the released code (not fracgen's):

    RELEASED_PY ofdb3d_released.py STAGE --released-dir OFDB/3d-ofdb-generator --draws DRAWS --out OUT

OFDB/ is a checkout of https://github.com/ryoo-nakamura/OFDB (commit ea761ecb was measured); its environment is
Python 3.9 with the pins of ``3d-ofdb-generator/requirements.txt`` that the three scripts import (numpy 1.22.0,
open3d 0.14.1, PyGLM 2.5.7, PyOpenGL 3.1.5, plyfile 0.7.4, Pillow 9.0.1, matplotlib 3.5.1) and pegl (unpinned
there; 0.2a1 was used), with Mesa's EGL (llvmpipe) for a machine without a display. This file installs nothing.

Each stage runs one released script as ``3d-ofdb_render.sh`` does (from the generator's folder, its arguments),
and answers its random calls from DRAWS (written by bench_ofdb3d.py: fracgen's own draws), so both sides draw the
same numbers:

- ``search``: category_search.py; np.random.randint(2, 8), np.random.uniform(-1.0, 1.0, 12) and
  np.random.random(point_num) come from ``counts.npy``, ``params.npy`` and ``uniforms.npy`` (candidate after
  candidate, category after category; the last of the point_num uniforms, which the release draws and never
  uses, is padding). The stage fails unless the script accepts exactly the candidates fracgen accepted.
- ``instance``: instance.py; np.random.random(point_num) of each category (in its CSV order) from ``cloud.npy``.
- ``render``: render1view.py; random.uniform(-pi, pi) of each view from ``jitters.npy`` (categories x views).

OUT receives params/ (CSVs), models/ (PLYs), images/ (PNGs) and ``STAGE.json`` (the draws used, the stage's
process CPU seconds). EGL_PLATFORM=surfaceless and PYOPENGL_PLATFORM=egl are set unless already set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import runpy
import sys
import time

os.environ.setdefault("EGL_PLATFORM", "surfaceless")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402


def _run(released: str, script: str, argv: list) -> None:
    """Run a released script as __main__ from the generator folder (its paths are relative to it)."""
    path = os.path.join(released, script)
    sys.path.insert(0, os.path.dirname(path))
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [path] + [str(a) for a in argv]
    os.chdir(released)
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        sys.path.pop(0)


class _Feed:
    """Answers the released search's np.random calls from fracgen's candidates, in order."""

    def __init__(self, draws: str, point_num: int):
        self.counts = np.load(os.path.join(draws, "counts.npy"))
        self.params = np.load(os.path.join(draws, "params.npy"), mmap_mode="r")
        self.uniforms = np.load(os.path.join(draws, "uniforms.npy"), mmap_mode="r")
        self.point_num = point_num
        self.trial = -1
        self.map = 0

    def randint(self, low, high=None, size=None, dtype=int):
        if (low, high, size) != (2, 8, None):
            raise AssertionError(f"unexpected np.random.randint{(low, high, size)!r}")
        self.trial += 1
        self.map = 0
        return int(self.counts[self.trial])

    def uniform(self, low=0.0, high=1.0, size=None):
        if (low, high, size) != (-1.0, 1.0, 12) or self.map >= self.counts[self.trial]:
            raise AssertionError(f"unexpected np.random.uniform{(low, high, size)!r}")
        self.map += 1
        return np.array(self.params[self.trial, self.map - 1], dtype=np.float64)

    def random(self, size=None):
        if size != self.point_num or self.map != self.counts[self.trial]:
            raise AssertionError(f"unexpected np.random.random({size!r})")
        return np.append(np.asarray(self.uniforms[self.trial], dtype=np.float64), 0.5)  # the unused last draw


def stage_search(a, meta: dict) -> dict:
    feed = _Feed(a.draws, meta["points"])
    np.random.randint, np.random.uniform, np.random.random = feed.randint, feed.uniform, feed.random
    _run(a.released_dir, "3dfractal_render/category_search.py",
         [f"--variance={meta['variance']!r}", f"--numof_classes={meta['categories']}",
          "--save_root=" + os.path.join(a.out, "params"), "--point_num", meta["points"]])
    if feed.trial + 1 != len(feed.counts):
        raise AssertionError(f"the released search accepted its categories after {feed.trial + 1} candidates, "
                             f"fracgen after {len(feed.counts)}")
    return {"candidates": feed.trial + 1}


def stage_instance(a, meta: dict) -> dict:
    clouds = np.load(os.path.join(a.draws, "cloud.npy"))
    calls = []

    def random_(size=None):
        if size != meta["points"]:
            raise AssertionError(f"unexpected np.random.random({size!r})")
        calls.append(size)
        return np.append(clouds[len(calls) - 1], 0.5)

    np.random.random = random_
    _run(a.released_dir, "3dfractal_render/instance.py",
         ["--load_root", os.path.join(a.out, "params"), "--save_root", os.path.join(a.out, "models"),
          "--classes", meta["categories"], "--point_num", meta["points"]])
    return {"clouds": len(calls)}


def stage_render(a, meta: dict) -> dict:
    feed = [float(v) for v in np.load(os.path.join(a.draws, "jitters.npy")).ravel()]
    used = []

    def uniform(low, high):
        if (low, high) != (-math.pi, math.pi):  # render1view.py's only call: random.uniform(-math.pi, math.pi)
            raise AssertionError(f"unexpected random.uniform{(low, high)!r}")
        used.append(feed[len(used)])
        return used[-1]

    random.uniform = uniform
    _run(a.released_dir, "image_render/render1view.py",
         ["--load_root", os.path.join(a.out, "models"), "--save_root", os.path.join(a.out, "images"),
          "--view_point", meta["views"], "--img_size", meta["size"]])
    return {"jitters": len(used)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("search", "instance", "render"))
    p.add_argument("--released-dir", required=True, help="3d-ofdb-generator/ of an OFDB checkout")
    p.add_argument("--draws", required=True, help="the folder bench_ofdb3d.py wrote (meta.json and .npy files)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    a.released_dir, a.out = os.path.abspath(a.released_dir), os.path.abspath(a.out)
    with open(os.path.join(a.draws, "meta.json")) as f:
        meta = json.load(f)
    start = time.process_time()
    result = {"search": stage_search, "instance": stage_instance, "render": stage_render}[a.stage](a, meta)
    result["cpu_seconds_in_process"] = time.process_time() - start
    with open(os.path.join(a.out, a.stage + ".json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
