"""3D-OFDB: CPU time per stored image against the released pipeline, the search's acceptance rate, and the pixels
of fracgen's build against the released render script fed the same draws, in one run.

    python benchmarks/bench_ofdb3d.py [--categories 20] [--views 12] [--seed 0] [--rate-categories 1000]
        [--released-dir OFDB/3d-ofdb-generator --released-python RELEASED_PY]

fracgen's side: ``fracgen build --preset NAME --categories C --views V --workers 1`` (``ofdb3d.NAME``) in a
subprocess, its CPU time (the whole command: interpreter, imports, numba's cache, search, render, PNGs, shards,
records) over the images it stores; ``build()`` alone in this process after a warm-up; the acceptance rate of
the build's search, and of ``--rate-categories`` categories searched alone across the cores with a bar (0 skips).

The released side needs a checkout of https://github.com/ryoo-nakamura/OFDB (ea761ecb was measured) and a Python
that runs its ``3d-ofdb-generator`` (see ``benchmarks/ofdb3d_released.py`` for that environment; nothing here
installs it). Then the three released scripts run one after another as ``3d-ofdb_render.sh`` runs them, each a
subprocess answered fracgen's draws (the build's candidates, instance uniforms and jitters), and the bench
prints: their CPU time (children's user + sys, llvmpipe's threads included) per stored image beside fracgen's;
whether the released search accepted the same candidates, wrote the same parameters (CSV) and the same clouds
(PLY) bit for bit; and, for every image, the pixels that differ between the released PNG and fracgen's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import children_cpu, header, load  # noqa: E402

from fracgen.presets import ofdb3d  # noqa: E402

DRIVER = Path(__file__).with_name("ofdb3d_released.py")


def build_command(a, out: Path) -> list[str]:
    return [sys.executable, "-m", "fracgen.cli", "build", "--preset", ofdb3d.NAME, "--categories", str(a.categories),
            "--views", str(a.views), "--seed", str(a.seed), "--size", str(a.size), "--points", str(a.points),
            "--workers", "1", "--no-progress", str(out)]


def fracgen_side(a, work: Path) -> dict:
    """The build as a command (CPU of the whole command, numba's cache filled by a first command of one category)
    and ``build()`` alone in this process (warm)."""
    from fracgen.build import BuildConfig, build

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    one = argparse.Namespace(**{**vars(a), "categories": 1})
    subprocess.run(build_command(one, work / "cache"), check=True, env=env, stdout=subprocess.DEVNULL)
    before = children_cpu()
    subprocess.run(build_command(a, work / "fracgen"), check=True, env=env, stdout=subprocess.DEVNULL)
    command_cpu = children_cpu() - before
    config = BuildConfig(preset=ofdb3d.NAME, categories=a.categories, views=a.views, seed=a.seed, size=a.size,
                         points=a.points)
    build(config.replace(categories=1), work / "warm", workers=1)  # numba's kernels loaded, the caches left cold
    start = time.process_time()
    build(config, work / "inproc", workers=1)
    images = a.categories * a.views
    params = json.loads((work / "fracgen" / "params.json").read_text())
    return {"images": images, "command_cpu": command_cpu, "build_cpu": time.process_time() - start,
            "search": params["search"], "classes": params["classes"]}


def write_draws(a, classes: list[dict], folder: Path) -> None:
    """fracgen's draws, as ofdb3d_released.py feeds them to the released scripts."""
    folder.mkdir(parents=True)
    counts, params, uniforms = [], [], []
    for c, record in enumerate(classes):
        for maps, u in ofdb3d.candidate_draws(a.seed, c, a.points, record["attempts"]):
            counts.append(len(maps))
            params.append(np.pad(maps, ((0, 7 - len(maps)), (0, 0))))
            uniforms.append(u)
    np.save(folder / "counts.npy", np.array(counts, np.int64))
    np.save(folder / "params.npy", np.array(params))
    np.save(folder / "uniforms.npy", np.array(uniforms))
    np.save(folder / "cloud.npy", np.array([ofdb3d.cloud_uniforms(a.seed, c, a.points) for c in range(a.categories)]))
    np.save(folder / "jitters.npy", np.array([ofdb3d.jitters(a.seed, c, a.views) for c in range(a.categories)]))
    meta = {"categories": a.categories, "views": a.views, "points": a.points, "size": a.size,
            "variance": ofdb3d.VARIANCE}
    (folder / "meta.json").write_text(json.dumps(meta))


def released_side(a, work: Path) -> dict:
    """The three released scripts, one subprocess each, with fracgen's draws: CPU seconds per stage."""
    out = work / "released"
    out.mkdir()
    env = {**os.environ, "EGL_PLATFORM": os.environ.get("EGL_PLATFORM", "surfaceless"),
           "PYOPENGL_PLATFORM": "egl"}
    cpu = {}
    for stage in ("search", "instance", "render"):
        before = children_cpu()
        done = subprocess.run([a.released_python, str(DRIVER), stage, "--released-dir", a.released_dir, "--draws",
                               str(work / "draws"), "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        cpu[stage] = children_cpu() - before
        if done.returncode:
            sys.exit(f"the released {stage} stage failed:\n{done.stderr[-3000:]}")
    return cpu


def fracgen_images(root: Path) -> dict[int, np.ndarray]:
    """Sample index -> (size, size) uint8 from the build's shards."""
    images = {}
    for tar in sorted(root.glob("train-*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".png"):
                    data = tf.extractfile(member).read()
                    images[int(member.name.split(".")[0])] = np.asarray(Image.open(io.BytesIO(data)))
    return images


def read_ply(path: Path) -> np.ndarray:
    """open3d's binary little-endian PLY of double x, y, z -> (3, n) float64."""
    with open(path, "rb") as f:
        n = 0
        while (line := f.readline().decode("ascii").strip()) != "end_header":
            if line.startswith("element vertex"):
                n = int(line.split()[2])
        return np.frombuffer(f.read(24 * n), "<f8").reshape(n, 3).T.copy()


def compare(a, classes: list[dict], work: Path) -> dict:
    """Parameters, clouds and pixels of the released output against fracgen's build."""
    out, ours = work / "released", fracgen_images(work / "fracgen")
    names = sorted(p.stem for p in (out / "params").glob("*.csv"))
    same_params = same_clouds = 0
    diffs = {}
    for c, name in enumerate(names):
        record = classes[c]
        csv = np.loadtxt(out / "params" / f"{name}.csv", delimiter=",", ndmin=2)
        same_params += np.array_equal(csv, np.column_stack([record["maps"], record["probabilities"]]))
        cloud = ofdb3d.instance_cloud(np.array(record["maps"]), np.array(record["probabilities"]),
                                      ofdb3d.cloud_uniforms(a.seed, c, a.points), a.points)
        same_clouds += np.array_equal(read_ply(out / "models" / name / f"{name}_0000.ply"), cloud)
        for v in range(a.views):
            rgb = np.asarray(Image.open(out / "images" / name / f"{name}_00000_{v:03d}.png"))
            assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
            diffs[(c, v)] = int((rgb[..., 0] != ours[c * a.views + v]).sum())
    return {"categories": len(names), "same_params": same_params, "same_clouds": same_clouds, "diffs": diffs}


def report(a, ours: dict, cpu: dict | None, cmp: dict | None, rate: dict | None, load_at_start: str) -> None:
    images = ours["images"]
    print(header(f"3D-OFDB: {a.categories} categories x {a.views} views, {a.size} px, point_num {a.points}, "
                 f"seed {a.seed}", load_at_start))
    search = ours["search"]
    print(f"acceptance: {search['categories']} categories from {search['attempts']} candidates, "
          f"{search['acceptance_rate']:.2%}")
    if rate:
        print(f"acceptance, {rate['categories']} categories searched alone: {rate['rate']:.2%} "
              f"({rate['attempts']} candidates, {rate['wall']:.1f} s wall on {rate['workers']} workers)")
    print("| path | CPU s | CPU ms per stored image |\n|---|---|---|")
    print(f"| fracgen build (whole command, 1 worker) | {ours['command_cpu']:.2f} | "
          f"{1000 * ours['command_cpu'] / images:.2f} |")
    print(f"| fracgen build() in-process, warm | {ours['build_cpu']:.2f} | {1000 * ours['build_cpu'] / images:.2f} |")
    if cpu is None:
        print("released pipeline: not run. Give --released-dir OFDB/3d-ofdb-generator (a checkout of "
              "github.com/ryoo-nakamura/OFDB) and --released-python PY (a Python running its requirements and "
              "pegl on Mesa EGL; see benchmarks/ofdb3d_released.py) to time it and compare pixels.")
        return
    total = sum(cpu.values())
    for stage in ("search", "instance", "render"):
        print(f"| released {stage} | {cpu[stage]:.2f} | {1000 * cpu[stage] / images:.2f} |")
    print(f"| released total | {total:.2f} | {1000 * total / images:.2f} |")
    print(f"ratio released / fracgen per stored image: {total / ours['command_cpu']:.1f}x (whole command), "
          f"{total / ours['build_cpu']:.1f}x (build() alone)")
    diffs = cmp["diffs"]
    zero = sum(n == 0 for n in diffs.values())
    print(f"released search accepted the same candidates; parameters bit-equal {cmp['same_params']}/"
          f"{cmp['categories']}, clouds bit-equal {cmp['same_clouds']}/{cmp['categories']}")
    print(f"pixels: {len(diffs)} images, {zero} with 0 differing pixels ({zero / max(len(diffs), 1):.1%}), "
          f"{sum(diffs.values())} differing pixels in all")
    for (c, v), n in sorted(diffs.items()):
        if n:
            print(f"  category {c} view {v}: {n} differing pixels")


def acceptance(a) -> dict | None:
    """The search alone over ``--rate-categories`` categories, across the cores, with a bar."""
    if not a.rate_categories:
        return None
    from fracgen.build import BuildConfig
    from fracgen.distribute import default_workers

    config = BuildConfig(preset=ofdb3d.NAME, categories=a.rate_categories, seed=a.seed + 1, points=a.points)
    start = time.perf_counter()
    records = ofdb3d.search_all(config, default_workers(), progress=True)
    attempts = sum(r["attempts"] for r in records)
    return {"categories": len(records), "attempts": attempts, "rate": len(records) / attempts,
            "wall": time.perf_counter() - start, "workers": default_workers()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--categories", type=int, default=20)
    p.add_argument("--views", type=int, default=ofdb3d.VIEWS)
    p.add_argument("--size", type=int, default=ofdb3d.SIZE)
    p.add_argument("--points", type=int, default=ofdb3d.POINT_NUM)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate-categories", type=int, default=0, help="also search this many categories alone")
    p.add_argument("--released-dir", help="3d-ofdb-generator/ of an OFDB checkout")
    p.add_argument("--released-python", help="the Python that runs the released scripts")
    p.add_argument("--work", help="keep the outputs in this new folder (default: a temporary one)")
    a = p.parse_args()
    if bool(a.released_dir) != bool(a.released_python):
        p.error("--released-dir and --released-python go together")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        if a.work and work.exists():
            p.error(f"--work {work} exists; give a new folder")
        work.mkdir(parents=True, exist_ok=True)
        load_at_start = load()
        ours = fracgen_side(a, work)
        cpu = cmp = None
        if a.released_dir:
            write_draws(a, ours["classes"], work / "draws")
            cpu = released_side(a, work)
            cmp = compare(a, ours["classes"], work)
        report(a, ours, cpu, cmp, acceptance(a), load_at_start)
        print(f"- load average at end: {load()}")


if __name__ == "__main__":
    main()
