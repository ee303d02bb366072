"""One training step, the same for pre-training, fine-tuning and the benchmark.

Mixup/cutmix with label smoothing on the device (timm ``Mixup``), forward under autocast, backward through
the AMP grad scaler, optional gradient clipping, the timm optimizer and a per-step cosine schedule. The loop
(``train/loop.py``) calls ``micro_step`` ``accum_steps`` times then ``optimizer_step``; ``train/experiments/bench.py``
calls ``train_step``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from train.augment import make_criterion, make_mixup
from train.bounds import check_memory
from train.config import Config
from train.data.source import micro_batch_size
from train.distributed import Dist, free_memory
from train.errors import TrainError
from train.model import count_parameters


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` (``bf16``, ``fp16``, ``none``) on ``device``; None off CUDA."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if torch.device(device).type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or a no-op when ``dtype`` is None."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def check_fits(cfg: Config, env: Dist, num_classes: int = 2) -> None:
    """Refuse, before anything is read or allocated, a config whose model and batches cannot fit the memory where
    the run trains (``train.bounds.check_memory``): one line naming the key to lower and what fits. ``num_classes``:
    the head's outputs (a dataset's ``_info.json`` may ask for a head of any size).

    Raises:
        TrainError: it does not fit, or ``train.batch_size`` does not divide across ranks x accumulation steps.
    """
    micro = micro_batch_size(cfg, env.world_size)
    check_memory(cfg, count_parameters(cfg, num_classes), micro, env.world_size, free_memory(env.device),
                 str(env.device), num_classes)


class TrainStep:
    """The model with everything that updates it: mixup, criterion, optimizer, schedule, grad scaler.

    Construction moves ``model`` to ``device`` and builds the optimizer state; ``start`` then sets the schedule
    at the first step and wraps the model (``torch.compile`` on CUDA, DDP across ranks). Between the two the
    caller seeds the RNGs or restores a checkpoint (``train/run/checkpoint.py``), so that a resumed run continues
    bit-exactly.

    Args:
        cfg: the run config (``aug`` for mixup and the criterion, ``optim``, ``train.amp``/``compile``/
            ``accum_steps``).
        model: a timm model, still on the CPU.
        num_classes: classes of the head (mixup's one-hot targets).
        micro_batch: images per rank per micro-step (mixup needs it even).
        device: where to train.
        total_steps: optimizer steps of the whole run (the LR schedule spans them).

    Raises:
        TrainError: mixup with an odd micro-batch.
    """

    def __init__(self, cfg: Config, model: torch.nn.Module, num_classes: int, micro_batch: int,
                 device: torch.device, total_steps: int) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.mixup = make_mixup(cfg.aug, num_classes)
        if self.mixup is not None and micro_batch % 2:
            raise TrainError(f"mixup/cutmix need an even per-rank micro-batch, got {micro_batch}: "
                             "change train.batch_size or set aug.mixup=0 aug.cutmix=0")
        self.criterion = make_criterion(cfg.aug, self.mixup)
        cuda = self.device.type == "cuda"
        self.amp_dtype = amp_dtype(cfg.train.amp, self.device)
        self.accum = cfg.train.accum_steps
        self.model = model.to(self.device).train()
        opt_kwargs: dict[str, Any] = {}
        if cuda and cfg.optim.opt.lower() in ("adamw", "adam"):
            opt_kwargs["fused"] = True
        self.optimizer = create_optimizer_v2(model, opt=cfg.optim.opt, lr=cfg.optim.lr,
                                             weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum,
                                             **opt_kwargs)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=total_steps, lr_min=cfg.optim.lr_min,
                                           warmup_t=min(cfg.optim.warmup_steps, max(total_steps - 1, 0)),
                                           warmup_lr_init=cfg.optim.warmup_lr, t_in_epochs=False)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.train.amp == "fp16")
        self.train_model: torch.nn.Module = self.model
        self.ddp = False
        self.step = 0

    def start(self, step: int = 0, world_size: int = 1) -> None:
        """Set the schedule at ``step`` (0, or where a checkpoint left off) and wrap the model for training."""
        self.step = step
        self.scheduler.step_update(step)
        if self.cfg.train.compile and self.device.type == "cuda":
            self.train_model = torch.compile(self.model)
        if world_size > 1:
            self.ddp = True
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group now."""
        return self.optimizer.param_groups[0]["lr"]

    def micro_step(self, images: torch.Tensor, targets: torch.Tensor, last: bool = True) -> torch.Tensor:
        """Forward and backward one micro-batch on the device; no host sync.

        Args:
            images: (B, 3, S, S) float32, normalised.
            targets: (B,) int64 hard labels (mixup makes them soft here).
            last: the last micro-step of an optimizer step; under DDP the others skip the all-reduce.

        Returns:
            The micro-batch's loss divided by ``accum_steps`` (0-d, detached, on the device).
        """
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        sync = self.train_model.no_sync() if self.ddp and not last else contextlib.nullcontext()
        with sync:
            with autocast(self.device, self.amp_dtype):
                loss = self.criterion(self.train_model(images), targets) / self.accum
            self.scaler.scale(loss).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        """Clip (``optim.clip_grad``), step the optimizer and the scaler, clear the grads, advance the schedule."""
        if self.cfg.optim.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(self.step)

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimizer step on one micro-batch (``train/experiments/bench.py``'s unit)."""
        self.micro_step(images, targets)
        self.optimizer_step()
