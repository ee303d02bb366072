"""Render a dataset card (the Hub's `README.md`) from a template in `datasets_cards/` and a build's records.

Templates are Markdown with `{{name}}` placeholders; every placeholder must be known (an unknown one is an
error, so a typo never reaches a published card). Values that land in the YAML header are JSON-quoted, which
YAML reads as plain strings whatever characters they hold.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from fracgen import dataset
from fracgen.errors import UsageError
from fracgen.presets import DEFAULT_PRESET, PRESETS

logger = logging.getLogger(__name__)

CARDS_DIR = Path(__file__).resolve().parent.parent / "datasets_cards"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
DEFAULT_LICENSE = "cc-by-4.0"
# The Hub's size_categories buckets, by upper bound on the number of samples.
_SIZE_BUCKETS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


def size_category(num_samples: int) -> str:
    """The Hub's size bucket for a sample count, e.g. 1000 -> '1K<n<10K'."""
    for bound, name in _SIZE_BUCKETS:
        if num_samples < bound:
            return name
    return "n>1B"


def preset_of(build: dict[str, Any]) -> str:
    """The build's preset; builds from before presets existed are 1p-frac."""
    return str((build.get("config") or {}).get("preset", DEFAULT_PRESET))


def relevant_options(preset: str, config: dict[str, Any]) -> set[str]:
    """The options this preset reads (its record in fracgen.presets); every recorded option when unknown."""
    family = PRESETS.get(preset)
    return set(family.options) if family else set(config)


def template_for(build: dict[str, Any]) -> Path:
    """The preset's own card for a one-fractal build (`1p-frac.md`), `generic.md` for anything else."""
    config = build.get("config") or {}
    family = PRESETS.get(preset_of(build))
    own = family.card if family and config.get("fractals", 1) == 1 else None
    return CARDS_DIR / (own or "generic.md")


