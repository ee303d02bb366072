"""The step loop shared by pre-training and fine-tuning: epochs, accumulation, logging, evaluation, checkpoints.

The loop only sees a source (``train.data`` module docstring): ``source.batches(epoch, start)`` yields
``(images, targets)`` on the device. What one step does (mixup, AMP, optimizer, schedule) is
``train/step.py``; what it writes is ``train/checkpoint.py`` and ``train/run_folder.py``.

SIGTERM and SIGINT (Ctrl-C, a cluster's time limit) do not kill the run: the step under way finishes, a
checkpoint is written and the run ends "stopped", so that ``--resume`` continues exactly. A second SIGINT
interrupts at once (the last checkpoint stands). Under ``torchrun`` the ranks agree on the stop one step
later (``StopRequest.agreed``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import Config
from train.data import Source
from train.distributed import Dist, barrier, mean_over_ranks, seed_everything
from train.errors import TrainError
from train.model import unwrap
from train.run_folder import CsvLog, Progress, duration, plot_curves
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
_flag_group: Any = None  # the gloo process group the ranks' stop flags are reduced on


class StopRequest:
    """The signal that asked the run to stop, set by the handler and read at step boundaries."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.pid = os.getpid()
        self.pending: tuple[torch.Tensor, Any] | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker inherited the handler: the main process decides, workers go on
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a new checkpoint
        self.signal = signum
        log.warning("%s received: stopping after this step with a checkpoint (Ctrl-C again to abort now)",
                    signal.Signals(signum).name)

    def agreed(self, env: Dist) -> bool:
        """Whether the run stops after this step: any rank was asked to, as all ranks learn at the same step.

        Every rank calls it once per step. Across ranks the flags are reduced on a gloo group, asynchronously:
        the answer of step n arrives at step n + 1, so no step waits for it (and the GPU is never synced).
        """
        if env.world_size == 1:
            return self.signal is not None
        global _flag_group
        if _flag_group is None:  # made once per process, by every rank at the same point (its first step)
            _flag_group = dist.new_group(backend="gloo")
        if self.pending is not None:
            flag, work = self.pending
            work.wait()
            self.pending = None
            if flag.item():
                self.signal = self.signal or int(flag.item())
                return True
        flag = torch.tensor([self.signal or 0])
        self.pending = (flag, dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_flag_group, async_op=True))
        return False

    def settle(self) -> None:
        """Wait for the last reduction (every rank posted it), so none is left behind at the end of the run."""
        if self.pending is not None:
            self.pending[1].wait()
            self.pending = None

    @property
    def reason(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGINT for the duration (main thread only; elsewhere signals keep their handlers)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        request.settle()
        return
    previous = {s: signal.signal(s, request.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
        request.settle()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train_loop(cfg: Config, model: torch.nn.Module, source: Source, out: Path, env: Dist, total_steps: int,
               resume: bool = False, eval_fn: EvalFn | None = None, eval_every_epoch: bool = False,
               record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` for ``total_steps`` optimizer steps on ``source``, writing the run folder ``out``.

    Args:
        cfg: the run's config (optimizer, schedule, AMP, logging, checkpoints, mixup).
        model: a timm model on the CPU; moved to ``env.device`` here.
        source: yields micro-batches on the device (``train.data``).
        out: run folder, created by ``start_run_folder`` beforehand.
        env: rank, world size, device.
        total_steps: optimizer steps of the whole run (the LR schedule spans them).
        resume: continue from ``out/state.pt`` and ``out/model.safetensors`` exactly (False: from step 0).
        eval_fn: ``model -> {"eval_top1": ...}``, run on rank 0 every ``cfg.train.eval_every`` steps,
            at every epoch end when ``eval_every_epoch``, and at the end.
        eval_every_epoch: evaluate at the end of every source epoch (fine-tuning).
        record: what every checkpoint records besides the config (``{"dataset": ...}``: ``train.resume``).

    Returns:
        ``{"step", "loss", "images_per_s", "eval": [...], "elapsed_s"}`` (loss: mean of the last log window),
        with ``"stopped": True`` and ``"reason"`` (``SIGTERM``, ``SIGINT``, ``train.stop_at``) when the run
        stopped early with a checkpoint.
    """
    with stop_on_signals() as stop:
        return _train_loop(cfg, model, source, out, env, total_steps, resume, eval_fn, eval_every_epoch, stop,
                           record)


def _train_loop(cfg: Config, model: torch.nn.Module, source: Source, out: Path, env: Dist, total_steps: int,
                resume: bool, eval_fn: EvalFn | None, eval_every_epoch: bool, stop: StopRequest,
                record: dict[str, Any] | None) -> dict[str, Any]:
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

    csv_log = CsvLog(out, step, enabled=env.is_main, tensorboard=cfg.log.tensorboard)
    progress = Progress(total_steps, step, enabled=env.is_main)
    first_step = step + 1
    # a stop_at already reached (a resumed run started with the command that stopped it) no longer applies:
    # "the same command with --resume continues" must run to the end, not one step per call
    stop_at = t.stop_at if t.stop_at and t.stop_at > step else 0
    evals: list[dict[str, float]] = []
    loss_sum = torch.zeros((), device=device)
    window_steps, window_images, window_t0 = 0, 0, time.perf_counter()
    t_start = time.perf_counter()
    # resumed at its last step (killed before metrics.json): the loss of the last row it logged
    last_loss = csv_log.last_loss if step >= total_steps else math.nan
    last_rate = 0.0
    reason = ""

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
        save_checkpoint(out, trainer, cfg, source.num_classes, steps_per_epoch, env, record)

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
            if step == first_step and env.is_main and device.type == "cpu":
                took = time.perf_counter() - t_start
                log.info("step %d took %.1f s on the CPU: the %d steps of this run would take about %s here",
                         step, took, total_steps - step + 1, duration(took * (total_steps - step + 1)))

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
                progress.row(step, last_loss, trainer.lr, last_rate)
                if not math.isfinite(last_loss):  # every rank has the same mean, so every rank stops here
                    raise TrainError(f"the loss became {last_loss} by step {step}: the run diverged (a lower "
                                     "optim.lr or optim.clip_grad may help); the last checkpoint, if any, stands")
                loss_sum.zero_()
                window_steps, window_images, window_t0 = 0, 0, now
            stopping = stop.agreed(env)
            progress.step(step, trainer.lr, lambda s=loss_sum, n=window_steps, i=window_images, t0=window_t0: (
                s.item() / max(n, 1), i / max(time.perf_counter() - t0, 1e-9)))
            if t.ckpt_every and step % t.ckpt_every == 0 and step < total_steps and not stopping:
                save()
            if stopping and step < total_steps:
                reason = stop.reason
                break
            if step >= total_steps or (stop_at and step >= stop_at):
                break
        if not reason and stop_at and step >= stop_at and step < total_steps:
            reason = "train.stop_at"
        if reason:
            save()
            progress.close()
            csv_log.close()
            log.info("stopped at step %d of %d (%s); --resume continues", step, total_steps, reason)
            return {"step": step, "loss": last_loss, "images_per_s": last_rate, "eval": evals,
                    "elapsed_s": time.perf_counter() - t_start, "stopped": True, "reason": reason}
        if eval_every_epoch and step < total_steps:
            eval_row(epoch, run_eval())
    progress.close()
    eval_row((step - 1) // steps_per_epoch, run_eval())  # on every rank: it holds a barrier
    save()
    csv_log.close()
    if env.is_main:
        plot_curves(out)
    return {"step": step, "loss": last_loss, "images_per_s": last_rate, "eval": evals,
            "elapsed_s": time.perf_counter() - t_start}
