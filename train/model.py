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
    name, the optimizer (``check_optimizer``), the augmentation (``train.augment.check_aug``) and the
    architecture with its ``model.kwargs`` (``check_architecture``; a fine-tuning checkpoint's kwargs complete
    the config's, so ``load_pretrained`` builds that one). One-line TrainError naming the key."""
    from train.augment import check_aug

    check_model_name(cfg.model.name)
    check_optimizer(cfg)
    check_aug(cfg.aug, cfg.model.img_size)
    if not cfg.finetune.checkpoint:
        check_architecture(cfg)


def _on_cuda(cfg: Config) -> bool:
    """Whether the run will train on CUDA (``train.distributed.setup`` refuses ``cuda`` without a device)."""
    return cfg.train.device != "cpu" and (cfg.train.device != "auto" or torch.cuda.is_available())


def check_optimizer(cfg: Config) -> None:
    """``optim.opt`` must be an optimizer the step loop can run here.

    Any first-order optimizer of timm's registry (``timm.optim.list_optimizers()``, optionally ``lookahead_``-
    prefixed, as ``timm.optim.create_optimizer_v2`` takes it) is supported, except:

    - second-order ones (``adahessian``): they need the loss's graph (``backward(create_graph=True)``),
      which the step does not keep;
    - the bitsandbytes (``bnb*``) and apex (``fused*``) ones: they need their package and a CUDA device;
    - ``kron*``: without ``opt_einsum`` its preconditioner update materialises products of tens of GB
      (87 GB for ViT-Tiny), so it needs that package.

    Raises:
        TrainError: ``optim.opt: ...`` saying which rule and what to use instead.
    """
    import importlib.util

    import timm.optim

    name = cfg.optim.opt.lower().split("_")[-1]
    instead = "use a first-order timm optimizer such as adamw, sgd or lamb"
    if name not in timm.optim.list_optimizers():
        raise TrainError(f"optim.opt: must be a timm optimizer (timm.optim.list_optimizers(), e.g. adamw, sgd, "
                         f"lamb) (got {cfg.optim.opt!r})")
    info = timm.optim.get_optimizer_info(name)
    if info.second_order:
        raise TrainError(f"optim.opt: {cfg.optim.opt} is second-order (it needs backward(create_graph=True)), "
                         f"which this trainer's step does not do: {instead}")
    if isinstance(info.opt_class, str):  # timm imports these lazily from another package
        package = info.opt_class.split(".")[0]
        if importlib.util.find_spec(package) is None:
            raise TrainError(f"optim.opt: {cfg.optim.opt} needs the {package} package, which is not installed: "
                             f"install it or {instead}")
        if not _on_cuda(cfg):
            raise TrainError(f"optim.opt: {cfg.optim.opt} ({package}) needs a CUDA device and this run is on the "
                             f"CPU (train.device={cfg.train.device}): {instead}")
    if name.startswith("kron") and importlib.util.find_spec("opt_einsum") is None:
        raise TrainError(f"optim.opt: {cfg.optim.opt} needs the opt_einsum package (without it timm's Kron "
                         f"allocates tens of GB per step): install it or {instead}")


def check_architecture(cfg: Config) -> None:
    """Build ``cfg.model`` once without memory (on the meta device), so that ``model.kwargs`` timm refuses are a
    one-line error before the dataset is read (timm asserts, e.g. ``embed_dim`` divisible by ``num_heads``)."""
    check_model_name(cfg.model.name)
    if count_parameters(cfg) is None:  # an init that reads values fails on meta alone: the real build decides
        create_model(cfg, 2)


def count_parameters(cfg: Config, num_classes: int = 2) -> int | None:
    """The parameters of ``cfg.model``, counted on the meta device (no memory); None when timm cannot build it there."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in _create(cfg, num_classes).parameters())
    except Exception:  # noqa: BLE001 - timm raises many kinds for kwargs it refuses; create_model names them
        return None


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
