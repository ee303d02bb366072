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

import yaml

from fracgen import dataset
from fracgen.config import SEARCH_ONLY
from fracgen.errors import UsageError
from fracgen.presets import DEFAULT_PRESET, PRESETS

logger = logging.getLogger(__name__)

# An installed wheel carries the templates as fracgen/cards (pyproject.toml maps datasets_cards/ there); a
# checkout has them at the top of the repository.
_PACKAGED = Path(__file__).resolve().parent / "cards"
CARDS_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "datasets_cards"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
# How fracgen is installed, as its README says (it is installed from a checkout of its repository).
INSTALL = (
    "fracgen is installed from a checkout of its repository: `make install` creates `.venv` with the builder "
    "(or run `pip install .` in the checkout; `make install-dev` adds the trainer and test tools)"
)
_OPTION_LABELS = {
    "sigma": "sigma (sigma-factor of the base system)", "delta": "Delta (perturbation degree)",
    "L": "L (perturbation classes)", "maps": "N (affine maps per system)", "fractals": "base systems (classes)",
    "instances": "images per class", "perturbation": "perturbation mode", "style": "raster style",
    "points": "chaos-game points per image", "min_fill": "minimum fill", "edges": "edges",
    "color": "colour", "transform": "geometric transform",
}
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


def _config(build: dict[str, Any]) -> dict[str, Any]:
    config = build.get("config")
    return config if isinstance(config, dict) else {}


def preset_of(build: dict[str, Any]) -> str:
    """The build's preset; builds from before presets existed are 1p-frac."""
    return str(_config(build).get("preset", DEFAULT_PRESET))


def relevant_options(preset: str, config: dict[str, Any]) -> set[str]:
    """The options this preset reads (its record in fracgen.presets); every recorded option when unknown."""
    family = PRESETS.get(preset)
    return set(family.options) if family else set(config)


def template_for(build: dict[str, Any]) -> Path:
    """The preset's own card for a one-fractal build (`1p-frac.md`), `generic.md` for anything else."""
    config = _config(build)
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


def _seconds(seconds: float) -> str:
    """A duration in words: '0.8 seconds', '2 minutes 5 seconds', '3 hours 12 minutes'."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.2g} seconds" if seconds < 10 else f"{seconds:.0f} seconds"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} minute{'s' * (minutes != 1)} {rest} seconds"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} hour{'s' * (hours != 1)} {minutes} minutes"


def _build_time(timing: dict[str, Any], num_samples: int, from_file: bool = False) -> str:
    """build.json's ``timing`` in words: wall time, workers and machine, search time and images of the last call."""
    try:
        wall = float(timing["wall_seconds_this_call"])
        workers = int(timing.get("workers", 1))
        images = int(timing.get("images_this_call", num_samples))
        search = float(timing.get("search_seconds", 0.0))
    except (KeyError, TypeError, ValueError):
        return "not recorded"
    text = f"{_seconds(wall)} on {workers} worker{'s' * (workers != 1)}"
    if isinstance(timing.get("machine"), str):
        text += f" ({' '.join(timing['machine'].split())[:120]})"
    if search >= 0.05:
        text += f", of which {_seconds(search)} " + (
            "checking the base systems of the params file" if from_file else "searching the base systems")
    if images != num_samples:
        return f"{text}, for the last {images:,} of {num_samples:,} images (the build was resumed)"
    return text + f", for {images:,} images"


def _feature(value: Any) -> dict[str, Any]:
    """The `datasets` feature (YAML form) of one decoded JSON value."""
    if isinstance(value, bool):
        return {"dtype": "bool"}
    if isinstance(value, int):
        return {"dtype": "int64"}
    if isinstance(value, float):
        return {"dtype": "float64"}
    if isinstance(value, str):
        return {"dtype": "string"}
    if isinstance(value, dict):
        return {"struct": [{"name": k, **_feature(v)} for k, v in sorted(value.items())]}
    if isinstance(value, list) and value:
        inner = _merge([_feature(v) for v in value])
        return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
    raise ValueError(f"no feature for {value!r:.40}")


