"""Render a dataset card (the Hub's `README.md`) from a template in `datasets_cards/` and a build's records.

Templates are Markdown with `{{name}}` placeholders; every placeholder must be known (an unknown one is an
error, so a typo never reaches a published card). Values that land in the YAML header are JSON-quoted, which
YAML reads as plain strings whatever characters they hold.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from fracgen import dataset
from fracgen.errors import UsageError
from fracgen.presets import DEFAULT_PRESET, registry

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
    """The options this preset's family reads; every recorded option when no family has its name."""
    family = registry.get(preset)
    return set(family.options) if family else set(config)


def template_for(build: dict[str, Any]) -> Path:
    """The family's own card for the builds it describes best (1p-frac's for one fractal), else `generic.md`."""
    family = registry.get(preset_of(build))
    own = family.card_template_for(_config(build)) if family else None
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


def dataset_info(root: Path, build: dict[str, Any], num_classes: int, samples: int = dataset.HEAD) -> dict[str, Any]:
    """The card's ``dataset_info``: features `png` (Image), `cls` (ClassLabel over the labels) and `json`
    (its fields, read from the first samples of the first shard), and the train split's size.

    ``datasets.load_dataset`` on the Hub repo (or a folder shaped like it) then yields these types.

    Raises:
        UsageError: the first shard cannot be read or its json fields have no single type.
    """
    shards = build["shards"]
    try:
        metas = first_records(root, build, samples)
        fields = sorted({k for meta in metas for k in meta})
        struct = [{"name": k, **_merge([_feature(m[k]) for m in metas if k in m])} for k in fields]
    except (dataset.DatasetError, KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
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


def first_records(root: Path, build: dict[str, Any], count: int = dataset.HEAD) -> list[dict]:
    """The json of the first samples: read from the first shard, or a recipe's record of them."""
    if dataset.is_recipe(build):
        return [dict(m) for m in dataset.recipe_head(build)[:count]]
    metas = []
    for sample in dataset.iter_shard(root / str(build["shards"][0]["filename"])):
        metas.append(json.loads(sample["json"]))
        if len(metas) == count:
            break
    return metas


_IMAGES = {"fractal": "8-bit greyscale PNG, values {0, 127}", "L": "8-bit greyscale PNG", "RGB": "8-bit RGB PNG"}


def _image(config: dict[str, Any]) -> str:
    """What one image is, for the card's table."""
    from fracgen.config import BuildConfig

    size = config.get("size", "?")
    try:
        options = BuildConfig.from_record(config, where=dataset.BUILD_JSON, strict=False)
        mode = options.family.image_mode(options)
    except UsageError:  # an unknown family or a damaged config: the card still names the recorded size
        mode = "RGB"
    return f"{size} x {size} {_IMAGES[mode]}"


def _shard_pattern(filenames: list[str]) -> str:
    """A webdataset brace pattern for train-000000..train-00000K, or the single name."""
    expected = [dataset.shard_name(i) for i in range(len(filenames))]
    if len(filenames) > 1 and filenames == expected:
        return dataset.brace_pattern(len(filenames))
    return filenames[0] if len(filenames) == 1 else dataset.SHARD_GLOB


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


def card_context(
    root: Path | str,
    *,
    license: str | None = None,
    repo_id: str = "USER/NAME",
    source_license: str | None = None,
    source_url: str | None = None,
    build: dict[str, Any] | None = None,
    timing: bool = True,
) -> dict[str, str]:
    """Every placeholder value of a card, from the dataset's build.json, params.json and first shard.

    Args:
        root: a complete dataset folder.
        license: the licence id the publisher chose for the dataset (required).
        repo_id: the Hub repo the card will live in.
        source_license: real-image builds: the licence id of the source photo.
        source_url: real-image builds: where the photo comes from (URL or citation).
        build: build.json's content, when it is not written yet (a build writes its card before it).
        timing: say how long the build took (a build's own card points to build.json instead, so that the same
            options give the same card).

    Raises:
        UsageError: no licence or a malformed one, or `root` holds no complete build.
    """
    _check_publisher(license, source_license, source_url)
    root = Path(root)
    build, config, num_classes = _records(root, build)
    shards = build["shards"]
    filenames = [str(r["filename"]) for r in shards]
    num_samples = sum(int(r.get("num_samples", 0)) for r in shards)
    name = " ".join(str(build.get("name") or root.name).split())  # one line, whatever build.json holds
    versions = build.get("versions") or {}
    command = build.get("command", "")
    context = {
        "license": license,
        "size_category": size_category(num_samples),
        "title": name,
        "name": name,
        "repo_id": repo_id,
        "dataset_info": yaml.safe_dump({"dataset_info": dataset_info(root, build, num_classes)},
                                       sort_keys=False).rstrip(),
        "source_note": _source_section(config, source_license, source_url),
        "num_samples": str(num_samples),
        "num_classes": str(num_classes),
        "num_shards": str(len(filenames)),
        "total_size": _human_bytes(sum(int(r.get("bytes", 0)) for r in shards)) if not dataset.is_recipe(build)
        else "not rendered here: a recipe",
        "recipe_note": _recipe_note(repo_id) if dataset.is_recipe(build) else "",
        "shard_pattern": _shard_pattern(filenames),
        "size": str(config.get("size", "?")),
        "seed": str(config.get("seed", "?")),
        "build_time": _build_time(build.get("timing") or {}, num_samples, config.get("params_source") == "file")
        if timing else f"in `{dataset.BUILD_JSON}` (`timing`: wall time, workers, machine)",
        "command": shlex.join(command) if isinstance(command, list) else str(command),
        "install": INSTALL,
        "fracgen_version": str(versions.get("fracgen", "?")),
        "versions": _table(versions, ("package", "version")) if versions else "not recorded",
        **_family_context(root, build, config),
    }
    context["pretty_name"] = json.dumps(context["title"])
    return context


def _recipe_note(repo_id: str) -> str:
    """What a recipe's card says first: where its images come from."""
    return (
        "## A recipe\n\n"
        "This repository holds the records of the dataset (its options, base systems and every class's "
        "parameters), not its images: fracgen renders them, byte for byte the images of a full build of the same "
        "options. Render the shards with\n\n"
        f"```bash\nhf download {repo_id} --repo-type dataset --local-dir DIR\nfracgen build --resume DIR\n```\n\n"
        "or read the samples live, from Python (`fracgen.recipe.open_recipe(DIR)[i]`) or the trainer "
        "(`fracgen-train pretrain --data DIR`).\n\n"
    )


def _check_publisher(license: str | None, source_license: str | None, source_url: str | None) -> None:
    if license is None:
        raise UsageError("choose the dataset's licence for its card: --license ID (e.g. cc-by-4.0, cc0-1.0, mit)")
    for option, value in (("--license", license), ("--source-license", source_license)):
        if value is not None and not LICENSE_RE.match(value):
            raise UsageError(f"{option} must be a lower-case license id such as cc-by-4.0, got {value!r}")
    if source_url is not None and not source_url.isprintable():
        raise UsageError(f"--source-url must be one line of text, got {source_url!r}")


def _records(root: Path, build: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any], int]:
    """build.json (read, unless given), its config and its class count, each checked to be what the card needs."""
    build = dataset.read_build(root) if build is None else build
    config = build.get("config")
    if not isinstance(config, dict):
        raise UsageError(f"{root / dataset.BUILD_JSON} has no config object; run `fracgen verify {root}`")
    num_classes = build.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"{root / dataset.BUILD_JSON} num_classes {num_classes!r} is not a positive integer")
    return build, config, num_classes


