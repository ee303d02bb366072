"""1p-frac: CPU per accepted image and per render of the released generator against fracgen's build, in one run.

Run:
    python benchmarks/bench_released.py [--L 1000]
    python benchmarks/bench_released.py --released DIR [--images 5] [--identity 5] [--own-stream]

The released generator is not restated here: it runs from the user's own checkout of
https://github.com/SUPER-TADORY/1p-frac (``git clone https://github.com/SUPER-TADORY/1p-frac && git -C 1p-frac
checkout 413d318``), its script ``1p-frac_generater/src/render_from_oneparam_mp.py`` whole (``runpy``, as
``__main__``) with ``--img_basesavedir TMP --sigma S --delta D --sample N`` and its defaults otherwise (512 px,
100,000 points, patch masks, fill threshold 0.05, N = 2 maps). Its ``generate_image`` (perturb, ``ifs_function``'s
chaos game, ``draw_patch``'s 3 x 3 patches pasted with Pillow, the fill check, the flip, the PNG saved to disk,
a rejected class's folder removed and the class drawn again) runs as released. Three things around it are
replaced, so that it draws fracgen's images on one core:

- ``utils.sample_system`` (the base fractal): returns fracgen's base system of the same build (its maps as the
  released (N, 2, 3) array; the script computes the map probabilities from it itself). ``utils`` is not
  imported, so its ``cv2`` import is not needed.
- ``multiprocessing.Pool``: a serial stand-in that calls the script's task function for each class in order in
  this process (one core), and tells the feed below which class is being drawn.
- the random sources: the script's ``random`` is a ``random.Random`` subclass whose ``random()`` and
  ``getrandbits()`` hand out fracgen's draws for that class, so the released ``uniform`` (the six weights per
  map) and ``randrange(1, 512)`` (one patch mask per point) run CPython's own code on them and give fracgen's
  values to the bit; a redraw after a rejected render gets fracgen's next draw of that class. ``numpy.random.seed``
  and ``numpy.random.random`` (the released map choices, ``np.random.seed(100)`` per render) hand out fracgen's
  map-choice uniforms. The fed values are prepared lazily; their CPU is measured and taken off the released time.
  The CPU of one ``randrange(1, 512)`` call, CPython's and the stand-in's, is printed. ``--own-stream`` also runs
  the script on its own ``random`` and ``np.random.seed(100)`` (other images) as a cost check.

fracgen: ``build()`` of ``--L`` classes (sigma, Delta as given, everything else default) on one worker in this
process after a warm-up build (JIT, numba cache), and the whole ``fracgen build`` command of the same, CPU per
image (its search, redraws, PNG encoding, shards and records included) and per render (images + redraws). The
released images are compared pixel by pixel with the build's images of the same classes (``--identity``).
All times are CPU time (``time.process_time``; children's rusage for the command).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import random as _real_random
import runpy
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import numpy.random  # noqa: F401 - imported before the stand-in replaces `random`
from machine import REPO, children_cpu, header, load
from PIL import Image
from released import checkout_commit, find_script, uniform_r

sys.path.insert(0, str(REPO))
from fracgen import dataset  # noqa: E402
from fracgen.build import build  # noqa: E402
from fracgen.config import BuildConfig  # noqa: E402
from fracgen.dataset.samples import decode_grey  # noqa: E402
from fracgen.dataset.shards import iter_shard  # noqa: E402
from fracgen.seeds import CLASS, choice_uniforms, draw_masks, generator  # noqa: E402

RELEASED_REPO, RELEASED_COMMIT = "https://github.com/SUPER-TADORY/1p-frac", "413d318"
SCRIPT = Path("1p-frac_generater/src/render_from_oneparam_mp.py")
POINTS = 100_000  # the released --iteration default; fracgen's --points default


class FedRandom(_real_random.Random):
    """The released script's ``random``: fracgen's draws of the class being drawn, through CPython's own code.

    A render asks for 6 weights per map (``uniform(1 - D, 1 + D)``, one ``random()`` each), then one patch mask
    per point (``randrange(1, 512)``: one ``getrandbits(9)``, which gets the mask - 1). The next ``random()`` after
    a render's weights starts the class's next try, as fracgen redraws: perturbation, then masks, from the class's
    generator. Anything asked before a class begins (the script's random folder name) comes from a seeded stream.
    """

    def __init__(self, seed: int, maps: int, delta: float):
        self._seed, self._maps, self._delta = seed, maps, delta
        self._weights: list[float] = []
        self._masks = None
        self._rng = None
        self._plain = _real_random.Random(seed)
        self.renders = 0
        self.feed_cpu = 0.0
        super().__init__(seed)

    def begin(self, label: int) -> None:
        """Class ``label`` (fractal 0, perturbation ``label``) is drawn next."""
        self._rng = generator(self._seed, CLASS, 0, label)
        self._weights, self._masks = [], None

    def _next_try(self) -> None:
        t0 = time.process_time()
        d = self._delta
        weights = 1.0 + self._rng.uniform(-d, d, (self._maps, 6))  # fracgen.perturb's multiplicative rule
        masks = draw_masks(self._rng, POINTS)
        self._weights = [uniform_r(1 - d, 1 + d, w) for w in reversed(weights.ravel().tolist())]
        self._masks = iter((masks.astype(np.int64) - 1).tolist())
        self.renders += 1
        self.feed_cpu += time.process_time() - t0

    def random(self) -> float:
        if self._rng is None:
            return self._plain.random()
        if not self._weights:
            self._next_try()
        return self._weights.pop()

    def getrandbits(self, k: int) -> int:
        if self._masks is None:
            return self._plain.getrandbits(k)
        return next(self._masks)


def random_module(source: _real_random.Random) -> types.ModuleType:
    """A ``random`` module whose functions are ``source``'s methods, as the real module's are its instance's."""
    module = types.ModuleType("random")
    module.__dict__.update({k: v for k, v in vars(_real_random).items() if not k.startswith("__")})
    for name in ("random", "uniform", "randrange", "randint", "choice", "choices", "shuffle", "sample", "seed",
                 "getrandbits", "gauss", "expovariate"):
        setattr(module, name, getattr(source, name))
    return module


class SerialPool:
    """``multiprocessing.Pool`` for the script: its tasks run in this process, in order, on one core."""

    def __init__(self, feed: FedRandom | None):
        self.feed = feed

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, tasks, chunksize=None):
        out = []
        for task in tasks:
            if self.feed is not None:
                self.feed.begin(task[4])  # generate_image(img_savedir, shapename, params, args, sample)
            out.append(fn(task))
        return out


