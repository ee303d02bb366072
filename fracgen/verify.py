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
from fracgen.config import BuildConfig
from fracgen.dataset import (
    BUILD_JSON,
    INFO_JSON,
    KEY_RE,
    PARAMS_JSON,
    SAMPLE_EXTS,
    SHARD_GLOB,
    DatasetError,
    sha256_file,
)
from fracgen.errors import UsageError

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
        palette_images: images stored as palette PNGs, the format before issue 10.
    """

    root: Path
    num_shards: int = 0
    num_samples: int = 0
    num_classes: int = 0
    shard_problems: dict[str, list[str]] = field(default_factory=dict)
    dataset_problems: list[str] = field(default_factory=list)
    palette_images: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.shard_problems and not self.dataset_problems

    def add(self, shard: str, problem: str) -> None:
        """Record a problem of one shard."""
        self.shard_problems.setdefault(shard, []).append(problem)

    def summary(self) -> str:
        """One line: the verdict and the figures."""
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
class _Expect:
    """What every sample of this dataset must be (from build.json's config; None: not known)."""

    size: int | None = None
    per_class: int | None = None  # label = index // per_class
    fractal: bool = False  # the fractal looks: grey values {0, 127}, something lit
    formats: set = field(default_factory=set)  # (bit depth, colour type) seen: one per dataset


def _image_problem(key: str, data: bytes, expect: _Expect) -> str:
    """Why a sample's PNG is not what the readers rely on, or ''; decodes it fully (truncated data fails)."""
    if dataset.png_colour_type(data) is None:
        return f"sample {key} png is not a PNG"
    depth, colour = data[24], data[25]
    if colour != dataset.PNG_PALETTE:  # palette: the format before issue 10, named apart
        if depth != 8 or colour not in (dataset.PNG_GREY, dataset.PNG_RGB) or (expect.fractal and colour):
            return f"sample {key} png is {depth}-bit of colour type {colour}, not the build's 8-bit grey or RGB"
        expect.formats.add((depth, colour))
    pixels = dataset.decode_grey(data)
    if expect.size is not None and pixels.shape != (expect.size, expect.size):
        return f"sample {key} is {pixels.shape[1]}x{pixels.shape[0]}, expected {expect.size}x{expect.size}"
    if expect.fractal and (not pixels.any() or ((pixels != 0) & (pixels != 127)).any()):
        return f"sample {key} has grey values other than the fractal looks' 0 and 127, or none lit"
    return ""


def _check_shard(
    report: VerifyReport,
    path: Path,
    record: dict[str, Any],
    info_count: int | None,
    expect: _Expect,
    num_classes: int,
    classes: dict[int, dict[str, Any]],
    labels: Counter[int],
    keys: set[str],
) -> int:
    """Check one shard against its records; returns the number of samples read."""
    name = record["filename"]
    if not path.is_file():
        report.add(name, "missing")
        return 0
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        report.add(name, f"cannot be read ({err.strerror or err})")
        return 0
    actual_bytes = path.stat().st_size
    for key in ("bytes", "sha256", "num_samples"):
        if key not in record:
            report.add(name, f"{BUILD_JSON} records no {key} for it")
    if "bytes" in record and actual_bytes != record["bytes"]:
        report.add(name, f"size {actual_bytes} bytes, {BUILD_JSON} records {record['bytes']}")
    if "sha256" in record:
        digest = sha256_file(path)
        if digest != record["sha256"]:
            report.add(
                name, f"sha256 {digest[:12]}... does not match {BUILD_JSON} {str(record['sha256'])[:12]}..."
            )
    count = 0
    bad_images = bad_labels = 0
    first_image_problem = first_label_problem = ""
    try:
        for sample in dataset.iter_shard(path, strict=True):
            key = sample["__key__"]
            count += 1
            if not KEY_RE.match(key):
                report.add(name, f"sample key {key!r} is not 8 digits")
            if key in keys:
                report.add(name, f"sample key {key} also appears earlier")
            keys.add(key)
            missing = [ext for ext in SAMPLE_EXTS if ext not in sample]
            extra = sorted(set(sample) - {"__key__", "__url__", *SAMPLE_EXTS})
            if missing or extra:
                report.add(name, f"sample {key} " + (f"lacks {', '.join(missing)}" if missing else
                                                     f"holds members no build writes: {', '.join(extra)}"))
                continue
            if dataset.png_colour_type(sample["png"]) == dataset.PNG_PALETTE:
                report.palette_images += 1
            try:
                problem = _image_problem(key, sample["png"], expect)
            except Exception as err:  # noqa: BLE001 - any decoder failure means a bad image
                problem = f"sample {key} png does not decode ({err})"
            if problem:
                bad_images += 1
                first_image_problem = first_image_problem or problem
            problem = _label_problem(sample, num_classes, classes)
            if not problem and expect.per_class and KEY_RE.match(key) and int(key) // expect.per_class != int(
                    sample["cls"]):
                problem = f"sample {key} label {int(sample['cls'])} is not its index // {expect.per_class}"
            if problem:
                bad_labels += 1
                first_label_problem = first_label_problem or problem
            else:
                labels[int(sample["cls"])] += 1
    except DatasetError as err:
        report.add(name, f"not a readable tar after {count} samples ({err})")
    if bad_images:
        report.add(name, f"{bad_images} bad image(s), first: {first_image_problem}")
    if bad_labels:
        report.add(name, f"{bad_labels} bad label(s), first: {first_label_problem}")
    if "num_samples" in record and count != record["num_samples"]:
        report.add(name, f"{count} samples, {BUILD_JSON} records {record['num_samples']}")
    if info_count is not None and count != info_count:
        report.add(name, f"{count} samples, {INFO_JSON} records {info_count}")
    return count


