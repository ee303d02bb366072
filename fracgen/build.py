"""Build a dataset, stage by stage: check the output folder, plan, run the shards, write the records.

Stages, each in its own module: options and their checks (``config``), presets as data (``presets``), the
plan with the base systems (``plan``, ``search``, ``seeds``), one shard's job (``shard``: ``samples`` renders,
``encode`` makes the PNG, ``dataset`` writes the tar), the workers (``distribute``), the output folder and
resume (``output``), and the records written last (``metadata``). This module only runs them in order.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fracgen import dataset
from fracgen.config import BuildConfig, check_memory
from fracgen.errors import UsageError
from fracgen.folder import write_atomic
from fracgen.metadata import machine, write_metadata
from fracgen.output import (
    check_writable,
    claim,
    claim_systems,
    clear_output,
    differences,
    inspect_output,
    missing_folders,
    release,
    remove_partials,
    stored_config,
    stored_systems,
    unclaim,
)
from fracgen.plan import Plan, make_plan
from fracgen.shard import ShardJob, records_digest, run_shard
from fracgen.systems import load_systems

logger = logging.getLogger(__name__)

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
        render_seconds: wall time of the rendering stage alone (shards: render, encode, write), the time a
            rate in images/s is measured over; the search and planning are not in it (a cold numba cache adds
            the workers' compilation of the kernels to it, once per machine).
        search_seconds: wall time of the search and planning stage.
    """

    root: Path
    complete: bool
    built: list[int]
    skipped: list[int]
    num_shards: int
    seconds: float
    images: int
    render_seconds: float = 0.0
    search_seconds: float = 0.0


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
    stored = inspect_output(root, resume=resume, overwrite=overwrite, joining=shard_range is not None)
    systems = accepted = None
    if stored is not None:
        config = config or stored
        if stored.family.renders_fractals:
            accepted = stored_systems(root)  # accepted once: a resume never judges them again
    elif config is None:
        raise UsageError(f"{root} holds no build to resume; give the build's options")
    config.validate()  # the options alone; the checks that render run once, in make_plan
    if params is not None:
        if not config.family.renders_fractals:
            raise UsageError(f"--params gives fractal systems; --preset {config.preset} has none")
        systems = load_systems(Path(params))
        config = BuildConfig(**{**config.to_json(), "params_source": "file"})
        if accepted is not None and [s.to_json() for s in systems] != [s.to_json() for s in accepted]:
            raise UsageError(f"--params {params} holds other systems than the build in {root}; resume without "
                             "--params (its systems are stored) or build into another folder")
    if accepted is not None:
        systems = accepted
    elif config.params_source == "file" and systems is None:
        raise UsageError(f"the build in {root} takes its systems from a params file; pass the same --params")
    source_bytes = None
    if config.family.command == "build-real":
        if stored is not None:
            given, source = source, dataset.inside(root, config.source, f"{root / dataset.CONFIG_JSON}: 'source'")
            if given is not None:
                _same_source(Path(given), config.source_sha256, root)
        if source is None:
            raise UsageError("the real-image preset needs a source image (fracgen build-real IMAGE OUT)")
        source_bytes, config = _read_source(Path(source), config)
    if stored is not None and config != stored:
        raise UsageError(f"{root} belongs to a build whose options differ: {differences(config, stored)}; "
                         "use another folder, the same options, or --overwrite to replace that build")
    if shard_range is not None:
        i, j = shard_range
        if not 0 <= i < j <= config.num_shards:
            raise UsageError(
                f"--shard-range {i}:{j} must satisfy 0 <= i < j <= {config.num_shards} (the shard count)"
            )
    if stored is not None:
        _refuse_strays(root, config)
    from fracgen.distribute import default_workers

    workers = workers or default_workers()
    check_memory(config, workers)
    search_start = time.perf_counter()
    source_name = str(source) if source_bytes is not None else ""
    if overwrite:  # plan before deleting anything, so a failing search keeps the old build
        plan = make_plan(config, systems, source=source_name, accepted=accepted is not None,
                         workers=workers, progress=progress)
        clear_output(root)
    made = missing_folders(root)  # what a fresh build that fails must take away again
    check_writable(root)
    created = claim(root, config)
    if not created and not (resume or shard_range):
        raise UsageError(f"output folder {root} is being built by another job (or an interrupted build); "
                         f"pass --resume to finish it")
    if not overwrite:
        try:
            plan = make_plan(config, systems, source=source_name, accepted=accepted is not None, workers=workers,
                             progress=progress)
        except BaseException:
            # take back only a claim nobody else may have joined: a split or resuming job's claim is shared
            # with the other jobs of its options, which may be running in it already
            if stored is None and created and shard_range is None and not resume:
                release(root, made)
            raise
    search_seconds = time.perf_counter() - search_start
    claim_systems(root, plan.systems)
    if source_bytes is not None and not (root / config.source).is_file():
        write_atomic(root / config.source, source_bytes)
    wanted = range(*shard_range) if shard_range else range(config.num_shards)
    finished = {s: m for s in range(config.num_shards) if (m := dataset.read_marker(root, s)) is not None}
    markers = {s: m for s, m in finished.items() if _marker_fits(plan, s, m)}
    if len(markers) < len(finished):
        logger.warning("%d complete shard(s) in %s were not made by this plan (other options or base systems, or an "
                       "edited marker): building them again", len(finished) - len(markers), root)
    todo = [s for s in wanted if s not in markers]
    skipped = [s for s in wanted if s in markers]
    remove_partials(root, todo if shard_range else None)
    if todo:
        (root / dataset.BUILD_JSON).unlink(missing_ok=True)  # the build is incomplete until every shard is
    render_start = time.perf_counter()
    job = ShardJob(plan, root)
    from fracgen.distribute import run_shards

    # a failure from here on keeps the claim: a full disk or a kill is finished with --resume
    try:
        for marker in run_shards(job, todo, [len(plan.shard_samples[s]) for s in todo], workers, progress):
            markers[marker["shard"]] = marker
    except UsageError as e:
        # but the options themselves cannot render (a class never fills) and a rerun fails alike: a fresh build
        # that completed nothing leaves the folder as it found it, so the corrected command needs no --overwrite
        if created and stored is None and shard_range is None and not markers and unclaim(root, config, made):
            raise UsageError(f"{e} (nothing was kept in {root})") from None
        raise
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
            "workers": workers,
            "machine": machine(),
        }
        write_metadata(root, plan, ordered, timing)
        # again at the end: the workers of a build killed just before this call may have outlived its start
        remove_partials(root, todo if shard_range else None)
    return BuildResult(
        root=root,
        complete=complete,
        built=todo,
        skipped=skipped,
        num_shards=config.num_shards,
        seconds=time.perf_counter() - start,
        images=images,
        render_seconds=render_seconds,
        search_seconds=search_seconds,
    )