def render_template(text: str, context: dict[str, str]) -> str:
    """Replace every `{{name}}` with `context[name]`.

    Raises:
        UsageError: the template names a placeholder the context lacks.
    """
    missing = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - set(context))
    if missing:
        raise UsageError(f"card template uses unknown placeholder(s): {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: context[m.group(1)], text)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # unreachable; keeps type checkers content


def _table(rows: dict[str, Any], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in rows.items()]
    return "\n".join(lines)


def _build_time(timing: dict[str, Any]) -> str:
    """The measured timings in words: every entry of build.json `timing`, seconds rounded."""
    if not timing:
        return "not recorded"
    parts = []
    for key, value in timing.items():
        label = key.replace("_", " ")
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{label}: {value}")
    return "; ".join(parts)


def _shard_pattern(filenames: list[str]) -> str:
    """A webdataset brace pattern for train-000000..train-00000K, or the single name."""
    expected = [dataset.shard_name(i) for i in range(len(filenames))]
    if len(filenames) > 1 and filenames == expected:
        return dataset.brace_pattern(len(filenames))
    return filenames[0] if len(filenames) == 1 else dataset.SHARD_GLOB


def differences(config: dict[str, Any], preset: str = DEFAULT_PRESET) -> str:
    """Markdown list: what this build does where the paper and the released 1p-frac code differ.

    Only fractal presets render IFS; for the others the list says so. FractalDB and OFDB draw no LIEP
    perturbation, so their list leaves that item out.
    """
    family = PRESETS.get(preset)
    if family is None or not family.renders_fractals:
        return (
            f"- The `{preset}` preset renders no fractal, so the differences in the IFS pipeline do not apply. Its "
            "classes come from perturbed parameters drawn from generators seeded by (seed, class), and every "
            "class's parameters are saved in `params.json` (the released code saves none)."
        )
    mode = config.get("perturbation", "multiplicative")
    delta = config.get("delta", "Delta")
    if mode == "multiplicative":
        perturb = (
            f"**Perturbation: multiplicative, as in the released code**: theta' = theta * (1 + u), "
            f"u ~ U(-{delta}, {delta}) for each of the 6 parameters of each map. The paper's Eq. 9 writes an "
            f"additive eps ~ U[-Delta/2, Delta/2]^(6N) instead."
        )
    elif mode == "additive":
        perturb = (
            f"**Perturbation: additive, as in the paper's Eq. 9**: theta' = theta + eps, "
            f"eps ~ U[-{delta}/2, {delta}/2]^(6N). The released code, which produced the paper's numbers, "
            "multiplies instead: theta' = theta * (1 + u), u ~ U(-Delta, Delta)."
        )
    else:
        perturb = f"**Perturbation: {mode}** (neither the paper's additive Eq. 9 nor the released multiplicative rule)."
    style = config.get("style", "reference")
    if style == "reference":
        raster = (
            "**Raster: the released look**: x and y scaled independently to [6, size - 6] (aspect not kept), "
            "truncated, a 3 x 3 patch with a random 9-bit mask of value 127 pasted at each point, then flipped top "
            "to bottom. Stored as a 1-bit grey PNG with values {0, 127} rather than the released RGB PNG with equal "
            "channels (same pixel values)."
        )
    else:
        raster = (
            f"**Raster: `{style}`**, not the released look (which pastes 3 x 3 random patches and stretches x and y "
            "independently); see fracgen's render module."
        )
    points = config.get("points", "?")
    items = [
        *([perturb] if "perturbation" in family.options else []),
        "**Map probabilities** p_i = |det A_i| / sum_j |det A_j| of the base maps, not recomputed after "
        "perturbation, as the released code computes them.",
        f"**Chaos game**: {points} points from (0, 0), no burn-in, the same map-choice sequence for every class of "
        "a fractal (released code: 100,000 points, same rules).",
        raster,
        f"**Image size** {config.get('size', '?')} px (released: 512).",
        f"**sigma target** drawn from U(sigma - {config.get('margin', 0.1)}, sigma + {config.get('margin', 0.1)}) "
        "for the base system, with N = "
        f"{config.get('maps', 2)} maps sampled as in Anderson & Farrell (released: margin 0.1, N = 2)."
        if family.systems == "sigma"
        else "**Base systems** from the FractalDB search (N ~ U{2..7}, parameters ~ U(-1, 1)), not by sigma-factor.",
        f"**Fill check**: at least {config.get('min_fill', 0.05)} of the pixels lit, else the perturbation is "
        f"drawn again, at most {config.get('max_redraws', '?')} times (released: 5%, no limit, so a bad base "
        "fractal loops forever).",
        "**Seeds and records**: every draw comes from a generator seeded by (seed, fractal, perturbation), and the "
        "base system and every class's parameters are saved in `params.json` (released code: no seeds, nothing "
        "saved, class folders named '%02d' so their order differs from the label).",
    ]
    return "\n".join(f"- {item}" for item in items)


def card_context(
    root: Path | str, *, license: str = DEFAULT_LICENSE, repo_id: str = "USER/NAME"
) -> dict[str, str]:
    """Every placeholder value of a card, from the dataset's build.json and params.json.

    Raises:
        UsageError: `license` is not a license id, or `root` holds no complete build.
    """
    if not LICENSE_RE.match(license):
        raise UsageError(f"--license must be a lower-case license id such as cc-by-4.0, got {license!r}")
    root = Path(root)
    build = dataset.read_build(root)
    config = build.get("config") or {}
    filenames = [str(r["filename"]) for r in build["shards"]]
    num_samples = int(build.get("num_samples", sum(r.get("num_samples", 0) for r in build["shards"])))
    name = str(build.get("name") or root.name)
    maps = config.get("maps")
    params = dataset.read_params(root) if maps is None else None
    if params is not None:
        try:
            maps = len(params["systems"][0]["maps"])
        except (KeyError, IndexError, TypeError):
            maps = None
    versions = build.get("versions") or {}
    command = build.get("command", "")
    if isinstance(command, list):
        import shlex

        command = shlex.join(command)
    if template_for(build).name == "1p-frac.md":
        pretty = f"1p-frac (sigma {config['sigma']}, Delta {config['delta']}, L {config['L']})"
    else:
        pretty = name
    preset = preset_of(build)
    relevant = relevant_options(preset, config)

    def option(key: str, default: str = "?") -> str:
        if key not in relevant:
            return f"n/a ({preset})"
        return str(config.get(key, default))

    family = PRESETS.get(preset)
    tags = ["synthetic"] + (["fractals"] if family and family.renders_fractals else [])
    tags += ["formula-driven", "webdataset", preset]
    source = str(config.get("source") or "")
    source_note = (
        f"The source image `{source}` (sha256 `{config.get('source_sha256', '?')}`) is part of this repo; the "
        "rebuild command reads it from the folder it runs in."
        if source
        else ""
    )
    context = {
        "license": license,
        "size_category": size_category(num_samples),
        "pretty_name": json.dumps(pretty),
        "title": pretty,
        "name": name,
        "repo_id": repo_id,
        "tags": "\n".join(f"- {tag}" for tag in dict.fromkeys(tags)),
        "description": family.description if family else f"the {preset} preset of fracgen.",
        "source_note": source_note,
        "num_samples": str(num_samples),
        "num_classes": str(build.get("num_classes", "?")),
        "num_shards": str(len(filenames)),
        "total_size": _human_bytes(sum(int(r.get("bytes", 0)) for r in build["shards"])),
        "shard_pattern": _shard_pattern(filenames),
        "size": str(config.get("size", "?")),
        "style": option("style"),
        "sigma": option("sigma"),
        "delta": option("delta"),
        "L": option("L"),
        "N": str(maps) if maps is not None and "maps" in relevant else f"n/a ({preset})",
        "perturbation": option("perturbation", "not recorded"),
        "points": option("points"),
        "seed": str(config.get("seed", "?")),
        "build_time": _build_time(build.get("timing") or {}),
        "command": str(command),
        "fracgen_version": str(versions.get("fracgen", "?")),
        "versions": _table(versions, ("package", "version")) if versions else "not recorded",
        "config_table": _table(config, ("option", "value")) if config else "not recorded",
        "differences": differences(config, preset),
    }
    return context


def render_card(
    root: Path | str,
    *,
    license: str = DEFAULT_LICENSE,
    repo_id: str = "USER/NAME",
    template: Path | str | None = None,
) -> str:
    """The dataset card of a build, as Markdown with a YAML header.

    Args:
        root: a complete dataset folder.
        license: license id for the YAML header.
        repo_id: the Hub repo the card will live in (used in the loading snippets).
        template: a template file; default: `datasets_cards/1p-frac.md` for one-fractal builds, else
            `datasets_cards/generic.md`.

    Returns:
        The card text.

    Raises:
        UsageError: no complete build, a bad license id, a missing template or an unknown placeholder.
    """
    build = dataset.read_build(root)
    path = Path(template) if template is not None else template_for(build)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise UsageError(f"card template {path} is missing") from err
    card = render_template(text, card_context(root, license=license, repo_id=repo_id))
    logger.debug("rendered card from %s (%d chars)", path, len(card))
    return card
