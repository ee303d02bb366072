"""Errors and warnings in the words the user typed, when ``make`` ran the trainer.

The Makefile's training targets export ``FRACGEN_TRAIN_MAKE``: which make variable gave which option of the
command they run, e.g. ``--data=FT_DATA data.path=FT_DATA --checkpoint=CKPT --out=RUN``. A message that names a
mapped option names the variable instead (``pass FT_DATA= with an ImageFolder root``, ``RUN=runs/x holds files
...``); one that names another option or config key, which the command line does not hold yet, ends with where it
goes (``(make: ARGS="--set train.batch_size=N")``, N the value the message gives when it gives one). Without the variable, messages are left as they are.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from typing import Any

ENV = "FRACGEN_TRAIN_MAKE"

# an option or a config key, and the value the message gives it: ``train.batch_size=32``, or after a space when
# that is no plain word (``--out runs/x``, not ``--data with``)
_TOKEN = re.compile(r"(?<![\w./-])(--[a-z][a-z0-9-]*|[a-z_]+(?:\.[a-z_]+)+)(?![\w-])"
                    r"(?:=(\S+)| (?!\(|[a-z]+(?:[\s,;:)]|$))(\S+))?")


def mapping() -> dict[str, str]:
    """``FRACGEN_TRAIN_MAKE`` as {option or config key: make variable}; empty outside make."""
    pairs = (item.split("=", 1) for item in os.environ.get(ENV, "").split() if "=" in item)
    return {option: variable for option, variable in pairs if option and variable}


def _config_key(name: str) -> bool:
    """Whether ``name`` is a config key (``train.batch_size``, ``model.kwargs.depth``), not a file name."""
    from train.config import Config

    section, _, rest = name.partition(".")
    cfg = Config()
    if section not in {f.name for f in dataclasses.fields(cfg)}:
        return False
    return rest.split(".")[0] in {f.name for f in dataclasses.fields(getattr(cfg, section))}


def flag_options(group: Any) -> frozenset[str]:
    """The options of every command of a click ``group`` that take no value (``--resume``)."""
    import click

    return frozenset(opt for command in group.commands.values() for p in command.params
                     if isinstance(p, click.Option) and p.is_flag for opt in (*p.opts, *p.secondary_opts))


def in_make_words(message: str, words: dict[str, str] | None = None, argv: list[str] | None = None,
                  switches: frozenset[str] = frozenset()) -> str:
    """``message`` with the options ``words`` maps named by their make variables, and a hint for the others.

    Args:
        message: one line the trainer would print.
        words: {option or config key: make variable}; ``mapping()`` when None.
        argv: the command line (``sys.argv[1:]`` when None): options it holds get no hint.
        switches: the options that take no value (``flag_options(cli)``): their hint is the option alone.
    """
    words = mapping() if words is None else words
    if not words:
        return message
    typed = " ".join(sys.argv[1:] if argv is None else argv)
    hints: list[str] = []

    def token(m: re.Match) -> str:
        name, value = m.group(1), m.group(2) or m.group(3)
        if name in words:
            return f"{words[name]}={value or ''}"
        if name.startswith("--"):
            hint, typed_already = (name if name in switches else f"{name} ..."), name in typed.split()
        elif _config_key(name):
            bound = re.search(rf"{re.escape(name)}(?:: must be at (?:most|least)| to) (\d+)", message)
            hint = f"--set {name}={m.group(2) or (bound.group(1) if bound else 'N')}"
            typed_already = f"{name}=" in typed
        else:
            return m.group(0)
        if not typed_already:
            hints.append(hint)
        return m.group(0)

    message = _TOKEN.sub(token, message)
    hints = list(dict.fromkeys(hints))
    hints = [h for h in hints if not h.endswith("=N")] or hints  # a key without its value: only when alone
    return message + (f' (make: ARGS="{" ".join(hints[:3])}")' if hints else "")


class MakeWords(logging.Filter):
    """A handler's filter: warnings and errors in ``in_make_words``' terms (installed only under make)."""

    def __init__(self, switches: frozenset[str] = frozenset()):
        super().__init__()
        self.switches = switches

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            record.msg, record.args = in_make_words(record.getMessage(), switches=self.switches), None
        return True
