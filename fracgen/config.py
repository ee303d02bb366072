"""The build's options, resolved once: everything that decides the bytes of a dataset (not the worker count).

``BuildConfig`` holds a value for every option of the table (``fracgen.options`` and the families' own), records
the ones its family reads, and checks them (each option's bounds, then the family's checks of them together).
The checks that must render (does a ``--params`` system fill enough?) run once, in ``fracgen.plan``. No numba
here: ``fracgen verify`` checks a stored config with it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from typing import Any

from fracgen import options as table_mod
from fracgen.dataset import BUILD_JSON, PARAMS_JSON, Expect
from fracgen.errors import UsageError
from fracgen.presets import DEFAULT_PRESET, registry

PARAMS_SOURCES = ("search", "file")  # base systems searched, or read from a params file (--params)
# What every config records besides the options: its family, and where its systems and source image came from.
BOOKKEEPING = {"preset": DEFAULT_PRESET, "params_source": "search", "source": "", "source_sha256": ""}


class BuildConfig:
    """Every option that decides the bytes of a build (the worker count does not).

    Construct with option names as keywords (``BuildConfig(sigma=3.5, L=1000)``); options not given take the
    family's default, then the table's. Options the family does not read keep the table's default whatever is
    given, so the counts below never depend on them. Attributes are the option names, plus ``preset`` (the
    family, default "1p-frac"), ``params_source`` ("search", or "file" for systems from ``--params``), and for
    a family that takes a source image, ``source`` (its file name in the dataset) and ``source_sha256``.
    Immutable; ``replace`` makes a changed copy.
    """

    __slots__ = ("_values",)

    def __init__(self, preset: str | None = None, **given: Any):
        preset = DEFAULT_PRESET if preset is None else preset
        family = registry.get(preset) if isinstance(preset, str) else None
        table = registry.option_table()
        unknown = sorted(set(given) - set(table) - set(BOOKKEEPING), key=str)
        if unknown:
            raise TypeError(f"unknown build option(s) {', '.join(map(str, unknown))}")
        values: dict[str, Any] = {k: given.get(k, v) for k, v in BOOKKEEPING.items()} | {"preset": preset}
        for name, option in table.items():
            value = given.get(name) if family is None or name in family.options else None
            if value is None and family is not None:
                value = family.defaults.get(name)
            values[name] = option.resolve(value, values)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickling looks these up before _values exists
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"BuildConfig has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("BuildConfig is immutable; use replace()")

    def __getstate__(self) -> dict:
        return self._values

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "_values", state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BuildConfig) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))

    def __repr__(self) -> str:
        return f"BuildConfig({', '.join(f'{k}={v!r}' for k, v in self.to_json().items())})"

    def replace(self, **changes: Any) -> BuildConfig:
        """A copy with some options changed (the others as resolved here)."""
        return BuildConfig(**{**self._values, **changes})

    @property
    def family(self) -> registry.Family:
        """The preset's family (KeyError for a preset no family registered: ``validate`` names it)."""
        family = registry.get(self.preset)
        if family is None:
            raise KeyError(self.preset)
        return family

    @property
    def num_classes(self) -> int:
        return self.family.num_classes(self)

    @property
    def per_class(self) -> int:
        """Images per class: instances x patch variants (label = sample index // per_class)."""
        return self.family.per_class(self)

    @property
    def num_samples(self) -> int:
        return self.num_classes * self.per_class

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def validate(self) -> None:
        """Raise UsageError naming the first option of the wrong type or outside its allowed range."""
        families = registry.families()
        if not isinstance(self.preset, str) or self.preset not in families:
            raise UsageError(f"--preset must be one of {', '.join(families)}, got {self.preset!r}")
        if self.params_source not in PARAMS_SOURCES or not isinstance(self.source, str) or \
                not isinstance(self.source_sha256, str):
            raise UsageError(f"params_source, source and source_sha256 must be one of {PARAMS_SOURCES} and text")
        table = registry.option_table()
        table_mod.check([table[name] for name in table if name in self.family.options], self._values)
        for problem in self.family.problems(self):
            raise UsageError(problem)

    def to_json(self) -> dict[str, Any]:
        """What a record stores: the bookkeeping and the options the family reads."""
        family = registry.get(self.preset)
        return {k: v for k, v in self._values.items()
                if k in BOOKKEEPING or family is None or k in family.options}

    @classmethod
    def from_json(cls, data: dict) -> BuildConfig:
        """A config from a record (keys no family reads are ignored; options it lacks take their defaults)."""
        known = set(registry.option_table()) | set(BOOKKEEPING)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def missing(cls, data: dict, *, strict: bool = False) -> list[str]:
        """The options of its family a record lacks: all of them (``strict``, to resume: an older fracgen's
        record, its images may differ from this version's), or those a record of any fracgen holds (the others
        took their defaults)."""
        family = registry.get(data.get("preset", DEFAULT_PRESET))
        table = registry.option_table()
        needed = family.options if family is not None else table
        return sorted(n for n in needed if n not in data and (strict or not table[n].absent_default))

    @classmethod
    def from_record(cls, data: Any, *, where: str, strict: bool = True) -> BuildConfig:
        """The validated config a record holds (build.json's ``config``, the builder's ``config.json``).

        Args:
            data: the record's config, as JSON parsed it.
            where: what names the record in the message (its path, or the file's name).
            strict: require every option its family reads (``missing(strict=True)``: a config to render or to
                resume, whose images an option it lacks may have changed); False for a reader that only describes
                a dataset already rendered (the options no record of any fracgen lacks).

        Raises:
            UsageError: ``{where}: ...`` on one line: not an object, an unknown preset (with the known ones), the
                options it lacks, or the first option refused.
        """
        if not isinstance(data, dict):
            raise UsageError(f"{where}: config is not an object")
        preset = data.get("preset", DEFAULT_PRESET)
        if not isinstance(preset, str) or registry.get(preset) is None:
            raise UsageError(f"{where}: unknown preset {preset!r:.60} (known: {', '.join(registry.families())})")
        missing = cls.missing(data, strict=strict)
        if missing:
            raise UsageError(f"{where}: config lacks {', '.join(missing)}")
        try:
            config = cls.from_json(data)
            config.validate()
        except (TypeError, ValueError, OverflowError, RecursionError, UsageError) as e:
            raise UsageError(f"{where}: config is damaged ({(str(e).splitlines() or [repr(e)])[0]})") from None
        return config

    @classmethod
    def checked(cls, options: dict, prefix: str = "") -> BuildConfig:
        """A validated config from option names and values (a sweep's grid point, a repro variant's ``build.*``).

        Raises:
            UsageError: on one line, the unknown names (each after ``prefix``, as the caller's user spells them)
                with the known ones, or the first option refused.
        """
        known = set(registry.option_table()) | set(BOOKKEEPING)
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
        """The CLI command that rebuilds these bytes (with the params file or the source image beside it)."""
        family, table = self.family, registry.option_table()
        defaults = BuildConfig(preset=self.preset)
        if family.takes_source:
            parts = ["fracgen", "build-real", self.source or "IMAGE"]
        else:
            parts = ["fracgen", "build"] + (["--preset", self.preset] if self.preset != DEFAULT_PRESET else [])
        if self.params_source == "file":
            parts += ["--params", PARAMS_JSON]
        own = [o.name for o in family.own_options]  # the family's own options first: its headline ones
        for name in own + [n for n in table if n not in own and n in family.options]:
            option, value = table[name], self._values[name]
            if self.params_source == "file" and option.search_only:
                continue  # the params file gives the systems: the search options steered nothing
            if name in ("sigma", "delta", "L", "seed") or value != defaults._values[name]:
                parts += [option.flag, str(value)]
        return shlex.join([*parts, out])

    def name(self) -> str:
        """A short dataset name for the dataset's records and the card."""
        return self.family.dataset_name(self)


