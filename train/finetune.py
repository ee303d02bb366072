"""Fine-tuning and linear probing on real images, from a fracgen checkpoint or from scratch.

The same recipe runs with and without ``finetune.checkpoint``: the scratch run is the baseline every gain is
measured against. ``finetune.probe_blocks = k`` freezes the patch embedding and the first k blocks of the
pre-trained model and trains the rest (k = depth: a linear probe of the head alone), the paper's Figure 3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from train.checkpoint import adopt_architecture, load_pretrained, read_checkpoint_meta
from train.config import Config
from train.distributed import quiet_worker, seed_everything, setup
from train.downstream import MapSource, open_downstream
from train.errors import TrainError
from train.loop import evaluate, train_loop
from train.model import check_timm_names, create_model
from train.resume import completed_run, downstream_identity, stored_run
from train.run_folder import check_tensorboard, run_job, start_run_folder, trainer_status
from train.step import amp_dtype

log = logging.getLogger(__name__)


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
    out = Path(out)
    check_timm_names(cfg)
    check_tensorboard(cfg)
    ckpt = cfg.finetune.checkpoint
    # a resumed run takes every weight from its own checkpoint: the pre-training one may be gone since
    stored = stored_run(out) if resume else None
    gone = bool(ckpt) and stored is not None and not Path(ckpt).exists()
    if resume:
        if gone:
            _adopt_run_architecture(cfg, stored)
        elif ckpt:  # the run's config holds the checkpoint's kwargs: adopt them before comparing
            adopt_architecture(cfg, ckpt)
        if (done := completed_run(out, cfg)) is not None:
            return done
    if gone:
        log.info("--resume: %s is gone; the run's own checkpoint in %s holds every weight", ckpt, out)
    if stored is not None and "checkpoint_step" in stored:
        ckpt_step = stored["checkpoint_step"]  # what the run started from, whatever that run did since
    else:
        ckpt_step = checkpoint_step(ckpt) if ckpt and not gone else None
    env = setup(cfg)
    train_set, test_set, num_classes = open_downstream(cfg)
    data = downstream_identity(train_set, test_set, num_classes)
    seed_everything(cfg.train.seed)
    model = load_pretrained(cfg, ckpt, num_classes) if ckpt and not gone else create_model(cfg, num_classes)
    trainable = freeze_first_blocks(model, cfg.finetune.probe_blocks)
    source = MapSource(train_set, num_classes, cfg, env.device, env.rank, env.world_size)
    steps_per_epoch = len(source) // cfg.train.accum_steps
    total = cfg.train.epochs * steps_per_epoch if cfg.train.epochs > 0 else cfg.train.steps
    test_loader = DataLoader(test_set, batch_size=cfg.finetune.eval_batch_size, num_workers=cfg.data.workers,
                             worker_init_fn=quiet_worker)
    from_checkpoint = start_run_folder(out, cfg, resume, env.is_main, data)
    log.info("fine-tuning %s (%s) on %s: %d train / %d test images, %d classes, %d steps, %d trainable params",
             cfg.model.name, ckpt or "scratch", cfg.data.path, len(train_set), len(test_set), num_classes, total,
             trainable)
    amp = amp_dtype(cfg.train.amp, env.device)

    def train() -> dict[str, Any]:
        return train_loop(cfg, model, source, out, env, total_steps=total, resume=from_checkpoint,
                          eval_fn=lambda m: {"eval_top1": evaluate(m, test_loader, env.device, amp)},
                          eval_every_epoch=True, record={"dataset": data, "checkpoint_step": ckpt_step})

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

    return run_job(out, env, train, metrics, complete="top1")
