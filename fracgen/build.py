"""Build a dataset, stage by stage: check the output folder, plan, run the shards, write the records.

Stages, each in its own module: options and their checks (``config``), presets as data (``presets``), the
plan with the base systems (``plan``, ``search``, ``seeds``), one shard's job (``shard``: ``samples`` renders,
``encode`` makes the PNG, ``dataset`` writes the tar), the workers (``distribute``), the output folder and
resume (``output``), and the records written last (``metadata``). This module only runs them in order.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from fracgen import dataset
from fracgen.config import BuildConfig
from fracgen.errors import UsageError
from fracgen.metadata import write_metadata
from fracgen.output import (
    check_writable,
    clear_output,
    inspect_output,
    stored_config,
    stored_systems,
    write_records,
)
from fracgen.plan import Plan, make_plan
from fracgen.shard import ShardJob, run_shard
from fracgen.systems import load_systems

__all__ = ["BuildConfig", "BuildResult", "Plan", "build", "make_plan", "run_shard", "stored_config"]


@dataclass
class BuildResult:
    """What a call of ``build`` did.

    Attributes:
        root: the dataset folder.
        complete: True when every shard is complete and build.json was written.
        built: shards this call rendered.
        skipped: shards already complete (resume).
        num_shards: shards in the whole build.
        seconds: wall time of this call.
        images: images this call rendered.
    """

    root: Path
    complete: bool
    built: list[int]
    skipped: list[int]
    num_shards: int
    seconds: float
    images: int


def build(
    config: BuildConfig | None,
    out: str | Path,
    *,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    shard_range: tuple[int, int] | None = None,
    params: str | Path | None = None,
    source: str | Path | None = None,
    progress: bool = False,
) -> BuildResult:
    """Build a dataset: search (or read) the base systems, then render and write every shard.

    Args:
        config: the options that decide the bytes; None with ``resume`` takes the stored ones.
        out: dataset folder; must be empty or absent unless ``resume`` or ``overwrite``.
        workers: processes (default: all cores). Does not change a single byte.
        resume: finish an interrupted build in ``out``, with its stored options; complete shards whose checksum
            verifies are kept, anything else is rebuilt.
        overwrite: replace a previous fracgen build in ``out``.
        shard_range: build only shards [i, j); metadata is written once every shard is complete.
        params: a params file with the base systems instead of searching (fractal presets).
        source: the real-image preset's source image; it is copied into the dataset folder.
        progress: show a progress bar.

    Returns:
        What was built.

    Raises:
        UsageError: bad options or output folder (nothing is written).
        FracgenError: the build failed part-way (a full disk, a dead worker): rerun with ``resume``.
    """
    start = time.perf_counter()
    root = Path(out)
    stored = inspect_output(root, resume=resume, overwrite=overwrite)
    systems = None
    if stored is not None:
        if config is not None and config != stored:
            diff = [
                f"--{k.replace('_', '-')} {v} (stored {stored.to_json()[k]})"
                for k, v in config.to_json().items()
                if stored.to_json()[k] != v
            ]
            raise UsageError(f"options differ from the build being resumed in {root}: {', '.join(diff)}")
        config = stored
        if config.family.renders_fractals:
            systems = stored_systems(root)
    elif config is None:
        raise UsageError(f"{root} holds no build to resume; give the build's options")
    config.validate()  # the options alone; the checks that render run once, in make_plan
    if stored is None and params is not None:
        if not config.family.renders_fractals:
            raise UsageError(f"--params gives fractal systems; --preset {config.preset} has none")
        systems = load_systems(Path(params))
        config = BuildConfig(**{**config.to_json(), "params_source": "file"})
    source_bytes = None
    if config.family.command == "build-real":
        if stored is not None:
            source = root / config.source
        if source is None:
            raise UsageError("the real-image preset needs a source image (fracgen build-real IMAGE OUT)")
        source_bytes, config = _read_source(Path(source), config)
    if shard_range is not None:
        i, j = shard_range
        if not 0 <= i < j <= config.num_shards:
            raise UsageError(
                f"--shard-range {i}:{j} must satisfy 0 <= i < j <= {config.num_shards} (the shard count)"
            )
    search_start = time.perf_counter()
    from fracgen.distribute import default_workers

    plan = make_plan(config, systems, source=str(source) if source_bytes is not None else "",
                     workers=workers or default_workers(), progress=progress)
    search_seconds = time.perf_counter() - search_start
    if overwrite:
        clear_output(root)
    check_writable(root)
    write_records(root, config, plan.systems)
    if source_bytes is not None and not (root / config.source).is_file():
        dataset.write_atomic(root / config.source, source_bytes)
    wanted = range(*shard_range) if shard_range else range(config.num_shards)
    markers = {s: m for s in range(config.num_shards) if (m := dataset.read_marker(root, s)) is not None}
    todo = [s for s in wanted if s not in markers]
    skipped = [s for s in wanted if s in markers]
    dataset.remove_partials(root, todo if shard_range else None)
    if todo:
        (root / dataset.BUILD_JSON).unlink(missing_ok=True)  # the build is incomplete until every shard is
    render_start = time.perf_counter()
    job = ShardJob(plan, root)
    from fracgen.distribute import default_workers, run_shards

    for marker in run_shards(
        job, todo, [len(plan.shard_samples[s]) for s in todo], workers or default_workers(), progress
    ):
        markers[marker["shard"]] = marker
    render_seconds = time.perf_counter() - render_start
    images = sum(len(plan.shard_samples[s]) for s in todo)
    complete = len(markers) == config.num_shards
    if complete:
        ordered = [markers[s] for s in range(config.num_shards)]
        timing = {
            "search_seconds": round(search_seconds, 4),
            "render_seconds_this_call": round(render_seconds, 4),
            "shard_seconds_total": round(sum(m["seconds"] for m in ordered), 4),
            "images_this_call": images,
            "wall_seconds_this_call": round(time.perf_counter() - start, 4),
            "workers": workers or default_workers(),
        }
        write_metadata(root, plan, ordered, timing)
    return BuildResult(
        root=root,
        complete=complete,
        built=todo,
        skipped=skipped,
        num_shards=config.num_shards,
        seconds=time.perf_counter() - start,
        images=images,
    )


def _read_source(path: Path, config: BuildConfig) -> tuple[bytes, BuildConfig]:
    """The source image's bytes, checked to decode, and the config with its name and checksum."""
    from fracgen import realimage

    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"IMAGE {path}: cannot read it ({e.strerror or e})") from None
    realimage.load_image(path, config.size)  # raises UsageError for a file that is not an image
    digest = hashlib.sha256(data).hexdigest()
    if config.source_sha256 and config.source_sha256 != digest:
        raise UsageError(f"IMAGE {path} differs from the source this build was made from (sha256 mismatch)")
    name = "source" + (path.suffix.lower() or ".img")
    return data, BuildConfig(**{**config.to_json(), "source": name, "source_sha256": digest})