def _label_problem(sample: dict[str, Any], num_classes: int, classes: dict[int, dict[str, Any]]) -> str:
    """Why a sample's label is wrong, or '' when it is right."""
    key = sample["__key__"]
    try:
        label = int(sample["cls"].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        label = -1
    if str(label).encode() != sample["cls"] or label < 0:
        return f"sample {key} cls {sample['cls'][:20]!r} is not a label's plain digits"
    if not 0 <= label < num_classes:
        return f"sample {key} label {label} is outside 0..{num_classes - 1}"
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"sample {key} json does not parse"
    if not isinstance(meta, dict) or meta.get("label") != label:
        return f"sample {key} json label {meta.get('label') if isinstance(meta, dict) else None} != cls {label}"
    recorded = classes.get(label)
    if recorded is not None:
        for field_name in _CLASS_FIELDS:
            if field_name in recorded and field_name in meta and not _agrees(recorded[field_name], meta[field_name]):
                return (
                    f"sample {key} {field_name} {str(meta[field_name])[:60]} != {PARAMS_JSON} class {label} "
                    f"{field_name} {str(recorded[field_name])[:60]}"
                )
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


def _recorded_classes(report: VerifyReport, root: Path) -> dict[int, dict[str, Any]]:
    """Class records of `params.json` by label ({} when the dataset has no such records)."""
    path = root / PARAMS_JSON
    if not path.exists():
        report.dataset_problems.append(f"{PARAMS_JSON} is missing (every build writes it: the base systems and "
                                       "each class's parameters)")
        return {}
    try:
        params = dataset.read_json(path)
        return {int(c["label"]): c for c in params.get("classes", [])}
    except UsageError as err:
        report.dataset_problems.append(str(err))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        report.dataset_problems.append(f"{PARAMS_JSON} classes are malformed ({err})")
    return {}


def _check_config(report: VerifyReport, config: dict[str, Any], build: dict[str, Any]) -> BuildConfig | None:
    """build.json's config must be a complete, valid build configuration (the card and a rebuild need it) that
    makes the classes and samples build.json counts; returns it, or None when it is not one."""
    missing = BuildConfig.missing(config)  # options added since a dataset was built take their defaults
    if missing:
        report.dataset_problems.append(f"{BUILD_JSON} config lacks {', '.join(missing)}")
        return None
    try:
        cfg = BuildConfig.from_json(config)
        cfg.validate()
    except (TypeError, ValueError, UsageError) as err:
        report.dataset_problems.append(f"{BUILD_JSON} config is invalid ({err})")
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
    report = VerifyReport(root=root, num_shards=len(build["shards"]))
    config, records = _typed_build(report, root, build)
    shard_names = [r["filename"] for r in records]
    cfg = _check_config(report, config, build) if config is not None else None
    config = config or {}
    expect = _expectations(cfg, config)
    num_classes = build.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        report.dataset_problems.append(f"{BUILD_JSON} num_classes {num_classes!r} is not a positive integer")
        num_classes = 0
    report.num_classes = num_classes
    info_counts = _info_counts(report, root, shard_names, num_classes)
    classes = _recorded_classes(report, root)
    if classes and sorted(classes) != list(range(num_classes)):
        report.dataset_problems.append(
            f"{PARAMS_JSON} records {len(classes)} classes, {BUILD_JSON} num_classes is {num_classes}"
        )

    labels: Counter[int] = Counter()
    keys: set[str] = set()
    for record in records:
        name = record["filename"]
        logger.debug("verifying %s", name)
        if Path(name).name != name or name.startswith("."):
            report.add(name, "filename is not a plain file name in the dataset folder")
            continue
        report.num_samples += _check_shard(
            report, root / name, record, info_counts.get(name), expect, num_classes, classes, labels, keys
        )
    if len(expect.formats) > 1:
        report.dataset_problems.append("images mix PNG formats (bit depth, colour type): "
                                       f"{sorted(expect.formats)}; a build writes one")

    for stray in sorted(p.name for p in root.glob(dataset.SHARD_GLOB) if p.name not in set(shard_names)):
        report.add(stray, f"not listed in {BUILD_JSON} (a {SHARD_GLOB} glob would load it)")
    if "num_samples" in build and build["num_samples"] != sum(r.get("num_samples", 0) for r in records):
        report.dataset_problems.append(
            f"{BUILD_JSON} num_samples {build['num_samples']} != sum over shards "
            f"{sum(r.get('num_samples', 0) for r in records)}"
        )
    source = str(config.get("source") or "")
    if source:
        _check_source(report, root, source, config.get("source_sha256"))
    _check_records(report, root, build.get("records", {}))
    if not report.shard_problems and num_classes:
        _check_label_counts(report, labels, num_classes)
    if report.palette_images:
        report.dataset_problems.append(_old_format(root, report.palette_images, config))
    logger.info(report.summary())
    return report


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
    """One line for a dataset built before issue 10, with the command that rebuilds it beside it."""
    new = root.with_name(f"{root.name}-8bit")
    try:
        cfg = BuildConfig.from_json(config)
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
    if Path(source).name != source or not path.is_file():
        report.dataset_problems.append(f"source image {source} (config.source) is missing")
    elif expected and sha256_file(path) != expected:
        report.dataset_problems.append(f"source image {source} does not match config.source_sha256")


def _expectations(cfg: BuildConfig | None, config: dict[str, Any]) -> _Expect:
    """What build.json's config says every sample must be; only the size when it is not a valid config."""
    if cfg is None:
        size = config.get("size")
        return _Expect(size=size if isinstance(size, int) and not isinstance(size, bool) else None)
    return _Expect(size=cfg.size, per_class=cfg.per_class, fractal=cfg.family.image_mode(cfg) == "fractal")


def _check_records(report: VerifyReport, root: Path, records: Any) -> None:
    """params.json and _info.json as the build wrote them (build.json records their sha256; builds before
    these records have none, and keep the structural checks only)."""
    if not isinstance(records, dict):
        report.dataset_problems.append(f"{BUILD_JSON} records is not an object (got {records!r:.60})")
        return
    for name in (PARAMS_JSON, INFO_JSON):
        path = root / name
        if name in records and path.is_file() and sha256_file(path) != records[name]:
            report.dataset_problems.append(f"{name} was changed after the build: its sha256 is not the one "
                                           f"{BUILD_JSON} records")


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
