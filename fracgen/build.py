"""The plan of a build and one shard's job.

The plan is pure data computed once in the parent: the base systems, which samples go in which shard, and
the seeds (derived from ``(seed, fractal, perturbation)``). Workers only execute shards of it, so the bytes of a
shard do not depend on the worker count, the shard range or the order shards finish in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

import fracgen
from fracgen import perturb as perturb_mod
from fracgen import presets, render, shards
from fracgen.encode import encode_png
from fracgen.errors import UsageError
from fracgen.presets import render_sample
from fracgen.search import CHECK, ORDER, System, choice_uniforms, draw_masks, generator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """Every option that decides the bytes of a build (the worker count does not).

    Attributes:
        preset: one of ``presets.PRESETS``; "1p-frac" by default.
        sigma: target sigma-factor of the base systems, 0 < sigma <= 3 * maps.
        delta: perturbation degree Delta >= 0.
        L: perturbation classes per fractal (or per noise / real image), >= 1.
        maps: affine maps N per system.
        fractals: base systems C (1p-frac: every (fractal, perturbation) pair is a class; FractalDB/OFDB:
            every system is a class).
        instances: images per class (FractalDB: up to 1,000, default 1,000; every other preset: 1).
        perturbation: "multiplicative" (released code, default) or "additive" (paper Eq. 9).
        style: "reference" (released look) or "points".
        size: image side in pixels.
        points: chaos-game points per image.
        min_fill: lit fraction every image must reach (default 0.05; FractalDB and OFDB 0.2).
        margin: the sigma target is drawn from U(sigma - margin, sigma + margin).
        seed: the build's seed (>= 0).
        shard_size: samples per shard.
        max_redraws: redraws of a failing perturbation before the build stops.
        max_attempts: systems drawn per fractal by the search before it gives up.
        params_source: "search", or "file" when the systems came from --params.
        source: real-image preset: the source image's file name inside the dataset folder.
        source_sha256: real-image preset: the source image's checksum.
        edges: real-image preset: "canny" or "none".
        color: real-image preset: "grey" or "rgb".
        transform: real-image preset: "affine", "elastic" or "polynomial".
    """

    preset: str = "1p-frac"
    sigma: float = 3.5
    delta: float = 0.1
    L: int = 1000
    maps: int = 2
    fractals: int = 1
    instances: int | None = None
    perturbation: str = "multiplicative"
    style: str = "reference"
    size: int = 512
    points: int = 100_000
    min_fill: float | None = None
    margin: float = 0.1
    seed: int = 0
    shard_size: int = 100
    max_redraws: int = 100
    max_attempts: int = 1000
    params_source: str = "search"
    source: str = ""
    source_sha256: str = ""
    edges: str = "canny"
    color: str = "grey"
    transform: str = "affine"

    def __post_init__(self):
        fractaldb = self.preset in ("fractaldb", "ofdb")
        if self.min_fill is None:
            object.__setattr__(self, "min_fill", presets.FRACTALDB_MIN_FILL if fractaldb else 0.05)
        if self.instances is None:
            object.__setattr__(self, "instances", presets.FRACTALDB_GRID if self.preset == "fractaldb" else 1)

    @property
    def num_classes(self) -> int:
        if self.preset == "1p-frac":
            return self.fractals * self.L
        if self.preset in ("fractaldb", "ofdb"):
            return self.fractals
        return self.L

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.instances

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def validate(self) -> None:
        """Raise UsageError naming the first option outside its allowed range."""
        checks = [
            (
                "--preset",
                self.preset in presets.PRESETS,
                f"must be one of {', '.join(presets.PRESETS)}, got {self.preset!r}",
            ),
            ("--maps", self.maps >= 1, f"must be >= 1, got {self.maps}"),
            (
                "--sigma",
                math.isfinite(self.sigma) and 0 < self.sigma <= 3 * self.maps,
                f"must be in (0, {3 * self.maps}] for {self.maps} maps (sigma <= 3N), got {self.sigma}",
            ),
            (
                "--delta",
                math.isfinite(self.delta) and self.delta >= 0,
                f"must be a number >= 0, got {self.delta}",
            ),
            ("--L", self.L >= 1, f"must be >= 1, got {self.L}"),
            ("--fractals", self.fractals >= 1, f"must be >= 1, got {self.fractals}"),
            (
                "--instances",
                1 <= self.instances <= (presets.FRACTALDB_GRID if self.preset == "fractaldb" else 1),
                f"must be in [1, {presets.FRACTALDB_GRID}] for fractaldb and 1 otherwise, got {self.instances}",
            ),
            (
                "--perturbation",
                self.perturbation in perturb_mod.MODES,
                f"must be one of {', '.join(perturb_mod.MODES)}, got {self.perturbation!r}",
            ),
            (
                "--style",
                self.style in render.STYLES,
                f"must be one of {', '.join(render.STYLES)}, got {self.style!r}",
            ),
            (
                "--size",
                self.size >= render.MIN_SIZE,
                f"must be >= {render.MIN_SIZE} to leave the {render.PAD}-pixel margins, got {self.size}",
            ),
            ("--points", self.points >= 1, f"must be >= 1, got {self.points}"),
            ("--min-fill", 0 <= self.min_fill <= 1, f"must be in [0, 1], got {self.min_fill}"),
            ("--seed", self.seed >= 0, f"must be >= 0, got {self.seed}"),
            ("--shard-size", self.shard_size >= 1, f"must be >= 1, got {self.shard_size}"),
            ("--edges", self.edges in ("canny", "none"), f"must be canny or none, got {self.edges!r}"),
            ("--color", self.color in ("grey", "rgb"), f"must be grey or rgb, got {self.color!r}"),
            (
                "--transform",
                self.transform in ("affine", "elastic", "polynomial"),
                f"must be affine, elastic or polynomial, got {self.transform!r}",
            ),
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
        """The CLI command that rebuilds these bytes (with params.json or the source image beside it)."""
        defaults = BuildConfig(preset=self.preset)
        relevant = presets.OPTIONS[self.preset]
        if self.preset == "real":
            parts = ["fracgen", "build-real", self.source or "IMAGE"]
        else:
            parts = ["fracgen", "build"] + (["--preset", self.preset] if self.preset != "1p-frac" else [])
        if self.params_source == "file":
            parts += ["--params", "params.json"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in relevant and (
                f.name in ("sigma", "delta", "L", "seed") or value != getattr(defaults, f.name)
            ):
                parts += [f"--{f.name.replace('_', '-')}", str(value)]
        return shlex.join([*parts, out])

    def name(self) -> str:
        """A short dataset name for _info.json and the card."""
        if self.preset == "1p-frac":
            head = "1p-frac" if self.fractals == 1 else f"{self.fractals}p-frac"
            return f"{head}-sigma{self.sigma}-delta{self.delta}-L{self.L}"
        if self.preset in ("fractaldb", "ofdb"):
            return f"{self.preset}-{self.fractals}" + (
                f"-x{self.instances}" if self.preset == "fractaldb" else ""
            )
        if self.preset == "real":
            return f"real-{self.transform}-{self.edges}-{self.color}-delta{self.delta}-L{self.L}"
        return f"{self.preset}-delta{self.delta}-L{self.L}"


@dataclass
class Plan:
    """What a build makes: the base systems and the samples of every shard (pure data, picklable).

    Attributes:
        config: the resolved options.
        systems: base systems (fractal presets).
        shard_samples: sample indices of every shard, sorted; label = index // instances.
        source: real-image preset: the path the source image is read from.
    """

    config: BuildConfig
    systems: list[System]
    shard_samples: list[list[int]] = field(default_factory=list)
    source: str = ""


def make_plan(config: BuildConfig, systems: list[System] | None = None, source: str = "") -> Plan:
    """Search the base systems (unless given) and spread the samples across shards in a seeded order.

    Args:
        config: a validated configuration.
        systems: base systems read from a params file, one per fractal.
        source: real-image preset: where to read the source image.

    Returns:
        The plan. Samples are numbered in label order; shards hold them sorted.
    """
    if systems is None:
        systems = presets.search_systems(config)
    expected = config.fractals if config.preset in presets.FRACTAL_PRESETS else 0
    if len(systems) != expected:
        raise UsageError(f"--params holds {len(systems)} systems but --fractals is {config.fractals}")
    order = generator(config.seed, ORDER).permutation(config.num_samples)
    chunks = [
        sorted(order[i : i + config.shard_size].tolist()) for i in range(0, len(order), config.shard_size)
    ]
    return Plan(config=config, systems=systems, shard_samples=chunks, source=source)


_LEVELS = np.array([0, render.VALUE], np.uint8)  # the fractal looks: known, so no histogram per image


def run_shard(plan: Plan, shard: int, root: Path) -> dict:
    """Render, encode and write one shard, then its completion marker.

    Args:
        plan: the build's plan.
        shard: shard index.
        root: dataset folder.

    Returns:
        The shard's marker: filename, num_samples, sha256, bytes, seconds, and (one image per class) the class
        records that params.json collects.
    """
    start = time.perf_counter()
    cfg = plan.config
    canvas = render.Canvas(cfg.size, cfg.points if cfg.preset in presets.FRACTAL_PRESETS else 1)
    levels = _LEVELS if cfg.preset in presets.FRACTAL_PRESETS else None
    records = []

    def samples():
        presets.render_ahead(plan, plan.shard_samples[shard], canvas)
        for index in plan.shard_samples[shard]:
            image, meta = render_sample(plan, index, canvas)
            if cfg.instances == 1:
                records.append(meta)
            yield {
                "__key__": f"{index:08d}",
                "png": encode_png(image, levels),
                "cls": str(meta["label"]).encode(),
                "json": json.dumps({k: v for k, v in meta.items() if k != "fill"}, sort_keys=True).encode(),
            }

    sha256, count, size = shards.write_shard(root, shard, samples())
    marker = {
        "shard": shard,
        "filename": shards.shard_name(shard),
        "num_samples": count,
        "sha256": sha256,
        "bytes": size,
        "seconds": round(time.perf_counter() - start, 4),
        "samples": records,
    }
    shards.write_atomic(shards.marker_path(root, shard), shards.dump_json(marker))
    return marker


def versions() -> dict:
    import numba

    return {
        "fracgen": fracgen.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


def write_metadata(root: Path, plan: Plan, markers: list[dict], timing: dict) -> dict:
    """Write params.json, _info.json and, last, build.json (its presence marks a complete build)."""
    cfg = plan.config
    if cfg.instances == 1:
        classes = sorted((s for m in markers for s in m["samples"]), key=lambda s: s["label"])
    else:  # FractalDB: a class is its system; per-image records stay in the shards' json
        classes = [{"label": c, "fractal": c, "instances": cfg.instances} for c in range(cfg.num_classes)]
    params = {
        "preset": cfg.preset,
        "systems": [dict(s.to_json(), fractal=f) for f, s in enumerate(plan.systems)],
        "classes": classes,
        "total_redraws": sum(c.get("redraws", 0) for c in classes),
    }
    shard_rows = [{k: m[k] for k in ("filename", "num_samples", "sha256", "bytes")} for m in markers]
    name = cfg.name()
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
    shards.write_atomic(
        root / "_info.json", shards.dump_json(shards.info_json(name, cfg.num_classes, shard_rows))
    )
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
    # a folder holding only the internal folder is a build another shard range is just starting
    occupied = root.exists() and any(p.name != shards.INTERNAL for p in root.iterdir())
    if resume:
        stored = stored_config(root)
        if stored is None and occupied:
            raise UsageError(f"{root} holds no fracgen build to resume (no {shards.INTERNAL}/config.json)")
        return stored
    if occupied:
        if not overwrite:
            raise UsageError(f"output folder {root} is not empty; pass --resume to finish it or --overwrite to replace it")
        if not ((root / shards.INTERNAL / "config.json").is_file() or (root / "build.json").is_file()):
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
        probe = shards.tmp_path(root / shards.INTERNAL / "probe")
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
        raise UsageError(f'--params {path}: expected a system object or {{"systems": [...]}}')
    try:
        return [System.from_json(item) for item in items]
    except UsageError as e:
        raise UsageError(f"--params {path}: {e}") from None


def check_systems(systems: list[System], config: BuildConfig) -> None:
    """Refuse base systems whose chaos game diverges or whose render is empty under this config."""
    canvas = render.Canvas(config.size, config.points)
    for f, system in enumerate(systems):
        rng = generator(config.seed, CHECK, f)
        masks = draw_masks(rng, config.points)
        fill = render.render(
            system.maps,
            system.probabilities,
            choice_uniforms(config.seed, f, config.points),
            masks,
            canvas.image,
            canvas.points,
            config.style,
        )
        if fill < 0:
            raise UsageError(f"--params: system {f} diverges (its chaos game leaves the finite numbers)")
        if fill < config.min_fill:
            raise UsageError(
                f"--params: system {f} fills {fill:.4f} of the image, under --min-fill {config.min_fill}"
            )


def stored_config(root: str | Path) -> BuildConfig | None:
    """The options of the build in ``root``, or None when it holds none."""
    path = Path(root) / shards.INTERNAL / "config.json"
    if not path.is_file():
        return None
    try:
        config = BuildConfig.from_json(json.loads(path.read_text()))
        config.validate()
    except (OSError, ValueError, TypeError, UsageError) as e:
        raise UsageError(f"{path} is damaged ({e}); rebuild with --overwrite") from None
    return config


def build(
    config: BuildConfig | None,
    out: str | Path,
    *,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    shard_range: tuple[int, int] | None = None,
    params: str | Path | None = None,
    source: str | Path | None = None,
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
        params: a params file with the base systems instead of searching (fractal presets).
        source: the real-image preset's source image; it is copied into the dataset folder.
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
            diff = [
                f"--{k.replace('_', '-')} {v} (stored {stored.to_json()[k]})"
                for k, v in config.to_json().items()
                if stored.to_json()[k] != v
            ]
            raise UsageError(f"options differ from the build being resumed in {root}: {', '.join(diff)}")
        config = stored
        systems_file = root / shards.INTERNAL / "systems.json"
        if systems_file.is_file() and config.preset in presets.FRACTAL_PRESETS:
            systems = load_systems(systems_file)
    elif config is None:
        raise UsageError(f"{root} holds no build to resume; give the build's options")
    elif params is not None:
        if config.preset not in presets.FRACTAL_PRESETS:
            raise UsageError(f"--params gives fractal systems; --preset {config.preset} has none")
        systems = load_systems(Path(params))
        config = BuildConfig(**{**config.to_json(), "params_source": "file"})
    source_bytes = None
    if config.preset == "real":
        if stored is not None:
            source = root / config.source
        if source is None:
            raise UsageError("the real-image preset needs a source image (fracgen build-real IMAGE OUT)")
        source_bytes, config = _read_source(Path(source), config)
    config.validate()
    if systems is not None:
        check_systems(systems, config)
    if shard_range is not None:
        i, j = shard_range
        if not 0 <= i < j <= config.num_shards:
            raise UsageError(
                f"--shard-range {i}:{j} must satisfy 0 <= i < j <= {config.num_shards} (the shard count)"
            )
    search_start = time.perf_counter()
    plan = make_plan(config, systems, source=str(source) if source_bytes is not None else "")
    search_seconds = time.perf_counter() - search_start
    if overwrite:
        clear_output(root)
    check_writable(root)
    shards.write_atomic(root / shards.INTERNAL / "config.json", shards.dump_json(config.to_json()))
    shards.write_atomic(
        root / shards.INTERNAL / "systems.json",
        shards.dump_json({"systems": [s.to_json() for s in plan.systems]}),
    )
    if source_bytes is not None and not (root / config.source).is_file():
        shards.write_atomic(root / config.source, source_bytes)
    wanted = range(*shard_range) if shard_range else range(config.num_shards)
    markers = {s: m for s in range(config.num_shards) if (m := shards.read_marker(root, s)) is not None}
    todo = [s for s in wanted if s not in markers]
    skipped = [s for s in wanted if s in markers]
    shards.remove_partials(root, todo if shard_range else None)
    if todo:
        (root / "build.json").unlink(missing_ok=True)  # the build is incomplete until every shard is
    render_start = time.perf_counter()
    job = _ShardJob(plan, root)
    from fracgen.distribute import default_workers, run_shards

    for marker in run_shards(
        job, todo, [len(plan.shard_samples[s]) for s in todo], workers or default_workers(), progress
    ):
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
    return BuildResult(
        root=root,
        complete=complete,
        built=todo,
        skipped=skipped,
        num_shards=config.num_shards,
        seconds=time.perf_counter() - start,
        images=images,
    )


def _read_source(path: Path, config: BuildConfig) -> tuple[bytes, BuildConfig]:
    """The source image's bytes, checked to decode, and the config with its name and checksum."""
    from fracgen import realimage

    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"IMAGE {path}: cannot read it ({e.strerror or e})") from None
    realimage.load_image(path, config.size)  # raises UsageError for a file that is not an image
    digest = hashlib.sha256(data).hexdigest()
    if config.source_sha256 and config.source_sha256 != digest:
        raise UsageError(f"IMAGE {path} differs from the source this build was made from (sha256 mismatch)")
    name = "source" + (path.suffix.lower() or ".img")
    return data, BuildConfig(**{**config.to_json(), "source": name, "source_sha256": digest})


@dataclass
class _ShardJob:
    """A picklable ``shard -> marker`` callable for the distributor."""

    plan: Plan
    root: Path

    def __call__(self, shard: int) -> dict:
        return run_shard(self.plan, shard, self.root)
