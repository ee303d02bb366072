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

# The format's API, from the modules that name and read and write each part: the names, the records (JSON), the
# shards (tar), the samples (PNG bytes and the checks shared by verify and the trainer).
from fracgen.dataset.names import (
    BUILD_JSON,
    CARD_MD,
    CONFIG_JSON,
    HEAD,
    INFO_JSON,
    INTERNAL,
    KEY_RE,
    MTIME,
    PARAMS_JSON,
    PREVIEW_PNG,
    PUBLISHED_JSON,
    RECORD_FILES,
    SAMPLE_EXTS,
    SHARD_GLOB,
    SHARD_PATTERN,
    SPLIT,
    STATS,
    SYSTEMS_JSON,
    WRITES,
    DatasetError,
    brace_pattern,
    is_build_file,
    marker_path,
    sample_key,
    shard_name,
)
from fracgen.dataset.records import (
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
    recipe_head,
    sha256_file,
    write_build,
    write_info,
    write_marker,
    write_params,
)
from fracgen.dataset.samples import (
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
    file_problem,
    png_colour_type,
    png_problem,
    stray_shards,
)
from fracgen.dataset.shards import HashingReader, iter_shard, write_shard

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
    "RECORD_FILES",
    "is_build_file",
    "changed_records",
    "check_label",
    "check_sample",
    "decode_grey",
    "decode_image",
    "file_problem",
    "inside",
    "is_complete",
    "is_recipe",
    "recipe_head",
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
