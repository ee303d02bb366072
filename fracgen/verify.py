"""Re-read a built dataset and check it against its own records.

A dataset folder describes itself (see `fracgen/ARCHITECTURE.md`): `build.json` lists every shard with its
size and sha256, `_info.json` lists the per-shard sample counts in timm's schema, and every sample carries its
label twice (`cls` and `json`). `verify` re-reads every byte and reports each shard that disagrees.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fracgen import dataset
from fracgen.config import BuildConfig, expect_of
from fracgen.dataset import (
    BUILD_JSON,
    INFO_JSON,
    PARAMS_JSON,
    DatasetError,
    sha256_file,
)
from fracgen.errors import FracgenError, UsageError
from fracgen.systems import class_records

logger = logging.getLogger(__name__)

@dataclass
class VerifyReport:
    """What `verify` found.

    Attributes:
        root: the dataset folder.
        num_shards: shards listed in build.json.
        num_samples: samples read from the shards.
        num_classes: classes recorded in build.json.
        shard_problems: shard filename -> what is wrong with it (one string per problem).
        dataset_problems: problems that belong to no single shard (records disagree, a class is missing).
        palette_images: images stored as palette PNGs, the format of earlier fracgen builds.
    """

    root: Path
    num_shards: int = 0
    num_samples: int = 0
    num_classes: int = 0
    shard_problems: dict[str, list[str]] = field(default_factory=dict)
    dataset_problems: list[str] = field(default_factory=list)
    palette_images: int = 0
    recipe: bool = False

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.shard_problems and not self.dataset_problems

    def add(self, shard: str, problem: str) -> None:
        """Record a problem of one shard."""
        self.shard_problems.setdefault(shard, []).append(problem)

    def summary(self) -> str:
        """One line: the verdict and the figures."""
        if self.ok and self.recipe:
            return (f"OK: recipe {self.root}: {self.num_shards} shards of {self.num_samples} samples, "
                    f"{self.num_classes} classes to render (`fracgen build --resume {self.root}`); its records match")
        if self.ok:
            return (
                f"OK: {self.root}: {self.num_shards} shards, {self.num_samples} samples, "
                f"{self.num_classes} classes; checksums, counts, image sizes and labels match"
            )
        bad = len(self.shard_problems)
        return f"BROKEN: {self.root}: {bad} of {self.num_shards} shards bad" + (
            f", {len(self.dataset_problems)} dataset problem(s)" if self.dataset_problems else ""
        )

    def lines(self) -> list[str]:
        """The summary, then one line per problem, each naming its shard (line breaks in names escaped)."""
        out = [self.summary()]
        for shard in sorted(self.shard_problems):
            out.extend(f"{shard}: {problem}" for problem in self.shard_problems[shard])
        out.extend(f"dataset: {problem}" for problem in self.dataset_problems)
        return [line.replace("\r", "\\r").replace("\n", "\\n") for line in out]


@dataclass
class _Shard:
    """What one shard read tells: its samples, and the first problem of each kind with its count."""

    count: int = 0
    first: dict[str, str] = field(default_factory=dict)
    bad: Counter[str] = field(default_factory=Counter)

    def note(self, kind: str, problem: str) -> None:
        self.bad[kind] += 1
        self.first.setdefault(kind, problem)


def _check_shard(report: VerifyReport, root: Path, record: dict[str, Any], info_count: int | None,
                 expect: dataset.Expect, classes: dict[int, dict[str, Any]], seen: _Seen) -> int:
    """Check one shard against its records, reading it once; returns the number of samples read."""
    name = record["filename"]
    problem = dataset.file_problem(root, name, record.get("bytes"))
    if problem:
        report.add(name, problem)
        return 0
    for key in ("bytes", "sha256", "num_samples"):
        if key not in record:
            report.add(name, f"{BUILD_JSON} records no {key} for it")
    shard = _Shard()
    try:
        with open(root / name, "rb") as f:
            reader = dataset.HashingReader(f, str(root / name))
            _read_samples(reader, expect, classes, seen, shard)
            digest = reader.hexdigest()
    except OSError as err:
        report.add(name, f"cannot be read ({err.strerror or err})")
        return 0
    except DatasetError as err:
        report.add(name, f"not a readable tar after {shard.count} samples ({err})")
        digest = None
    if digest is not None and "sha256" in record and digest != record["sha256"]:
        report.add(name, f"sha256 {digest[:12]}... does not match {BUILD_JSON} {str(record['sha256'])[:12]}...")
    for kind, what in (("sample", "bad sample(s)"), ("image", "bad image(s)"), ("label", "bad label(s)")):
        if shard.bad[kind]:
            report.add(name, f"{shard.bad[kind]} {what}, first: {shard.first[kind]}")
    report.palette_images += shard.bad["palette"]
    for source, count in ((BUILD_JSON, record.get("num_samples")), (INFO_JSON, info_count)):
        if count is not None and shard.count != count:
            report.add(name, f"{shard.count} samples, {source} records {count}")
    return shard.count


@dataclass
class _Seen:
    """Across the dataset: the keys met (each once) and how often each label was."""

    keys: set[str] = field(default_factory=set)
    labels: Counter[int] = field(default_factory=Counter)


def _read_samples(reader, expect: dataset.Expect, classes: dict[int, dict[str, Any]], seen: _Seen,
                  shard: _Shard) -> None:
    """Every sample of a shard through ``dataset.check_sample``, and against its class's record in params.json."""
    for sample in dataset.iter_shard(reader, strict=True):
        shard.count += 1
        key = sample["__key__"]
        if key in seen.keys:
            shard.note("sample", f"sample key {key} also appears earlier")
        seen.keys.add(key)
        try:
            _, label = dataset.check_sample(sample, expect)
        except dataset.SampleError as err:
            shard.note(err.kind, str(err))
            if err.kind in ("image", "palette"):  # the label may still count
                label = _plain_label(sample, expect)
            else:
                continue
        problem = _class_problem(sample, label, classes) if label is not None else ""
        if problem:
            shard.note("label", problem)
        elif label is not None:
            seen.labels[label] += 1