def _merge(features: list[dict[str, Any]]) -> dict[str, Any]:
    """One feature for several values: int64 and float64 make float64; anything else must agree."""
    kinds = {json.dumps(f, sort_keys=True) for f in features}
    if kinds <= {'{"dtype": "int64"}', '{"dtype": "float64"}'}:
        return {"dtype": "float64" if len(kinds) > 1 else features[0]["dtype"]}
    if len(kinds) != 1:
        raise ValueError("values of different types")
    return features[0]


def dataset_info(root: Path, build: dict[str, Any], num_classes: int, samples: int = 16) -> dict[str, Any]:
    """The card's ``dataset_info``: features `png` (Image), `cls` (ClassLabel over the labels) and `json`
    (its fields, read from the first samples of the first shard), and the train split's size.

    ``datasets.load_dataset`` on the Hub repo (or a folder shaped like it) then yields these types.

    Raises:
        UsageError: the first shard cannot be read or its json fields have no single type.
    """
    shards = build["shards"]
    metas = []
    try:
        for sample in dataset.iter_shard(root / str(shards[0]["filename"])):
            metas.append(json.loads(sample["json"]))
            if len(metas) == samples:
                break
        fields = sorted({k for meta in metas for k in meta})
        struct = [{"name": k, **_merge([_feature(m[k]) for m in metas if k in m])} for k in fields]
    except (dataset.DatasetError, KeyError, IndexError, ValueError) as err:
        raise UsageError(f"cannot describe the samples' json for the card ({err})") from None
    return {
        "features": [
            {"name": "cls", "dtype": {"class_label": {"names": {str(k): str(k) for k in range(num_classes)}}}},
            {"name": "json", "struct": struct},
            {"name": "png", "dtype": "image"},
        ],
        "splits": [{"name": dataset.SPLIT, "num_bytes": sum(int(r.get("bytes", 0)) for r in shards),
                    "num_examples": sum(int(r.get("num_samples", 0)) for r in shards)}],
    }


def _image(preset: str, config: dict[str, Any]) -> str:
    """What one image is, for the card's table."""
    family = PRESETS.get(preset)
    size = config.get("size", "?")
    if family is not None and family.renders_fractals:
        return f"{size} x {size} 8-bit greyscale PNG, values {{0, 127}}"
    if family is not None and (family.sampler.startswith("contour")
                               or (family.sampler == "real-image" and config.get("color") == "grey")):
        return f"{size} x {size} 8-bit greyscale PNG"
    return f"{size} x {size} 8-bit RGB PNG"


def _shard_pattern(filenames: list[str]) -> str:
    """A webdataset brace pattern for train-000000..train-00000K, or the single name."""
    expected = [dataset.shard_name(i) for i in range(len(filenames))]
    if len(filenames) > 1 and filenames == expected:
        return dataset.brace_pattern(len(filenames))
    return filenames[0] if len(filenames) == 1 else dataset.SHARD_GLOB


_CONTOUR_DIFFERENCES = (
    "- **Renderer**: fracgen's numba re-implementation of the released RCDB / VisualAtom drawing (Pillow "
    "`ImageDraw.line` semantics, the `noise` package's float32 `pnoise1`), pixel-identical to it for the same "
    "random draws (the tests restate the released drawing with Pillow).\n"
    "- **Random draws**: numpy generators seeded from (seed, category, instance) instead of one global "
    "`random.seed(thread + 1)` stream per process, so an image does not depend on the thread or worker count and "
    "instance 0 of a C x I build is the image of the C x 1 build; the parameter distributions are the released "
    "ones, so the images follow them without being the released dataset's images.\n"
    "- **Output**: one grey channel (the released PNGs are RGB with R = G = B); every class's parameters are saved "
    "in `params.json` (the released scripts save instance 0's geometry only)."
)
_CONTOUR_LPCE = (
    "\n- **LPCE classes**: one base image; class l scales the start polygon's per-vertex radii by (1 + u), "
    "u ~ U(-Delta, Delta), with the base image's noise and greys shared by all classes. This is fracgen's reading "
    "of the paper's \"perturbations to the radii\": the 1p-frac repository has no code for it "
    "(`--radius-perturbation scalar` scales all radii by one u instead)."
)


