"""click commands `verify`, `preview` and `push-to-hub`; `fracgen/cli.py` adds them to the `fracgen` group.

Each command parses and validates, then calls one plain function (`verify`, `preview`, `push_to_hub`).
Expected failures (`fracgen.errors.FracgenError`) become one `Error: ...` line and exit status 2, here as
well as when the group's own handler runs, so the commands behave the same under `CliRunner`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fracgen.errors import FracgenError

F = TypeVar("F", bound=Callable[..., Any])

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class _OneLineError(click.ClickException):
    """Printed by click as `Error: <message>` with exit status 2, no traceback."""

    exit_code = 2


def _one_line_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FracgenError as err:
            raise _OneLineError(" ".join(str(err).split())) from None

    return wrapper  # type: ignore[return-value]


_dataset_dir = click.argument(
    "root", type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)
)


@click.command("verify")
@_dataset_dir
@_one_line_errors
def verify_command(root: Path) -> None:
    """Re-read every shard of ROOT against build.json and _info.json.

    Exit 0 with a one-line summary when the dataset is sound; exit 1 naming each bad shard otherwise.
    """
    from fracgen.verify import verify

    report = verify(root)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        raise SystemExit(1)


@click.command("preview")
@_dataset_dir
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the image (default: ROOT/preview.png).",
)
@click.option(
    "--count", type=int, default=8, show_default=True, help="Perturbations shown in the grid (1-32)."
)
@_one_line_errors
def preview_command(root: Path, out: Path | None, count: int) -> None:
    """Draw ROOT/preview.png: the base fractal, a grid of perturbations and their differences."""
    from fracgen.preview import preview

    if not 1 <= count <= 32:
        raise click.BadParameter(f"must be between 1 and 32, got {count}", param_hint="--count")
    click.echo(str(preview(root, out=out, count=count)))


@click.command("push-to-hub")
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
    default="cc-by-4.0",
    show_default=True,
    help="License id for the card's YAML header.",
)
@_one_line_errors
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
) -> None:
    """Verify ROOT, then upload it with its card and preview to a Hub dataset repo in one commit."""
    from fracgen.publish import push_to_hub

    if not REPO_ID_RE.match(repo_id):
        raise click.BadParameter(
            f"expected USER/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}", param_hint="--repo-id"
        )
    if endpoint is not None and not re.match(r"^https?://[^\s/]+", endpoint):
        raise click.BadParameter(f"expected an http(s) URL, got {endpoint!r}", param_hint="--endpoint")
    if commit_message is not None and not commit_message.strip():
        raise click.BadParameter("must not be empty", param_hint="--commit-message")
    if not re.match(r"^[a-z0-9][a-z0-9.+-]*$", license_):
        raise click.BadParameter(
            f"expected a lower-case license id such as cc-by-4.0, got {license_!r}", param_hint="--license"
        )
    result = push_to_hub(
        root,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        token=token,
        endpoint=endpoint,
        dry_run=dry_run,
        license=license_,
    )
    if dry_run is not None:
        click.echo(
            f"dry run: file list in {Path(result) / 'files.json'}, card in {Path(result) / 'README.md'}; nothing was contacted"
        )
    else:
        click.echo(result)
