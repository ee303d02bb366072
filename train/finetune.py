"""Fine-tuning and linear probing on real images, from a fracgen checkpoint or from scratch.

The same recipe runs with and without ``finetune.checkpoint``: the scratch run is the baseline every gain is
measured against. ``finetune.probe_blocks = k`` freezes the patch embedding and the first k blocks of the
pre-trained model and trains the rest (k = depth: a linear probe of the head alone), the paper's Figure 3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from train.bounds import check_cpus
from train.config import Config
from train.data.downstream import MapSource, downstream_identity, open_downstream
from train.distributed import quiet_worker, seed_everything, setup
from train.errors import TrainError
from train.loop import Loop, evaluate
from train.model import check_model_name, check_timm_names, create_model, unwrap
from train.run.checkpoint import check_resume, completed_run, meta_kwargs, read_checkpoint_meta, stored_run
from train.run.folder import MODEL_FILE, TIMM_CONFIG_FILE, out_path, run_job, start_run_folder, trainer_status
from train.run.log import check_tensorboard
from train.step import amp_dtype, check_fits

log = logging.getLogger(__name__)

# kwargs timm records that are not the architecture: the head and resolution are chosen by each run
_NOT_ARCHITECTURE = ("num_classes", "img_size", "pretrained_model_args")


def freeze_first_blocks(model: torch.nn.Module, k: int) -> int:
    """Freeze the embeddings and the first ``k`` transformer blocks (all but the head when k = depth).

    Returns:
        The number of trainable parameters left.

    Raises:
        TrainError: the model has no ``blocks`` or fewer than ``k``.
    """
    if k == 0:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TrainError(f"finetune.probe_blocks needs a transformer with .blocks; {type(model).__name__} has none")
    if k > len(blocks):
        raise TrainError(f"finetune.probe_blocks={k} but the model has {len(blocks)} blocks")
    frozen: list[torch.nn.Module | torch.nn.Parameter] = [blocks[i] for i in range(k)]
    for name in ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre"):
        if getattr(model, name, None) is not None:
            frozen.append(getattr(model, name))
    if k == len(blocks):
        frozen += [getattr(model, n) for n in ("norm", "fc_norm", "attn_pool") if getattr(model, n, None) is not None]
    for item in frozen:
        params = [item] if isinstance(item, torch.nn.Parameter) else list(item.parameters())
        for p in params:
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def checkpoint_step(checkpoint: str | Path) -> int | None:
    """The step of a pre-training checkpoint, with a warning when the run that wrote it had not finished.

    A stopped, failed or still running pre-training (its ``run.json``) left weights of an earlier step than it
    planned: fine-tuning from them is allowed (a time-boxed job's checkpoint is a checkpoint) but said. None for
    a checkpoint without this trainer's metadata (timm's ``save_for_hf`` folder), which ``load_pretrained`` judges.
    """
    try:
        meta = read_checkpoint_meta(checkpoint)
    except TrainError:
        return None
    status = trainer_status(Path(meta["path"]).parent)
    if status is not None and status.get("status") != "complete":
        log.warning("checkpoint %s is from a pre-training run that is %s (its run.json), at step %d: fine-tuning "
                    "from an unfinished run", meta["path"], status.get("status"), meta["step"])
    return meta["step"]


def _adopt_run_architecture(cfg: Config, stored: dict[str, Any]) -> None:
    """On resume without the pre-training checkpoint: the model kwargs the run adopted from it, from the run's
    own checkpoint (kwargs the command sets otherwise are left for ``check_resume`` to name)."""
    model = stored["config"].get("model") or {}
    kwargs = model.get("kwargs") or {}
    if all(k in kwargs and kwargs[k] == v for k, v in cfg.model.kwargs.items()):
        cfg.model.kwargs = dict(kwargs)


def finetune(cfg: Config, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Fine-tune (or probe) ``cfg.model`` on ``cfg.data.path``; top-1 on the test split every epoch.

    Args:
        cfg: resolved config; ``finetune.checkpoint`` (a run folder or its ``model.safetensors``) gives the
            architecture (model name and kwargs, written back into ``cfg.model``); empty means from scratch.
        out: run folder.
        resume: continue the run in ``out``.

    Returns:
        The metrics written to ``out/metrics.json``: ``top1`` (final test top-1, percent), ``per_epoch``; on
        ``--resume`` of a complete run, its ``metrics.json`` with ``already_complete`` (nothing is done).

    Raises:
        TrainError: bad dataset, checkpoint of another architecture, bad batch split, bad run folder.
    """
    out = out_path(out)
    check_timm_names(cfg)
    check_tensorboard(cfg)
    check_cpus(cfg)
    ckpt, gone, ckpt_step = _checkpoint_of(cfg, out, resume)
    if resume and (done := completed_run(out, cfg)) is not None:
        return done
    env = setup(cfg)
    check_fits(cfg, env)
    train_set, test_set, num_classes = open_downstream(cfg)
    check_fits(cfg, env, num_classes)  # the head of the data's classes
    data = downstream_identity(train_set, test_set, num_classes)
    seed_everything(cfg.train.seed)
    model = load_pretrained(cfg, ckpt, num_classes) if ckpt and not gone else create_model(cfg, num_classes)
    trainable = freeze_first_blocks(model, cfg.finetune.probe_blocks)
    source = MapSource(train_set, num_classes, cfg, env.device, env.rank, env.world_size)
    steps_per_epoch = len(source) // cfg.train.accum_steps
    total = cfg.train.epochs * steps_per_epoch if cfg.train.epochs > 0 else cfg.train.steps
    test_loader = DataLoader(test_set, batch_size=cfg.finetune.eval_batch_size, num_workers=cfg.data.workers,
                             worker_init_fn=quiet_worker)
    amp = amp_dtype(cfg.train.amp, env.device)
    loop = Loop(cfg, model, source, out, env, total,
                eval_fn=lambda m: {"eval_top1": evaluate(m, test_loader, env.device, amp)},
                record={"dataset": data, "checkpoint_step": ckpt_step})
    start_run_folder(out, cfg, resume, env, check=lambda: check_resume(out, cfg, data), begin=loop.restore)
    log.info("fine-tuning %s (%s) on %s: %d train / %d test images, %d classes, %d steps, %d trainable params",
             cfg.model.name, ckpt or "scratch", cfg.data.path, len(train_set), len(test_set), num_classes, total,
             trainable)

    def metrics(result: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "finetune", "model": cfg.model.name, "dataset": cfg.data.path, "checkpoint": ckpt,
            "checkpoint_step": ckpt_step,
            "probe_blocks": cfg.finetune.probe_blocks, "num_classes": num_classes, "num_train": len(train_set),
            "num_test": len(test_set), "steps": result["step"], "epochs": result["step"] / steps_per_epoch,
            "top1": result["eval"][-1]["eval_top1"] if result["eval"] else None,
            "per_epoch": result["eval"], "final_loss": result["loss"], "images_per_s": result["images_per_s"],
            "elapsed_s": result["elapsed_s"], "device": str(env.device), "trainable_params": trainable,
        }

    return run_job(out, env, lambda: loop.run(eval_every_epoch=True), metrics, complete="top1")


