"""The checkpoint format: what a run folder keeps so that ``--resume`` continues exactly, and what it may change.

In a run folder (``train/run/folder.py``):
    config.json        timm's model config (``timm.models.save_config_for_hf``): architecture, num_classes,
                       model_args (the run's kwargs, img_size), mean/std; ``timm.create_model("local-dir:RUN",
                       pretrained=True)`` rebuilds the trained model from it and model.safetensors
    model.safetensors  the model (metadata: model name, timm kwargs, img_size, num_classes, step, config as JSON,
                       and what the run recorded about its data)
    state.pt           optimizer, scheduler, scaler, step, epoch, every rank's RNG states: what ``--resume`` needs

Every file is written under a temporary name and renamed, mode 0644 (safetensors writes 0600). The three are
renamed one after the other, so a kill between two renames leaves files of different steps: ``--resume``
compares the steps and refuses such a pair.

A resumed run continues the steps its first command planned, so every setting that shapes those steps (model,
data, augmentation, optimizer, schedule, batch split, seed, source) must be the run's own; ``--resume`` with
another value is refused before the run folder is touched, naming each key with the run's value and the
command's. Only the keys of ``MAY_CHANGE`` (how often to log, checkpoint and evaluate, where and how fast it
runs) may differ. ``train.steps`` may not: the cosine schedule spans it, so another total changes the learning
rate of every step still to come. The dataset is compared by what the checkpoint recorded about it
(``train.data.shards.dataset_identity``, ``train.data.downstream.downstream_identity``), not by its path; a
checkpoint without that record is compared by ``data.path``, resolved (``./ds`` is ``ds``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from train.config import Config
from train.distributed import Dist, seed_everything
from train.errors import TrainError
from train.model import unwrap
from train.step import TrainStep

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
TIMM_CONFIG_FILE = "config.json"

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




def _publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary file into place with the mode the user's umask gives new files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """All global RNG states, for exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a fracgen ``model.safetensors``: model, kwargs (dict), num_classes (int), step, config.

    Raises:
        TrainError: missing file, not safetensors, or no fracgen metadata.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise TrainError(f"checkpoint {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainError(f"checkpoint {path}: not a safetensors file ({e})") from None
    if "model" not in meta:
        raise TrainError(f"checkpoint {path}: no model name in its metadata (not written by train)")
    meta["kwargs"] = meta_kwargs(meta, path)
    for key in ("num_classes", "step"):
        try:
            meta[key] = int(meta.get(key, "0"))
        except ValueError:
            raise TrainError(f"checkpoint {path}: its metadata {key} is not an integer "
                             f"({meta[key][:40]!r}); the file was edited or not written by train") from None
    meta["path"] = str(path)
    return meta


def meta_kwargs(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The timm kwargs a checkpoint's metadata records: a JSON object, or a one-line error naming the file."""
    try:
        kwargs = json.loads(meta.get("kwargs", "{}"))
    except ValueError:
        kwargs = None
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TrainError(f"checkpoint {path}: its metadata kwargs is not a JSON object of timm keyword arguments "
                         f"({meta['kwargs'][:40]!r}); the file was edited or not written by train")
    return kwargs


def save_model(model: torch.nn.Module, path: Path, cfg: Config, num_classes: int, step: int,
               extra: dict[str, Any] | None = None, publish: bool = True) -> Path:
    """Write the model as safetensors with its name, timm kwargs and config in the metadata.

    Returns:
        ``path``, or with ``publish=False`` the temporary file still to be renamed onto it (``_publish``).
    """
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    meta = {"model": cfg.model.name, "kwargs": json.dumps(cfg.model.kwargs), "img_size": str(cfg.model.img_size),
            "num_classes": str(num_classes), "step": str(step), "config": json.dumps(cfg.to_dict()),
            "format": "pt"}
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    if not publish:
        return tmp
    _publish(tmp, path)
    return path


def write_timm_config(model: torch.nn.Module, out: Path, cfg: Config, step: int) -> Path:
    """Write ``config.json`` with timm's own exporter (``save_config_for_hf``) into a temporary file.

    The exporter records the architecture, ``num_classes``, the factory's kwargs (``model_args``) and the
    preprocessing (``cfg.aug`` mean/std, interpolation, eval crop). The tag and licence it inherits from the
    architecture's default weights describe other weights, so they are replaced by this run's.

    Returns:
        The temporary file; ``_publish`` it to ``out/config.json``.
    """
    from timm.models._hub import save_config_for_hf

    tmp = out / (TIMM_CONFIG_FILE + ".tmp")
    a = cfg.aug
    save_config_for_hf(unwrap(model), str(tmp), data_config={
        "mean": tuple(a.mean), "std": tuple(a.std), "interpolation": a.interpolation, "crop_pct": a.eval_crop_pct})
    config = json.loads(tmp.read_text())
    pretrained = config.get("pretrained_cfg", {})
    pretrained.pop("license", None)
    pretrained["tag"] = "fracgen"
    config["fracgen"] = {"step": step, "model": cfg.model.name, "kwargs": cfg.model.kwargs}
    tmp.write_text(json.dumps(config, indent=2))
    return tmp


def save_checkpoint(out: Path, trainer: TrainStep, cfg: Config, num_classes: int, steps_per_epoch: int,
                    env: Dist, record: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``state.pt`` at ``trainer.step``.

    Rank 0 writes; every rank must call (the RNG states are gathered). ``record`` (e.g. ``{"dataset": ...}``,
    ``train.data.shards.dataset_identity``) goes into the model's metadata beside the config, for ``--resume``.
    """
    step = trainer.step
    rngs = [rng_state()]
    if env.world_size > 1:
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if not env.is_main:
        return
    model_tmp = save_model(trainer.model, out / MODEL_FILE, cfg, num_classes, step, extra=record, publish=False)
    config_tmp = write_timm_config(trainer.model, out, cfg, step)
    state_tmp = out / (STATE_FILE + ".tmp")
    torch.save({"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                "rng": rngs, "config": cfg.to_dict()}, state_tmp)
    # everything is on disk before the first rename: a kill now leaves a pair of different steps at worst,
    # which resume refuses, never a half-written file
    _publish(state_tmp, out / STATE_FILE)
    _publish(model_tmp, out / MODEL_FILE)
    _publish(config_tmp, out / TIMM_CONFIG_FILE)


def checkpoint_files(out: Path) -> tuple[bool, bool]:
    """Whether ``out`` holds ``model.safetensors`` and ``state.pt``."""
    return (out / MODEL_FILE).is_file(), (out / STATE_FILE).is_file()


def _damaged(out: Path, why: Any) -> str:
    text = str(why).splitlines()[0] if str(why) else type(why).__name__
    return (f"--resume: {out / STATE_FILE} is damaged ({text}); the run cannot continue from it: start it again "
            "in a new --out (or restore the file)")


def check_state_file(out: Path) -> None:
    """Refuse an empty or truncated ``state.pt`` before the run folder is touched.

    ``torch.save`` writes a zip archive; its central directory is at the end of the file, so opening it (a read
    of the last bytes, not of the whole file) catches a file cut short or emptied. ``load_checkpoint`` names
    damage inside the archive when it loads it.

    Raises:
        TrainError: ``--resume: RUN/state.pt is damaged (...)``.
    """
    try:
        with zipfile.ZipFile(out / STATE_FILE) as archive:
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                raise TrainError(_damaged(out, "no data.pkl in the archive: not written by torch.save"))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        size = (out / STATE_FILE).stat().st_size if (out / STATE_FILE).is_file() else 0
        why = "empty" if size == 0 else f"{size} bytes, not a whole torch.save archive: cut short? {e}"
        raise TrainError(_damaged(out, why)) from None


def load_checkpoint(out: Path, trainer: TrainStep, env: Dist) -> int:
    """Restore the model, optimizer, scheduler, scaler and this rank's RNG states from ``out``.

    Returns:
        The step the checkpoint was written at.

    Raises:
        TrainError: one of the two files is missing or damaged, or they were written at different steps.
    """
    has_model, has_state = checkpoint_files(out)
    if not (has_model and has_state):
        missing, there = (MODEL_FILE, STATE_FILE) if has_state else (STATE_FILE, MODEL_FILE)
        raise TrainError(f"--resume: {out} has {there} but no {missing}; the checkpoint is incomplete")
    check_state_file(out)
    try:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, OSError, ValueError, AttributeError, ImportError) as e:
        # EOFError must not escape: click would take it for Ctrl-C ("aborted")
        raise TrainError(_damaged(out, e)) from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "scaler", "step", "rng"} <= set(state):
        raise TrainError(_damaged(out, "not a training state this trainer wrote"))
    model_step = read_checkpoint_meta(out / MODEL_FILE)["step"]
    if model_step != int(state["step"]):
        raise TrainError(f"--resume: {out}/{MODEL_FILE} is from step {model_step} but {STATE_FILE} from step "
                         f"{state['step']} (a checkpoint cut short); resume cannot continue exactly")
    unwrap(trainer.model).load_state_dict(load_file(str(out / MODEL_FILE), device=str(env.device)))
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    step = int(state["step"])
    _restore_rngs(state, env, step, out)
    return step


def _restore_rngs(state: dict[str, Any], env: Dist, step: int, out: Path) -> None:
    """This rank's RNG states as the checkpoint stored them. Under another process count (more or fewer GPUs,
    as timm's scripts allow) the global batch and the schedule stay the run's, so the run goes on with a warning;
    a rank the checkpoint has no state for gets its own seed from (seed, rank, step), not rank 0's stream (every
    such rank would otherwise draw rank 0's dropout and mixup)."""
    stored = state["rng"]
    if len(stored) != env.world_size and env.is_main:
        log.warning("--resume: %s was written by %d process(es) and this run has %d: the global batch and the "
                    "schedule are the run's, but from step %d on the samples each process reads and their random "
                    "augmentations differ from an uninterrupted run", out, len(stored), env.world_size, step)
    if env.rank < len(stored):
        set_rng_state(stored[env.rank])
        return
    train = state.get("config", {}).get("train") if isinstance(state.get("config"), dict) else None
    seed = train.get("seed") if isinstance(train, dict) else None
    seed = seed if isinstance(seed, int) and seed >= 0 else 0
    seed_everything(int(np.random.SeedSequence([seed, env.rank, step]).generate_state(1)[0]))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"kwargs": {"depth": 4}}}`` -> ``{"model.kwargs.depth": 4}`` (an empty mapping adds nothing)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


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
