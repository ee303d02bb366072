"""Build a dataset: inspect the output folder, plan, run the shards, write the records.

``build`` runs the stages in order, each in its own module: the options (``config``) and their family
(``presets``); the folder's state and its claim (``output``); the plan with the base systems (``plan``); one
shard's job (``shard``: the family renders, ``encode`` makes the PNG, ``dataset`` writes the tar) on the pool
(``distribute``); and the records written last (``metadata``).
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
from fracgen.metadata import machine, write_metadata
from fracgen.output import DatasetFolder, differences, stored_config
from fracgen.plan import Plan, make_plan
from fracgen.shard import ShardJob, records_digest, run_shard
from fracgen.systems import System, load_systems

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


@dataclass
class _Request:
    """What a call asks for, resolved against the folder before anything is written."""

    config: BuildConfig
    systems: list[System] | None  # given (--params) or stored (a resume), else None: searched
    accepted: bool  # the systems are the build's own, stored when it accepted them: not judged again
    source: Path | None  # a family that takes a source image: where it is read from
    source_bytes: bytes | None
    fresh: bool  # a plain first build: neither a resume nor one of several shard ranges
    published: dict[str, str]  # a recipe's recorded sha256 of each shard: what rendering it must give


def build(config: BuildConfig | None, out: str | Path, *, workers: int | None = None, resume: bool = False,
          overwrite: bool = False, shard_range: tuple[int, int] | None = None, params: str | Path | None = None,
          source: str | Path | None = None, progress: bool = False, recipe_only: bool = False) -> BuildResult:
    """Build a dataset: search (or read) the base systems, then render and write every shard.

    Args:
        config: the options that decide the bytes; None with ``resume`` takes the stored ones.
        out: dataset folder; must be empty or absent unless ``resume`` or ``overwrite``.
        workers: processes (default: all cores). Does not change a single byte.
        resume: finish an interrupted build in ``out``, with its stored options; complete shards whose checksum
            verifies are kept, anything else is rebuilt.
        overwrite: replace a previous fracgen build in ``out`` (after planning: a failing search keeps it).
        shard_range: build only shards [i, j); the records are written once every shard is complete.
        params: a params file with the base systems instead of searching; ``source``: a source image (both as
            the family takes them; the image is copied into the dataset folder). ``progress``: show a bar.
        recipe_only: write the records and no shards: a recipe, which ``resume`` (or ``fracgen.recipe``) renders.

    Raises:
        UsageError: bad options or output folder (nothing is written).
        FracgenError: the build failed part-way (a full disk, a dead worker): rerun with ``resume``.
    """
    from fracgen.distribute import default_workers, run_shards

    start = time.perf_counter()
    folder = DatasetFolder(out)
    request = _inspect(folder, config, resume=resume, overwrite=overwrite, shard_range=shard_range, params=params,
                       source=source, recipe_only=recipe_only)
    config, workers = request.config, workers or default_workers()
    check_memory(config, workers)
    plan = make_plan(config, request.systems, source=str(request.source or ""), accepted=request.accepted,
                     workers=workers, progress=progress)
    search_seconds = time.perf_counter() - start
    with folder.building(config, fresh=request.fresh, overwrite=overwrite):
        folder.store(plan.systems, request.source_bytes, config)
        todo, skipped, markers = _pending(folder, plan, shard_range)
        render_start = time.perf_counter()
        for marker in run_shards(ShardJob(plan, folder.root, recipe_only, request.published), todo,
                                 [len(plan.shard_samples[s]) for s in todo], workers, progress):
            markers[marker["shard"]] = marker
    images = sum(len(plan.shard_samples[s]) for s in todo)
    result = BuildResult(root=folder.root, complete=len(markers) == config.num_shards, built=todo, skipped=skipped,
                         num_shards=config.num_shards, seconds=0.0, images=images,
                         render_seconds=time.perf_counter() - render_start, search_seconds=search_seconds)
    if result.complete:
        _finish(folder, plan, [markers[s] for s in range(config.num_shards)], result, workers, start, recipe_only)
        folder.remove_partials(todo if shard_range else None)  # a killed build's workers may have outlived it
    result.seconds = time.perf_counter() - start
    return result


def _finish(folder: DatasetFolder, plan: Plan, markers: list[dict], result: BuildResult, workers: int,
            start: float, recipe: bool) -> None:
    """Write the records (build.json last: a complete build), with this call's timing."""
    timing = {"search_seconds": round(result.search_seconds, 4),
              "render_seconds_this_call": round(result.render_seconds, 4),
              "shard_seconds_total": round(sum(m["seconds"] for m in markers), 4),
              "images_this_call": result.images, "wall_seconds_this_call": round(time.perf_counter() - start, 4),
              "workers": workers, "machine": machine()}
    write_metadata(folder.root, plan, markers, timing, recipe)


