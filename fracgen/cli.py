"""The ``fracgen`` command line: click commands that parse, validate and call plain functions.

Every expected failure (a bad option, a bad file, a full disk) prints one ``Error: ...`` line and exits with
status 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import click

from fracgen.errors import FracgenError, UsageError
from fracgen.options import Option
from fracgen.presets import DEFAULT_PRESET, Family, families, option_table


class _Group(click.Group):
    """A group whose errors are one line: click's usage errors and fracgen's own alike."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except FracgenError as e:
            click.echo(f"Error: {' '.join(str(e).split())}", err=True)
            sys.exit(2)
        except OSError as e:  # what the checks could not foresee: a file made unreadable, a failing disk
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"Error: {where}{e.strerror or e}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


class _Number(click.ParamType):
    """A finite float, optionally within [lo, hi]; its error names the allowed values."""

    name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"a number in [{self.lo:g}, {self.hi:g}]"
        return f"a number >= {self.lo:g}" if self.lo is not None else "a finite number"

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (self.lo is not None and number < self.lo) or (
                self.hi is not None and number > self.hi):
            self.fail(f"must be {self.describe()}, got {value!r}", param, ctx)
        return number + 0.0  # -0.0 is 0: numpy refuses uniform(0.0, -0.0), the bounds of a zero Delta


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fracgen")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """Build, check and publish formula-driven synthetic datasets (1p-frac and friends)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _default_text(option: Option, families: list[Family]) -> str:
    """"[default: 512; fractaldb, ofdb: 362]": the table's default, then the families that differ."""
    if callable(option.default):
        return ""
    others: dict[Any, list[str]] = {}
    for family in families:
        if option.name in family.options and family.defaults.get(option.name, option.default) != option.default:
            others.setdefault(family.defaults[option.name], []).append(family.name)
    shown = "; ".join([str(option.default)] + [f"{', '.join(n)}: {v}" for v, n in others.items()])
    return f" [default: {shown}]"


def _click_option(option: Option, families: list[Family], with_default: bool = False):
    """A click option from a row of the options' table (the families that read it named in its help)."""
    if option.kind is int:
        kind = click.IntRange(min=option.lo, max=option.hi)
    elif option.kind is float:
        kind = _Number(option.lo, option.hi)
    else:
        kind = click.Choice(option.choices) if option.choices else str
    readers = [f for f in families if option.name in f.options]
    grouped: dict[str, list[str]] = {}
    for f in readers:
        if option.name in f.notes:
            grouped.setdefault(f.notes[option.name], []).append(f.name)
    notes = "; ".join(f"{', '.join(names)}: {note}" for note, names in grouped.items())
    scope = "" if len(readers) == len(families) else f" ({', '.join(f.name for f in readers)})"
    help_text = option.help + (f" {notes}." if notes else "") + scope
    if with_default:
        return click.option(option.flag, option.name, type=kind, default=option.default, show_default=True,
                            help=help_text)
    return click.option(option.flag, option.name, type=kind, default=None,
                        help=help_text + _default_text(option, readers))


def _table_options(names, families: list[Family], with_default: bool = False):
    """Decorate a command with the table's options ``names``, in table order."""
    table = option_table()
    chosen = [table[n] for n in table if n in names]

    def decorate(f):
        for option in reversed(chosen):
            f = _click_option(option, families, with_default)(f)
        return f
    return decorate


def _file_name(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """An output file option as a Path; an empty one is refused (Path("") would be the current folder)."""
    if value is not None and not value.strip():
        raise click.BadParameter("must name a file, got an empty path")
    return None if value is None else Path(value)


def _search_family() -> Family:
    """The family whose base systems are drawn by sigma-factor (the options `fracgen search` takes)."""
    return families()[DEFAULT_PRESET]


_SEARCH = ("sigma", "maps", "seed", "margin", "min_fill", "size", "points", "style", "max_attempts")


@cli.command("search")
@_table_options(_SEARCH, [_search_family()], with_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, callback=_file_name,
              help="Write the params JSON here (default, or -: print it).")
def search_command(output: Path | None, **options) -> None:
    """Sample an IFS with a target sigma-factor (Anderson & Farrell) and print or write its params JSON."""
    from fracgen.config import BuildConfig, check_memory
    from fracgen.search import search

    config = BuildConfig(**options, L=1)
    config.validate()
    check_memory(config)
    system = search(**options)
    data = dict(system.to_json(), seed=config.seed, sigma_target=config.sigma, margin=config.margin)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if output is None or str(output) == "-":
        click.echo(text, nl=False)
        return
    from fracgen.folder import replaceable, write_atomic

    replaceable(Path(output), _search_output, "params file written by `fracgen search`", head=64 << 20)
    write_atomic(output, text.encode(), then="run the search again")  # nothing to resume
    click.echo(f"wrote {output} (sigma {system.sigma:.4f}, fill {system.fill:.3f}, {system.attempts} attempts)")


def _search_output(head: bytes) -> bool:
    """Whether a file's start is a params file of `fracgen search` (a JSON object with its keys)."""
    try:
        data = json.loads(head)
    except ValueError:  # not JSON (a params file of 1000 maps, the most, is about 170 KB)
        return False
    return isinstance(data, dict) and {"maps", "sigma_target", "margin", "seed"} <= set(data)


def _shard_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, j = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"must be i:j with integers 0 <= i < j, got {value!r}") from None
    if not 0 <= i < j:
        raise click.BadParameter(f"must be i:j with integers 0 <= i < j, got {value!r}")
    return i, j


