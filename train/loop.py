"""The step loop shared by pre-training and fine-tuning: epochs, accumulation, logging, evaluation, checkpoints.

The loop only sees a source (``train/data/source.py``): ``source.batches(epoch, start)`` yields
``(images, targets)`` on the device. What one step does (mixup, AMP, optimizer, schedule) is
``train/step.py``; what it writes is ``train/run/checkpoint.py`` and ``train/run/folder.py``.

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

from train.config import Config
from train.data.source import Source
from train.distributed import Dist, barrier, mean_over_ranks, seed_everything
from train.errors import TrainError
from train.model import unwrap
from train.run.checkpoint import load_checkpoint, save_checkpoint
from train.run.log import CsvLog, Progress, duration, plot_curves
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


class Loop:
    """The step loop of one run: its trainer, where it stands, the open log window and the evaluations so far.

    Built before the run folder is taken (``TrainStep`` refuses an odd micro-batch with mixup here); ``restore`` then
    loads the checkpoint or seeds, and ``run`` trains to the end or a stop.

    Args:
        cfg: the run's config (optimizer, schedule, AMP, logging, checkpoints, mixup).
        model: a timm model on the CPU; moved to ``env.device`` here.
        source: yields micro-batches on the device (``train/data/source.py``).
        out: the run folder.
        env: rank, world size, device.
        total_steps: optimizer steps of the whole run (the LR schedule spans them).
        eval_fn: ``model -> {"eval_top1": ...}``, run on rank 0 every ``cfg.train.eval_every`` steps, at every
            epoch end when ``run(eval_every_epoch=True)``, and at the end.
        record: what every checkpoint records besides the config (``{"dataset": ...}``: ``train.run.checkpoint``).

    Raises:
        TrainError: a source whose epoch does not split into optimizer steps, or mixup with an odd micro-batch.
    """

    def __init__(self, cfg: Config, model: torch.nn.Module, source: Source, out: Path, env: Dist, total_steps: int,
                 eval_fn: EvalFn | None = None, record: dict[str, Any] | None = None) -> None:
        accum = cfg.train.accum_steps
        if len(source) % accum or len(source) == 0:
            raise TrainError(f"source yields {len(source)} micro-batches per epoch, not a multiple of accum_steps "
                             f"{accum}")
        self.cfg, self.model, self.source, self.out, self.env = cfg, model, source, out, env
        self.total, self.eval_fn, self.record = total_steps, eval_fn, record
        self.steps_per_epoch = len(source) // accum
        self.trainer = TrainStep(cfg, model, source.num_classes, source.micro_batch, env.device, total_steps)
        self.step = 0
        self.evals: list[dict[str, float]] = []

    def restore(self, resume: bool) -> None:
        """Load the checkpoint in ``out`` exactly (``resume``) or seed the run, and start the schedule there.

        Raises:
            TrainError: the checkpoint is missing, damaged or of another run (nothing is written).
        """
        if resume:
            self.step = load_checkpoint(self.out, self.trainer, self.env)
            log.info("resumed at step %d of %d", self.step, self.total)
        else:
            seed_everything(self.cfg.train.seed * 1000 + self.env.rank)
        self.trainer.start(self.step, self.env.world_size)

    def run(self, eval_every_epoch: bool = False) -> dict[str, Any]:
        """Train to ``total_steps`` or a stop (a signal, ``train.stop_at``), in the run folder ``start_run_folder``
        took; SIGTERM and SIGINT finish the step under way and write a checkpoint.

        Returns:
            ``{"step", "loss", "images_per_s", "eval": [...], "elapsed_s"}`` (loss: mean of the last log window),
            with ``"stopped": True`` and ``"reason"`` (``SIGTERM``, ``SIGINT``, ``train.stop_at``) when the run
            stopped early with a checkpoint.
        """
        with stop_on_signals() as self.stop:
            self._open()
            return self._epochs(eval_every_epoch)

    def _open(self) -> None:
        """Open the log and the progress display, start the clocks."""
        t, env = self.cfg.train, self.env
        self.csv_log = CsvLog(self.out, self.step, enabled=env.is_main, tensorboard=self.cfg.log.tensorboard)
        self.progress = Progress(self.total, self.step, enabled=env.is_main)
        self.first_step = self.step + 1
        # a stop_at already reached (a resumed run started with the command that stopped it) no longer applies:
        # "the same command with --resume continues" must run to the end, not one step per call
        self.stop_at = t.stop_at if t.stop_at and t.stop_at > self.step else 0
        self.loss_sum = torch.zeros((), device=env.device)
        self.window_steps, self.window_images = 0, 0
        self.t_start = self.window_t0 = time.perf_counter()
        # resumed at its last step (killed before metrics.json): the loss of the last row it logged
        self.last_loss = self.csv_log.last_loss if self.step >= self.total else math.nan
        self.last_rate = 0.0

    def _epochs(self, eval_every_epoch: bool) -> dict[str, Any]:
        """Epochs until the last step or a stop; the final evaluation, checkpoint and curves."""
        while self.step < self.total:
            epoch = self.step // self.steps_per_epoch
            reason = self._epoch(epoch)
            if not reason and self.stop_at and self.total > self.step >= self.stop_at:
                reason = "train.stop_at"
            if reason:
                self._save()
                self.progress.close()
                self.csv_log.close()
                log.info("stopped at step %d of %d (%s); --resume continues", self.step, self.total, reason)
                return self._result(stopped=True, reason=reason)
            if eval_every_epoch and self.step < self.total:
                self._eval_row(epoch, self._evaluate())
        self.progress.close()
        self._eval_row((self.step - 1) // self.steps_per_epoch, self._evaluate())  # every rank: it holds a barrier
        self._save()
        self.csv_log.close()
        if self.env.is_main:
            plot_curves(self.out)
        return self._result()

    def _epoch(self, epoch: int) -> str:
        """The steps of ``epoch`` from where the run stands; the reason it stopped early ("" if it did not)."""
        spe, t = self.steps_per_epoch, self.cfg.train
        batches = iter(self.source.batches(epoch, start=(self.step % spe) * t.accum_steps))
        for _ in range(self.step % spe, spe):
            self._optimizer_step(batches, epoch)
            row_eval: dict[str, float] = {}
            if t.eval_every and self.step % t.eval_every == 0 and self.step < self.total:
                row_eval = self._evaluate()
            if self.step % t.log_every == 0 or self.step == self.total:
                self._log_row(epoch, row_eval)
            stopping = self.stop.agreed(self.env)
            self.progress.step(self.step, self.trainer.lr, self._window)
            if t.ckpt_every and self.step % t.ckpt_every == 0 and self.step < self.total and not stopping:
                self._save()
            if stopping and self.step < self.total:
                return self.stop.reason
            if self.step >= self.total or (self.stop_at and self.step >= self.stop_at):
                break
        return ""

    def _optimizer_step(self, batches: Iterator, epoch: int) -> None:
        """``accum_steps`` micro-batches forward and backward, then one optimizer step."""
        accum, env = self.cfg.train.accum_steps, self.env
        for micro in range(accum):
            try:
                images, targets = next(batches)
            except StopIteration:
                raise TrainError(f"source ended after {micro} micro-batches of a step in epoch {epoch}; "
                                 f"it promised {len(self.source)}") from None
            self.loss_sum += self.trainer.micro_step(images, targets, last=micro == accum - 1)
            self.window_images += images.shape[0] * env.world_size
        self.trainer.optimizer_step()
        self.step = self.trainer.step
        self.window_steps += 1
        if self.step == self.first_step and env.is_main and env.device.type == "cpu":
            took = time.perf_counter() - self.t_start
            left = self.total - self.step + 1
            log.info("step %d took %.1f s on the CPU: the %d steps of this run would take about %s here",
                     self.step, took, left, duration(took * left))

    def _log_row(self, epoch: int, row_eval: dict[str, float]) -> None:
        """A log row (the loss averaged over ranks); a loss that is not finite ends the run on every rank."""
        # a CPU-GPU sync point, once per log row
        self.last_loss = mean_over_ranks(self.loss_sum.item() / self.window_steps, self.env)
        now = time.perf_counter()
        self.last_rate = self.window_images / (now - self.window_t0)
        self.csv_log.write(self.step, epoch, self.last_loss, self.trainer.lr, now - self.t_start,
                           images_per_s=self.last_rate, eval_top1=row_eval.get("eval_top1"))
        self.progress.row(self.step, self.last_loss, self.trainer.lr, self.last_rate)
        if not math.isfinite(self.last_loss):  # every rank has the same mean, so every rank stops here
            raise TrainError(f"the loss became {self.last_loss} by step {self.step}: the run diverged (a lower "
                             "optim.lr or optim.clip_grad may help); the last checkpoint, if any, stands")
        self.loss_sum.zero_()
        self.window_steps, self.window_images, self.window_t0 = 0, 0, now

    def _window(self) -> tuple[float, float]:
        """This rank's (loss, images/s) since the last log row, for a progress line between rows."""
        elapsed = max(time.perf_counter() - self.window_t0, 1e-9)
        return self.loss_sum.item() / max(self.window_steps, 1), self.window_images / elapsed

    def _evaluate(self) -> dict[str, float]:
        """``eval_fn`` on rank 0, every rank waiting for it; recorded with the step."""
        env = self.env
        result = self.eval_fn(unwrap(self.model)) if (self.eval_fn is not None and env.is_main) else {}
        barrier(env)
        if result:
            self.evals.append({"step": self.step, **result})
            log.info("step %d: %s", self.step, result)
        return result

    def _eval_row(self, epoch: int, result: dict[str, float]) -> None:
        if result:
            self.csv_log.write(self.step, epoch, self.last_loss, self.trainer.lr, time.perf_counter() - self.t_start,
                               eval_top1=result.get("eval_top1"))

    def _save(self) -> None:
        save_checkpoint(self.out, self.trainer, self.cfg, self.source.num_classes, self.steps_per_epoch, self.env,
                        self.record)

    def _result(self, **extra: Any) -> dict[str, Any]:
        return {"step": self.step, "loss": self.last_loss, "images_per_s": self.last_rate, "eval": self.evals,
                "elapsed_s": time.perf_counter() - self.t_start, **extra}
