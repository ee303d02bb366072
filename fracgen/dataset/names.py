"""The dataset's names: its files and folders, a shard's and a sample's, and what a build writes where."""

from __future__ import annotations

import re
from pathlib import Path

from fracgen.errors import FracgenError

INFO_JSON = "_info.json"
PARAMS_JSON = "params.json"
BUILD_JSON = "build.json"
PREVIEW_PNG = "preview.png"  # what `fracgen preview` draws by default
CARD_MD = "README.md"  # the dataset card, as the Hub and `datasets.load_dataset` read it
HEAD = 16  # the first samples, whose json fields the card's features describe (a recipe records them)
INTERNAL = ".fracgen"  # the builder's own records; never published
CONFIG_JSON = f"{INTERNAL}/config.json"
SYSTEMS_JSON = f"{INTERNAL}/systems.json"
PUBLISHED_JSON = f"{INTERNAL}/published.json"  # a recipe's or downloaded dataset's build.json, kept while it renders
STATS = f"{INTERNAL}/stats"
SPLIT = "train"
SHARD_PATTERN = "train-{shard:06d}.tar"
SHARD_GLOB = "train-*.tar"
SAMPLE_EXTS = ("png", "cls", "json")  # what every sample holds
KEY_RE = re.compile(r"^\d{8}$")
MTIME = 0  # every tar entry gets this mtime, so the bytes do not depend on when they were built


class DatasetError(FracgenError):
    """A dataset file is missing, unreadable or malformed; the message names the file."""


# ----------------------------------------------------------------------------------------------- names


def shard_name(shard: int) -> str:
    """The file name of shard ``shard``: ``train-{shard:06d}.tar``."""
    return SHARD_PATTERN.format(shard=shard)


def brace_pattern(count: int) -> str:
    """The webdataset brace pattern of shards 0..count-1: ``train-{000000..00000K}.tar``."""
    return SHARD_PATTERN.replace("{shard:06d}", f"{{{0:06d}..{count - 1:06d}}}")


def sample_key(index: int) -> str:
    """The ``__key__`` of sample ``index``: 8 digits, so keys sort in index order."""
    return f"{index:08d}"


def marker_path(root: Path, shard: int) -> Path:
    """The completion marker of one shard."""
    return Path(root) / STATS / f"{shard:06d}.json"


# The records a build writes (relative names), besides its shards, temporaries and markers.
RECORD_FILES = frozenset({INFO_JSON, PARAMS_JSON, BUILD_JSON, CARD_MD, PREVIEW_PNG, CONFIG_JSON, SYSTEMS_JSON,
                          PUBLISHED_JSON})


def is_build_file(name: str, num_shards: int, source: str = "") -> bool:
    """Whether ``name`` (relative) is a file a build of ``num_shards`` shards from ``source`` writes: a shard, a
    record, its source image (temporaries and markers aside), without listing the shards (their count may be huge)."""
    match = re.fullmatch(r"train-(\d{6,})\.tar", name)
    if match:
        return name == shard_name(int(match[1])) and int(match[1]) < num_shards
    return name in RECORD_FILES or bool(source) and name == source


# The names a build writes in each of its folders, and the probe it writes to check a folder can be written.
WRITES = {
    "": re.compile(r"train-\d{6,}\.tar|_info\.json|params\.json|build\.json|README\.md|preview\.png|source\.[^/]*"
                   r"|probe"),
    INTERNAL: re.compile(r"config\.json|systems\.json|published\.json|probe"),
    STATS: re.compile(r"\d{6,}\.json|probe"),
}
