"""The bounds of every config key, in one table, and what the machine allows: its CPUs and the memory a run can have.

``BOUNDS`` holds each key's check and the words of its refusal; ``check_static`` applies it when a config is
loaded (the same on every machine). ``check_machine`` applies what depends on the machine, when a job starts and
before any data are read: the keys of ``PER_CPU`` may not exceed the CPUs this process may use (each is a thread
or a process), and the model, a micro-batch and an evaluation batch must fit the memory the run can have, as the
builder checks its own options (``fracgen.config.check_memory``). Every refusal is one line naming the key, what is
allowed and the value given.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

from train.errors import TrainError

Check = Callable[[Any], bool]
_MISSING = object()

# Static ceilings far above any real run: they only keep values finite, loops short and arithmetic exact; the
# machine checks below are the real limits.
MOST_STEPS = 10**12
MOST_PX = 1 << 16
MOST_BLOCKS = 1000  # a meta-device build of N blocks takes about N ms; the deepest timm ViTs have 48
MOST_ITEMS = 1 << 24  # images in a batch, samples in a buffer or an evaluation set


def _int(lo: int = 0, hi: float = math.inf) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _num(lo: float = 0.0, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite real number in the interval (YAML's ``.inf`` and ``.nan`` are refused)."""
    def ok(v: Any) -> bool:
        return (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi))
    return ok


def _seq(n: int, item: Check, increasing: bool = False) -> Check:
    return lambda v: (isinstance(v, tuple | list) and len(v) == n and all(item(x) for x in v)
                      and (not increasing or list(v) == sorted(v)))


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _one_of(*values: str) -> Check:
    return lambda v: v in values


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


_NONNEG, _PROB = "a finite number >= 0", "a number in [0, 1]"
_STEPS = f"an integer in [0, {MOST_STEPS:.0e}]"