def _family_context(root: Path, build: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    """The placeholders the family decides: every option's value (or "n/a" where it reads none), the tables of
    options, the tags, the image, and the family's own text (its departures from the released code...)."""
    preset = preset_of(build)
    family = registry.get(preset)
    relevant = relevant_options(preset, config)
    table = registry.option_table()
    text = family.card_text(config, dataset.read_params(root)) if family else {}
    if config.get("params_source") == "file":  # --params: the search options steered nothing
        relevant -= {n for n, o in table.items() if o.search_only and n not in text}
    values = {n: str(config.get(n, "not recorded")) if n in relevant else f"n/a ({preset})" for n in table}
    rows = {o.label: text.get(n, config[n]) for n, o in table.items() if o.label and n in relevant and n in config}
    shown = [k for k in config if k in relevant or k in ("preset", "source", "source_sha256")]
    tags = ["synthetic"] + (["fractals"] if family and family.systems else [])
    tags += ([] if family and family.takes_source else ["formula-driven"]) + ["webdataset", preset]
    tags += list(family.tags if family else ())
    return {
        **values,
        "tags": "\n".join(f"- {tag}" for tag in dict.fromkeys(tags)),
        "description": family.description if family else f"the {preset} preset of fracgen.",
        "image": _image(config),
        "parameter_rows": "\n".join(f"| {label} | {value} |" for label, value in rows.items()),
        "config_table": _table({k: config[k] for k in shown}, ("option", "value")) if shown else "not recorded",
        "differences": "",
        **text,
    }


def render_card(
    root: Path | str,
    *,
    license: str | None = None,
    repo_id: str = "USER/NAME",
    template: Path | str | None = None,
    source_license: str | None = None,
    source_url: str | None = None,
    build: dict[str, Any] | None = None,
    timing: bool = True,
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
        build: build.json's content, when it is not written yet; ``timing``: as ``card_context``.

    Returns:
        The card text.

    Raises:
        UsageError: no complete build, no or a bad license id, a missing template or an unknown placeholder.
    """
    build = dataset.read_build(root) if build is None else build
    path = Path(template) if template is not None else template_for(build)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise UsageError(f"card template {path} is missing") from err
    context = card_context(root, license=license, repo_id=repo_id, source_license=source_license,
                           source_url=source_url, build=build, timing=timing)
    card = render_template(text, context)
    logger.debug("rendered card from %s (%d chars)", path, len(card))
    return card
