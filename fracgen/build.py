"""The plan of a build and one shard's job.

The plan is pure data computed once in the parent: the base systems, which samples go in which shard, and
the seeds (derived from ``(seed, fractal, perturbation)``). Workers only execute shards of it, so the bytes of a
shard do not depend on the worker count, the shard range or the order shards finish in.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

import fracgen
from fracgen import perturb as perturb_mod
from fracgen import render, shards
from fracgen.encode import encode_png
from fracgen.errors import FracgenError, UsageError
from fracgen.search import CLASS, System, choice_uniforms, draw_masks, generator, search

log = logging.getLogger(__name__)

ORDER = 3  # purpose of the generator that spreads classes across shards


@dataclass(frozen=True)
class BuildConfig:
    """Every option that decides the bytes of a build (the worker count does not).

    Attributes:
        sigma: target sigma-factor of the base systems, 0 < sigma <= 3 * maps.
        delta: perturbation degree Delta >= 0.
        L: perturbation classes per fractal, >= 1.
        maps: affine maps N per system.
        fractals: base systems C; every (fractal, perturbation) pair is its own class.
        perturbation: "multiplicative" (released code, default) or "additive" (paper Eq. 9).
        style: "reference" (released look) or "points".
        size: image side in pixels.
        points: chaos-game points per image.
        min_fill: lit fraction every image must reach.
        margin: the sigma target is drawn from U(sigma - margin, sigma + margin).
        seed: the build's seed (>= 0).
        shard_size: samples per shard.
        max_redraws: redraws of a failing perturbation before the build stops.
        max_attempts: systems drawn per fractal by the search before it gives up.
        params_source: "search", or "file" when the systems came from --params.
    """

    sigma: float = 3.5
    delta: float = 0.1
    L: int = 1000
    maps: int = 2
    fractals: int = 1
    perturbation: str = "multiplicative"
    style: str = "reference"
    size: int = 512
    points: int = 100_000
    min_fill: float = 0.05
    margin: float = 0.1
    seed: int = 0
    shard_size: int = 100
    max_redraws: int = 100
    max_attempts: int = 1000
    params_source: str = "search"

    @property
    def num_classes(self) -> int:
        return self.fractals * self.L

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_classes / self.shard_size)

    def validate(self) -> None:
        """Raise UsageError naming the first option outside its allowed range."""
        checks = [
            ("--maps", self.maps >= 1, f"must be >= 1, got {self.maps}"),
            ("--sigma", math.isfinite(self.sigma) and 0 < self.sigma <= 3 * self.maps,
             f"must be in (0, {3 * self.maps}] for {self.maps} maps (sigma <= 3N), got {self.sigma}"),
            ("--delta", math.isfinite(self.delta) and self.delta >= 0, f"must be a number >= 0, got {self.delta}"),
            ("--L", self.L >= 1, f"must be >= 1, got {self.L}"),
            ("--fractals", self.fractals >= 1, f"must be >= 1, got {self.fractals}"),
            ("--perturbation", self.perturbation in perturb_mod.MODES,
             f"must be one of {', '.join(perturb_mod.MODES)}, got {self.perturbation!r}"),
            ("--style", self.style in render.STYLES, f"must be one of {', '.join(render.STYLES)}, got {self.style!r}"),
            ("--size", self.size >= render.MIN_SIZE,
             f"must be >= {render.MIN_SIZE} to leave the {render.PAD}-pixel margins, got {self.size}"),
            ("--points", self.points >= 1, f"must be >= 1, got {self.points}"),
            ("--min-fill", 0 <= self.min_fill <= 1, f"must be in [0, 1], got {self.min_fill}"),
            ("--seed", self.seed >= 0, f"must be >= 0, got {self.seed}"),
            ("--shard-size", self.shard_size >= 1, f"must be >= 1, got {self.shard_size}"),
        ]
        for option, ok, message in checks:
            if not ok:
                raise UsageError(f"{option} {message}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BuildConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def command(self, out: str = "OUT") -> str:
        """The CLI command that rebuilds these bytes (with params.json beside it when the systems came from a file)."""
        defaults = BuildConfig()
        parts = ["fracgen", "build"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "params_source":
                if value == "file":
                    parts += ["--params", "params.json"]
                continue
            if f.name in ("sigma", "delta", "L", "seed") or value != getattr(defaults, f.name):
                parts += [f"--{f.name.replace('_', '-')}", str(value)]
        return shlex.join([*parts, out])


@dataclass
class Plan:
    """What a build makes: the base systems and the samples of every shard (pure data, picklable)."""

    config: BuildConfig
    systems: list[System]
    shard_samples: list[list[int]] = field(default_factory=list)


def make_plan(config: BuildConfig, systems: list[System] | None = None) -> Plan:
    """Search the base systems (unless given) and spread the samples across shards in a seeded order.

    Args:
        config: a validated configuration.
        systems: base systems read from a params file, one per fractal.

    Returns:
        The plan. Samples are numbered in label order; shards hold them sorted.
    """
    if systems is None:
        systems = [
            search(config.sigma, maps=config.maps, seed=config.seed, fractal=f, margin=config.margin,
                   min_fill=config.min_fill, size=config.size, points=config.points, style=config.style,
                   max_attempts=config.max_attempts)
            for f in range(config.fractals)
        ]
    if len(systems) != config.fractals:
        raise UsageError(f"--params holds {len(systems)} systems but --fractals is {config.fractals}")
    order = generator(config.seed, ORDER).permutation(config.num_classes)
    chunks = [sorted(order[i: i + config.shard_size].tolist()) for i in range(0, len(order), config.shard_size)]
    return Plan(config=config, systems=systems, shard_samples=chunks)


@lru_cache(maxsize=8)
def _uniforms(seed: int, fractal: int, points: int) -> np.ndarray:
    return choice_uniforms(seed, fractal, points)


def render_class(plan: Plan, label: int, canvas: render.Canvas) -> dict:
    """Draw class ``label``'s perturbation, redrawing while it diverges or under-fills, and render it.

    Args:
        plan: the build's plan.
        label: class index, fractal * L + perturbation.
        canvas: buffers; ``canvas.image`` holds the image afterwards.

    Returns:
        The sample's metadata: label, fractal, perturbation, maps, redraws, fill.

    Raises:
        FracgenError: no acceptable perturbation within ``max_redraws`` redraws.
    """
    cfg = plan.config
    fractal, k = divmod(label, cfg.L)
    base = plan.systems[fractal]
    rng = generator(cfg.seed, CLASS, fractal, k)
    uniforms = _uniforms(cfg.seed, fractal, cfg.points)
    for redraws in range(cfg.max_redraws + 1):
        maps = perturb_mod.perturb(base.maps, cfg.delta, cfg.perturbation, rng)
        masks = draw_masks(rng, cfg.points) if cfg.style == "reference" else None
        fill = render.render(maps, base.probabilities, uniforms, masks, canvas.image, canvas.points, cfg.style)
        if fill >= cfg.min_fill:
            return {"label": label, "fractal": fractal, "perturbation": k, "maps": maps.tolist(),
                    "redraws": redraws, "fill": fill}
    raise FracgenError(
        f"class {label} (fractal {fractal}, perturbation {k}): no perturbation with a finite chaos game and fill "
        f">= {cfg.min_fill} in {cfg.max_redraws + 1} draws; lower --delta or --min-fill"
    )


_LEVELS = np.array([0, render.VALUE], np.uint8)


def run_shard(plan: Plan, shard: int, root: Path) -> dict:
    """Render, encode and write one shard, then its completion marker.

    Args:
        plan: the build's plan.
        shard: shard index.
        root: dataset folder.

    Returns:
        The shard's marker: filename, num_samples, sha256, bytes, seconds, samples (their metadata).
    """
    start = time.perf_counter()
    canvas = render.Canvas(plan.config.size, plan.config.points)
    metas = []

    def samples():
        for label in plan.shard_samples[shard]:
            meta = render_class(plan, label, canvas)
            metas.append(meta)
            record = {k: meta[k] for k in ("label", "fractal", "perturbation", "maps", "redraws")}
            yield {
                "__key__": f"{label:08d}",
                "png": encode_png(canvas.image, _LEVELS),
                "cls": str(label).encode(),
                "json": json.dumps(record, sort_keys=True).encode(),
            }

    sha256, count, size = shards.write_shard(root, shard, samples())
    marker = {"shard": shard, "filename": shards.shard_name(shard), "num_samples": count, "sha256": sha256,
              "bytes": size, "seconds": round(time.perf_counter() - start, 4), "samples": metas}
    shards.write_atomic(shards.marker_path(root, shard), shards.dump_json(marker))
    return marker


def versions() -> dict:
    import numba

    return {"fracgen": fracgen.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__}


def write_metadata(root: Path, plan: Plan, markers: list[dict], timing: dict) -> dict:
    """Write params.json, _info.json and, last, build.json (its presence marks a complete build)."""
    cfg = plan.config
    classes = sorted((s for m in markers for s in m["samples"]), key=lambda s: s["label"])
    params = {
        "systems": [dict(s.to_json(), fractal=f) for f, s in enumerate(plan.systems)],
        "classes": classes,
        "total_redraws": sum(c["redraws"] for c in classes),
    }
    shard_rows = [{k: m[k] for k in ("filename", "num_samples", "sha256", "bytes")} for m in markers]
    name = f"1p-frac-sigma{cfg.sigma}-delta{cfg.delta}-L{cfg.L}" if cfg.fractals == 1 else \
        f"fractals{cfg.fractals}-sigma{cfg.sigma}-delta{cfg.delta}-L{cfg.L}"
    build = {
        "name": name,
        "config": cfg.to_json(),
        "command": cfg.command(),
        "versions": versions(),
        "num_samples": sum(r["num_samples"] for r in shard_rows),
        "num_classes": cfg.num_classes,
        "total_redraws": params["total_redraws"],
        "shards": shard_rows,
        "timing": timing,
    }
    shards.write_atomic(root / "params.json", shards.dump_json(params))
    shards.write_atomic(root / "_info.json", shards.dump_json(shards.info_json(name, cfg.num_classes, shard_rows)))
    shards.write_atomic(root / "build.json", shards.dump_json(build))
    return build


def inspect_output(root: Path, *, resume: bool, overwrite: bool) -> BuildConfig | None:
    """Check the output folder before anything is written (reads only).

    Returns:
        The stored config of the build being resumed, or None for a fresh build.

    Raises:
        UsageError: the folder is not empty (and neither flag allows it), or is not a fracgen build.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one")
    if root.exists() and not root.is_dir():
        raise UsageError(f"output {root} exists and is not a folder")
    stored = stored_config(root)
    occupied = root.exists() and any(root.iterdir())
    if resume:
        if stored is None and occupied:
            raise UsageError(f"{root} holds no fracgen build to resume (no {shards.INTERNAL}/config.json)")
        return stored
    if occupied:
        if not overwrite:
            raise UsageError(f"output folder {root} is not empty; pass --resume to finish it or --overwrite to replace it")
        if stored is None and not (root / "build.json").is_file():
            raise UsageError(f"--overwrite refuses to delete {root}: it is not a fracgen build")
    return None