_RUN = ("workers", "resume", "overwrite", "shard_range", "no_progress", "recipe_only")


def _operational(f):
    """Options that decide how a build runs, never its bytes."""
    for option in reversed([
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [default: all cores]."),
        click.option("--resume", is_flag=True, help="Finish an interrupted build in OUT with its stored options."),
        click.option("--overwrite", is_flag=True, help="Replace a previous fracgen build in OUT."),
        click.option("--shard-range", callback=_shard_range, default=None, metavar="I:J",
                     help="Build only shards I..J-1 (split a big build across machines; finish with --resume)."),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--recipe-only", is_flag=True, help="Write the records and no shards: a recipe (KBs) that "
                     "`fracgen build --resume OUT`, fracgen.recipe or the trainer render, to the same bytes."),
    ]):
        f = option(f)
    return f


def _builders(takes_source: bool) -> list[Family]:
    return [f for f in families().values() if f.takes_source == takes_source]


def _out_folder(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    if not value.strip():  # Path("") would be the current folder
        raise click.BadParameter("must name a folder, got an empty path (use . for the current folder)")
    return Path(value)


@cli.command("build")
@click.argument("out", type=click.Path(), callback=_out_folder)
@click.option("--preset", type=click.Choice([f.name for f in _builders(False)]), default=None,
              help=f"Dataset family [default: {DEFAULT_PRESET}] (a single real image: fracgen build-real).")
@_table_options({n for f in _builders(False) for n in f.options}, _builders(False))
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base systems from this JSON (fracgen search output or a build's params.json) instead of searching.")
@_operational
def build_command(out: Path, params: Path | None, **options) -> None:
    """Render a dataset into WebDataset shards in OUT (1p-frac: L perturbations of each of C fractals).

    Example: fracgen build --sigma 3.5 --delta 0.1 --L 1000 out/
    """
    _run_build(out, options, params=params)


@cli.command("build-real")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(), callback=_out_folder)
@_table_options({n for f in _builders(True) for n in f.options}, _builders(True))
@_operational
def build_real_command(image: Path, out: Path, **options) -> None:
    """L perturbations of one real IMAGE's geometry into WebDataset shards in OUT (paper Tables 11-12).

    Example: fracgen build-real photo.jpg --edges canny --transform affine --delta 0.1 --L 1000 out/
    """
    _run_build(out, dict(options, preset=_builders(True)[0].name), source=image)


def _run_build(out: Path, options: dict, params: Path | None = None, source: Path | None = None) -> None:
    from fracgen.build import BuildConfig, build
    from fracgen.output import stored_config

    run = {k: options.pop(k) for k in _RUN}
    given = {k: v for k, v in options.items() if v is not None}
    stored = stored_config(out) if run["resume"] else None
    preset = given.pop("preset", None) or (stored.preset if stored is not None else DEFAULT_PRESET)
    if stored is not None and preset != stored.preset:
        raise UsageError(f"--preset {preset} differs from the build being resumed in {out} ({stored.preset})")
    _check_given(preset, given, params)
    if stored is not None:
        config = BuildConfig(**{**stored.to_json(), **given}) if given else None
    else:
        config = BuildConfig(preset=preset, **given)
    result = build(config, out, workers=run["workers"], resume=run["resume"], overwrite=run["overwrite"],
                   shard_range=run["shard_range"], params=params, source=source, progress=not run["no_progress"],
                   recipe_only=run["recipe_only"])
    effective = config or stored
    for warning in effective.family.warnings(effective) if effective is not None else []:
        click.echo(f"warning: {warning}", err=True)  # after the build, so that a refusal stays one line
    # the rate counts the rendering stage only (render, encode, write; on a cold numba cache also the workers'
    # compilation of the kernels, a few seconds once per machine): search and planning are apart
    rate = result.images / result.render_seconds if result.render_seconds > 0 else 0.0
    timing = (f"{result.images} images in {result.render_seconds:.1f} s of rendering, {rate:.0f} images/s; "
              f"search and planning {result.search_seconds:.1f} s, whole call {result.seconds:.1f} s")
    if result.complete and run["recipe_only"]:
        click.echo(f"wrote the recipe {out}: {result.num_shards} shards of {result.images} images to render with "
                   f"`fracgen build --resume {out}` ({timing})")
    elif result.complete:
        click.echo(f"built {out}: {result.num_shards} shards, {len(result.built)} rendered now, "
                   f"{len(result.skipped)} already complete ({timing})")
    else:
        click.echo(f"built shards {result.built} of {out} ({timing}); "
                   f"the build is incomplete: finish it with `fracgen build --resume {out}`")


def _check_given(preset: str, given: dict, params: Path | None) -> None:
    """Refuse options the family does not read, and search options beside --params (they would steer nothing)."""
    family = families()[preset]
    extra = sorted(set(given) - family.options)
    if extra:
        names = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise UsageError(f"--preset {preset} takes no {names}: it does not use {'them' if len(extra) > 1 else 'it'}")
    if params is not None and not family.systems:
        raise UsageError(f"--preset {preset} takes no --params: it has no fractal systems")
    table = option_table()
    unused = sorted(k for k in given if table[k].search_only) if params is not None else []
    if unused:
        names = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise UsageError(f"--params gives the base systems, so {names} would be ignored: drop {names}")


_dataset_dir = click.argument(
    "root", type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)
)


