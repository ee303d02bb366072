"""The options that decide a dataset's bytes, as one table: name, type, default, bounds and help.

The options several families read are declared here; a family declares its own in its module (``Option`` rows
registered with it). ``check`` applies every row's type and bounds, so the CLI, a stored config and a sweep's
grid point are refused with the same one line. No numba, no family names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fracgen.raster import MIN_SIZE, STYLES

MAX_DELTA = 100.0  # beyond it every perturbation diverges or leaves the image


@dataclass(frozen=True)
class Option:
    """One option of a build.

    Attributes:
        name: the config field (``--name-with-dashes`` on the command line).
        kind: int, float or str.
        default: its value when not given (a family may give its own); a callable takes the values resolved so
            far (options listed earlier in the table).
        help: one sentence for ``--help``.
        lo, hi: inclusive bounds of a number (None: unbounded).
        choices: the allowed values of a string.
        why: what the lower bound protects, appended to the refusal.
        search_only: it steers only the search of base systems (meaningless with ``--params``).
        absent_default: records written without it (before it existed) used its default.
        label: its row's name in the card's table of parameters ('' for no row).
    """

    name: str
    kind: type
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    why: str = ""
    search_only: bool = False
    absent_default: bool = False
    label: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def resolve(self, given: Any, values: dict[str, Any]) -> Any:
        """The given value, else the default (computed from ``values`` when it is a callable)."""
        if given is not None:
            return given
        return self.default(values) if callable(self.default) else self.default

    def problem(self, value: Any) -> str:
        """Why ``value`` is refused ('' when it is allowed), as ``--flag must be ..., got ...``."""
        if not _is(self.kind, value):
            wanted = {int: "an integer", float: "a number"}.get(self.kind, "text")
            return f"{self.flag} must be {wanted}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}"
        if isinstance(value, int) and not _finite(value):
            return f"{self.flag} must be {self.describe()}, a number a float holds (within +-1.8e308), got an " \
                   f"integer of {value.bit_length()} bits"
        if not _finite(value):
            return f"{self.flag} must be {self.describe()}{self.why}, got {value}"
        negative_zero = self.kind is float and self.lo == 0 and math.copysign(1.0, value) < 0  # numpy refuses U(0, -0)
        if negative_zero or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return f"{self.flag} must be {self.describe()}{self.why}, got {value}"
        return ""

    def describe(self) -> str:
        """The allowed values in words: ">= 1", "a number in [0, 1]"."""
        head = "a number " if self.kind is float else ""
        if self.lo is not None and self.hi is not None:
            return f"{head}in [{self.lo:g}, {self.hi:g}]"
        if self.lo is not None:
            return f"{head}>= {self.lo:g}"
        return "a finite number" if self.kind is float else "an integer"


def _finite(value: Any) -> bool:
    """A number a float holds, or text: an integer of 400 digits is neither a count nor a sigma any machine uses."""
    try:
        return isinstance(value, str) or math.isfinite(value)
    except OverflowError:
        return False


def _is(kind: type, value: Any) -> bool:
    """``value`` has the option's type: a stored record may hold ``true`` for a count or ``2.5`` for an integer."""
    if kind is int:
        return type(value) is int
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is str


# The options several families read. A family's own options, and its defaults for these, are in its module.
SHARED = (
    Option("delta", float, 0.1, "Perturbation degree Delta >= 0.", lo=0, hi=MAX_DELTA,
           why=" (beyond it every perturbation diverges or leaves the image)", label="Delta (perturbation degree)"),
    Option("L", int, 1000, "Perturbation classes (per base system when there are several).", lo=1, label="L (perturbation classes)"),
    Option("fractals", int, 1, "Base systems C.", lo=1, label="base systems (classes)"),
    Option("categories", int, 1000, "Categories C.", lo=1, absent_default=True),
    Option("instances", int, 1, "Images per class.", lo=1, absent_default=True, label="images per class"),
    Option("patch_variants", int, 1, "Images per class, each with freshly drawn 3 x 3 patch masks over the class's "
           "points (the paper's Table 13 'w/ Aug.').", lo=1, absent_default=True),
    Option("style", str, "reference", "reference: the released look (3 x 3 random patches); points: plain points.",
           choices=STYLES, label="raster style"),
    Option("size", int, 512, "Image side in pixels.", lo=MIN_SIZE, why=" (the smallest image fracgen renders)"),
    Option("points", int, 100_000, "Chaos-game points per image.", lo=2, why=" (one point spans no image)",
           label="chaos-game points per image"),
    Option("min_fill", float, 0.05, "Lit fraction every render must reach.", lo=0, hi=1, absent_default=True, label="minimum fill"),
    Option("seed", int, 0, "Seed of every draw.", lo=0),
    Option("shard_size", int, 100, "Images per shard.", lo=1),
    Option("max_redraws", int, 100, "Redraws of a diverging or under-filled image before the build stops.", lo=0),
    Option("max_attempts", int, 1000, "Systems the search draws per base system before it gives up.", lo=1,
           search_only=True),
)


# The options a chaos-game family reads to search and render its base systems (and `fracgen search` takes).
CHAOS_GAME = frozenset({"style", "size", "points", "min_fill", "seed", "shard_size", "max_attempts"})


def check(options: list[Option], values: dict[str, Any]) -> None:
    """Raise UsageError naming the first option whose value is of the wrong type or outside its bounds."""
    from fracgen.errors import UsageError

    for option in options:
        problem = option.problem(values[option.name])
        if problem:
            raise UsageError(problem)