def _plain_label(sample: dict[str, Any], expect: dataset.Expect) -> int | None:
    """The label of a sample whose image is bad, when its label itself is sound."""
    try:
        return dataset.check_label(sample, expect)
    except dataset.SampleError:
        return None


def _class_problem(sample: dict[str, Any], label: int, classes: dict[int, dict[str, Any]]) -> str:
    """Why a sample's json disagrees with its class's record in params.json, or ''."""
    recorded = classes.get(label)
    if recorded is None:
        return ""
    meta = json.loads(sample["json"])
    for field_name in _CLASS_FIELDS:
        if field_name in recorded and field_name in meta and not _agrees(recorded[field_name], meta[field_name]):
            return (f"sample {sample['__key__']} {field_name} {str(meta[field_name])[:60]} != {PARAMS_JSON} class "
                    f"{label} {field_name} {str(recorded[field_name])[:60]}")
    return ""


# A class's parameters, as params.json records them and every image of the class carries them in its json.
_CLASS_FIELDS = ("fractal", "perturbation", "category", "maps", "mode", "u", "params")


def _agrees(recorded: Any, carried: Any) -> bool:
    """A class record's value against a sample's: equal, or for a dict (a contour category's draws) every recorded
    key equal in the sample's (which adds its instance's own draws)."""
    if isinstance(recorded, dict) and isinstance(carried, dict):
        return all(k in carried and carried[k] == v for k, v in recorded.items())
    return recorded == carried


def _info_counts(report: VerifyReport, root: Path, shard_names: list[str], num_classes: int) -> dict[str, int]:
    """Per-shard counts from `_info.json`; records disagreements with build.json as dataset problems."""
    try:
        info = dataset.read_json(root / INFO_JSON)
        split = info["splits"]["train"]
        if not isinstance(split["filenames"], list) or not isinstance(split["shard_lengths"], list):
            raise TypeError("they are not lists")
        filenames = list(split["filenames"])
        lengths = [int(n) for n in split["shard_lengths"]]
    except UsageError as err:
        report.dataset_problems.append(str(err))
        return {}
    except (KeyError, TypeError, ValueError) as err:
        report.dataset_problems.append(f"{INFO_JSON} lacks splits.train filenames/shard_lengths ({err})")
        return {}
    if info.get("num_classes") != num_classes:  # timm's wds reader sizes its head from it
        report.dataset_problems.append(
            f"{INFO_JSON} num_classes {info.get('num_classes')!r:.40} != {BUILD_JSON} num_classes {num_classes}")
    if len(filenames) != len(lengths):
        report.dataset_problems.append(
            f"{INFO_JSON} has {len(filenames)} filenames but {len(lengths)} shard_lengths"
        )
    if filenames != shard_names:
        report.dataset_problems.append(
            f"{INFO_JSON} lists shards {filenames} but {BUILD_JSON} lists {shard_names}"
        )
    if "num_samples" in split and split["num_samples"] != sum(lengths):
        report.dataset_problems.append(
            f"{INFO_JSON} num_samples {split['num_samples']} != sum of shard_lengths {sum(lengths)}"
        )
    return dict(zip(filenames, lengths, strict=False))


def _recorded_classes(report: VerifyReport, root: Path, num_classes: int) -> dict[int, dict[str, Any]]:
    """Class records of `params.json` by label, one for each of the `num_classes` labels ({} when they are not
    that: the problem is reported)."""
    path = root / PARAMS_JSON
    if not path.exists():
        report.dataset_problems.append(f"{PARAMS_JSON} is missing (every build writes it: the base systems and "
                                       "each class's parameters)")
        return {}
    try:
        return {c["label"]: c for c in class_records(dataset.read_json(path), num_classes, PARAMS_JSON)}
    except UsageError as err:
        report.dataset_problems.append(str(err))
    return {}