def _checkpoint_of(cfg: Config, out: Path, resume: bool) -> tuple[str | None, bool, int | None]:
    """The pre-training checkpoint of the run: (its path or None, whether it is gone since a resumed run started,
    the pre-training step it holds), its architecture adopted into ``cfg.model`` before anything is read.

    A resumed run takes every weight from its own checkpoint: the pre-training one may have been removed since.
    """
    ckpt = cfg.finetune.checkpoint
    stored = stored_run(out) if resume else None
    gone = bool(ckpt) and stored is not None and not Path(ckpt).exists()
    if gone:
        _adopt_run_architecture(cfg, stored)
        log.info("--resume: %s is gone; the run's own checkpoint in %s holds every weight", ckpt, out)
    elif ckpt:  # the run's config holds the checkpoint's kwargs: adopt them before comparing or counting
        adopt_architecture(cfg, ckpt)
    if stored is not None and "checkpoint_step" in stored:
        return ckpt, gone, stored["checkpoint_step"]  # what the run started from, whatever that run did since
    return ckpt, gone, checkpoint_step(ckpt) if ckpt and not gone else None


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
    if weights.suffix != ".safetensors":  # timm would hand any other file to torch.load, a pickle reader
        raise TrainError(f"checkpoint {weights}: weights are read from a .safetensors file only (a run folder's "
                         f"{MODEL_FILE}); pass the run folder or convert the weights")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainError(f"checkpoint {weights}: not a safetensors file ({e})") from None
    if "model" in meta:
        return {"model": meta["model"], "kwargs": meta_kwargs(meta, weights), "path": str(weights)}
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
