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
    """Everything of ``cfg`` that only timm can judge, before any data are read or a run folder is made: the model
    name, the optimizer (against timm's registry, optionally ``lookahead_``-prefixed), the augmentation
    (``train.augment.check_aug``) and the architecture with its ``model.kwargs`` (``check_architecture``; a fine-tuning checkpoint's kwargs complete
    the config's, so ``load_pretrained`` builds that one). One-line TrainError naming the key."""
    import timm.optim

    from train.augment import check_aug

    check_model_name(cfg.model.name)
    if cfg.optim.opt.lower().split("_")[-1] not in timm.optim.list_optimizers():
        raise TrainError(f"optim.opt: must be a timm optimizer (timm.optim.list_optimizers(), e.g. adamw, sgd, "
                         f"lamb) (got {cfg.optim.opt!r})")
    check_aug(cfg.aug, cfg.model.img_size)
    if not cfg.finetune.checkpoint:
        check_architecture(cfg)


def check_architecture(cfg: Config) -> None:
    """Build ``cfg.model`` once without memory (on the meta device), so that ``model.kwargs`` timm refuses are a
    one-line error before the dataset is read (timm asserts, e.g. ``embed_dim`` divisible by ``num_heads``)."""
    check_model_name(cfg.model.name)
    try:
        with torch.device("meta"):
            _create(cfg, 2)
        return
    except Exception:  # noqa: BLE001 - an init that reads values fails on meta alone: the real build decides
        pass
    create_model(cfg, 2)


def _create(cfg: Config, num_classes: int) -> torch.nn.Module:
    return timm.create_model(cfg.model.name, num_classes=num_classes, drop_path_rate=cfg.model.drop_path,
                             img_size=cfg.model.img_size, **cfg.model.kwargs)


def create_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    """A fresh timm model for ``cfg.model`` with ``num_classes`` outputs.

    Raises:
        TrainError: an unknown model, or ``model.kwargs`` timm refuses (the last line of its message).
    """
    check_model_name(cfg.model.name)
    try:
        return _create(cfg, num_classes)
    except (TypeError, ValueError, AssertionError, ZeroDivisionError, RuntimeError) as e:
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise TrainError(f"model {cfg.model.name}: bad model.kwargs {cfg.model.kwargs} ({why})") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
