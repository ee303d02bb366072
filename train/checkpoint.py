"""Checkpoints: the model as safetensors with its context, the training state for ``--resume``, and loading both.

In a run folder (``train/run_folder.py``):
    model.safetensors  the model (metadata: model name, timm kwargs, img_size, num_classes, step, config as JSON)
    state.pt           optimizer, scheduler, scaler, step, epoch, every rank's RNG states: what ``--resume`` needs
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from train.config import Config
from train.distributed import Dist
from train.errors import TrainError
from train.model import check_model_name, unwrap
from train.step import TrainStep

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


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
    meta["kwargs"] = json.loads(meta.get("kwargs", "{}"))
    meta["num_classes"] = int(meta.get("num_classes", "0"))
    meta["step"] = int(meta.get("step", "0"))
    meta["path"] = str(path)
    return meta


def save_model(model: torch.nn.Module, path: Path, cfg: Config, num_classes: int, step: int,
               extra: dict[str, Any] | None = None) -> None:
    """Write the model as safetensors with its name, timm kwargs and config in the metadata (atomically)."""
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    meta = {"model": cfg.model.name, "kwargs": json.dumps(cfg.model.kwargs), "img_size": str(cfg.model.img_size),
            "num_classes": str(num_classes), "step": str(step), "config": json.dumps(cfg.to_dict()),
            "format": "pt"}
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def save_checkpoint(out: Path, trainer: TrainStep, cfg: Config, num_classes: int, steps_per_epoch: int,
                    env: Dist) -> None:
    """Write ``model.safetensors`` and ``state.pt`` at ``trainer.step`` (rank 0 writes; every rank must call)."""
    step = trainer.step
    if env.is_main:
        save_model(trainer.model, out / MODEL_FILE, cfg, num_classes, step)
    rngs = [rng_state()]
    if env.world_size > 1:
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if env.is_main:
        tmp = out / (STATE_FILE + ".tmp")
        torch.save({"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                    "scaler": trainer.scaler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                    "rng": rngs, "config": cfg.to_dict()}, tmp)
        os.replace(tmp, out / STATE_FILE)


def load_checkpoint(out: Path, trainer: TrainStep, env: Dist) -> int:
    """Restore the model, optimizer, scheduler, scaler and this rank's RNG states from ``out``.

    Returns:
        The step the checkpoint was written at.
    """
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
    unwrap(trainer.model).load_state_dict(load_file(str(out / MODEL_FILE), device=str(env.device)))
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][env.rank] if env.rank < len(state["rng"]) else state["rng"][0])
    return int(state["step"])


def load_pretrained(cfg: Config, checkpoint: str | Path, num_classes: int) -> torch.nn.Module:
    """A timm model initialised from a fracgen checkpoint with a new ``num_classes`` head.

    Uses timm's own path (``pretrained_cfg_overlay=dict(file=..., num_classes=-1)``), which also resamples
    position embeddings when ``cfg.model.img_size`` differs from the pre-training resolution.

    Raises:
        TrainError: the checkpoint is of another architecture than ``cfg.model``.
    """
    meta = read_checkpoint_meta(checkpoint)
    check_model_name(cfg.model.name)
    if meta["model"] != cfg.model.name or meta["kwargs"] != cfg.model.kwargs:
        raise TrainError(f"checkpoint {meta['path']} is a {meta['model']} {meta['kwargs'] or ''} model, this run "
                         f"builds {cfg.model.name} {cfg.model.kwargs or ''}: set model.name/model.kwargs to match")
    try:
        model = timm.create_model(
            cfg.model.name, pretrained=True, pretrained_cfg_overlay=dict(file=meta["path"], num_classes=-1),
            num_classes=num_classes, drop_path_rate=cfg.model.drop_path, img_size=cfg.model.img_size,
            **cfg.model.kwargs)
    except RuntimeError as e:
        raise TrainError(f"checkpoint {meta['path']} does not fit {cfg.model.name}: {str(e).splitlines()[0]}") from None
    # timm loads non-strictly once the head is dropped: check that every other tensor was there
    head = unwrap(model).default_cfg.get("classifier", "head")
    keys = {k for k in load_file(meta["path"]) if not k.startswith(head + ".")}
    wanted = {k for k in model.state_dict() if not k.startswith(head + ".")}
    if keys != wanted:
        raise TrainError(f"checkpoint {meta['path']} does not fit {cfg.model.name}: "
                         f"{len(wanted - keys)} missing and {len(keys - wanted)} unexpected tensors")
    return model
