"""The ``fracgen`` command line: click commands that parse, validate and call plain functions.

Every expected failure (a bad option, a bad file, a full disk) prints one ``Error: ...`` line and exits with
status 2; no traceback.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click

from fracgen import perturb, render
from fracgen.errors import FracgenError, UsageError


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
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}")
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fracgen")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """Build, check and publish formula-driven synthetic datasets (1p-frac and friends)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


_sigma = click.option("--sigma", type=float, default=3.5, show_default=True, callback=_finite,
                      help="Target sigma-factor, 0 < sigma <= 3 x maps (small = complex shapes).")
_maps = click.option("--maps", "maps", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Affine maps N per system.")
_seed = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every draw.")
_margin = click.option("--margin", type=click.FloatRange(min=0), default=0.1, show_default=True, callback=_finite,
                       help="The target is drawn from U(sigma - margin, sigma + margin), as in the released code.")
_min_fill = click.option("--min-fill", type=click.FloatRange(0, 1), default=0.05, show_default=True,
                         callback=_finite, help="Lit fraction every render must reach.")
_size = click.option("--size", type=click.IntRange(min=render.MIN_SIZE), default=512, show_default=True,
                     help=f"Image side in pixels (>= {render.MIN_SIZE} for the margins).")
_points = click.option("--points", type=click.IntRange(min=1), default=100_000, show_default=True,
                       help="Chaos-game points per image.")
_style = click.option("--style", type=click.Choice(render.STYLES), default="reference", show_default=True,
                      help="reference: the released 1p-frac look (3x3 random patches); points: plain points.")


@cli.command("search")
@_sigma
@_maps
@_seed
@_margin
@_min_fill
@_size
@_points
@_style
@click.option("--max-attempts", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Systems drawn before giving up.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the params JSON here (default: print it).")
def search_command(sigma, maps, seed, margin, min_fill, size, points, style, max_attempts, output) -> None:
    """Sample an IFS with a target sigma-factor (Anderson & Farrell) and print or write its params JSON."""
    from fracgen.search import search

    _check_sigma(sigma, maps)
    system = search(sigma, maps=maps, seed=seed, margin=margin, min_fill=min_fill, size=size, points=points,
                    style=style, max_attempts=max_attempts)
    data = dict(system.to_json(), seed=seed, sigma_target=sigma, margin=margin)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    from fracgen.shards import write_atomic

    write_atomic(output, text.encode())
    click.echo(f"wrote {output} (sigma {system.sigma:.4f}, fill {system.fill:.3f}, {system.attempts} attempts)")


def _check_sigma(sigma: float, maps: int) -> None:
    if not 0 < sigma <= 3 * maps:
        raise click.BadParameter(f"must be in (0, {3 * maps}] for {maps} maps (sigma <= 3N), got {sigma}",
                                 param_hint="'--sigma'")


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


@cli.command("build")
@click.argument("out", type=click.Path(path_type=Path))
@_sigma
@click.option("--delta", type=click.FloatRange(min=0), default=0.1, show_default=True, callback=_finite,
              help="Perturbation degree Delta >= 0.")
@click.option("--L", "L", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Perturbation classes per fractal.")
@_maps
@click.option("--fractals", type=click.IntRange(min=1), default=1, show_default=True,
              help="Base systems C; every (fractal, perturbation) pair is its own class.")
@click.option("--perturbation", type=click.Choice(perturb.MODES), default="multiplicative", show_default=True,
              help="multiplicative: theta*(1+u), u~U(-D,D) (released code, the paper's numbers); "
                   "additive: theta+eps, eps~U(-D/2,D/2) (paper Eq. 9).")
@_style
@_size
@_points
@_min_fill
@_margin
@_seed
@click.option("--shard-size", type=click.IntRange(min=1), default=100, show_default=True, help="Images per shard.")
@click.option("--max-redraws", type=click.IntRange(min=0), default=100, show_default=True,
              help="Redraws of a diverging or under-filled perturbation before the build stops.")
@click.option("--params", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Base systems from this JSON (fracgen search output or a build's params.json) instead of searching.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [default: all cores].")
@click.option("--resume", is_flag=True, help="Finish an interrupted build in OUT with its stored options.")
@click.option("--overwrite", is_flag=True, help="Replace a previous fracgen build in OUT.")
@click.option("--shard-range", callback=_shard_range, default=None, metavar="I:J",
              help="Build only shards I..J-1 (split a big build across machines; finish with --resume).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def build_command(ctx: click.Context, out: Path, params: Path | None, workers: int | None, resume: bool,
                  overwrite: bool, shard_range: tuple[int, int] | None, no_progress: bool, **options) -> None:
    """Render L perturbations of each of C fractals into WebDataset shards in OUT.

    Example: fracgen build --sigma 3.5 --delta 0.1 --L 1000 out/
    """
    from fracgen.build import BuildConfig, build, stored_config

    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    if resume and (stored := stored_config(out)) is not None:
        config = BuildConfig(**{**stored.to_json(), **given}) if given else None
    else:
        _check_sigma(options["sigma"], options["maps"])
        config = BuildConfig(**options)
    result = build(config, out, workers=workers, resume=resume, overwrite=overwrite, shard_range=shard_range,
                   params=params, progress=not no_progress)
    rate = result.images / result.seconds if result.seconds > 0 else 0.0
    if result.complete:
        click.echo(f"built {out}: {result.num_shards} shards, {len(result.built)} rendered now "
                   f"({result.images} images, {rate:.0f} images/s), {len(result.skipped)} already complete")
    else:
        click.echo(f"built shards {result.built} of {out} ({result.images} images, {rate:.0f} images/s); "
                   f"the build is incomplete: finish it with `fracgen build --resume {out}`")


def _register_publishing() -> None:
    from fracgen.cli_publish import preview_command, push_to_hub_command, verify_command

    for command in (preview_command, verify_command, push_to_hub_command):
        cli.add_command(command)


_register_publishing()


def main() -> None:
    """Entry point of the ``fracgen`` script."""
    cli.main(prog_name="fracgen")


if __name__ == "__main__":
    main()


__all__ = ["cli", "main", "UsageError"]
