"""The timm model of a run: name check, creation, and the plain module under DDP / ``torch.compile`` wrappers."""

from __future__ import annotations

import timm
import torch

from train.config import Config
from train.errors import TrainError


def check_model_name(name: str) -> None:
    """Raise a one-line TrainError for a name timm does not know, with close names."""
    if not timm.is_model(name):
        stem = name.split("_")[0]
        close = timm.list_models(f"{stem}*")[:6]
        raise TrainError(f"unknown timm model {name!r}" + (f" (e.g. {', '.join(close)})" if close else ""))


def check_timm_names(cfg: Config) -> None:
    """The model and optimizer names of ``cfg`` against timm's registries (an optimizer may be ``lookahead_``-
    prefixed, as ``timm.optim.create_optimizer_v2`` takes it); one-line TrainError naming the key."""
    import timm.optim

    check_model_name(cfg.model.name)
    if cfg.optim.opt.lower().split("_")[-1] not in timm.optim.list_optimizers():
        raise TrainError(f"optim.opt: must be a timm optimizer (timm.optim.list_optimizers(), e.g. adamw, sgd, "
                         f"lamb) (got {cfg.optim.opt!r})")


def create_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    """A fresh timm model for ``cfg.model`` with ``num_classes`` outputs."""
    check_model_name(cfg.model.name)
    try:
        return timm.create_model(cfg.model.name, num_classes=num_classes, drop_path_rate=cfg.model.drop_path,
                                 img_size=cfg.model.img_size, **cfg.model.kwargs)
    except TypeError as e:
        raise TrainError(f"model {cfg.model.name}: bad model.kwargs {cfg.model.kwargs} ({e})") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