def differences(config: dict[str, Any], preset: str = DEFAULT_PRESET) -> str:
    """Markdown list: what this build does where the paper and the released 1p-frac code differ.

    Only fractal presets render IFS; for the others the list says so. FractalDB and OFDB draw no LIEP
    perturbation, so their list leaves that item out.
    """
    family = PRESETS.get(preset)
    if family is not None and family.sampler.startswith("contour"):
        return _CONTOUR_DIFFERENCES + (_CONTOUR_LPCE if family.sampler == "contour-lpce" else "")
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
            "to bottom. Stored as an 8-bit greyscale PNG with values {0, 127} rather than the released RGB PNG with "
            "equal channels (same pixel values in every decoder)."
        )
    else:
        raster = (
            f"**Raster: `{style}`**, not the released look (which pastes 3 x 3 random patches and stretches x and y "
            "independently); see fracgen's render module."
        )
    points = config.get("points", "?")
    if family.systems == "fractaldb":
        return "\n".join(f"- {item}" for item in _fractaldb_items(config, raster, points))
    items = [
        *([perturb] if "perturbation" in family.options else []),
        "**Map probabilities** p_i = |det A_i| / sum_j |det A_j| of the base maps, not recomputed after "
        "perturbation, as the released code computes them.",
        f"**Chaos game**: {points} points from (0, 0), no burn-in, the same map-choice sequence for every class of "
        "a fractal (released code: 100,000 points, same rules).",
        raster,
        f"**Image size** {config.get('size', '?')} px (released: 512).",
        "**Base systems** read from a params file (`--params`, copied as params.json with their measured "
        "sigma-factors), not searched: the search options (sigma, margin, N) steered nothing."
        if family.systems == "sigma" and config.get("params_source") == "file"
        else f"**sigma target** drawn from U(sigma - {config.get('margin', 0.1)}, sigma + {config.get('margin', 0.1)}) "
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


def _fractaldb_items(config: dict[str, Any], raster: str, points: Any) -> list[str]:
    """FractalDB/OFDB: the differences from their released scripts (no perturbation, no redraw: a category search)."""
    return [
        "**Map probabilities** p_i = |det A_i| / sum_j |det A_j| of the category's maps, as the released code.",
        f"**Chaos game**: {points} points from (0, 0), no burn-in, one map-choice sequence per category (released "
        "FractalDB/OFDB scripts: 200,000 points); a variation whose chaos game diverges is drawn from its finite "
        "prefix, as FractalDB's code does.",
        raster,
        f"**Image size** {config.get('size', '?')} px (released: 362).",
        f"**Categories** from FractalDB's search: N ~ U{{2..7}} maps, parameters ~ U(-1, 1), kept when a render at "
        f"its fixed settings (100,000 points, one pixel per point, 512 x 512) lights at least "
        f"{config.get('min_fill', 0.2)} of the pixels, whatever the images' size and points, and stays finite.",
        "**Seeds and records**: every draw comes from a generator seeded by (seed, category) for the map choices "
        "and (seed, category, patch instance) for the patch masks, and every category's system is saved in "
        "`params.json` (the released scripts draw from global random streams and save parameters as CSV).",
    ]


def _source_section(config: dict[str, Any], source_license: str | None, source_url: str | None) -> str:
    """The real-image preset's source photo: file, checksum, licence and where it comes from."""
    source = str(config.get("source") or "")
    if not source:
        if source_license or source_url:
            raise UsageError("--source-license and --source-url describe the photo of a build-real dataset; this "
                             "dataset has none")
        return ""
    unknown = "**not stated** by whoever published this card: ask them before using these images"
    return (
        "## Source image\n\n"
        "Every image of this set is derived from one photo, so its licence applies to them too.\n\n"
        "| | |\n|---|---|\n"
        f"| file (in this repo; the rebuild command reads it) | `{source}` |\n"
        f"| sha256 | `{config.get('source_sha256', '?')}` |\n"
        f"| licence of the photo | {f'`{source_license}`' if source_license else unknown} |\n"
        f"| provenance (where the photo comes from) | {source_url or unknown} |\n"
    )


def _per_class_text(config: dict[str, Any]) -> dict[str, str]:
    """The 1p-frac card's words for a class's images: one, or K patch variants (``--patch-variants``)."""
    k = config.get("patch_variants", 1)
    if not isinstance(k, int) or k <= 1:
        return {"per_class": "one image per perturbation", "variant_field": "", "variants_title": ""}
    return {"per_class": f"{k} images per class (the same points under freshly drawn 3 x 3 patch masks, the "
            "paper's Table 13 \"w/ Aug.\")", "variants_title": f", {k} patch variants",
            "variant_field": ", and `variant`, which of the class's patch-mask draws the image is"}


def _measured_sigma(params: dict | None) -> str:
    """The sigma-factor a params file records for its systems, as the card shows it (a range for several)."""
    try:
        values = [float(system["sigma"]) for system in params["systems"]]
    except (KeyError, TypeError, ValueError):
        values = []
    if not values:
        return "not recorded (the base systems came from a params file)"
    low, high = min(values), max(values)
    shown = f"{low:.4g}" if low == high else f"{low:.4g} to {high:.4g}"
    return f"{shown} (measured; the base system{'s' if len(values) > 1 else ''} came from a params file)"


def card_context(
    root: Path | str,
    *,
    license: str | None = None,
    repo_id: str = "USER/NAME",
    source_license: str | None = None,
    source_url: str | None = None,
) -> dict[str, str]:
    """Every placeholder value of a card, from the dataset's build.json, params.json and first shard.

    Args:
        root: a complete dataset folder.
        license: the licence id the publisher chose for the dataset (required).
        repo_id: the Hub repo the card will live in.
        source_license: real-image builds: the licence id of the source photo.
        source_url: real-image builds: where the photo comes from (URL or citation).

    Raises:
        UsageError: no licence or a malformed one, or `root` holds no complete build.
    """
    if license is None:
        raise UsageError("choose the dataset's licence for its card: --license ID (e.g. cc-by-4.0, cc0-1.0, mit)")
    for option, value in (("--license", license), ("--source-license", source_license)):
        if value is not None and not LICENSE_RE.match(value):
            raise UsageError(f"{option} must be a lower-case license id such as cc-by-4.0, got {value!r}")
    if source_url is not None and not source_url.isprintable():
        raise UsageError(f"--source-url must be one line of text, got {source_url!r}")
    root = Path(root)
    build = dataset.read_build(root)
    config = build.get("config")
    if not isinstance(config, dict):
        raise UsageError(f"{root / dataset.BUILD_JSON} has no config object; run `fracgen verify {root}`")
    filenames = [str(r["filename"]) for r in build["shards"]]
    num_samples = sum(int(r.get("num_samples", 0)) for r in build["shards"])
    num_classes = build.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"{root / dataset.BUILD_JSON} num_classes {num_classes!r} is not a positive integer")
    name = " ".join(str(build.get("name") or root.name).split())  # one line, whatever build.json holds
    from_file = config.get("params_source") == "file"  # --params: the recorded sigma and maps steered nothing
    maps = None if from_file else config.get("maps")
    params = dataset.read_params(root) if maps is None else None
    if params is not None:
        try:
            maps = len(params["systems"][0]["maps"])
        except (KeyError, IndexError, TypeError):
            maps = None
    sigma = _measured_sigma(params) if from_file else str(config.get("sigma", "?"))
    versions = build.get("versions") or {}
    command = build.get("command", "")
    if isinstance(command, list):
        import shlex

        command = shlex.join(command)
    if template_for(build).name == "1p-frac.md":
        systems = f"params file, sigma {sigma.split(' (')[0]}" if from_file else f"sigma {sigma}"
        pretty = (f"1p-frac ({systems}, Delta {config['delta']}, L {config['L']}"
                  f"{_per_class_text(config)['variants_title']})")
    else:
        pretty = name
    preset = preset_of(build)
    relevant = relevant_options(preset, config)

    def option(key: str, default: str = "?") -> str:
        if key not in relevant:
            return f"n/a ({preset})"
        return str(config.get(key, default))

    family = PRESETS.get(preset)
    real = family is not None and family.sampler == "real-image"
    tags = ["synthetic"] + (["fractals"] if family and family.renders_fractals else [])
    tags += ([] if real else ["formula-driven"]) + ["webdataset", preset] + list(family.tags if family else ())
    if from_file:
        relevant -= set(SEARCH_ONLY)
    shown = [k for k in config if k in relevant or k in ("preset", "source", "source_sha256")]
    rows = {label: config[k] for k, label in _OPTION_LABELS.items() if k in relevant and k in config}
    if from_file and "sigma" in relevant_options(preset, config):
        rows = {_OPTION_LABELS["sigma"]: sigma, **rows}
    info = yaml.safe_dump({"dataset_info": dataset_info(root, build, num_classes)}, sort_keys=False).rstrip()
    context = {
        "license": license,
        "size_category": size_category(num_samples),
        "pretty_name": json.dumps(pretty),
        "title": pretty,
        "name": name,
        "repo_id": repo_id,
        "tags": "\n".join(f"- {tag}" for tag in dict.fromkeys(tags)),
        "dataset_info": info,
        "description": family.description if family else f"the {preset} preset of fracgen.",
        "source_note": _source_section(config, source_license, source_url),
        "num_samples": str(num_samples),
        "num_classes": str(num_classes),
        "num_shards": str(len(filenames)),
        "total_size": _human_bytes(sum(int(r.get("bytes", 0)) for r in build["shards"])),
        "shard_pattern": _shard_pattern(filenames),
        "size": str(config.get("size", "?")),
        "image": _image(preset, config),
        "style": option("style"),
        "sigma": sigma if from_file else option("sigma"),
        "delta": option("delta"),
        "L": option("L"),
        "N": str(maps) if maps is not None and "maps" in relevant_options(preset, config) else f"n/a ({preset})",
        "perturbation": option("perturbation", "not recorded"),
        "points": option("points"),
        "seed": str(config.get("seed", "?")),
        "parameter_rows": "\n".join(f"| {label} | {value} |" for label, value in rows.items()),
        "build_time": _build_time(build.get("timing") or {}, num_samples, from_file),
        "command": str(command),
        "install": INSTALL,
        "fracgen_version": str(versions.get("fracgen", "?")),
        "versions": _table(versions, ("package", "version")) if versions else "not recorded",
        "config_table": _table({k: config[k] for k in shown}, ("option", "value")) if shown else "not recorded",
        "differences": differences(config, preset),
        **_per_class_text(config),
    }
    return context


def render_card(
    root: Path | str,
    *,
    license: str | None = None,
    repo_id: str = "USER/NAME",
    template: Path | str | None = None,
    source_license: str | None = None,
    source_url: str | None = None,
) -> str:
    """The dataset card of a build, as Markdown with a YAML header.

    Args:
        root: a complete dataset folder.
        license: the licence id the publisher chose, for the YAML header (required).
        repo_id: the Hub repo the card will live in (used in the loading snippets).
        template: a template file; default: `datasets_cards/1p-frac.md` for one-fractal builds, else
            `datasets_cards/generic.md`.
        source_license: real-image builds: the licence id of the source photo.
        source_url: real-image builds: where the photo comes from.

    Returns:
        The card text.

    Raises:
        UsageError: no complete build, no or a bad license id, a missing template or an unknown placeholder.
    """
    build = dataset.read_build(root)
    path = Path(template) if template is not None else template_for(build)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise UsageError(f"card template {path} is missing") from err
    context = card_context(root, license=license, repo_id=repo_id, source_license=source_license,
                           source_url=source_url)
    card = render_template(text, context)
    logger.debug("rendered card from %s (%d chars)", path, len(card))
    return card
