"""The build's options and their checks: everything that decides the bytes of a dataset (not the worker count).

Checks here look at the options alone; the ones that must render (does a --params system fill enough?) run
once in the planning step (``fracgen.plan``). No numba here: `fracgen verify` checks a stored config with it.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import asdict, dataclass, fields

from fracgen.dataset import PARAMS_JSON
from fracgen.errors import UsageError
from fracgen.perturb import MODES
from fracgen.presets import DEFAULT_MIN_FILL, DEFAULT_PRESET, OFDB_WEIGHTS, PRESETS, Preset
from fracgen.raster import MIN_SIZE, PAD, STYLES  # noqa: E402

EDGES = ("canny", "none")
COLORS = ("grey", "rgb")
TRANSFORMS = ("affine", "elastic", "polynomial")
MAX_DELTA = 100.0
SEARCH_ONLY = ("sigma", "maps", "margin", "max_attempts")  # options that only steer the search (not --params)
MAX_MAPS = 1000
# Options added after datasets were first built (issue 11): an older build's records lack them.
LATER_OPTIONS = frozenset({"min_fill", "instances", "categories", "radius_perturbation", "base_category",
                           "patch_variants", "ofdb_weights", "base_min_fill"})
RADIUS_PERTURBATIONS = ("vertex", "scalar")  # fracgen.contour_params.LPCE_MODES (that module imports numba)
_INSTANCES = ", ".join(f"[1, {p.max_instances}] for {p.name}" for p in PRESETS.values() if p.max_instances > 1) + \
    " and 1"


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
        instances: images per class (FractalDB: up to 1,000, default 1,000; rcdb/visualatom: up to 100,000,
            default 1; every other preset: 1). With ``patch_variants`` K a class has instances x K images.
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
        categories: contour presets (rcdb, visualatom): categories C.
        radius_perturbation: contour LPCE presets: "vertex" (one u per start vertex, default) or "scalar".
        base_category: contour LPCE presets: the base image's category (the next with a radius > 0 if its is 0).
        patch_variants: 1p-frac and OFDB: images per class, each with freshly drawn patch masks over the class's
            points (paper Table 13 "w/ Aug."); the label stays the class.
        ofdb_weights: OFDB: "identity" (the paper's text) or "released" (parameter a x 0.2, the shipped scripts).
        base_min_fill: 1p-frac: lit fraction the base system's own render must reach (default: ``min_fill``;
            0 accepts the first finite draw, as the released code, which never renders the base).
    """

    preset: str = DEFAULT_PRESET
    sigma: float = 3.5
    delta: float = 0.1
    L: int = 1000
    maps: int = 2
    fractals: int = 1
    instances: int | None = None
    perturbation: str = "multiplicative"
    style: str = "reference"
    size: int | None = None
    points: int | None = None
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
    categories: int = 1000
    radius_perturbation: str = "vertex"
    base_category: int = 0
    patch_variants: int = 1
    ofdb_weights: str = "identity"
    base_min_fill: float | None = None

    def __post_init__(self):
        family = PRESETS.get(self.preset)  # validate() names an unknown preset
        if self.min_fill is None:
            object.__setattr__(self, "min_fill", family.min_fill if family else DEFAULT_MIN_FILL)
        if self.instances is None:
            object.__setattr__(self, "instances", family.default_instances if family else 1)
        if self.size is None:
            object.__setattr__(self, "size", family.size if family else 512)
        if self.points is None:
            object.__setattr__(self, "points", family.points if family else 100_000)
        if self.base_min_fill is None:
            object.__setattr__(self, "base_min_fill", self.min_fill)

    @property
    def family(self) -> Preset:
        """The preset's record."""
        return PRESETS[self.preset]

    @property
    def num_classes(self) -> int:
        return self.family.num_classes(self)

    @property
    def per_class(self) -> int:
        """Images per class: instances x patch variants (label = sample index // per_class)."""
        return self.instances * self.patch_variants

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.per_class

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def validate(self) -> None:
        """Raise UsageError naming the first option of the wrong type or outside its allowed range."""
        self._check_types()
        most = self.family.max_instances if self.preset in PRESETS else 1
        checks = [
            (
                "--preset",
                self.preset in PRESETS,
                f"must be one of {', '.join(PRESETS)}, got {self.preset!r}",
            ),
            ("--maps", 1 <= self.maps <= MAX_MAPS, f"must be in [1, {MAX_MAPS}] (every image records its maps), "
                                                   f"got {self.maps}"),
            (
                "--sigma",
                math.isfinite(self.sigma) and 0 < self.sigma <= 3 * self.maps,
                f"must be in (0, {3 * self.maps}] for {self.maps} maps (sigma <= 3N), got {self.sigma}",
            ),
            (
                "--delta",
                math.isfinite(self.delta) and 0 <= self.delta <= MAX_DELTA and math.copysign(1.0, self.delta) > 0,
                f"must be a number in [0, {MAX_DELTA:g}] (beyond it every perturbation diverges or leaves the "
                f"image), got {self.delta}",
            ),
            ("--L", self.L >= 1, f"must be >= 1, got {self.L}"),
            ("--fractals", self.fractals >= 1, f"must be >= 1, got {self.fractals}"),
            (
                "--instances",
                1 <= self.instances <= most,
                f"must be in {_INSTANCES} otherwise, got {self.instances}",
            ),
            (
                "--perturbation",
                self.perturbation in MODES,
                f"must be one of {', '.join(MODES)}, got {self.perturbation!r}",
            ),
            (
                "--style",
                self.style in STYLES,
                f"must be one of {', '.join(STYLES)}, got {self.style!r}",
            ),
            (
                "--size",
                self.size >= MIN_SIZE,
                f"must be >= {MIN_SIZE} to leave the {PAD}-pixel margins, got {self.size}",
            ),
            ("--points", self.points >= 1, f"must be >= 1, got {self.points}"),
            ("--min-fill", 0 <= self.min_fill <= 1, f"must be in [0, 1], got {self.min_fill}"),
            ("--seed", self.seed >= 0, f"must be >= 0, got {self.seed}"),
            ("--shard-size", self.shard_size >= 1, f"must be >= 1, got {self.shard_size}"),
            ("--edges", self.edges in EDGES, f"must be canny or none, got {self.edges!r}"),
            ("--color", self.color in COLORS, f"must be grey or rgb, got {self.color!r}"),
            (
                "--transform",
                self.transform in TRANSFORMS,
                f"must be affine, elastic or polynomial, got {self.transform!r}",
            ),
            *self._more_checks(),
        ]
        for option, ok, message in checks:
            if not ok:
                raise UsageError(f"{option} {message}")

    def _check_types(self) -> None:
        """Every option has its field's type: a stored config.json or build.json may hold anything (``true`` for
        an integer, ``2.5`` for a count), which the range checks would pass and the renderer or a resume would
        then misread (a count of True is 1: a resume rewrote build.json over half the shards)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type).split(" | ")[0]
            ok = {"int": type(value) is int, "str": type(value) is str,
                  "float": isinstance(value, (int, float)) and not isinstance(value, bool)}.get(kind, True)
            if not ok:
                wanted = {"int": "an integer", "float": "a number"}.get(kind, "text")
                raise UsageError(f"--{f.name.replace('_', '-')} must be {wanted}, got {value!r}")

    def _more_checks(self) -> list[tuple[str, bool, str]]:
        """The checks of the options added with the contour presets, patch variants and OFDB weights."""
        return [
            ("--categories", self.categories >= 1, f"must be >= 1, got {self.categories}"),
            (
                "--radius-perturbation",
                self.radius_perturbation in RADIUS_PERTURBATIONS,
                f"must be one of {', '.join(RADIUS_PERTURBATIONS)}, got {self.radius_perturbation!r}",
            ),
            ("--base-category", self.base_category >= 0, f"must be >= 0, got {self.base_category}"),
            ("--patch-variants", self.patch_variants >= 1, f"must be >= 1, got {self.patch_variants}"),
            (
                "--patch-variants",
                self.patch_variants == 1 or self.style == "reference",
                f"needs --style reference (the points style has no patch masks), got {self.style!r}",
            ),
            (
                "--ofdb-weights",
                self.ofdb_weights in OFDB_WEIGHTS,
                f"must be one of {', '.join(OFDB_WEIGHTS)}, got {self.ofdb_weights!r}",
            ),
            ("--base-min-fill", 0 <= self.base_min_fill <= 1, f"must be in [0, 1], got {self.base_min_fill}"),
        ]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BuildConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def checked(cls, options: dict, prefix: str = "") -> BuildConfig:
        """A validated config from option names and values (a sweep's grid point, a repro variant's ``build.*``).

        Raises:
            UsageError: on one line, the unknown names (each after ``prefix``, as the caller's user spells them)
                with the known ones, or the first option refused.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known, key=str)
        if unknown:
            raise UsageError(f"unknown build option(s) {', '.join(prefix + str(k) for k in unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        try:
            config = cls(**options)
            config.validate()
        except (UsageError, TypeError, ValueError) as e:
            raise UsageError(str(e).splitlines()[0]) from None
        return config

    def command(self, out: str = "OUT") -> str:
        """The CLI command that rebuilds these bytes (with params.json or the source image beside it)."""
        defaults = BuildConfig(preset=self.preset)
        relevant = self.family.options
        if self.family.command == "build-real":
            parts = ["fracgen", "build-real", self.source or "IMAGE"]
        else:
            parts = ["fracgen", "build"] + (["--preset", self.preset] if self.preset != DEFAULT_PRESET else [])
        if self.params_source == "file":
            parts += ["--params", PARAMS_JSON]
        for f in fields(self):
            value = getattr(self, f.name)
            if self.params_source == "file" and f.name in SEARCH_ONLY:
                continue  # the params file gives the systems: these steered a search that did not run
            if f.name in relevant and (
                f.name in ("sigma", "delta", "L", "seed") or value != getattr(defaults, f.name)
            ):
                parts += [f"--{f.name.replace('_', '-')}", str(value)]
        return shlex.join([*parts, out])

    def name(self) -> str:
        """A short dataset name for the dataset's records and the card."""
        return self.family.naming(self)


# Bytes each unit of an option costs, measured as the peak RSS of whole commands (python 3.11, 100,000 classes
# or samples against 10) and rounded up: the plan holds every sample index in an int64 permutation and Python
# lists, the shards' markers and the metadata a record per class (params.json); a worker holds its canvas,
# chaos-game points, map choices and masks, and the real-image preset float copies.
_PER_SAMPLE = 512
_PER_CLASS = 1024  # a class's record without its maps or radii
_PER_MAP_OF_A_CLASS = 2048  # 1p-frac/OFDB: a class's maps (measured 4.1-4.5 KB a class of 2 maps, all included)
_PER_CATEGORY = 6144  # rcdb/visualatom: a category's draws (measured 3-4.3 KB)
_PER_NOISE_CLASS = 6144  # noise and real image: a class's parameters (measured 4.6 KB)
_PER_RADIUS = 256  # contour LPCE "vertex": a u per start vertex (visualatom-lpce, 902 vertices: 177 KB a class)
_MOST_VERTICES = {"rcdb-lpce": 200, "visualatom-lpce": 1000}  # the released vertex ranges (contour_params)
_PER_POINT = 64
_PER_PIXEL = {"fractal": 8, "real": 96}


def _per_class_record(config: BuildConfig) -> float:
    """Bytes the parent keeps for one class's record (params.json), by what the preset records."""
    family = config.family
    if family.renders_fractals:
        return _PER_CLASS + config.maps * _PER_MAP_OF_A_CLASS if config.instances == 1 else _PER_CLASS
    if family.classes == "category":
        return _PER_CATEGORY
    if config.preset in _MOST_VERTICES:
        vertex = config.radius_perturbation == "vertex"
        return _PER_CLASS + (_PER_RADIUS * _MOST_VERTICES[config.preset] if vertex else 0)
    return _PER_NOISE_CLASS


def available_memory() -> int | None:
    """Bytes the machine can still give (Linux MemAvailable), or None when it cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_needs(config: BuildConfig, workers: int = 1) -> dict[str, float]:
    """What a build asks of memory, in bytes: "classes" (the plan, which grows with the sample count, and the
    class records, which grow with the class count and each with what its preset records: maps, radii, draws),
    "size" (each worker's canvas) and "points" (each worker's chaos game)."""
    fractal = config.family.renders_fractals
    per_pixel = _PER_PIXEL["fractal" if fractal else "real"] * (3 if config.color == "rgb" else 1)
    return {
        "classes": float(config.num_samples) * _PER_SAMPLE + float(config.num_classes) * _per_class_record(config),
        "size": float(workers) * config.size ** 2 * per_pixel,
        "points": float(workers) * config.points * _PER_POINT if fractal else 0.0,
    }


# The options that multiply the "classes" term: what each scales ("samples", "records" or both).
_SCALES = {"L": ("samples", "records"), "fractals": ("samples", "records"), "categories": ("samples", "records"),
           "instances": ("samples",), "patch_variants": ("samples",), "maps": ("records",)}


def _classes_option(config: BuildConfig, room: float) -> tuple[str, int]:
    """The option of the "classes" term furthest above its default, and the largest value of it that fits."""
    defaults = BuildConfig(preset=config.preset)
    names = [n for n in _SCALES if n in config.family.options]
    name = max(names, key=lambda n: getattr(config, n) / max(1, getattr(defaults, n)))
    value = getattr(config, name)
    samples = float(config.num_samples) * _PER_SAMPLE
    records = float(config.num_classes) * _per_class_record(config)
    if name == "maps":  # only the maps' share of each class record grows with it
        scaling = float(config.num_classes) * config.maps * _PER_MAP_OF_A_CLASS
    else:
        scaling = samples * ("samples" in _SCALES[name]) + records * ("records" in _SCALES[name])
    fixed = samples + records - scaling
    return name, int(value * max(0.0, room - fixed) / scaling) if scaling > 0 else 0


def check_memory(config: BuildConfig, workers: int = 1, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a build whose options need more memory than the machine has.

    Raises:
        UsageError: naming the option to lower (of the costliest term, the one furthest above its default), the
            figure, and the largest value of it that fits.
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    needs = memory_needs(config, workers)
    total = sum(needs.values())
    budget = 0.8 * available  # leave room for the interpreter, numba and the page cache
    if total <= budget:
        return
    term = max(needs, key=needs.get)
    room = max(0.0, budget - (total - needs[term]))
    if term == "classes":
        name, fits = _classes_option(config, room)
        value = getattr(config, name)
    else:
        name, value = term, getattr(config, term)
        fits = int(value * (math.sqrt(room / needs[term]) if term == "size" else room / needs[term]))
    option = "--" + name.replace("_", "-")
    hint = f"at most {option} {fits} fits" if fits >= 1 else "lower the other options first"
    if workers > 1 and term != "classes":
        hint += " (or use fewer --workers: each holds its own canvas)"
    gib = 1 << 30
    raise UsageError(f"{option} {value} needs about {total / gib:.1f} GiB of memory with {workers} worker(s); "
                     f"{available / gib:.1f} GiB are available: {hint}")
