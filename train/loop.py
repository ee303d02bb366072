"""The step loop shared by pre-training and fine-tuning: AMP, accumulation, schedule, DDP, checkpoints, logs.

The loop only sees a source (``train.data`` module docstring): ``source.batches(epoch, start)`` yields
``(images, targets)`` on the device. Mixup/cutmix and label smoothing are applied here, on the device.

Run folder (only rank 0 writes):
    config.yaml        the resolved config
    run.json           {"status": "running" | "complete" | "failed", ...}; "complete" is written last
    log.csv            step, epoch, loss, lr, images_per_s, elapsed_s (+ eval columns) every log_every steps
    model.safetensors  the model (metadata: model name, timm kwargs, num_classes, step, config as JSON)
    state.pt           optimizer, scheduler, scaler, step, epoch, RNG states: what ``--resume`` needs
    curves.png         loss / lr / accuracy curves, drawn at the end
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from train.augment import make_criterion, make_mixup
from train.config import Config
from train.data import Source
from train.errors import TrainError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"


@dataclass
class Dist:
    """Where this process runs: rank, world size, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: Config) -> Dist:
    """Threads, device and (under ``torchrun``) the process group.

    Raises:
        TrainError: CUDA asked for but absent.
    """
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError("train.device=cuda but no CUDA device is visible")
        device = torch.device("cuda", local_rank if world_size > 1 else torch.device(want).index or 0)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (per rank the caller adds the rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# ---------------------------------------------------------------------------------------------------------
# Models and checkpoints


def check_model_name(name: str) -> None:
    """Raise a one-line TrainError for a name timm does not know, with close names."""
    if not timm.is_model(name):
        stem = name.split("_")[0]
        close = timm.list_models(f"{stem}*")[:6]
        raise TrainError(f"unknown timm model {name!r}" + (f" (e.g. {', '.join(close)})" if close else ""))


def create_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    """A fresh timm model for ``cfg.model`` with ``num_classes`` outputs."""
    check_model_name(cfg.model.name)
    try:
        return timm.create_model(cfg.model.name, num_classes=num_classes, drop_path_rate=cfg.model.drop_path,
                                 img_size=cfg.model.img_size, **cfg.model.kwargs)
    except TypeError as e:
        raise TrainError(f"model {cfg.model.name}: bad model.kwargs {cfg.model.kwargs} ({e})") from None


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
        from safetensors import safe_open

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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------------------
# Run folder


def start_run_folder(out: Path, cfg: Config, resume: bool, is_main: bool) -> None:
    """Create (or, on resume, check) the run folder; refuse to mix a new run into an old one.

    Rank 0 decides and tells the others, so that a refusal stops every rank instead of leaving them waiting.
    """
    error = ""
    if is_main:
        status = out / "run.json"
        if resume and not (out / STATE_FILE).is_file():
            error = f"--resume: {out} has no {STATE_FILE} to resume from"
        elif not resume and status.exists():
            error = f"run folder {out} already holds a run: pass --resume or another --out"
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(cfg.to_yaml())
            write_status(out, "running")
    if dist.is_initialized():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise TrainError(error)


def write_status(out: Path, status: str, **extra: Any) -> None:
    """``run.json``: "complete" only once everything else is written."""
    (out / "run.json").write_text(json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              **extra}, indent=1))


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Loss, learning rate and (when present) accuracy against step, from ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    acc = [(int(r["step"]), float(r["eval_top1"])) for r in rows if r.get("eval_top1")]
    rows = [r for r in rows if r.get("images_per_s")]  # eval-only rows repeat the last loss
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3 if acc else 2, figsize=(12 if acc else 8, 3.2))
    axes[0].plot(step, [float(r["loss"]) for r in rows])
    axes[0].set(xlabel="step", ylabel="train loss")
    axes[1].plot(step, [float(r["lr"]) for r in rows])
    axes[1].set(xlabel="step", ylabel="lr")
    if acc:
        axes[2].plot([a for a, _ in acc], [b for _, b in acc], marker="o")
        axes[2].set(xlabel="step", ylabel="eval top-1 %")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, amp_dtype: torch.dtype | None) -> float:
    """Top-1 accuracy in percent over ``loader`` (batches of (images, labels))."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        correct += (logits.argmax(-1) == labels).sum().item()
        total += labels.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


EvalFn = Callable[[torch.nn.Module], dict[str, float]]


def train_loop(cfg: Config, model: torch.nn.Module, source: Source, out: Path, env: Dist, total_steps: int,
               resume: bool = False, eval_fn: EvalFn | None = None, eval_every_epoch: bool = False,
               ) -> dict[str, Any]:
    """Train ``model`` for ``total_steps`` optimizer steps on ``source``, writing the run folder ``out``.

    Args:
        cfg: the run's config (optimizer, schedule, AMP, logging, checkpoints, mixup).
        model: a timm model on the CPU; moved to ``env.device`` here.
        source: yields micro-batches on the device (``train.data``).
        out: run folder, created by ``start_run_folder`` beforehand.
        env: rank, world size, device.
        total_steps: optimizer steps of the whole run (the LR schedule spans them).
        resume: continue from ``out/state.pt`` and ``out/model.safetensors`` exactly.
        eval_fn: ``model -> {"eval_top1": ...}``, run on rank 0 every ``cfg.train.eval_every`` steps,
            at every epoch end when ``eval_every_epoch``, and at the end.
        eval_every_epoch: evaluate at the end of every source epoch (fine-tuning).

    Returns:
        ``{"step", "loss", "images_per_s", "eval": [...], "elapsed_s"}`` (loss: mean of the last log window).
    """
    t, device = cfg.train, env.device
    accum = t.accum_steps
    if len(source) % accum or len(source) == 0:
        raise TrainError(f"source yields {len(source)} micro-batches per epoch, not a multiple of accum_steps {accum}")
    steps_per_epoch = len(source) // accum
    mixup = make_mixup(cfg.aug, source.num_classes)
    if mixup is not None and source.micro_batch % 2:
        raise TrainError(f"mixup/cutmix need an even per-rank micro-batch, got {source.micro_batch}: "
                         "change train.batch_size or set aug.mixup=0 aug.cutmix=0")
    criterion = make_criterion(cfg.aug, mixup)
    cuda = device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.amp) if cuda else None

    model.to(device).train()
    opt_kwargs: dict[str, Any] = {}
    if cuda and cfg.optim.opt.lower() in ("adamw", "adam"):
        opt_kwargs["fused"] = True
    optimizer = create_optimizer_v2(model, opt=cfg.optim.opt, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                    momentum=cfg.optim.momentum, **opt_kwargs)
    scheduler = CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=cfg.optim.lr_min,
                                  warmup_t=min(cfg.optim.warmup_steps, max(total_steps - 1, 0)),
                                  warmup_lr_init=cfg.optim.warmup_lr, t_in_epochs=False)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and t.amp == "fp16")

    step = 0
    if resume:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
        unwrap(model).load_state_dict(load_file(str(out / MODEL_FILE), device=str(device)))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        set_rng_state(state["rng"][env.rank] if env.rank < len(state["rng"]) else state["rng"][0])
        log.info("resumed at step %d of %d", step, total_steps)
    else:
        seed_everything(t.seed * 1000 + env.rank)
    scheduler.step_update(step)

    train_model = model
    if t.compile and cuda:
        train_model = torch.compile(model)
    if env.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if cuda else None)

    csv_path = out / "log.csv"
    fields = ["step", "epoch", "loss", "lr", "images_per_s", "elapsed_s", "eval_top1"]
    if env.is_main:
        _truncate_log(csv_path, step, fields)
    bar = tqdm(total=total_steps, initial=step, disable=not env.is_main, desc="train", dynamic_ncols=True)
    evals: list[dict[str, float]] = []
    loss_sum = torch.zeros((), device=device)
    window_steps, window_images, window_t0 = 0, 0, time.perf_counter()
    t_start = time.perf_counter()
    last_loss = math.nan
    last_rate = 0.0

    def run_eval() -> dict[str, float]:
        result = eval_fn(unwrap(model)) if (eval_fn is not None and env.is_main) else {}
        if env.world_size > 1:
            dist.barrier()
        if result:
            evals.append({"step": step, **result})
            log.info("step %d: %s", step, result)
        return result

    def save_all() -> None:
        if env.is_main:
            save_model(model, out / MODEL_FILE, cfg, source.num_classes, step)
        rngs = [rng_state()]
        if env.world_size > 1:
            gathered: list[Any] = [None] * env.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if env.is_main:
            tmp = out / (STATE_FILE + ".tmp")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                        "rng": rngs, "config": cfg.to_dict()}, tmp)
            os.replace(tmp, out / STATE_FILE)

    while step < total_steps:
        epoch = step // steps_per_epoch
        batches = iter(source.batches(epoch, start=(step % steps_per_epoch) * accum))
        for _ in range(step % steps_per_epoch, steps_per_epoch):
            for micro in range(accum):
                try:
                    images, targets = next(batches)
                except StopIteration:
                    raise TrainError(f"source ended after {micro} micro-batches of a step in epoch {epoch}; "
                                     f"it promised {len(source)}") from None
                if mixup is not None:
                    images, targets = mixup(images, targets)
                sync = contextlib.nullcontext()
                if env.world_size > 1 and micro < accum - 1:
                    sync = train_model.no_sync()  # all-reduce only on the last micro-step
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = criterion(train_model(images), targets) / accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
                window_images += images.shape[0] * env.world_size
            if cfg.optim.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1
            scheduler.step_update(step)
            bar.update(1)

            row_eval: dict[str, float] = {}
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                row_eval = run_eval()
            if step % t.log_every == 0 or step == total_steps:
                last_loss = loss_sum.item() / window_steps  # a CPU-GPU sync point, once per log row
                if env.world_size > 1:
                    reduced = torch.tensor([last_loss], device=device)
                    dist.all_reduce(reduced)
                    last_loss = reduced.item() / env.world_size
                now = time.perf_counter()
                last_rate = window_images / (now - window_t0)
                if env.is_main:
                    _append_row(csv_path, fields, {
                        "step": step, "epoch": epoch, "loss": f"{last_loss:.5f}",
                        "lr": f"{optimizer.param_groups[0]['lr']:.3e}", "images_per_s": f"{last_rate:.1f}",
                        "elapsed_s": f"{now - t_start:.1f}", "eval_top1": row_eval.get("eval_top1", "")})
                bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{last_rate:.0f}")
                loss_sum.zero_()
                window_steps, window_images, window_t0 = 0, 0, now
            if t.ckpt_every and step % t.ckpt_every == 0 and step < total_steps:
                save_all()
            if step >= total_steps or (t.stop_at and step >= t.stop_at):
                break
        if t.stop_at and step >= t.stop_at and step < total_steps:
            save_all()
            bar.close()
            log.info("stopped at step %d of %d (train.stop_at); --resume continues", step, total_steps)
            return {"step": step, "loss": last_loss, "images_per_s": last_rate, "eval": evals,
                    "elapsed_s": time.perf_counter() - t_start, "stopped": True}
        if eval_every_epoch and step < total_steps:
            row = run_eval()
            if env.is_main and row:
                _append_row(csv_path, fields, {"step": step, "epoch": epoch, "loss": f"{last_loss:.5f}",
                                               "lr": f"{optimizer.param_groups[0]['lr']:.3e}",
                                               "images_per_s": "", "elapsed_s": f"{time.perf_counter() - t_start:.1f}",
                                               "eval_top1": row.get("eval_top1", "")})
    bar.close()
    final = run_eval()  # on every rank: it holds a barrier
    if env.is_main and final:
        _append_row(csv_path, fields, {"step": step, "epoch": (step - 1) // steps_per_epoch, "loss": f"{last_loss:.5f}",
                                       "lr": f"{optimizer.param_groups[0]['lr']:.3e}", "images_per_s": "",
                                       "elapsed_s": f"{time.perf_counter() - t_start:.1f}",
                                       "eval_top1": final.get("eval_top1", "")})
    save_all()
    if env.is_main:
        plot_curves(csv_path, out / "curves.png")
    return {"step": step, "loss": last_loss, "images_per_s": last_rate, "eval": evals,
            "elapsed_s": time.perf_counter() - t_start}


def _truncate_log(path: Path, step: int, fields: list[str]) -> None:
    """Keep the rows up to ``step`` (rows a crashed run wrote after its last checkpoint are redone)."""
    rows = []
    if path.is_file():
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _append_row(path: Path, fields: list[str], row: dict[str, Any]) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)