# key -> (check, what is allowed). Keys inside model.kwargs and data.resident are checked when present.
BOUNDS: dict[str, tuple[Check, str]] = {
    "model.name": (lambda v: isinstance(v, str) and bool(v), "a timm model name"),
    "model.img_size": (_int(8, MOST_PX), f"an integer in [8, {MOST_PX}]"),
    "model.drop_path": (_num(0, 1, hi_open=True), "a number in [0, 1)"),
    "model.kwargs": (lambda v: isinstance(v, dict), "a mapping of timm.create_model keyword arguments"),
    "model.kwargs.patch_size": (_int(1, MOST_PX), "an integer in [1, model.img_size]"),  # and <= img: check_static
    "model.kwargs.depth": (_int(1, MOST_BLOCKS), f"an integer in [1, {MOST_BLOCKS}]"),
    "model.kwargs.embed_dim": (_int(1, MOST_PX), f"an integer in [1, {MOST_PX}]"),
    "model.kwargs.num_heads": (_int(1, MOST_PX), f"an integer in [1, {MOST_PX}]"),
    "model.kwargs.mlp_ratio": (_num(0, 1024, lo_open=True), "a number in (0, 1024]"),
    "data.path": (_optional(_is_str), "a string"),
    "data.source": (_one_of("auto", "stream", "resident"), "auto, stream or resident"),
    "data.workers": (_int(0, MOST_ITEMS), "an integer >= 0"),
    "data.shuffle_buffer": (_int(0, 1_000_000), "an integer in [0, 1000000]"),
    "data.root": (_is_str, "a string"),
    "data.eval_path": (_optional(_is_str), "a string (empty: no evaluation)"),
    "data.eval_samples": (_int(1, MOST_ITEMS), "an integer >= 1 (data.eval_path='' skips evaluation)"),
    "data.resident": (lambda v: isinstance(v, dict), "a mapping of resident-source options"),
    # the resident source reads these only once the dataset is open: checked here, before anything is read
    "data.resident.memory_budget_gb": (_optional(_num(0, 1 << 20, lo_open=True)), "a number of GiB > 0 or null"),
    "data.resident.load_workers": (_optional(_int(0, MOST_ITEMS)), "an integer >= 0 (0 or null: the default)"),
    "data.resident.split_ranks": (_is_bool, "true or false"),
    "data.resident.antialias": (_is_bool, "true or false"),
    "data.resident.prefetch": (_is_bool, "true or false"),
    "data.verify": (lambda v: v == "auto" or isinstance(v, bool), "auto, true or false"),
    "data.fresh_masks": (_is_bool, "true or false"),
    "aug.rrc_scale": (_seq(2, _num(0, 1, lo_open=True), increasing=True), "[min, max] with 0 < min <= max <= 1"),
    "aug.rrc_ratio": (_seq(2, _num(0, lo_open=True), increasing=True), "[min, max] with 0 < min <= max"),
    "aug.interpolation": (_is_str, "a string (bicubic, bilinear, ...)"),
    "aug.hflip": (_num(0, 1), _PROB),
    "aug.vflip": (_num(0, 1), _PROB),
    "aug.auto_augment": (_optional(_is_str), "a timm RandAugment string or null"),
    "aug.re_prob": (_num(0, 1), _PROB),
    "aug.re_mode": (_one_of("const", "rand", "pixel"), "const, rand or pixel"),
    "aug.mixup": (_num(0), _NONNEG),
    "aug.cutmix": (_num(0), _NONNEG),
    "aug.mixup_prob": (_num(0, 1), _PROB),
    "aug.mixup_switch_prob": (_num(0, 1), _PROB),
    "aug.mixup_mode": (_one_of("batch", "pair", "elem"), "batch, pair or elem (timm's Mixup modes)"),
    "aug.smoothing": (_num(0, 1, hi_open=True), "a number in [0, 1)"),
    "aug.mean": (_seq(3, _num(-math.inf)), "3 finite numbers"),
    "aug.std": (_seq(3, _num(0, lo_open=True)), "3 numbers > 0"),
    "aug.eval_crop_pct": (_num(0, lo_open=True), "a finite number > 0"),
    # whether timm knows it is asked in model.check_timm_names, where timm is imported anyway (not here: 2.7 s)
    "optim.opt": (lambda v: isinstance(v, str) and bool(v), "a timm optimizer name (e.g. adamw, sgd, lamb)"),
    "optim.lr": (_num(0, lo_open=True), "a finite number > 0"),
    "optim.weight_decay": (_num(0), _NONNEG),
    "optim.momentum": (_num(0, 1), _PROB),
    "optim.lr_min": (_num(0), _NONNEG),
    "optim.warmup_steps": (_int(0, MOST_STEPS), _STEPS),
    "optim.warmup_lr": (_num(0), _NONNEG),
    "optim.clip_grad": (_optional(_num(0)), "a finite number >= 0 (0 or null: no clipping)"),
    "train.steps": (_int(0, MOST_STEPS), _STEPS),
    "train.epochs": (_int(0, 1_000_000), "an integer in [0, 1000000]"),
    "train.batch_size": (_int(1, MOST_ITEMS), f"an integer in [1, {MOST_ITEMS}]"),
    "train.accum_steps": (_int(1, MOST_ITEMS), f"an integer in [1, {MOST_ITEMS}]"),
    "train.amp": (_one_of("bf16", "fp16", "none"), "bf16, fp16 or none"),
    "train.compile": (_is_bool, "true or false"),
    "train.device": (lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", v) is not None,
                     "auto, cpu, cuda or cuda:N"),
    "train.seed": (_int(0, 2**32 - 1), "an integer in [0, 2**32)"),
    "train.log_every": (_int(1, MOST_STEPS), f"an integer in [1, {MOST_STEPS:.0e}]"),
    "train.ckpt_every": (_int(0, MOST_STEPS), f"{_STEPS} (0: only at the end)"),
    "train.eval_every": (_int(0, MOST_STEPS), f"{_STEPS} (0: only at the end)"),
    "train.threads": (_int(0, MOST_ITEMS), "an integer >= 0 (0: torch's default)"),
    "train.stop_at": (_int(0, MOST_STEPS), f"{_STEPS} (0: never)"),
    "finetune.checkpoint": (_optional(_is_str), "a path or null"),
    "finetune.probe_blocks": (_int(0, MOST_BLOCKS), f"an integer in [0, {MOST_BLOCKS}]"),
    "finetune.eval_batch_size": (_int(1, MOST_ITEMS), f"an integer in [1, {MOST_ITEMS}]"),
    "log.tensorboard": (_is_bool, "true or false"),
}
# Each is a thread or a process per rank: at most the CPUs this process may use (0 means the default everywhere).
PER_CPU = ("train.threads", "data.workers", "data.resident.load_workers")


