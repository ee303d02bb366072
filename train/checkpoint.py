"""Checkpoints: the model in timm's folder layout, the training state for ``--resume``, and loading both.

In a run folder (``train/run_folder.py``):
    config.json        timm's model config (``timm.models.save_config_for_hf``): architecture, num_classes,
                       model_args (the run's kwargs, img_size), mean/std; ``timm.create_model("local-dir:RUN",
                       pretrained=True)`` rebuilds the trained model from it and model.safetensors
    model.safetensors  the model (metadata: model name, timm kwargs, img_size, num_classes, step, config as JSON)
    state.pt           optimizer, scheduler, scaler, step, epoch, every rank's RNG states: what ``--resume`` needs

Every file is written under a temporary name and renamed, mode 0644 (safetensors writes 0600). The three are
renamed one after the other, so a kill between two renames leaves files of different steps: ``--resume``
compares the steps and refuses such a pair.
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
import timm
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from train.config import Config
from train.distributed import Dist, seed_everything
from train.errors import TrainError
from train.model import check_model_name, unwrap
from train.step import TrainStep

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
TIMM_CONFIG_FILE = "config.json"
# kwargs timm records that are not the architecture: the head and resolution are chosen by each run
_NOT_ARCHITECTURE = ("num_classes", "img_size", "pretrained_model_args")


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
    meta["kwargs"] = _meta_kwargs(meta, path)
    for key in ("num_classes", "step"):
        try:
            meta[key] = int(meta.get(key, "0"))
        except ValueError:
            raise TrainError(f"checkpoint {path}: its metadata {key} is not an integer "
                             f"({meta[key][:40]!r}); the file was edited or not written by train") from None
    meta["path"] = str(path)
    return meta


def _meta_kwargs(meta: dict[str, str], path: Path) -> dict[str, Any]:
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
    ``train.resume.dataset_identity``) goes into the model's metadata beside the config, for ``--resume``.
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


def read_architecture(checkpoint: str | Path) -> dict[str, Any]:
    """The architecture a checkpoint was trained with: ``{"model", "kwargs", "path"}`` (path: the weights file).

    ``checkpoint`` is a run folder or its ``model.safetensors``. A fracgen checkpoint's metadata names the
    model and the run's kwargs; a folder written by timm alone (``save_for_hf``) is read through timm's
    ``load_model_config_from_path``, its ``model_args`` less the head and resolution.

    Raises:
        TrainError: no weights file, not safetensors, or nothing naming the architecture.
    """
    path = Path(checkpoint)
    weights = path / MODEL_FILE if path.is_dir() else path
    if not weights.is_file():
        raise TrainError(f"checkpoint {path}: no {MODEL_FILE} there" if path.is_dir() else
                         f"checkpoint {path}: no such file or run folder")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainError(f"checkpoint {weights}: not a safetensors file ({e})") from None
    if "model" in meta:
        return {"model": meta["model"], "kwargs": _meta_kwargs(meta, weights), "path": str(weights)}
    if not (weights.parent / TIMM_CONFIG_FILE).is_file():
        raise TrainError(f"checkpoint {weights}: no model name in its metadata and no {TIMM_CONFIG_FILE} beside it")
    from timm.models._hub import load_model_config_from_path

    try:
        _, name, model_args = load_model_config_from_path(weights.parent)
    except (KeyError, ValueError, OSError, TypeError, AttributeError, IndexError) as e:
        # timm indexes the JSON as it expects it: a list or a number where a mapping belongs is a TypeError
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainError(f"checkpoint {weights.parent / TIMM_CONFIG_FILE}: not a timm config ({why})") from None
    if not isinstance(name, str) or not isinstance(model_args or {}, dict):
        raise TrainError(f"checkpoint {weights.parent / TIMM_CONFIG_FILE}: not a timm config (architecture "
                         f"{name!r}, model_args {model_args!r})")
    kwargs = {k: v for k, v in (model_args or {}).items() if k not in _NOT_ARCHITECTURE}
    return {"model": name, "kwargs": kwargs, "path": str(weights)}


def adopt_architecture(cfg: Config, checkpoint: str | Path) -> dict[str, Any]:
    """Take the model name and kwargs from ``checkpoint`` into ``cfg.model`` (so nobody retypes them).

    Kwargs the config sets must be ones the checkpoint was trained with; the config may leave any out.
    ``img_size``, the head and ``drop_path`` stay the run's own.

    Returns:
        ``read_architecture``'s answer.

    Raises:
        TrainError: the config names another model, or a kwarg the checkpoint has not (or has otherwise).
    """
    arch = read_architecture(checkpoint)
    clash = {k: v for k, v in cfg.model.kwargs.items() if k not in arch["kwargs"] or arch["kwargs"][k] != v}
    if arch["model"] != cfg.model.name or clash:
        fix = (f"set model.name={arch['model']} (--model)" if arch["model"] != cfg.model.name else
               f"drop {', '.join('model.kwargs.' + k for k in clash)} (the checkpoint's kwargs are used)")
        raise TrainError(f"checkpoint {arch['path']} is a {arch['model']} {arch['kwargs'] or ''} model, this run "
                         f"builds {cfg.model.name} {cfg.model.kwargs or ''}: {fix}")
    cfg.model.kwargs = dict(arch["kwargs"])
    return arch


def load_pretrained(cfg: Config, checkpoint: str | Path, num_classes: int) -> torch.nn.Module:
    """A timm model initialised from a checkpoint (run folder or ``model.safetensors``), ``num_classes`` outputs.

    The architecture comes from the checkpoint (``adopt_architecture`` writes it into ``cfg.model.kwargs``).
    Uses timm's own path (``pretrained_cfg_overlay=dict(file=..., num_classes=-1)``), which also resamples
    position embeddings when ``cfg.model.img_size`` differs from the pre-training resolution.

    Raises:
        TrainError: the checkpoint is of another architecture than ``cfg.model``, or holds NaN / inf weights.
    """
    check_model_name(cfg.model.name)
    path = adopt_architecture(cfg, checkpoint)["path"]
    try:
        model = timm.create_model(
            cfg.model.name, pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=-1),
            num_classes=num_classes, drop_path_rate=cfg.model.drop_path, img_size=cfg.model.img_size,
            **cfg.model.kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError, ZeroDivisionError) as e:
        # an AssertionError is timm refusing the kwargs (e.g. embed_dim not divisible by num_heads)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"checkpoint {path} does not fit {cfg.model.name}: {why}") from None
    # timm loads non-strictly once the head is dropped: check that every other tensor was there
    head = unwrap(model).default_cfg.get("classifier", "head")
    tensors = load_file(path)
    # weights that are NaN or inf would train to a NaN loss: named here, before a run folder is made
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise TrainError(f"checkpoint {path}: {len(broken)} tensor(s) hold NaN or inf values ({', '.join(broken[:3])}"
                         f"{', ...' if len(broken) > 3 else ''}): the run that wrote it diverged")
    keys = {k for k in tensors if not k.startswith(head + ".")}
    wanted = {k for k in model.state_dict() if not k.startswith(head + ".")}
    if keys != wanted:
        raise TrainError(f"checkpoint {path} does not fit {cfg.model.name}: "
                         f"{len(wanted - keys)} missing and {len(keys - wanted)} unexpected tensors")
    return model
