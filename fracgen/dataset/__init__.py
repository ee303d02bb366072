"""The dataset on disk: the one module that knows its file names, its records and its shard layout.

A dataset folder (see `fracgen/ARCHITECTURE.md`)::

    train-000000.tar ...        WebDataset shards; sample i is {i:08d}.png, {i:08d}.cls, {i:08d}.json
    _info.json                  timm's schema: name, num_classes, splits.train (filenames, shard_lengths)
    params.json                 the base systems and every class's parameters
    build.json                  the options, the shards with sizes and sha256; written last (= complete)
    .fracgen/config.json        the stored options (resume), .fracgen/systems.json the base systems,
    .fracgen/stats/NNNNNN.json  one completion marker per shard

Every file is written under a temporary name and renamed. Shards hold ``tarfile``'s bytes (headers by ``ustar``) in
``webdataset.TarWriter``'s layout (``{key}.{ext}``, extensions sorted, fixed mtime/owner/mode) and ``iter_shard``
groups members as webdataset does (key = path up to the base name's first dot): importing webdataset imports
torch (1.3 s, 600 MB per process), and nothing here imports numba or torch, so verify and preview stay light.
"""

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


def build_files(num_shards: int, source: str = "") -> list[str]:
    """The files a build of ``num_shards`` shards writes (relative names), besides temporaries and markers."""
    names = [*map(shard_name, range(num_shards)), INFO_JSON, PARAMS_JSON, BUILD_JSON, CARD_MD, PREVIEW_PNG,
             CONFIG_JSON, SYSTEMS_JSON, PUBLISHED_JSON]
    return names + ([source] if source else [])


def is_build_file(name: str, num_shards: int, source: str = "") -> bool:
    """Whether ``name`` (relative) is one of ``build_files(num_shards, source)``, without listing them all (a
    recorded shard count may be huge)."""
    match = re.fullmatch(r"train-(\d{6,})\.tar", name)
    if match:
        return name == shard_name(int(match[1])) and int(match[1]) < num_shards
    return name in build_files(0, source)


# The names a build writes in each of its folders, and the probe it writes to check a folder can be written.
WRITES = {
    "": re.compile(r"train-\d{6,}\.tar|_info\.json|params\.json|build\.json|README\.md|preview\.png|source\.[^/]*"
                   r"|probe"),
    INTERNAL: re.compile(r"config\.json|systems\.json|published\.json|probe"),
    STATS: re.compile(r"\d{6,}\.json|probe"),
}


# The format's API, from the modules that read and write each part: the records (JSON), the shards (tar), the
# samples (PNG bytes and the checks shared by verify and the trainer).
from fracgen.dataset.records import (  # noqa: E402
    DatasetInfo,
    SplitInfo,
    changed_records,
    inside,
    is_complete,
    is_recipe,
    parse_info,
    read_build,
    read_info,
    read_json,
    read_marker,
    read_params,
    sha256_file,
    write_build,
    write_info,
    write_marker,
    write_params,
)
from fracgen.dataset.samples import (  # noqa: E402
    PNG_GREY,
    PNG_PALETTE,
    PNG_RGB,
    PNG_SIGNATURE,
    UNLISTED,
    Expect,
    SampleError,
    check_label,
    check_sample,
    decode_grey,
    decode_image,
    expect_of,
    file_problem,
    png_colour_type,
    png_problem,
    stray_shards,
)
from fracgen.dataset.shards import HashingReader, iter_shard, write_shard  # noqa: E402

__all__ = [
    "BUILD_JSON",
    "CARD_MD",
    "HEAD",
    "CONFIG_JSON",
    "DatasetError",
    "DatasetInfo",
    "Expect",
    "HashingReader",
    "INFO_JSON",
    "INTERNAL",
    "KEY_RE",
    "MTIME",
    "PARAMS_JSON",
    "PUBLISHED_JSON",
    "PNG_GREY",
    "PNG_PALETTE",
    "PNG_RGB",
    "PNG_SIGNATURE",
    "PREVIEW_PNG",
    "SAMPLE_EXTS",
    "SHARD_GLOB",
    "SHARD_PATTERN",
    "SPLIT",
    "STATS",
    "SYSTEMS_JSON",
    "SampleError",
    "SplitInfo",
    "UNLISTED",
    "WRITES",
    "brace_pattern",
    "build_files",
    "is_build_file",
    "changed_records",
    "check_label",
    "check_sample",
    "decode_grey",
    "decode_image",
    "expect_of",
    "file_problem",
    "inside",
    "is_complete",
    "is_recipe",
    "iter_shard",
    "marker_path",
    "parse_info",
    "png_colour_type",
    "png_problem",
    "read_build",
    "read_info",
    "read_json",
    "read_marker",
    "read_params",
    "sample_key",
    "sha256_file",
    "shard_name",
    "stray_shards",
    "write_build",
    "write_info",
    "write_marker",
    "write_params",
    "write_shard",
]