def value_at(cfg: Any, dotted: str) -> Any:
    """The value at ``dotted`` (``model.kwargs.depth`` looks into the dict), ``_MISSING`` when absent."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part, _MISSING) if isinstance(node, dict) else getattr(node, part, _MISSING)
        if node is _MISSING:
            break
    return node


def check_static(cfg: Any) -> None:
    """Every key of ``BOUNDS`` present in ``cfg`` (a ``train.config.Config``), the same on every machine.

    Raises:
        TrainError: ``<key>: must be <what is allowed> (got <value>)``, for the first key out of bounds.
    """
    for key, (ok, allowed) in BOUNDS.items():
        value = value_at(cfg, key)
        if value is not _MISSING and not ok(value):
            raise TrainError(f"{key}: must be {allowed} (got {value!r})")
    patch, img = value_at(cfg, "model.kwargs.patch_size"), cfg.model.img_size
    if patch is not _MISSING and patch > img:
        raise TrainError(f"model.kwargs.patch_size: must be an integer in [1, model.img_size = {img}] (got {patch})")
    if cfg.train.steps < 1 and cfg.train.epochs < 1:
        raise TrainError("train.steps / train.epochs: one must be >= 1")


def cpus() -> int:
    """The CPUs this process may use (its affinity, where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_cpus(cfg: Any) -> None:
    """The keys of ``PER_CPU`` at most ``cpus()``.

    Raises:
        TrainError: ``data.workers: must be at most 2, the CPUs this process may use (got 300)``.
    """
    most = cpus()
    for key in PER_CPU:
        value = value_at(cfg, key)
        if isinstance(value, int) and value > most:
            raise TrainError(f"{key}: must be at most {most}, the CPUs this process may use (got {value})")


# Bytes that grow with each option, as lower bounds (a run that fits is never refused; one that is refused could
# never fit): float32 weights and their gradients (AdamW holds 8 bytes more per parameter), and per pixel of an
# image in training a float32 RGB input plus one activation of its size.
BYTES_PER_PARAM = 8
BYTES_PER_PX = 3 * 4 * 2
HEADROOM = 0.8  # of the memory available: the interpreter, CUDA's context and the page cache need the rest


def check_memory(cfg: Any, params: int | None, micro_batch: int, world_size: int, available: int | None,
                 where: str, num_classes: int = 2) -> None:
    """Refuse, before anything is read or allocated, a run whose model or batches need more memory than it has.

    Args:
        cfg: the run's config (``model``, ``train.batch_size``, ``finetune.eval_batch_size``).
        params: the model's parameter count (None: unknown, not counted).
        micro_batch: images per rank per micro-step.
        world_size: ranks (to say which ``train.batch_size`` fits).
        available: bytes the run can have where it trains (None: unknown, nothing is refused).
        where: the device, for the message.
        num_classes: the head's outputs, for the message.

    Raises:
        TrainError: naming the key to lower, the figure, and the largest value of it that fits.
    """
    if available is None:
        return
    gib, room = 1 << 30, HEADROOM * available
    per_image = float(cfg.model.img_size) ** 2 * BYTES_PER_PX
    model = float(params or 0) * BYTES_PER_PARAM
    batch = max(micro_batch, cfg.finetune.eval_batch_size) * per_image
    if model + batch <= room:
        return
    have = f"{available / gib:.1f} GiB are available on {where}"
    if model + per_image > room and model >= batch:
        raise TrainError(f"model {cfg.model.name} with model.kwargs {cfg.model.kwargs} at model.img_size "
                         f"{cfg.model.img_size} and {num_classes:,} classes has {params:,} parameters: training it "
                         f"needs about {model / gib:.1f} GiB of memory; {have}: choose a smaller model")
    if model + per_image > room:
        fits = int(cfg.model.img_size * math.sqrt(max(room - model, 0) / per_image))
        raise TrainError(f"model.img_size {cfg.model.img_size}: one image of that size needs about "
                         f"{per_image / gib:.1f} GiB in training; {have}: at most model.img_size {fits} fits")
    fit = int((room - model) // per_image)
    if micro_batch >= cfg.finetune.eval_batch_size:
        most = fit * world_size * cfg.train.accum_steps
        raise TrainError(f"train.batch_size {cfg.train.batch_size}: a micro-batch of {micro_batch} images of "
                         f"{cfg.model.img_size} px needs about {batch / gib:.1f} GiB; {have}: at most "
                         f"train.batch_size {most} fits (or raise train.accum_steps)")
    raise TrainError(f"finetune.eval_batch_size {cfg.finetune.eval_batch_size}: a batch of that many images of "
                     f"{cfg.model.img_size} px needs about {batch / gib:.1f} GiB; {have}: at most "
                     f"finetune.eval_batch_size {fit} fits")


def check_buffer(cfg: Any, side: int | None, readers: int, available: int | None) -> None:
    """Refuse a ``data.shuffle_buffer`` whose decoded images (``side`` x ``side`` grey bytes each, one buffer per
    reader) would not fit the memory available; unknown sizes are not checked.

    Raises:
        TrainError: naming the largest buffer that fits.
    """
    if not side or available is None:
        return
    per = float(side) ** 2 * max(readers, 1)
    need = cfg.data.shuffle_buffer * per
    if need > HEADROOM * available:
        gib = 1 << 30
        raise TrainError(f"data.shuffle_buffer {cfg.data.shuffle_buffer}: {max(readers, 1)} reader(s) would hold "
                         f"that many decoded {side} px images each, about {need / gib:.1f} GiB; "
                         f"{available / gib:.1f} GiB are available: at most data.shuffle_buffer "
                         f"{int(HEADROOM * available // per)} fits")