def utils_module(maps: np.ndarray, sigma: float) -> types.ModuleType:
    """The released ``utils`` with ``sample_system`` answering fracgen's base system as a (N, 2, 3) array."""
    m = np.empty((len(maps), 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = maps[:, 0], maps[:, 1], maps[:, 2], maps[:, 3]
    m[:, 0, 2], m[:, 1, 2] = maps[:, 4], maps[:, 5]
    module = types.ModuleType("utils")
    module.sample_system = lambda *args, **kwargs: (m.copy(), sigma)
    return module


class Renders:
    """Counts the script's renders by its ``np.random.seed(100)`` calls (one per render), the real one kept."""

    def __init__(self):
        self.count = 0
        self._seed = np.random.seed

    def seed(self, *args, **kwargs):
        self.count += 1
        self._seed(*args, **kwargs)


@contextlib.contextmanager
def numpy_random(uniforms: np.ndarray | None, renders: Renders):
    """During the script: ``np.random.seed`` counts renders; with ``uniforms`` it does nothing else and
    ``np.random.random(n)`` gives fracgen's map-choice uniforms (n - 1 of them, then one the released loop never
    reads); without, both are numpy's own."""
    saved = np.random.seed, np.random.random
    if uniforms is None:
        np.random.seed = renders.seed
    else:
        def seed(*args, **kwargs):
            renders.count += 1

        np.random.seed = seed
        np.random.random = lambda size=None: np.concatenate([uniforms[: size - 1], [0.5]]) if size else saved[1]()
    try:
        yield
    finally:
        np.random.seed, np.random.random = saved


def run_released(script: Path, args, base: dict, out_dir: Path, own_stream: bool = False) -> dict:
    """The whole released script on fracgen's base system (and draws, unless ``own_stream``): CPU seconds."""
    maps = np.asarray(base["maps"], dtype=np.float64)
    feed = None if own_stream else FedRandom(args.seed, len(maps), args.delta)
    renders = Renders()
    argv = [str(script), "--img_basesavedir", str(out_dir), "--sigma", str(args.sigma), "--delta", str(args.delta),
            "--sample", str(args.images)]
    saved = sys.argv, sys.modules["random"], multiprocessing.Pool, list(sys.path)
    stashed = {name: sys.modules.pop(name) for name in ("utils", "ifs_function") if name in sys.modules}
    sys.argv = argv
    if feed is not None:
        sys.modules["random"] = random_module(feed)
    sys.modules["utils"] = utils_module(maps, float(base["sigma"]))
    multiprocessing.Pool = SerialPool(feed)
    sys.path.insert(0, str(script.parent))
    uniforms = None if own_stream else choice_uniforms(args.seed, 0, POINTS)
    try:
        with numpy_random(uniforms, renders), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            start = time.process_time()
            namespace = runpy.run_path(str(script), run_name="__main__")
            total = time.process_time() - start
    finally:
        sys.argv, sys.modules["random"], multiprocessing.Pool, sys.path[:] = saved
        for name in ("utils", "ifs_function"):
            sys.modules.pop(name, None)
        sys.modules.update(stashed)
    pngs = sorted(out_dir.glob("*/*/*.png"))
    if len(pngs) != args.images:
        raise SystemExit(f"the released script left {len(pngs)} images in {out_dir}, expected {args.images}")
    if feed is not None and feed.renders != renders.count:
        raise SystemExit(f"the feed prepared {feed.renders} renders, the script seeded {renders.count}")
    probs = namespace["calc_p"](utils_module(maps, 0.0).sample_system()[0])[:, 6]
    feed_cpu = feed.feed_cpu if feed else 0.0
    return {"cpu": total - feed_cpu, "feed_cpu": feed_cpu, "renders": renders.count,
            "pngs": {int(p.parent.name): p for p in pngs},
            "probs_diff": float(np.max(np.abs(probs - np.asarray(base["probabilities"]))))}


def randrange_ns() -> tuple[float, float]:
    """CPU ns per ``randrange(1, 512)``: CPython's, and the stand-in's (CPython's code over fed getrandbits)."""
    feed = FedRandom(0, 2, 0.1)
    feed.begin(0)
    feed._next_try()
    n, res = 50_000, []
    for fed, fn in ((False, _real_random.Random(0).randrange), (True, feed.randrange)):
        best = math.inf
        for _ in range(3):
            if fed:
                feed._masks = iter([0] * n)
            t0 = time.process_time()
            for _ in range(n):
                fn(1, 512)
            best = min(best, time.process_time() - t0)
        res.append(best / n * 1e9)
    return res[0], res[1]


def fracgen_build(args, tmp: Path) -> dict:
    """CPU of ``build()`` in this process (one worker, warm) and of the whole ``fracgen build`` command."""
    config = BuildConfig(sigma=args.sigma, delta=args.delta, L=args.L, seed=args.seed)
    build(BuildConfig(sigma=args.sigma, delta=args.delta, L=16, seed=args.seed), tmp / "warm", workers=1)
    start, start_children = time.process_time(), children_cpu()
    build(config, tmp / "api", workers=1)
    cpu = time.process_time() - start + children_cpu() - start_children
    params = json.loads((tmp / "api" / dataset.PARAMS_JSON).read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "fracgen.cli", "build", "--sigma", str(args.sigma), "--delta", str(args.delta),
               "--L", str(args.L), "--seed", str(args.seed), "--workers", "1", str(tmp / "cli")]
    start = children_cpu()
    subprocess.run(command, env=env, check=True, capture_output=True)
    whole = children_cpu() - start
    return {"cpu": cpu, "command": whole, "redraws": params["total_redraws"], "base": params["systems"][0],
            "root": tmp / "api"}


def fracgen_images(root: Path, labels: int) -> dict[int, np.ndarray]:
    """The build's images of classes 0 .. labels - 1 (one image per class)."""
    found = {}
    for shard in sorted(root.glob(dataset.SHARD_GLOB)):
        for sample in iter_shard(shard):
            label = int(sample["cls"])
            if label < labels:
                found[label] = decode_grey(sample["png"])
    return found


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--released", metavar="DIR", help=f"checkout of {RELEASED_REPO}")
    ap.add_argument("--images", type=int, default=5, help="classes the released script draws (accepted images)")
    ap.add_argument("--identity", type=int, default=None, help="released images compared pixel by pixel "
                    "[default: all]")
    ap.add_argument("--L", type=int, default=1000, help="classes of fracgen's timed build")
    ap.add_argument("--sigma", type=float, default=3.5)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--own-stream", action="store_true",
                    help="also run the released script on its own random streams (other images), as a cost check")
    args = ap.parse_args(argv)
    args.identity = args.images if args.identity is None else args.identity
    if args.images < 1 or args.L < 1 or not 0 <= args.identity <= args.images:
        ap.error("--images and --L must be >= 1, --identity in [0, --images]")
    if args.released and args.L < args.identity:
        ap.error("--L must be at least --identity: the released classes are compared with the build's")
    script = find_script(args.released, SCRIPT, "--released") if args.released else None

    print(header(f"1p-frac: CPU per accepted image and per render, sigma {args.sigma}, Delta {args.delta}, 512 px, "
                 f"{POINTS:,} points, seed {args.seed}, one core"))
    print(f"- command: `python benchmarks/bench_released.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    if script:
        print(f"- released: {script} @ {checkout_commit(script)}")
        real_ns, fed_ns = randrange_ns()
        print(f"- randrange(1, 512), CPU per call: CPython {real_ns:.0f} ns, the stand-in {fed_ns:.0f} ns")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fg = fracgen_build(args, tmp)
        fg_renders = args.L + fg["redraws"]
        rows = [("fracgen build() in-process", fg["cpu"], args.L, fg_renders),
                ("fracgen build, whole command", fg["command"], args.L, fg_renders)]
        rel = own = None
        if script:
            rel = run_released(script, args, fg["base"], tmp / "released")
            if args.own_stream:
                own = run_released(script, args, fg["base"], tmp / "own", own_stream=True)
            theirs = fracgen_images(fg["root"], args.identity)
            same = sum(_same(rel["pngs"][k], theirs[k]) for k in range(args.identity))
    print("| generator | images | renders | CPU s | CPU ms per accepted image | CPU ms per render |")
    print("|---|---:|---:|---:|---:|---:|")
    if rel:
        print(f"| released script (fracgen's draws) | {args.images} | {rel['renders']} | {rel['cpu']:.2f} | "
              f"{rel['cpu'] / args.images * 1e3:,.0f} | {rel['cpu'] / rel['renders'] * 1e3:,.0f} |")
    for name, cpu, images, renders in rows:
        print(f"| {name} | {images:,} | {renders:,} | {cpu:.2f} | {cpu / images * 1e3:.2f} | {cpu / renders * 1e3:.2f} |")
    if rel:
        print("\nRatios, released / fracgen, this run:\n")
        print("| fracgen | per accepted image | per render |")
        print("|---|---:|---:|")
        for name, cpu, images, renders in rows:
            print(f"| {name} | {rel['cpu'] / args.images / (cpu / images):,.0f}x | "
                  f"{rel['cpu'] / rel['renders'] / (cpu / renders):,.0f}x |")
        print(f"\nPixel-identical: {same}/{args.identity} released images equal the build's image of the same class "
              f"(R = G = B, and the grey equal to fracgen's). The map probabilities the released script computes "
              f"from the fed base system (np.linalg.det) differ from fracgen's by at most {rel['probs_diff']:.1e}.")
        print(f"Released: the whole script's CPU, less the CPU of preparing the fed values "
              f"({rel['feed_cpu'] / rel['renders'] * 1e3:.1f} ms per render).")
        if own:
            print(f"\nCost check, the released script on its own random streams (other images): "
                  f"{own['renders']} renders for {args.images} images, {own['cpu'] / args.images * 1e3:,.0f} ms per "
                  f"accepted image, {own['cpu'] / own['renders'] * 1e3:,.0f} ms per render.")
    else:
        print(f"\nNo --released checkout given: fracgen's figures only. To compare, check out the released "
              f"generator and pass its folder:\n\n    git clone {RELEASED_REPO} && git -C 1p-frac checkout "
              f"{RELEASED_COMMIT}\n    python benchmarks/bench_released.py --released 1p-frac")
    print(f"\nload average at end (1 / 5 / 15 min): {load()}")


def _same(path: Path, grey: np.ndarray) -> bool:
    """The released RGB PNG has R = G = B = fracgen's grey image."""
    rgb = np.asarray(Image.open(path))
    return bool(rgb.ndim == 3 and rgb.shape[:2] == grey.shape and (rgb == grey[:, :, None]).all())


if __name__ == "__main__":
    main()