def _inspect(folder: DatasetFolder, config: BuildConfig | None, *, resume: bool, overwrite: bool,
             shard_range: tuple[int, int] | None, params: str | Path | None, source: str | Path | None,
             recipe_only: bool) -> _Request:
    """The options, base systems and source image of this call, checked against the folder (reads only)."""
    root = folder.root
    if recipe_only and shard_range is not None:
        raise UsageError("--recipe-only writes no shard: --shard-range does not apply")
    stored = folder.inspect(resume=resume, overwrite=overwrite, joining=shard_range is not None)
    if recipe_only and resume and folder.holds_shards():
        raise UsageError(f"--recipe-only: {root} holds rendered shards, and a recipe holds none: resume without "
                         "--recipe-only to finish the dataset, or write the recipe into another folder")
    if stored is None and config is None:
        raise UsageError(f"{root} holds no build to resume; give the build's options")
    config = config or stored
    config.validate()  # the options alone; the checks that render run once, in make_plan
    accepted = folder.stored_systems() if stored is not None and stored.family.systems else None
    systems, config = _given_systems(config, params, accepted, root)
    source, source_bytes, config = _source(config, source, stored is not None, root)
    if stored is not None and config != stored:
        raise UsageError(f"{root} belongs to a build whose options differ: {differences(config, stored)}; "
                         "use another folder, the same options, or --overwrite to replace that build")
    if shard_range is not None and not 0 <= shard_range[0] < shard_range[1] <= config.num_shards:
        raise UsageError(f"--shard-range {shard_range[0]}:{shard_range[1]} must satisfy 0 <= i < j <= "
                         f"{config.num_shards} (the shard count)")
    if stored is not None:
        folder.refuse_strays(config)
    return _Request(config, accepted if accepted is not None else systems, accepted is not None, source,
                    source_bytes, fresh=not resume and shard_range is None,
                    published=folder.published() if resume else {})


def _given_systems(config: BuildConfig, params: str | Path | None, accepted: list[System] | None,
                   root: Path) -> tuple[list[System] | None, BuildConfig]:
    """The base systems of a params file (and the config that records where they came from)."""
    if params is None:
        if config.params_source == "file" and accepted is None:
            raise UsageError(f"the build in {root} takes its systems from a params file; pass the same --params")
        return None, config
    if not config.family.systems:
        raise UsageError(f"--params gives fractal systems; --preset {config.preset} has none")
    systems = load_systems(Path(params))
    if accepted is not None and [s.to_json() for s in systems] != [s.to_json() for s in accepted]:
        raise UsageError(f"--params {params} holds other systems than the build in {root}; resume without "
                         "--params (its systems are stored) or build into another folder")
    return systems, config.replace(params_source="file")


def _source(config: BuildConfig, given: str | Path | None, resuming: bool,
            root: Path) -> tuple[Path | None, bytes | None, BuildConfig]:
    """A family that takes a source image: where it is read, its bytes (checked to be usable), and the config
    with its name and checksum. A resume reads the copy in the dataset folder; an image it is given must be the
    one the build was made from."""
    if not config.family.takes_source:
        return None, None, config
    path = Path(given) if given is not None else None
    if resuming:
        if path is not None and _sha256(path) != config.source_sha256:
            raise UsageError(f"{root} was built from another image (sha256 {config.source_sha256[:12]}..., {path} "
                             "differs); use --overwrite or another folder")
        path = dataset.inside(root, config.source, f"{root / dataset.CONFIG_JSON}: 'source'")
    if path is None:
        raise UsageError("this family needs a source image (fracgen build-real IMAGE OUT)")
    data = _read(path)
    config.family.check_source(path, config)
    digest = hashlib.sha256(data).hexdigest()
    if config.source_sha256 and config.source_sha256 != digest:
        raise UsageError(f"IMAGE {path} differs from the source this build was made from (sha256 mismatch)")
    return path, data, config.replace(source="source" + (path.suffix.lower() or ".img"), source_sha256=digest)


def _read(path: Path) -> bytes:
    if path.exists() and not path.is_file():  # a device or a pipe would be read without end
        raise UsageError(f"IMAGE {path}: not a regular file; give an image file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"IMAGE {path}: cannot read it ({e.strerror or e})") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _pending(folder: DatasetFolder, plan: Plan,
             shard_range: tuple[int, int] | None) -> tuple[list[int], list[int], dict[int, dict]]:
    """The shards this call builds, those of its range already complete, and the markers of every complete shard
    the plan keeps. A complete shard whose marker records another plan (copied in, edited) is built again."""
    config = plan.config
    finished = {s: m for s in range(config.num_shards) if (m := dataset.read_marker(folder.root, s)) is not None}
    markers = {s: m for s, m in finished.items() if _marker_fits(plan, s, m)}
    if len(markers) < len(finished):
        logger.warning("%d complete shard(s) in %s were not made by this plan (other options or base systems, or an "
                       "edited marker): building them again", len(finished) - len(markers), folder.root)
    wanted = range(*shard_range) if shard_range else range(config.num_shards)
    todo = [s for s in wanted if s not in markers]
    folder.remove_partials(todo if shard_range else None)
    if todo:
        (folder.root / dataset.BUILD_JSON).unlink(missing_ok=True)  # the build is incomplete until every shard is
    return todo, [s for s in wanted if s in markers], markers


def _marker_fits(plan: Plan, shard: int, marker: dict) -> bool:
    """Whether a complete shard's marker records what the plan puts in it (its checksum verified already): a
    shard made by a job of other options or base systems, or a marker edited or left by other code, is not
    trusted. A marker without the digests (an older fracgen's) is judged by the rest."""
    indices = plan.shard_samples[shard]
    per_class = plan.config.per_class
    labels = [i // per_class for i in indices if i % per_class == 0] if plan.config.instances == 1 else []
    records = marker.get("samples")
    legacy = "plan" not in marker and "samples_sha256" not in marker
    return (marker.get("shard") == shard and marker.get("filename") == dataset.shard_name(shard)
            and marker.get("num_samples") == len(indices) and isinstance(records, list)
            and (legacy or (marker.get("plan") == plan.digest
                            and marker.get("samples_sha256") == records_digest(records)))
            and [r.get("label") if isinstance(r, dict) else None for r in records] == labels)