def _check_config(report: VerifyReport, config: dict[str, Any], build: dict[str, Any]) -> BuildConfig | None:
    """build.json's config must be a complete, valid build configuration (the card and a rebuild need it) that
    makes the classes and samples build.json counts; returns it, or None when it is not one. A recipe's is read
    as rendering reads it (every option of its family); a built dataset's may lack the options added since."""
    try:
        cfg = BuildConfig.from_record(config, where=BUILD_JSON, strict=report.recipe)
    except UsageError as err:
        report.dataset_problems.append(str(err))
        return None
    for key in ("num_classes", "num_samples"):
        if key in build and build[key] != getattr(cfg, key):
            report.dataset_problems.append(f"{BUILD_JSON} config makes {getattr(cfg, key)} {key[4:]}, but "
                                           f"{BUILD_JSON} {key} is {build[key]!r:.40}")
    return cfg


def verify(root: Path | str) -> VerifyReport:
    """Re-read every shard of a dataset and check it against `build.json`, `_info.json` and `params.json`.

    Checks: each listed shard exists with the recorded bytes and sha256; its sample count matches
    build.json and _info.json; every sample holds png, cls and json and nothing else; every image is an 8-bit
    grey or RGB PNG (one format per dataset; the fractal looks grey with values {0, 127}, something lit) that
    decodes to `size` x `size` (build.json `config.size`); every `cls` is a label's plain digits in
    [0, num_classes), equal to the `json` label, to the params.json class and to the key's index // per class;
    every recorded class is present, as often as the others when the total divides evenly; no stray
    `train-*.tar` sits beside the listed shards (a `train-*.tar` glob would load it); params.json and
    _info.json have the sha256 build.json records, and the config makes its class and sample counts; a
    real-image build's source image is there with its recorded sha256.

    Args:
        root: the dataset folder (what `fracgen build` wrote).

    Returns:
        The report; `report.ok` is the verdict, `report.lines()` names each bad shard.

    Raises:
        UsageError: `root` holds no complete build (no readable build.json).
    """
    root = Path(root)
    build = dataset.read_build(root)
    report = VerifyReport(root=root, num_shards=len(build["shards"]), recipe=dataset.is_recipe(build))
    config, records = _typed_build(report, root, build)
    if config is not None:
        _check_config(report, config, build)
    config = config or {}
    num_classes = build.get("num_classes")
    if type(num_classes) is not int or num_classes < 1:
        report.dataset_problems.append(f"{BUILD_JSON} num_classes {num_classes!r} is not a positive integer")
        num_classes = 0
    report.num_classes = num_classes
    seen = _Seen()
    _check_shards(report, root, records, expect_of(config, max(1, num_classes)), seen)
    if "num_samples" in build and build["num_samples"] != sum(r.get("num_samples", 0) for r in records):
        report.dataset_problems.append(f"{BUILD_JSON} num_samples {build['num_samples']} != sum over shards "
                                       f"{sum(r.get('num_samples', 0) for r in records)}")
    if config.get("source"):
        _check_source(report, root, str(config["source"]), config.get("source_sha256"))
    _check_records(report, root, build)
    if not report.shard_problems and num_classes and not report.recipe:
        _check_label_counts(report, seen.labels, num_classes)
    if report.palette_images:
        report.dataset_problems.append(_old_format(root, report.palette_images, config))
    logger.info(report.summary())
    return report


def _check_shards(report: VerifyReport, root: Path, records: list[dict], expect: dataset.Expect,
                  seen: _Seen) -> None:
    """Every shard build.json lists, and any other shard-named file beside them (a glob would load it)."""
    names = [r["filename"] for r in records]
    info_counts = _info_counts(report, root, names, expect.num_classes)
    classes = _recorded_classes(report, root, expect.num_classes)
    if report.recipe:  # its shards are to be rendered: their counts are what the records promise
        report.num_samples = sum(r.get("num_samples", 0) for r in records)
    for record in [] if report.recipe else records:
        logger.debug("verifying %s", record["filename"])
        report.num_samples += _check_shard(report, root, record, info_counts.get(record["filename"]), expect,
                                           classes, seen)
    for stray in dataset.stray_shards(root, [] if report.recipe else names):
        report.add(stray, f"a recipe holds no shard (`fracgen build --resume {root}` renders them)" if report.recipe
                   else dataset.UNLISTED)