def _refuse_strays(root: Path, config: BuildConfig) -> None:
    """A shard-named file this build does not write would be loaded by a ``train-*.tar`` glob beside its own."""
    ours = {dataset.shard_name(s) for s in range(config.num_shards)}
    strays = sorted(p.name for p in root.glob(dataset.SHARD_GLOB) if p.name not in ours)
    if strays:
        raise UsageError(f"{root} holds {', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''}, which this "
                         f"build does not write (a {dataset.SHARD_GLOB} glob would load it); move it away first")


def _marker_fits(plan: Plan, shard: int, marker: dict) -> bool:
    """Whether a complete shard's marker records what the plan puts in it (its checksum verified already): a
    shard made by a job of other options or base systems (copied in from another folder), or a marker edited or
    left by other code, is not trusted, and its shard is built again."""
    indices = plan.shard_samples[shard]
    per_class = plan.config.per_class
    labels = [i // per_class for i in indices if i % per_class == 0] if plan.config.instances == 1 else []
    records = marker.get("samples")
    # a marker of a fracgen before these digests (a build resumed after an upgrade) is judged as it was then
    legacy = "plan" not in marker and "samples_sha256" not in marker
    return (marker.get("shard") == shard and marker.get("filename") == dataset.shard_name(shard)
            and marker.get("num_samples") == len(indices) and isinstance(records, list)
            and (legacy or (marker.get("plan") == plan.digest
                            and marker.get("samples_sha256") == records_digest(records)))
            and [r.get("label") if isinstance(r, dict) else None for r in records] == labels)


def _same_source(given: Path, stored_sha256: str, root: Path) -> None:
    """A resume of a real-image build names the image it was built from, or none (its stored copy is used)."""
    if given.exists() and not given.is_file():
        raise UsageError(f"IMAGE {given}: not a regular file; give an image file")
    try:
        digest = dataset.sha256_file(given)
    except OSError as e:
        raise UsageError(f"IMAGE {given}: cannot read it ({e.strerror or e})") from None
    if digest != stored_sha256:
        raise UsageError(f"{root} was built from another image (sha256 {stored_sha256[:12]}..., {given} has "
                         f"{digest[:12]}...); use --overwrite or another folder")


def _read_source(path: Path, config: BuildConfig) -> tuple[bytes, BuildConfig]:
    """The source image's bytes, checked to decode, and the config with its name and checksum."""
    from fracgen import realimage

    if path.exists() and not path.is_file():  # a device or a pipe would be read without end
        raise UsageError(f"IMAGE {path}: not a regular file; give an image file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"IMAGE {path}: cannot read it ({e.strerror or e})") from None
    prepared = realimage.prepare(realimage.load_image(path, config.size), edges=config.edges, color=config.color)
    realimage.check_source(prepared, path, config.edges)  # a flat or edge-less image gives blank classes
    digest = hashlib.sha256(data).hexdigest()
    if config.source_sha256 and config.source_sha256 != digest:
        raise UsageError(f"IMAGE {path} differs from the source this build was made from (sha256 mismatch)")
    name = "source" + (path.suffix.lower() or ".img")
    return data, BuildConfig(**{**config.to_json(), "source": name, "source_sha256": digest})
