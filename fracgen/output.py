"""A dataset's output folder: is it free, a build to resume or one to replace; the life of a build in it.

Nothing a user made is touched: a folder that is not empty is refused unless it is a fracgen build and the user
asked to resume or replace it, and replacing deletes only the files that build recorded. ``inspect`` reads only.
``DatasetFolder.building`` then holds the folder for one set of options: it publishes ``.fracgen/config.json``
once (a hard link, atomic and exclusive also on NFS), so a job whose options differ is refused while jobs with the
same options (``--shard-range`` on several hosts) share the folder; a fresh build whose own options cannot render
leaves the folder as it found it. Every write goes through ``fracgen.folder``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fracgen import dataset
from fracgen.config import BuildConfig
from fracgen.errors import UsageError
from fracgen.folder import (
    OTHER_HOST_GRACE,
    abandoned,
    dump_json,
    make_folders,
    probe,
    publish_once,
    read_regular,
    refuse_link,
    remove_made,
    temporary_of,
    write_atomic,
)
from fracgen.systems import System, load_systems

RECORD_MOST = 1 << 28  # bytes read of a build record (build.json lists every shard)


class DatasetFolder:
    """The folder a dataset is built in (``root``), as the builder reads and writes it."""

    def __init__(self, root: str | Path):
        probe(Path(root))
        self.root = Path(root)

    # ------------------------------------------------------------------------------------------- reading

    def inspect(self, *, resume: bool, overwrite: bool, joining: bool = False) -> BuildConfig | None:
        """Check the folder before anything is written (reads only).

        Args:
            resume: the user asked to finish a recorded build.
            overwrite: the user asked to replace a recorded build.
            joining: a ``--shard-range`` job, which may be the first of several to reach an empty folder.

        Returns:
            The stored config of the build being resumed, or None for a fresh build.

        Raises:
            UsageError: the folder is not empty (and neither flag allows it), is not a fracgen build, holds files
                that build did not record (``overwrite``), or holds nothing to resume.
        """
        root = self.root
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one")
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise UsageError(f"output {root} exists and is not a folder")
        for inner in (root / dataset.INTERNAL, root / dataset.STATS):  # written into, so never through a link
            if inner.is_symlink() or (inner.exists() and not inner.is_dir()):
                raise UsageError(f"{inner} is not a plain folder (fracgen writes only real folders there); "
                                 "move it away first")
        # a folder holding only the internal folder is a build another shard range is just starting, unless that
        # folder holds what fracgen never writes there (a user's own ".fracgen")
        occupied = root.exists() and (any(p.name != dataset.INTERNAL for p in root.iterdir()) or self._foreign())
        if resume:
            stored = self.stored_config()
            if stored is None and self._record() is not None:
                stored = self.recorded_config()
                self._check_recorded()
            if stored is None and (occupied or not joining):
                what = "is not a fracgen build" if occupied else "holds no recorded build"
                raise UsageError(f"--resume: {root} {what} (no {dataset.CONFIG_JSON}); start a build with "
                                 f"`fracgen build [options] {root}`, without --resume")
            return stored
        if occupied:
            self._check_replaceable(overwrite)
        return None

    def _check_replaceable(self, overwrite: bool) -> None:
        """An occupied folder may be replaced only with --overwrite, when nothing writes in it and it holds only
        what its build wrote."""
        root = self.root
        if not overwrite:
            raise UsageError(f"output folder {root} is not empty; pass --resume to finish it or --overwrite to replace it")
        live = [p for p in self._temporaries() if not abandoned(p)]
        if live:
            raise UsageError(f"--overwrite refuses to delete {root}: a build is writing in it now ({live[0].name}: "
                             "its process runs on this host, or another host's file changed in the last "
                             f"{OTHER_HOST_GRACE / 60:.0f} minutes); wait for it to end or stop it first")
        stored = self.owner()
        if stored is None:
            raise UsageError(f"--overwrite refuses to delete {root}: it is not a fracgen build (no readable "
                             f"{dataset.CONFIG_JSON} or {dataset.BUILD_JSON})")
        foreign = self.unrecorded(stored)
        if foreign:
            shown = ", ".join(str(p.relative_to(root)) for p in foreign[:5])
            raise UsageError(f"--overwrite refuses to delete {root}: it holds what the build there did not write "
                             f"({shown}{', ...' if len(foreign) > 5 else ''}); move it away first")

    def stored_config(self) -> BuildConfig | None:
        """The options of the build in the folder, or None when it holds none.

        Raises:
            UsageError: the record is damaged, or was written by an older fracgen whose options this one lacks.
        """
        path = self.root / dataset.CONFIG_JSON
        if not path.is_file() or path.is_symlink():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise UsageError(f"{path} is damaged ({e}); rebuild with --overwrite") from None
        missing = BuildConfig.missing(data, strict=True) if isinstance(data, dict) else []
        if missing and not BuildConfig.missing(data):  # resumed with this version's defaults, shards could mix
            raise UsageError(f"{self.root} holds a build started by an older fracgen (its options lack "
                             f"{', '.join(missing)}; this version's images may differ): finish it with the "
                             "fracgen that started it, or rebuild with --overwrite")
        try:
            return BuildConfig.from_record(data, where=str(path))
        except UsageError as e:
            raise UsageError(f"{e}; rebuild with --overwrite") from None

    def _record(self) -> dict | None:
        """The build record of a recipe or a downloaded dataset, whose shards a resume renders: the build.json it
        came with, kept in .fracgen while it renders (its own build.json is written again when complete). None
        for a folder fracgen builds (it has a claim) or one with no build.json."""
        if (self.root / dataset.CONFIG_JSON).exists():
            return None
        kept = self.root / dataset.PUBLISHED_JSON
        if kept.exists() or kept.is_symlink():
            build = dataset.read_json(kept)
            if not isinstance(build, dict) or not isinstance(build.get("shards"), list):
                raise UsageError(f"{kept} has no 'shards' list; rebuild with --overwrite")
            return build
        if not (self.root / dataset.BUILD_JSON).is_file():
            return None
        return dataset.read_build(self.root)

    def _check_recorded(self) -> None:
        """A recipe or a downloaded dataset renders what its records say only if they are the ones its build.json
        recorded, in plain files (a copy with links, a Hub cache's, is refused before anything is rendered)."""
        for name in (dataset.BUILD_JSON, dataset.PUBLISHED_JSON, dataset.PARAMS_JSON, dataset.INFO_JSON,
                     dataset.CARD_MD):
            refuse_link(self.root / name, f"{self.root / name} (a resume writes the records again)")
        problems = dataset.changed_records(self.root, self._record().get("records", {}))
        if problems:
            raise UsageError(f"--resume: {self.root}: {problems[0]}; a resume renders what the records say: restore "
                             "them (download the dataset again) or build into another folder")

    def recorded_config(self) -> BuildConfig | None:
        """The options build.json records, for a folder that has no builder's records of its own (a recipe or a
        dataset downloaded from the Hub, whose shards a resume renders); None when it has none to read."""
        build = self._record()
        if build is None:
            return None
        return BuildConfig.from_record(build.get("config"), where=str(self.root / dataset.BUILD_JSON))

    def published(self) -> dict[str, str]:
        """The sha256 a recipe or a downloaded dataset records for each shard: what rendering them must give.
        Empty for a folder fracgen built here."""
        kept, build_json = self.root / dataset.PUBLISHED_JSON, self.root / dataset.BUILD_JSON
        try:
            build = dataset.read_json(kept) if kept.is_file() else dataset.read_build(self.root) \
                if build_json.is_file() else {}
        except UsageError:
            return {}
        if not isinstance(build, dict) or not isinstance(build.get("shards"), list):
            return {}
        if not kept.is_file() and (self.root / dataset.CONFIG_JSON).exists() and not dataset.is_recipe(build):
            return {}
        return {r["filename"]: r["sha256"] for r in build["shards"]
                if isinstance(r, dict) and isinstance(r.get("filename"), str) and isinstance(r.get("sha256"), str)}

    def owner(self) -> BuildConfig | None:
        """The options of the build in the folder from its config, or from build.json when the config is damaged
        (the options it lacks take their defaults), for ``--overwrite``; None when neither reads."""
        for path, inner in ((self.root / dataset.CONFIG_JSON, False), (self.root / dataset.BUILD_JSON, True)):
            raw = read_regular(path, RECORD_MOST, follow=False)  # fracgen writes no links
            if raw is None:
                continue
            try:
                data = json.loads(raw)
                return BuildConfig.from_record(data.get("config") if inner else data, where=str(path), strict=False)
            except (ValueError, AttributeError, RecursionError, UsageError):
                continue
        return None

    def stored_systems(self) -> list[System] | None:
        """The base systems of the build being resumed (a recipe's: its params.json's), or None when it has none."""
        path = self.root / dataset.SYSTEMS_JSON
        if not path.is_file():
            path = self.root / dataset.PARAMS_JSON
        if not path.is_file():
            return None
        try:
            return load_systems(path)
        except UsageError as e:
            raise UsageError(f"{path} is damaged ({str(e).removeprefix(f'--params {path}: ')}); "
                             "rebuild with --overwrite") from None

    def unrecorded(self, config: BuildConfig) -> list[Path]:
        """What in the folder a build with ``config`` did not write (symbolic links included), sorted."""
        root = self.root
        internal, stats = root / dataset.INTERNAL, root / dataset.STATS
        foreign = []
        for path in sorted(root.iterdir()):
            if path == internal and not path.is_symlink() and path.is_dir():
                for inner in sorted(internal.iterdir()):
                    if inner == stats and not inner.is_symlink() and inner.is_dir():
                        foreign += [p for p in sorted(stats.iterdir()) if not self._ours(p, config)]
                    elif not self._ours(inner, config):
                        foreign.append(inner)
            elif not self._ours(path, config):
                foreign.append(path)
        return foreign

    def holds_shards(self) -> bool:
        """Whether any shard, or any shard's marker, is in the folder."""
        return any(self.root.glob(dataset.SHARD_GLOB)) or any((self.root / dataset.STATS).glob("*.json"))

    def refuse_strays(self, config: BuildConfig) -> None:
        """A shard-named file this build does not write would be loaded by a ``train-*.tar`` glob beside its own."""
        strays = sorted(p.name for p in self.root.glob(dataset.SHARD_GLOB)
                        if not dataset.is_build_file(p.name, config.num_shards))
        if strays:
            raise UsageError(f"{self.root} holds {', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''}, "
                             f"which this build does not write (a {dataset.SHARD_GLOB} glob would load it); move it "
                             "away first")

    # ---------------------------------------------------------------------------------- the folder's files

    def is_temporary(self, path: Path) -> bool:
        """Whether ``path`` is a temporary a fracgen writer leaves in the folder when interrupted."""
        target = temporary_of(path.name)
        for folder, names in dataset.WRITES.items():
            if target and path.parent == self.root / folder and names.fullmatch(target):
                return path.is_file() and not path.is_symlink()
        return False

    def _temporaries(self) -> list[Path]:
        return [p for folder in dataset.WRITES if (self.root / folder).is_dir() and not (self.root / folder).is_symlink()
                for p in (self.root / folder).iterdir() if self.is_temporary(p)]

    def _ours(self, path: Path, config: BuildConfig) -> bool:
        if path.is_symlink() or not path.is_file():
            return False  # fracgen writes no links, folders only .fracgen and its stats
        name = path.relative_to(self.root).as_posix()
        if dataset.is_build_file(name, config.num_shards, config.source) or self.is_temporary(path):
            return True
        return path.parent == self.root / dataset.STATS and path.name.endswith(".json") and path.name[:-5].isdigit()

    def _foreign(self) -> bool:
        """Whether ``.fracgen`` holds anything a build does not write there (files of other names, links).

        Judged by name first: another job's temporary (its probe, its claim before the rename) may vanish between
        the listing and a look at it, and is then simply absent, not foreign.
        """
        internal, stats = self.root / dataset.INTERNAL, self.root / dataset.STATS
        if not internal.is_dir():
            return False
        try:
            inside = [p for p in internal.iterdir() if p != stats] + (list(stats.iterdir()) if stats.is_dir() else [])
        except FileNotFoundError:
            return False
        for path in inside:
            names = dataset.WRITES[path.parent.relative_to(self.root).as_posix()]
            if not names.fullmatch(temporary_of(path.name) or path.name):
                return True
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    return True  # a link or a folder under a name fracgen writes as a file
            except FileNotFoundError:
                continue
        return False

    def remove_partials(self, shard_ids: list[int] | None = None) -> list[Path]:
        """Delete the temporaries an interrupted build left (``is_temporary``) whose writer is gone.

        Args:
            shard_ids: only the partial tars and markers of these shards (the ones this call builds), so a build of
                another shard range writing into the same folder keeps its own; None: every temporary.
        """
        root = self.root
        if shard_ids is None:
            found = self._temporaries()
        else:
            found = [p for s in shard_ids for p in [*root.glob(f"{dataset.shard_name(s)}.tmp*"),
                     *dataset.marker_path(root, s).parent.glob(f"{s:06d}.json.tmp*")] if self.is_temporary(p)]
        found = [p for p in found if abandoned(p)]
        for path in found:
            path.unlink(missing_ok=True)
        return found

    # ------------------------------------------------------------------------------------ a build's life

    @contextmanager
    def building(self, config: BuildConfig, *, fresh: bool, overwrite: bool) -> Iterator[None]:
        """Hold the folder for a build of ``config`` while the body writes its shards.

        On entry: the previous build is deleted (``overwrite``), the folder made and probed, and claimed for
        ``config`` (or joined, when a job of the same options holds it). A fresh build whose options cannot
        render (a UsageError from the body before any shard is complete) leaves the folder as it found it;
        any other failure keeps the claim, for ``--resume``.

        Args:
            fresh: a plain first build (not resuming, not one of several shard ranges): only it takes back its
                claim, which no other job can have joined.
        """
        if overwrite:
            self._clear()
        made = make_folders(self.root)
        try:
            made = make_folders(self.root / dataset.STATS) + made
            self._keep_published()
            created = self._claim(config)
        except BaseException:
            remove_made(made)  # only what this call made: a job of other options may be starting in the rest
            raise
        if not created and fresh:
            raise UsageError(f"output folder {self.root} is being built by another job (or an interrupted build); "
                             "pass --resume to finish it (with --recipe-only to finish a recipe)")
        try:
            yield
        except UsageError as e:
            if fresh and created and self._unclaim(config, made):
                raise UsageError(f"{e} (nothing was kept in {self.root})") from None
            raise

    def store(self, systems: list[System], source: bytes | None, config: BuildConfig) -> None:
        """Store the base systems once (a job whose systems differ is refused) and the source image."""
        data = dump_json({"systems": [s.to_json() for s in systems]})
        path = self.root / dataset.SYSTEMS_JSON
        if not publish_once(path, data) and path.read_bytes() != data:
            raise UsageError(f"{self.root} belongs to a build with other base systems ({path}); --params must give "
                             "the same systems, or use another folder")
        if source is not None and not (self.root / config.source).is_file():
            write_atomic(self.root / config.source, source)

    def _keep_published(self) -> None:
        """Keep a recipe's or downloaded dataset's build.json in .fracgen before its resume claims the folder:
        build.json goes until the build is complete, and its options and sha256 must outlive a kill or a refusal."""
        build_json = self.root / dataset.BUILD_JSON
        if (self.root / dataset.CONFIG_JSON).exists() or not build_json.is_file():
            return
        data = read_regular(build_json, RECORD_MOST)
        if data is None:
            raise UsageError(f"{build_json} cannot be read as a plain file of at most {RECORD_MOST >> 20} MiB")
        publish_once(self.root / dataset.PUBLISHED_JSON, data)

    def _claim(self, config: BuildConfig) -> bool:
        """Make the folder the build of ``config``, or join the build of the same options: True when created."""
        if publish_once(self.root / dataset.CONFIG_JSON, dump_json(config.to_json())):
            return True
        stored = self.stored_config()
        if stored != config:
            raise UsageError(f"{self.root} belongs to a build whose options differ: {differences(config, stored)}; "
                             "use another folder, the same options, or --overwrite to replace that build")
        return False

    def _unclaim(self, config: BuildConfig, made: list[Path]) -> bool:
        """Undo the claim of a fresh build whose own options failed before any shard was complete: the folder is
        left as it was found, so the corrected command needs no ``--overwrite``. False, touching nothing, when a
        shard is complete (a job of the same options joined and finished one)."""
        if any((self.root / dataset.STATS).glob("*.json")):
            return False
        self.remove_partials()
        for path in [*self.root.iterdir(), *(self.root / dataset.INTERNAL).iterdir()]:
            name = path.relative_to(self.root).as_posix()
            if dataset.is_build_file(name, config.num_shards, config.source) and path.is_file() and \
                    not path.is_symlink() and name != dataset.CONFIG_JSON:
                path.unlink()
        (self.root / dataset.CONFIG_JSON).unlink(missing_ok=True)
        remove_made(made)
        return True

    def _clear(self) -> None:
        """Delete a previous build's files; ``inspect`` has checked that nothing else is there.

        Files are unlinked, never followed; folders are removed only once empty; the claim goes last, so a failure
        part-way still leaves a build ``--overwrite`` knows.
        """
        root = self.root
        stored = self.owner()
        if stored is None or not root.is_dir():
            return
        if self.unrecorded(stored):  # something appeared since the check: leave everything
            raise UsageError(f"--overwrite: {root} changed while being checked; rerun")
        stats, internal = root / dataset.STATS, root / dataset.INTERNAL
        folders = [f for f in (root, stats, internal) if f.is_dir()]
        for folder in folders:  # a folder that refuses a new file refuses deletions too: fail before any
            make_folders(folder, "--overwrite cannot delete the previous build:")
        for folder in folders:
            for path in folder.iterdir():
                if not path.is_dir() or path.is_symlink():
                    path.unlink(missing_ok=True)
        for folder in (stats, internal):
            if folder.is_dir():
                folder.rmdir()


def differences(config: BuildConfig, stored: BuildConfig) -> str:
    """The options of ``config`` that differ from ``stored``, as ``--delta 0.3 (stored 0.1)``."""
    mine, theirs = config.to_json(), stored.to_json()
    return ", ".join(f"--{k.replace('_', '-')} {v} (stored {theirs.get(k)})" for k, v in mine.items()
                     if theirs.get(k) != v)


def stored_config(root: str | Path) -> BuildConfig | None:
    """The options of the build in ``root`` (a recipe's or a downloaded dataset's from its build.json), or None
    when it holds none."""
    folder = DatasetFolder(root)
    return folder.stored_config() or folder.recorded_config()