@cli.command("verify")
@_dataset_dir
def verify_command(root: Path) -> None:
    """Re-read every shard of ROOT against build.json, _info.json and params.json.

    Exit 0 with a one-line summary when the dataset is sound; exit 1 naming each bad shard otherwise.
    """
    from fracgen.verify import verify

    report = verify(root)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise SystemExit(1)


@cli.command("preview")
@_dataset_dir
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_file_name,
    help="Where to write the image (default: ROOT/preview.png).",
)
@click.option(
    "--count", type=int, default=8, show_default=True, help="Perturbations shown in the grid (1-32)."
)
def preview_command(root: Path, out: Path | None, count: int) -> None:
    """Draw ROOT/preview.png: the base fractal, a grid of perturbations and their differences."""
    from fracgen.preview import preview

    if not 1 <= count <= 32:
        raise click.BadParameter(f"must be between 1 and 32, got {count}", param_hint="--count")
    click.echo(str(preview(root, out=out, count=count)))


@cli.command("push-to-hub")
@_dataset_dir
@click.option("--repo-id", required=True, help="Dataset repo on the Hub, USER/NAME or ORG/NAME.")
@click.option(
    "--private",
    is_flag=True,
    default=False,
    help="Create the repo private (an existing repo keeps its visibility).",
)
@click.option("--revision", default=None, help="Branch to commit to (default: main).")
@click.option(
    "--commit-message", default=None, help="Commit summary (default: names the dataset and its size)."
)
@click.option(
    "--token",
    default=None,
    envvar="HF_TOKEN",
    show_envvar=True,
    help="Hub token with write access (else HF_TOKEN, else the login stored by `hf auth login`).",
)
@click.option(
    "--endpoint",
    default=None,
    help="Hub-compatible server URL (default: https://huggingface.co or HF_ENDPOINT).",
)
@click.option(
    "--dry-run",
    "dry_run",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Write the file list (sizes, sha256) and the rendered card into DIR; contact nothing.",
)
@click.option(
    "--license",
    "license_",
    required=True,
    help="The dataset's licence id for the card (your choice, e.g. cc-by-4.0, cc0-1.0, mit).",
)
@click.option("--source-license", default=None, help="build-real datasets: the licence id of the source photo.")
@click.option("--source-url", default=None, help="build-real datasets: where the photo comes from (URL or citation).")
@click.option("--recipe", is_flag=True, help="Publish the records only: a recipe that renders this dataset byte for "
              "byte (its shards' sha256 travel with it); a recipe folder publishes nothing else anyway.")
def push_to_hub_command(
    root: Path,
    repo_id: str,
    private: bool,
    revision: str | None,
    commit_message: str | None,
    token: str | None,
    endpoint: str | None,
    dry_run: Path | None,
    license_: str,
    source_license: str | None,
    source_url: str | None,
    recipe: bool,
) -> None:
    """Verify ROOT, then upload it with its card and preview to a Hub dataset repo in one commit."""
    from fracgen import hub

    hub.check_environment()  # huggingface_hub parses these when imported: a bad one would be a traceback
    from fracgen.publish import REPO_ID_RE, push_to_hub

    if not REPO_ID_RE.match(repo_id):
        raise click.BadParameter(
            f"expected USER/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}", param_hint="--repo-id"
        )
    problem = hub.url_problem(endpoint) if endpoint is not None else ""
    if problem:
        raise click.BadParameter(f"expected an http(s) URL without query or fragment, got {endpoint!r} ({problem})",
                                 param_hint="--endpoint")
    if commit_message is not None and not commit_message.strip():
        raise click.BadParameter("must not be empty", param_hint="--commit-message")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license_):
        raise click.BadParameter(
            f"expected a lower-case license id such as cc-by-4.0, got {license_!r}", param_hint="--license"
        )
    result = push_to_hub(root, repo_id, private=private, revision=revision, commit_message=commit_message,
                         token=token, endpoint=endpoint, dry_run=dry_run, license=license_,
                         source_license=source_license, source_url=source_url, recipe=recipe)
    if dry_run is None:
        click.echo(result)
        return
    from fracgen.dataset import CARD_MD
    from fracgen.staging import LISTING

    click.echo(f"dry run: file list in {Path(result) / LISTING[0]}, card in {Path(result) / CARD_MD}; "
               "nothing was contacted")


def main() -> None:
    """Entry point of the ``fracgen`` script."""
    cli.main(prog_name="fracgen")


if __name__ == "__main__":
    main()


__all__ = ["cli", "main", "UsageError"]