def _typed_build(report: VerifyReport, root: Path, build: dict[str, Any]) -> tuple[dict | None, list[dict]]:
    """build.json's config (None when it is not an object) and its shard records, each field verify reads
    checked for its type: a wrong one is reported and dropped, so the checks below never trip over it.

    Raises:
        UsageError: a shard record is not an object with a file name.
    """
    name = build.get("name")
    if name is not None and (not isinstance(name, str) or not name.isprintable()):
        report.dataset_problems.append(f"{BUILD_JSON} name {name!r} is not one line of printable text")
    config = build.get("config")
    if not isinstance(config, dict):
        report.dataset_problems.append(f"{BUILD_JSON} config is not an object (got {config!r:.60})")
        config = None
    records = []
    for i, record in enumerate(build["shards"]):
        if not isinstance(record, dict) or not isinstance(record.get("filename"), str):
            raise UsageError(f"{root / BUILD_JSON}: shards[{i}] is not an object with a filename")
        record = dict(record)
        for key, kind in (("num_samples", int), ("bytes", int), ("sha256", str)):
            value = record.get(key)
            if key in record and (not isinstance(value, kind) or isinstance(value, bool)):
                report.add(record["filename"], f"{BUILD_JSON} records {key} {value!r:.40}, not {kind.__name__}")
                del record[key]
        records.append(record)
    num_samples = build.get("num_samples")
    if "num_samples" in build and (not isinstance(num_samples, int) or isinstance(num_samples, bool)):
        report.dataset_problems.append(f"{BUILD_JSON} num_samples {num_samples!r:.40} is not an integer")
        del build["num_samples"]
    return config, records


def _old_format(root: Path, count: int, config: dict[str, Any]) -> str:
    """One line for a dataset of palette PNGs (an earlier fracgen's), with the command that rebuilds it beside it."""
    new = root.with_name(f"{root.name}-8bit")
    try:
        cfg = BuildConfig.from_record(config, where=BUILD_JSON, strict=False)
        if cfg.source:
            cfg = cfg.replace(source=str(root / cfg.source))
        parts = shlex.split(cfg.command(out=str(new)))
    except (TypeError, ValueError, UsageError):
        return (f"{count} image(s) are palette PNGs, the format of earlier fracgen builds (most readers decode them to "
                f"{{0, 1}}); rebuild with a current fracgen using the options in {BUILD_JSON}")
    if "--params" in parts:
        parts[parts.index("--params") + 1] = str(root / PARAMS_JSON)
    return (f"{count} image(s) are palette PNGs, the format of earlier fracgen builds (np.asarray, torchvision and "
            f"datasets decode them to {{0, 1}}, not grey values); rebuild with: {shlex.join(parts)}")


def _check_source(report: VerifyReport, root: Path, source: str, expected: Any) -> None:
    """The real-image preset's source image: present beside the shards, with the recorded sha256."""
    path = root / source
    problem = dataset.file_problem(root, source)
    if problem:
        report.dataset_problems.append(f"source image {source} (config.source): {problem}")
    elif expected and sha256_file(path) != expected:
        report.dataset_problems.append(f"source image {source} does not match config.source_sha256")


def _check_records(report: VerifyReport, root: Path, build: dict[str, Any]) -> None:
    """params.json and _info.json as build.json records them; a recipe's first samples, rendered now, as it
    records them (the card's head): its options and base systems still render the dataset they described."""
    report.dataset_problems.extend(dataset.changed_records(root, build.get("records", {})))
    if not report.recipe:
        return
    from fracgen.recipe import open_recipe  # the one reader that imports the kernels: a recipe renders

    try:
        head = dataset.recipe_head(build)
        if report.dataset_problems:  # its records are refused already: rendering them would say so again
            return
        recipe = open_recipe(root)
        first = min(dataset.HEAD, len(recipe.plan.shard_samples[0]))
        if len(head) != first:
            raise DatasetError(f"{BUILD_JSON} recipe head holds {len(head)} samples, not the first {first}")
        if any(recipe[i]["json"] != record for i, record in enumerate(head)):
            raise DatasetError(f"its first samples render other records than {BUILD_JSON} recipe head holds: its "
                               f"options or {PARAMS_JSON} were changed since it was written")
    except FracgenError as err:
        report.dataset_problems.append(str(err))


def _check_label_counts(report: VerifyReport, labels: Counter[int], num_classes: int) -> None:
    """Every class present; equally often when the total divides evenly (the builders make balanced sets)."""
    missing = [k for k in range(num_classes) if labels[k] == 0]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        report.dataset_problems.append(f"{len(missing)} class(es) have no sample: {shown}")
    total = sum(labels.values())
    if total % num_classes == 0:
        per_class = total // num_classes
        uneven = {k: n for k, n in labels.items() if n != per_class}
        if uneven and not missing:
            label, n = min(uneven.items())
            report.dataset_problems.append(
                f"{len(uneven)} class(es) do not have {per_class} samples each, e.g. class {label} has {n}"
            )
