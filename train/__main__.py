"""``fracgen-train`` (the console script) and ``python -m train``: run the trainer's commands (``train/cli.py``).

Every expected failure is a ``TrainError`` printed as ``error: <one line>`` with exit status 2; so is an environment
without the trainer's extra (torch, timm, ...), checked before anything imports them. Run by ``make``, the line
names the make variables the user typed (``train/make_words.py``). The console script cannot be shadowed by a
``train.py`` in the working folder, as ``python -m train`` can (Python puts the working folder first on its path).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import click

from fracgen.errors import FracgenError
from train.errors import RankError, TrainError

EXTRA = ("torch", "torchvision", "timm", "safetensors", "matplotlib")
"""What ``pip install 'fracgen[train]'`` adds to the builder (pyproject.toml's ``train`` extra), by import name."""


def _one_line(message: str) -> str:
    """The message itself when torch re-raised it from a DataLoader worker with the worker's traceback."""
    if "Traceback (most recent call last)" not in message:
        return message
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1].split("TrainError: ", 1)[-1] if lines else message


def _peer_left(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process ended (gloo, NCCL), not by a fault of its own."""
    import torch.distributed as dist

    text = str(error)
    return isinstance(error, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def missing_extra() -> list[str]:
    """The packages of the ``train`` extra this environment lacks (found without importing them)."""
    return [name for name in EXTRA if importlib.util.find_spec(name) is None]


def _prog() -> str:
    """The command as the user typed it: ``fracgen-train`` (the console script) or ``python -m train``."""
    return "python -m train" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name


def main() -> None:
    """Entry point: one-line errors, exit status 2; without the trainer's extra, one line saying so."""
    if missing := missing_extra():
        print(f"error: the trainer needs {', '.join(missing)}, not installed here: pip install 'fracgen[train]'",
              file=sys.stderr)
        sys.exit(2)
    from train.cli import cli
    from train.make_words import flag_options, in_make_words

    switches = flag_options(cli)

    try:
        cli.main(standalone_mode=False, prog_name=_prog())
    except (TrainError, FracgenError) as e:  # FracgenError: a sweep's or repro's build (a full disk, say)
        rank = os.environ.get("RANK", "0")
        if rank == "0" or isinstance(e, RankError):  # every rank raises the same line, but a RankError is its own
            line = in_make_words(_one_line(str(e)), switches=switches)
            click.echo(f"error: {'' if rank == '0' else f'rank {rank}: '}{line}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, EOFError):  # click turns any EOFError into Abort: a fault, not a Ctrl-C
            raise e.__cause__ from None
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if os.environ.get("RANK", "0") == "0":  # every rank parses the same command line
            click.echo(f"error: {in_make_words(e.format_message(), switches=switches)}", err=True)  # one line, like every other refusal
        sys.exit(e.exit_code)
    except RuntimeError as e:  # after click's Abort, itself a RuntimeError
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and _peer_left(e):
            if os.environ.get("RANK", "0") == "0":
                click.echo("error: another rank stopped the run (its error is printed above)", err=True)
            sys.exit(2)
        raise
    finally:
        if "torch" in sys.modules:  # -h and toy-data never import it (a second or two)
            from train.distributed import end_children

            end_children()  # DataLoader workers ignore the SIGTERM multiprocessing would end them with at exit


if __name__ == "__main__":
    main()