# Bytes each unit of an option costs, measured as the peak RSS of whole commands (python 3.11, 100,000 classes
# or samples against 10) and rounded up: the plan holds every sample index in an int64 permutation and Python
# lists, the shards' markers and the metadata a record per class (its family's ``memory_per_class``); a worker
# holds its canvas, chaos-game points, map choices and masks, and a colour preset float copies.
_PER_SAMPLE = 512
_PER_POINT = 64
_PER_PIXEL = {"fractal": 8, "L": 96, "RGB": 3 * 96}


def expect_of(config: Any, num_classes: int) -> Expect:
    """The expectations of a build.json's ``config``: its size and image mode when it is a valid config of a
    known family, else only its size (when it is an integer)."""
    try:
        cfg = BuildConfig.from_record(config, where=BUILD_JSON, strict=False)
    except UsageError:
        size = config.get("size") if isinstance(config, dict) else None
        readable = type(size) is int and not registry.option_table()["size"].problem(size)
        return Expect(num_classes, size if readable else None)
    return Expect(num_classes, cfg.size, cfg.family.image_mode(cfg), cfg.per_class)


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
    class records, which grow with the class count, each as its family records it), "size" (each worker's
    canvas) and "points" (each worker's chaos game)."""
    family = config.family
    return {
        "classes": float(config.num_samples) * _PER_SAMPLE + float(config.num_classes) * family.memory_per_class(config),
        "size": float(workers) * config.size ** 2 * _PER_PIXEL[family.image_mode(config)],
        "points": float(workers) * config.points * _PER_POINT if "points" in family.options else 0.0,
    }


def _classes_option(config: BuildConfig, room: float) -> tuple[str, int]:
    """The count option of the "classes" term furthest above its default, and its largest value that fits."""
    defaults = BuildConfig(preset=config.preset)
    table = registry.option_table()

    def cost(name: str, value: int) -> float:
        return memory_needs(config.replace(**{name: value}))["classes"]

    counts = [n for n in sorted(config.family.options) if table[n].kind is int
              and cost(n, 2 * config._values[n]) > cost(n, config._values[n])]
    name = max(counts, key=lambda n: config._values[n] / max(1, defaults._values[n]))
    lo, hi = 0, config._values[name]
    while lo < hi:  # the largest value whose term fits: the term grows with the value
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(name, mid) <= room else (lo, mid - 1)
    return name, lo


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
        value = config._values[name]
    else:
        name, value = term, config._values[term]
        fits = int(value * (math.sqrt(room / needs[term]) if term == "size" else room / needs[term]))
    option = "--" + name.replace("_", "-")
    hint = f"at most {option} {fits} fits" if fits >= 1 else "lower the other options first"
    if workers > 1 and term != "classes":
        hint += " (or use fewer --workers: each holds its own canvas)"
    gib = 1 << 30
    raise UsageError(f"{option} {value} needs about {total / gib:.1f} GiB of memory with {workers} worker(s); "
                     f"{available / gib:.1f} GiB are available: {hint}")
