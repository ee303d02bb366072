"""Base systems: the accepted IFS a build perturbs, and how they are read back from a params file.

A params file is what ``fracgen search`` prints (one system) or a build's ``params.json`` (``{"systems": [...]}``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fracgen import ifs
from fracgen.errors import UsageError


@dataclass
class System:
    """An accepted base system.

    Attributes:
        maps: (N, 6) float64 rows (a, b, c, d, e, f).
        probabilities: (N,) float64.
        sigma: the sigma-factor target that was drawn (equal to the maps' sigma-factor).
        fill: lit fraction of its base render.
        attempts: systems drawn before this one was accepted (1 = the first).
    """

    maps: np.ndarray
    probabilities: np.ndarray
    sigma: float
    fill: float
    attempts: int = 1
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "maps": self.maps.tolist(),
            "probabilities": self.probabilities.tolist(),
            "sigma": self.sigma,
            "fill": self.fill,
            "attempts": self.attempts,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict) -> System:
        """Read a system; raises UsageError naming what is malformed."""
        try:
            maps = np.asarray(data["maps"], dtype=np.float64)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise UsageError(f"a system needs 'maps', a list of [a, b, c, d, e, f] rows ({e})") from None
        if maps.ndim != 2 or maps.shape[1] != 6 or len(maps) < 1 or not np.all(np.isfinite(maps)):
            raise UsageError(f"'maps' must be N >= 1 rows of 6 finite numbers, got shape {maps.shape}")
        with np.errstate(all="ignore"):  # coefficients near 1e308 overflow: refused below, no numpy warning
            derived = ifs.probabilities(maps), ifs.sigma_factor(maps)
        probs = data.get("probabilities")
        try:
            probs = derived[0] if probs is None else np.asarray(probs, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            probs = np.array([-1.0])
        if probs.shape != (len(maps),) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
            raise UsageError("'probabilities' must be one non-negative number per map, summing to 1")
        known = {"maps", "probabilities", "sigma", "fill", "attempts"}
        values = {}
        for key, kind, default in (("sigma", float, derived[1]), ("fill", float, float("nan")),
                                   ("attempts", int, 1)):
            try:
                values[key] = kind(data.get(key, default))
            except (TypeError, ValueError, OverflowError):
                raise UsageError(f"'{key}' must be a number, got {data.get(key)!r}") from None
        if not math.isfinite(values["sigma"]) or values["sigma"] <= 0 or values["attempts"] < 1:
            raise UsageError(f"'sigma' must be a finite number > 0 and 'attempts' >= 1, got {values['sigma']!r} "
                             f"and {values['attempts']!r}")
        extra = {k: v for k, v in data.items() if k not in known}
        for key, value in extra.items():  # copied into params.json: it must stay standard JSON
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise UsageError(f"'{key}' holds a value standard JSON cannot write (NaN or infinity), got "
                                 f"{str(value)[:60]}") from None
        return cls(maps=maps, probabilities=probs, extra=extra, **values)


def load_systems(path: Path) -> list[System]:
    """Base systems from a params file: one system (``fracgen search``) or ``{"systems": [...]}`` (params.json)."""
    if Path(path).exists() and not Path(path).is_file():  # a device or a pipe would be read without end
        raise UsageError(f"--params {path}: not a regular file; give a params JSON file")
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"--params {path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:
        raise UsageError(f"--params {path}: not valid JSON ({type(e).__name__}: {e})") from None
    items = data.get("systems") if isinstance(data, dict) and "systems" in data else [data]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise UsageError(f'--params {path}: expected a system object or {{"systems": [...]}}')
    try:
        return [System.from_json(item) for item in items]
    except UsageError as e:
        raise UsageError(f"--params {path}: {e}") from None


def class_records(params: object, num_classes: int, where: str) -> list[dict]:
    """params.json's ``classes`` (``params`` as JSON parsed it), one record per label, in label order: what verify
    checks the samples against and a recipe draws fresh masks from.

    Raises:
        UsageError: ``{where} ...`` on one line: the classes are not a list of records with an integer label, or
            their labels are not each of 0..num_classes-1 once.
    """
    classes = params.get("classes") if isinstance(params, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, dict) and type(c.get("label")) is int for c in classes):
        raise UsageError(f"{where} classes are malformed (not a list of records with an integer label)")
    records = sorted(classes, key=lambda c: c["label"])
    counts = Counter(c["label"] for c in records)
    if len(records) != num_classes or set(counts) != set(range(num_classes)):
        beyond = [k for k in counts if not 0 <= k < num_classes]
        odd = f"label {beyond[0]} beyond them" if beyond else next(
            f"label {k} {'missing' if counts[k] == 0 else 'repeated'}" for k in range(num_classes) if counts[k] != 1)
        raise UsageError(f"{where} records {len(classes)} classes, not one for each of the {num_classes} labels "
                         f"({odd})")
    return records
