"""What ``--resume`` may change: the command's config against the one the run's checkpoint was written with.

A resumed run continues the steps its first command planned, so every setting that shapes those steps (model,
data, augmentation, optimizer, schedule, batch split, seed, source) must be the run's own; ``--resume`` with
another value is refused before the run folder is touched, naming each key with the run's value and the
command's. Only the keys of ``MAY_CHANGE`` (how often to log, checkpoint and evaluate, where and how fast it
runs) may differ. ``train.steps`` may not: the cosine schedule spans it, so another total changes the learning
rate of every step still to come.

The dataset is compared by what the checkpoint recorded about it (``dataset_identity``: ``build.json``'s name
and the shards' names, sizes and sha256, the class and sample counts, the source that served it), not by its
path: a build moved elsewhere resumes, another build of the same shape at the same path does not. A checkpoint
without that record (a run written before it existed) is compared by ``data.path``, resolved (``./ds`` is ``ds``).

A fine-tuning checkpoint records its downstream data the same way (``downstream_identity``: the class names, the
split sizes and a digest of every image file's name and size), so an ImageFolder that gained images or a class
since the run stopped is refused before the run folder is touched, instead of resuming with another schedule.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fracgen import dataset
from fracgen.errors import FracgenError
from train.checkpoint import MODEL_FILE, STATE_FILE, check_state_file, read_checkpoint_meta
from train.config import Config
from train.data import read_info
from train.errors import TrainError

# The keys a resumed run may set otherwise than its first command, and why that leaves its steps as planned.
MAY_CHANGE: dict[str, str] = {
    "train.log_every": "how often a log row is written",
    "train.ckpt_every": "how often a checkpoint is written",
    "train.eval_every": "how often accuracy is measured (evaluation draws no random numbers)",
    "train.stop_at": "where a time-boxed job stops",
    "train.threads": "CPU threads",
    "train.device": "where it runs (bit-exact continuation needs the same kind of device)",
    "train.compile": "torch.compile, a speed choice (bit-exact continuation needs the same choice)",
    "data.verify": "whether sha256 is checked before step 1",
    "data.root": "where downloads and unpacked tarballs are kept",
    "data.resident.load_workers": "threads decoding PNGs at start-up",
    "finetune.eval_batch_size": "the test split's batch",
    "log.tensorboard": "TensorBoard scalars beside log.csv",
}
DATA_PATH = "data.path"  # compared through the dataset's identity when the checkpoint recorded one
_SHOWN = 6  # differences named in the one-line error; the rest are counted


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"kwargs": {"depth": 4}}}`` -> ``{"model.kwargs.depth": 4}`` (an empty mapping adds nothing)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def dataset_identity(path: str, source: str) -> dict[str, Any]:
    """What a pre-training checkpoint records about its data, so that ``--resume`` knows it is the same.

    A local fracgen build is known by ``build.json`` (its name and every shard's name, size and sha256, hashed
    into one digest); anything else (a brace pattern, a URL, a folder without ``build.json``) only by its
    path and counts.

    Args:
        path: ``data.path``, a dataset already opened (its ``_info.json`` is read again, for the counts).
        source: the source that served it (``StreamSource``, ``ResidentSource``): they draw different batches.
    """
    info = read_info(path)
    train = info.splits.get("train")
    record: dict[str, Any] = {"num_classes": info.num_classes, "num_samples": train.num_samples if train else None,
                              "source": source}
    folder = Path(path)
    build = None
    if "://" not in path and folder.is_dir() and dataset.is_complete(folder):
        try:
            build = dataset.read_build(folder)
        except FracgenError:
            build = None
    shards = build.get("shards") if isinstance(build, dict) else None
    if isinstance(shards, list) and shards and all(isinstance(s, dict) and s.get("sha256") for s in shards):
        rows = sorted((str(s.get("filename")), s.get("bytes"), str(s.get("sha256"))) for s in shards)
        record["name"] = build.get("name")
        record["shards_sha256"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    else:
        record["path"] = path
    return record


def _file_rows(split: Any) -> list[Any] | None:
    """One row per image of a downstream split: (name relative to its folder, bytes, label); None when unknown.

    An ImageFolder (``samples``) is known by its files (``stat`` only, nothing is read), a WebDataset split held
    in memory (``items``) by its images' sizes and labels; torchvision's CIFAR checks its own md5.
    """
    samples = getattr(split, "samples", None)
    root = getattr(split, "root", None)
    if isinstance(samples, list) and root is not None:
        sizes = getattr(split, "sizes", None)  # what train.downstream stat'ed when it opened the folder
        if not isinstance(sizes, list) or len(sizes) != len(samples):
            sizes = [os.stat(path).st_size for path, _ in samples]
        return [(os.path.relpath(path, root), size, label) for (path, label), size in zip(samples, sizes, strict=True)]
    items = getattr(split, "items", None)
    if isinstance(items, list):
        return [(len(data), label) for data, label in items]
    return None


def downstream_identity(train: Any, test: Any, num_classes: int) -> dict[str, Any]:
    """What a fine-tuning checkpoint records about its data, so that ``--resume`` knows it is the same.

    Args:
        train: the train split (``train.downstream.open_downstream``'s).
        test: the test split.
        num_classes: the class count.
    """
    record: dict[str, Any] = {"num_classes": num_classes, "classes": getattr(train, "classes", None),
                              "num_train": len(train), "num_test": len(test)}
    rows = [_file_rows(train), _file_rows(test)]
    if all(r is not None for r in rows):
        record["files_sha256"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return record


def _same_path(a: Any, b: Any) -> bool:
    """``data.path`` of the run and of the command name the same place (``./ds`` and ``ds`` do)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and a and b) or "://" in a or "://" in b:
        return False
    return Path(a).resolve() == Path(b).resolve()


