"""The step loop shared by pre-training and fine-tuning: epochs, accumulation, logging, evaluation, checkpoints.

The loop only sees a source (``train.data`` module docstring): ``source.batches(epoch, start)`` yields
``(images, targets)`` on the device. What one step does (mixup, AMP, optimizer, schedule) is
``train/step.py``; what it writes is ``train/checkpoint.py`` and ``train/run_folder.py``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import Config
from train.data import Source
from train.distributed import Dist, barrier, mean_over_ranks, seed_everything
from train.errors import TrainError
from train.model import unwrap
from train.run_folder import CsvLog, plot_curves
from train.step import TrainStep, autocast

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device, amp_dtype: torch.dtype | None) -> float:
    """Top-1 accuracy in percent over ``loader`` (batches of (images, labels))."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast(device, amp_dtype):
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
    trainer = TrainStep(cfg, model, source.num_classes, source.micro_batch, device, total_steps)
    step = 0
    if resume:
        step = load_checkpoint(out, trainer, env)
        log.info("resumed at step %d of %d", step, total_steps)
    else:
        seed_everything(t.seed * 1000 + env.rank)
    trainer.start(step, env.world_size)

    csv_log = CsvLog(out, step, enabled=env.is_main)
    bar = tqdm(total=total_steps, initial=step, disable=not env.is_main, desc="train", dynamic_ncols=True)
    evals: list[dict[str, float]] = []
    loss_sum = torch.zeros((), device=device)
    window_steps, window_images, window_t0 = 0, 0, time.perf_counter()
    t_start = time.perf_counter()
    last_loss = math.nan
    last_rate = 0.0

    def run_eval() -> dict[str, float]:
        result = eval_fn(unwrap(model)) if (eval_fn is not None and env.is_main) else {}
        barrier(env)
        if result:
            evals.append({"step": step, **result})
            log.info("step %d: %s", step, result)
        return result

    def eval_row(epoch: int, result: dict[str, float]) -> None:
        if result:
            csv_log.write(step, epoch, last_loss, trainer.lr, time.perf_counter() - t_start,
                          eval_top1=result.get("eval_top1"))

    def save() -> None:
        save_checkpoint(out, trainer, cfg, source.num_classes, steps_per_epoch, env)

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
                loss_sum += trainer.micro_step(images, targets, last=micro == accum - 1)
                window_images += images.shape[0] * env.world_size
            trainer.optimizer_step()
            step = trainer.step
            window_steps += 1
            bar.update(1)

            row_eval: dict[str, float] = {}
            if t.eval_every and step % t.eval_every == 0 and step < total_steps:
                row_eval = run_eval()
            if step % t.log_every == 0 or step == total_steps:
                # a CPU-GPU sync point, once per log row
                last_loss = mean_over_ranks(loss_sum.item() / window_steps, env)
                now = time.perf_counter()
                last_rate = window_images / (now - window_t0)
                csv_log.write(step, epoch, last_loss, trainer.lr, now - t_start, images_per_s=last_rate,
                              eval_top1=row_eval.get("eval_top1"))
                bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{last_rate:.0f}")
                loss_sum.zero_()
                window_steps, window_images, window_t0 = 0, 0, now
            if t.ckpt_every and step % t.ckpt_every == 0 and step < total_steps:
                save()
            if step >= total_steps or (t.stop_at and step >= t.stop_at):
                break
        if t.stop_at and step >= t.stop_at and step < total_steps:
            save()
            bar.close()
            log.info("stopped at step %d of %d (train.stop_at); --resume continues", step, total_steps)
            return {"step": step, "loss": last_loss, "images_per_s": last_rate, "eval": evals,
                    "elapsed_s": time.perf_counter() - t_start, "stopped": True}
        if eval_every_epoch and step < total_steps:
            eval_row(epoch, run_eval())
    bar.close()
    eval_row((step - 1) // steps_per_epoch, run_eval())  # on every rank: it holds a barrier
    save()
    if env.is_main:
        plot_curves(out)
    return {"step": step, "loss": last_loss, "images_per_s": last_rate, "eval": evals,
            "elapsed_s": time.perf_counter() - t_start}