def clear_output(root: Path) -> None:
    """Delete a previous build's files (``inspect_output`` has checked that it is one)."""
    if root.is_dir():
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def check_writable(root: Path) -> None:
    """Create the folder and probe it, so an unwritable output fails before any work."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / shards.INTERNAL / "stats").mkdir(parents=True, exist_ok=True)
        probe = root / shards.INTERNAL / ("probe" + shards.TMP_SUFFIX)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output folder {root} cannot be written: {e.strerror or e}") from None


@dataclass
class BuildResult:
    """What a call of ``build`` did.

    Attributes:
        root: the dataset folder.
        complete: True when every shard is complete and build.json was written.
        built: shards this call rendered.
        skipped: shards already complete (resume).
        num_shards: shards in the whole build.
        seconds: wall time of this call.
        images: images this call rendered.
    """

    root: Path
    complete: bool
    built: list[int]
    skipped: list[int]
    num_shards: int
    seconds: float
    images: int


def load_systems(path: Path) -> list[System]:
    """Base systems from a params file: one system (``fracgen search``) or ``{"systems": [...]}`` (params.json)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--params {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise UsageError(f"--params {path}: not valid JSON ({e})") from None
    items = data.get("systems") if isinstance(data, dict) and "systems" in data else [data]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise UsageError(f"--params {path}: expected a system object or {{\"systems\": [...]}}")
    try:
        return [System.from_json(item) for item in items]
    except UsageError as e:
        raise UsageError(f"--params {path}: {e}") from None


def check_systems(systems: list[System], config: BuildConfig) -> None:
    """Refuse base systems whose chaos game diverges or whose render is empty under this config."""
    canvas = render.Canvas(config.size, config.points)
    for f, system in enumerate(systems):
        rng = generator(config.seed, CLASS, f, -1 % 2**32)
        masks = draw_masks(rng, config.points)
        fill = render.render(system.maps, system.probabilities, _uniforms(config.seed, f, config.points), masks,
                             canvas.image, canvas.points, config.style)
        if fill < 0:
            raise UsageError(f"--params: system {f} diverges (its chaos game leaves the finite numbers)")
        if fill < config.min_fill:
            raise UsageError(f"--params: system {f} fills {fill:.4f} of the image, under --min-fill {config.min_fill}")


def stored_config(root: str | Path) -> BuildConfig | None:
    """The options of the build in ``root``, or None when it holds none."""
    path = Path(root) / shards.INTERNAL / "config.json"
    return BuildConfig.from_json(json.loads(path.read_text())) if path.is_file() else None


def build(
    config: BuildConfig | None,
    out: str | Path,
    *,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    shard_range: tuple[int, int] | None = None,
    params: str | Path | None = None,
    progress: bool = False,
) -> BuildResult:
    """Build a dataset: search (or read) the base systems, then render and write every shard.

    Args:
        config: the options that decide the bytes; None with ``resume`` takes the stored ones.
        out: dataset folder; must be empty or absent unless ``resume`` or ``overwrite``.
        workers: processes (default: all cores). Does not change a single byte.
        resume: finish an interrupted build in ``out``, with its stored options; complete shards whose checksum
            verifies are kept, anything else is rebuilt.
        overwrite: replace a previous fracgen build in ``out``.
        shard_range: build only shards [i, j); metadata is written once every shard is complete.
        params: a params file with the base systems instead of searching.
        progress: show a progress bar.

    Returns:
        What was built.

    Raises:
        UsageError: bad options or output folder (nothing is written).
        FracgenError: the build failed part-way (a full disk, a dead worker): rerun with ``resume``.
    """
    start = time.perf_counter()
    root = Path(out)
    stored = inspect_output(root, resume=resume, overwrite=overwrite)
    systems = None
    if stored is not None:
        if config is not None and config != stored:
            diff = [f"--{k.replace('_', '-')} {v} (stored {stored.to_json()[k]})"
                    for k, v in config.to_json().items() if stored.to_json()[k] != v]
            raise UsageError(f"options differ from the build being resumed in {root}: {', '.join(diff)}")
        config = stored
        systems_file = root / shards.INTERNAL / "systems.json"
        if systems_file.is_file():
            systems = load_systems(systems_file)
    elif config is None:
        raise UsageError(f"{root} holds no build to resume; give the build's options")
    elif params is not None:
        systems = load_systems(Path(params))
        config = BuildConfig(**{**config.to_json(), "params_source": "file"})
    config.validate()
    if systems is not None:
        check_systems(systems, config)
    if shard_range is not None:
        i, j = shard_range
        if not 0 <= i < j <= config.num_shards:
            raise UsageError(f"--shard-range {i}:{j} must satisfy 0 <= i < j <= {config.num_shards} (the shard count)")
    search_start = time.perf_counter()
    plan = make_plan(config, systems)
    search_seconds = time.perf_counter() - search_start
    if overwrite:
        clear_output(root)
    check_writable(root)
    shards.remove_partials(root)
    shards.write_atomic(root / shards.INTERNAL / "config.json", shards.dump_json(config.to_json()))
    shards.write_atomic(root / shards.INTERNAL / "systems.json",
                        shards.dump_json({"systems": [s.to_json() for s in plan.systems]}))
    wanted = range(*shard_range) if shard_range else range(config.num_shards)
    markers = {s: m for s in range(config.num_shards) if (m := shards.read_marker(root, s)) is not None}
    todo = [s for s in wanted if s not in markers]
    skipped = [s for s in wanted if s in markers]
    if todo:
        (root / "build.json").unlink(missing_ok=True)  # the build is incomplete until every shard is
    render_start = time.perf_counter()
    job = _ShardJob(plan, root)
    from fracgen.distribute import default_workers, run_shards

    for marker in run_shards(job, todo, [len(plan.shard_samples[s]) for s in todo],
                             workers or default_workers(), progress):
        markers[marker["shard"]] = marker
    render_seconds = time.perf_counter() - render_start
    images = sum(len(plan.shard_samples[s]) for s in todo)
    complete = len(markers) == config.num_shards
    if complete:
        ordered = [markers[s] for s in range(config.num_shards)]
        timing = {
            "search_seconds": round(search_seconds, 4),
            "render_seconds_this_call": round(render_seconds, 4),
            "shard_seconds_total": round(sum(m["seconds"] for m in ordered), 4),
            "images_this_call": images,
            "wall_seconds_this_call": round(time.perf_counter() - start, 4),
            "workers": workers or default_workers(),
        }
        write_metadata(root, plan, ordered, timing)
    return BuildResult(root=root, complete=complete, built=todo, skipped=skipped, num_shards=config.num_shards,
                       seconds=time.perf_counter() - start, images=images)


@dataclass
class _ShardJob:
    """A picklable ``shard -> marker`` callable for the distributor."""

    plan: Plan
    root: Path

    def __call__(self, shard: int) -> dict:
        return run_shard(self.plan, shard, self.root)