def stored_run(out: Path) -> dict[str, Any] | None:
    """The config, dataset record (or None) and, for a fine-tuning, the pre-training step it started from
    (``checkpoint_step``), as the checkpoint in ``out`` records them; None without one.

    Read from ``model.safetensors``'s metadata (``read_checkpoint_meta``: its header alone); ``load_checkpoint``
    checks later that ``state.pt`` is of the same step.
    """
    if not (out / MODEL_FILE).is_file():
        return None
    try:
        meta = read_checkpoint_meta(out)
        config = json.loads(meta["config"])
        data = json.loads(meta["dataset"]) if "dataset" in meta else None
    except (TrainError, ValueError, KeyError):
        return None  # not a checkpoint this trainer wrote whole: load_checkpoint names what is wrong
    stored = {"config": config, "dataset": data if isinstance(data, dict) else None}
    if "checkpoint_step" in meta:  # a fine-tuning's: the pre-training step it started from
        try:
            stored["checkpoint_step"] = json.loads(meta["checkpoint_step"])
        except ValueError:
            stored["checkpoint_step"] = None
    return stored


def differences(stored: dict[str, Any], cfg: Config, data: dict[str, Any] | None,
                compare_data: bool) -> list[tuple[str, Any, Any]]:
    """(key, the run's value, the command's value) for every key ``--resume`` may not change.

    A key the stored config lacks (written before the key existed) counts as its default.
    """
    defaults = flatten(Config().to_dict())
    theirs = {**defaults, **flatten(stored["config"])}
    ours = flatten(cfg.to_dict())
    recorded = stored.get("dataset")
    by_identity = recorded is not None and data is not None
    found = []
    for key in sorted(set(theirs) | set(ours)):
        if key in MAY_CHANGE or (key == DATA_PATH and (by_identity or not compare_data)):
            continue
        if key == DATA_PATH and _same_path(theirs.get(key), ours.get(key)):
            continue
        if theirs.get(key, "unset") != ours.get(key, "unset"):
            found.append((key, theirs.get(key, "unset"), ours.get(key, "unset")))
    if by_identity and compare_data:
        other = [(f"dataset.{key}", recorded.get(key, "unset"), data.get(key, "unset"))
                 for key in sorted(set(recorded) | set(data)) if recorded.get(key, "unset") != data.get(key, "unset")]
        path = (DATA_PATH, theirs.get(DATA_PATH), ours.get(DATA_PATH))
        found += ([path] if other and path[1] != path[2] else []) + other
    return found


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "…"


def check_resume(out: Path, cfg: Config, data: dict[str, Any] | None = None, compare_data: bool = True) -> None:
    """Refuse ``--resume`` of the checkpoint in ``out`` with a config (or dataset) other than the run's.

    An empty or truncated ``state.pt`` is refused here too (``checkpoint.check_state_file``).

    Args:
        out: the run folder (nothing is written to it).
        cfg: the command's resolved config.
        data: ``dataset_identity`` (pre-training) or ``downstream_identity`` (fine-tuning) of the command's
            dataset (None: ``data.path`` is compared).
        compare_data: False before the dataset is opened (an early check of the config alone).

    Raises:
        TrainError: ``--resume: RUN was run with KEY=OLD, this command gives NEW; ...``, or
            ``--resume: RUN/state.pt is damaged (...)``.
    """
    stored = stored_run(out)
    if stored is None:
        return
    if (out / STATE_FILE).is_file():  # an empty or cut-short state.pt, named before anything is read or written
        check_state_file(out)
    found = differences(stored, cfg, data, compare_data)
    if not found:
        return
    shown = "; ".join(f"{k}={_show(a)}, this command gives {_show(b)}" for k, a, b in found[:_SHOWN])
    more = f"; and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    if all(k.startswith("dataset.") for k, _, _ in found):  # the settings agree: the data itself changed
        raise TrainError(f"--resume: {out} was run with {shown}{more}. The data changed since the run stopped: "
                         "restore it as it was, or start a new run in another --out")
    raise TrainError(f"--resume: {out} was run with {shown}{more}. Resume with the run's own settings "
                     f"(--config {out / 'config.yaml'}) or use a new --out (what may change on resume: train/README.md)")


def completed_run(out: Path, cfg: Config, compare_data: bool = True) -> dict[str, Any] | None:
    """On ``--resume``: the metrics of the complete run in ``out``, which has nothing left to do; else None.

    The folder is left byte for byte as it is (no lock, no ``config.yaml``, no checkpoint rewritten), so a
    requeue script that always passes ``--resume`` may run again after the job ended. The command's config
    must still be the run's (``check_resume``): another ``train.steps`` is another run, not this one.

    Args:
        out: the run folder.
        cfg: the command's resolved config.
        compare_data: compare ``data.path`` too (False for pre-training, whose dataset is compared by identity).

    Returns:
        ``metrics.json`` with ``"already_complete": True``, or None when ``out`` holds no complete run.

    Raises:
        TrainError: another config than the run's, or a run marked complete whose ``metrics.json`` is unreadable.
    """
    from train.run_folder import METRICS_FILE, STATUS_FILE, trainer_status  # it imports this module

    status = trainer_status(out) if out.is_dir() else None
    if status is None or status.get("status") != "complete":
        return None
    check_resume(out, cfg, compare_data=compare_data)
    try:
        metrics = json.loads((out / METRICS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        metrics = None
    if not isinstance(metrics, dict):
        raise TrainError(f"--resume: {out} is marked complete ({STATUS_FILE}) but its {METRICS_FILE} is missing or "
                         "unreadable: there is nothing to resume; start the run again in a new --out")
    return {**metrics, "already_complete": True}
