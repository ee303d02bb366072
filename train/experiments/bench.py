"""Pre-training throughput: model alone, streaming loader, GPU-resident source, in one run on one device.

``python -m train.experiments.bench --data out/1p-frac`` (``make bench-train``) times the trainer's own step
(``train.step.TrainStep``: timm model, timm Mixup/CutMix with label smoothing on the device, soft-target cross
entropy, the config's timm optimizer and schedule; bf16 autocast and fused AdamW on CUDA; optionally
``torch.compile`` on CUDA) fed three ways:

- ``model only``: random tensors already on the device (the ceiling);
- ``stream``: ``train.data.stream``, the streaming source (webdataset shards, PNG decode and timm transforms in
  DataLoader workers, copied to the device);
- ``resident``: ``train.data.resident`` (images held on the device as uint8, augmented there);

plus ``resident augmentation alone`` (drawing batches without a model: the data path's own ceiling), and with
``--recipes all`` (or a comma list of families) two rows per family: a small recipe of it at the trainer's
resolution streamed by one DataLoader worker (rendering, then timm's transforms; no model) beside the same samples
read from its full build's shards, each with the workers that would feed the model-only rate. Each is
reported in images/s after ``--warmup`` steps that are not timed (compilation, worker start-up, allocator
warm-up), with its ratio to model only and the time the released schedule (240k steps of 256, about 61M
samples) would take at that rate. The table is Markdown, headed by the device, versions, model, batch and
compile setting. Without ``--data`` a small dataset is built into a temporary folder first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fracgen.errors import FracgenError

RELEASED_STEPS, RELEASED_BATCH = 240_000, 256
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Row:
    """One measured path."""

    path: str
    images_per_s: float | None
    note: str = ""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A human name of the device: the GPU's name, or the CPU model and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU {cpu} ({torch.get_num_threads()} torch threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a CPU-GPU sync point: only around timed regions


def _forever(source: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from source.batches(epoch)
        epoch += 1


def time_steps(step: Callable[[torch.Tensor, torch.Tensor], None] | None, batches: Iterator,
               warmup: int, steps: int, device: torch.device, label: str = "", progress: bool = False) -> float:
    """Images per second over ``steps`` steps after ``warmup`` untimed ones (``step`` None: batches alone).

    ``progress`` draws a bar on stderr from before the first step (on a CPU a step can take a minute); it
    adds no device sync, so GPU figures are unchanged.
    """
    from tqdm import tqdm

    n = 0
    bar = tqdm(total=warmup + steps, desc=f"{label} (warm-up)" if warmup else label, unit="step", file=sys.stderr,
               disable=not progress, mininterval=0, smoothing=0, dynamic_ncols=True)
    bar.refresh()  # shown at 0 now, not after the first (slow) step
    for _ in range(warmup):
        images, targets = next(batches)
        if step is not None:
            step(images, targets)
        bar.update()
    _sync(device)
    bar.set_description(label)
    start = time.perf_counter()
    for _ in range(steps):
        images, targets = next(batches)
        if step is not None:
            step(images, targets)
        n += images.shape[0]
        bar.update()
    _sync(device)
    rate = n / (time.perf_counter() - start)
    bar.set_postfix_str(f"{rate:,.0f} images/s")
    bar.close()
    return rate


def _random_batches(cfg: Any, num_classes: int, device: torch.device, micro: int) -> Iterator:
    size = cfg.model.img_size
    pool = [(torch.randn(micro, 3, size, size, device=device),
             torch.randint(0, num_classes, (micro,), device=device)) for _ in range(4)]
    k = 0
    while True:
        yield pool[k % len(pool)]
        k += 1


def _build_default(folder: Path, size: int, progress: bool = False) -> Path:
    from fracgen.build import BuildConfig, build

    out = folder / "1p-frac-bench"
    build(BuildConfig(L=64, size=size, points=20_000, seed=0, shard_size=32), out, workers=1, progress=progress)
    return out


def _values(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The config keys the command line sets."""
    return {"data.path": str(args.data or ""), "model.name": args.model, "model.img_size": args.img_size,
            "train.batch_size": args.batch, "train.amp": args.amp, "train.compile": args.compile,
            "train.device": device.type, "data.workers": args.workers, "train.threads": args.threads}


def check(args: argparse.Namespace) -> None:
    """The config, model, optimizer and augmentation, the CPUs and memory they ask for, before a dataset is built
    or read (one-line TrainError)."""
    from train.bounds import check_cpus
    from train.config import load_config
    from train.distributed import Dist
    from train.model import check_timm_names
    from train.step import check_fits

    device = _device(args.device)
    cfg = load_config(args.config, args.set, _values(args, device))
    check_timm_names(cfg)
    check_cpus(cfg)
    check_fits(cfg, Dist(0, 1, 0, device))


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """Measure every requested path; returns the rows and the context of the table."""
    from train.config import load_config
    from train.data.shards import read_info
    from train.data.source import micro_batch_size
    from train.model import create_model
    from train.step import TrainStep

    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # denormal floats in the first steps of a fresh model made CPU steps up to 30x slower here
        torch.set_flush_denormal(True)
    cfg = load_config(args.config, args.set, _values(args, device))
    info = read_info(cfg.data.path)
    num_classes = info.num_classes
    micro = micro_batch_size(cfg, 1)
    trainer = TrainStep(cfg, create_model(cfg, num_classes), num_classes, micro, device, RELEASED_STEPS)
    trainer.start()
    rows: list[Row] = []
    paths = args.paths.split(",")
    progress = not args.no_progress
    if device.type == "cpu":
        _say(f"on a CPU (no CUDA device), {device_name(device)}: {cfg.model.name} at {cfg.model.img_size} px, batch "
             f"{micro}, {args.warmup} + {args.steps} steps per path; a step can take minutes here (for a quick look: "
             "--img-size 64 --batch 32 --warmup 1 --steps 5)")

    def peak() -> str:
        if device.type != "cuda":
            return ""
        gib = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return f"peak {gib:.1f} GiB"

    peak()
    if "model" in paths:
        rate = time_steps(trainer.train_step, _random_batches(cfg, num_classes, device, micro), args.warmup, args.steps,
                          device, "model only", progress)
        rows.append(Row("model only (random tensors on the device)", rate, peak()))
    for path in ("stream", "resident"):
        if path in paths:
            cfg.data.source = path
            rows += _measure_source(cfg, trainer, device, args, peak)
    if args.recipes:
        rows += _recipe_rows(cfg, args, device, rows[0].images_per_s if "model" in paths else None)
    from importlib.metadata import version

    import timm

    context = {
        "device": device_name(device), "torch": torch.__version__, "timm": timm.__version__,
        "others": ", ".join(f"{name} {version(name)}" for name in ("fracgen", "numpy", "numba", "Pillow")),
        "date": time.strftime("%Y-%m-%d"), "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "model": cfg.model.name, "img_size": cfg.model.img_size, "batch": micro,
        "amp": cfg.train.amp if device.type == "cuda" else "none (CPU)", "compile": bool(cfg.train.compile),
        "steps": args.steps, "warmup": args.warmup, "workers": cfg.data.workers,
        "data": f"{cfg.data.path} ({info.splits['train'].num_samples} images, {num_classes} classes)",
        "recipe": f"RandAugment {cfg.aug.auto_augment}, erasing {cfg.aug.re_prob}, mixup {cfg.aug.mixup}/"
                  f"cutmix {cfg.aug.cutmix}",
    }
    return rows, context


def _measure_source(cfg: Any, trainer: Any, device: torch.device, args: argparse.Namespace,
                    peak: Callable[[], str]) -> list[Row]:
    """The rows of one data path (``cfg.data.source``: stream or resident); a path that cannot run is a row saying
    why, not a lost table."""
    from train.data.pretraining import make_source

    path, progress, rows = cfg.data.source, not args.no_progress, []
    try:
        start = time.perf_counter()
        if progress:
            _say(f"{path}: reading the dataset ...")
        source = make_source(cfg, device, 0, 1)
        ready = time.perf_counter() - start
        kind = type(source).__name__
        rate = time_steps(trainer.train_step, _forever(source), args.warmup, args.steps, device, path, progress)
        note = f"{kind}, set-up {ready:.1f} s" + (f", {cfg.data.workers} workers" if path == "stream" else "")
        note = ", ".join(x for x in (note, peak()) if x)
        rows.append(Row(f"{path} loader" if path == "stream" else "GPU-resident source", rate, note))
        if path == "resident":
            alone = time_steps(None, _forever(source), args.warmup, args.steps, device, "resident, no model", progress)
            rows.append(Row("resident augmentation alone (no model)", alone, kind))
        source.close()
        del source
    except Exception as e:  # noqa: BLE001 - a path that cannot run is a row that says why
        rows.append(Row(path, None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _small_build(family: Any, size: int, root: Path, recipe_only: bool) -> Path:
    """A small build of ``family`` at ``size`` px, by its own options: 8 classes (L, categories or fractals) of
    one instance, shards of 8; a family that transforms a source image gets a generated one."""
    from PIL import Image

    from fracgen.build import BuildConfig, build

    options = {"preset": family.name, "size": size, "shard_size": 8, "seed": 0, **({"instances": 1} if "instances" in
               family.options else {}), next(k for k in ("L", "categories", "fractals") if k in family.options): 8}
    source = root.parent / "source.png"
    if family.takes_source:
        Image.effect_mandelbrot((256, 256), (-2.0, -1.5, 1.0, 1.5), 100).save(source)
    build(BuildConfig(**options), root, workers=1, recipe_only=recipe_only,
          **({"source": source} if family.takes_source else {}))
    return root


def _recipe_rows(cfg: Any, args: argparse.Namespace, device: torch.device, model_rate: float | None) -> list[Row]:
    """Per family, images/s of one DataLoader worker streaming a small recipe (rendered) and the shards of the same
    build (read and decoded), through timm's transforms at ``model.img_size``, without a model."""
    import copy
    import math

    from fracgen.presets import registry
    from train.data.pretraining import make_source

    names = list(registry.families()) if args.recipes == "all" else args.recipes.split(",")
    rows = []
    logging.disable(logging.WARNING)  # 8 images a family: every batch repeats them, which the warning says
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                for kind, recipe_only in (("recipe, rendered", True), ("shards, read", False)):
                    root = _small_build(registry.get(name), cfg.model.img_size, Path(tmp) / f"{name}-{recipe_only}",
                                        recipe_only)
                    run = copy.deepcopy(cfg)
                    run.data.path, run.data.source, run.data.workers, run.data.eval_path = str(root), "stream", 1, ""
                    rate = time_steps(None, _forever(make_source(run, device, 0, 1)), args.warmup, args.steps, device,
                                      f"{name} {kind}", not args.no_progress)
                    need = math.ceil(model_rate / rate) if model_rate else 0
                    feed = f"{need} worker{'s' * (need > 1)} feed{'s' * (need == 1)} model only" if need else ""
                    rows.append(Row(f"{name}: {kind}, 1 worker", rate, feed))
    finally:
        logging.disable(logging.NOTSET)
    return rows


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def markdown(rows: list[Row], context: dict[str, Any]) -> str:
    """The table: one row per path with images/s, ratio to model only and the released schedule's time."""
    base = next((r.images_per_s for r in rows if r.path.startswith("model only")), None)
    head = (f"**{context['device']}**, torch {context['torch']}, timm {context['timm']}, {context['others']}; "
            f"{context['date']}, load {context['load']}: {context['model']} at "
            f"{context['img_size']} px, batch {context['batch']}, amp {context['amp']}, compile "
            f"{'on' if context['compile'] else 'off'}; {context['steps']} timed steps after {context['warmup']} "
            f"warm-up; data {context['data']}; {context['recipe']}.")
    lines = [head, "", "| path | images/s | vs model only | 240k steps x 256 | note |", "|---|---:|---:|---:|---|"]
    for r in rows:
        if r.images_per_s is None:
            lines.append(f"| {r.path} | - | - | - | {r.note} |")
            continue
        ratio = f"{r.images_per_s / base:.0%}" if base else "-"
        full = _duration(RELEASED_STEPS * RELEASED_BATCH / r.images_per_s)
        lines.append(f"| {r.path} | {r.images_per_s:,.0f} | {ratio} | {full} | {r.note} |")
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    """argparse that refuses an option as the trainer does: one ``error: ...`` line on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


def _writable(path: Path) -> str | None:
    """Why the table cannot be written to ``path`` (checked before the minutes of measuring), or None."""
    if path.is_symlink():
        return f"{path} is a link; the table is written only to a regular file: move it away first"
    if path.is_dir():
        return f"{path} is a folder"
    folder = path.parent
    if not folder.is_dir():
        return f"no folder {folder}"
    if not os.access(path if path.exists() else folder, os.W_OK):
        return f"{path if path.exists() else folder} is not writable"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m train.experiments.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="fracgen dataset folder (default: build a small one in a temp dir)")
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm model name")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, workers)")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="stream DataLoader workers")
    p.add_argument("--paths", default="model,stream,resident", help="comma list of model, stream, resident")
    p.add_argument("--recipes", default="", help="families whose recipe and shards one worker streams: all, or a "
                   "comma list (e.g. 1p-frac,rcdb)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--config", default="pretrain", help="base config (train/configs/*.yaml or a path)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.kwargs='{patch_size: 8}' (repeatable)")
    p.add_argument("--out", type=Path, help="append the table to this Markdown file")
    p.add_argument("--json", type=Path, help="write rows and context as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "img_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        p.error(f"--device: must be auto, cpu, cuda or cuda:N (got {args.device!r})")
    if args.threads < 0:
        p.error("--threads must be >= 0 (0: torch's default)")
    if args.workers < 0:
        p.error("--workers must be >= 0")
    for name in ("out", "json"):
        if getattr(args, name) is not None and (why := _writable(getattr(args, name))):
            p.error(f"--{name}: {why}")
    from fracgen.presets import registry

    families = set(args.recipes.split(",")) - {"all", ""} - set(registry.families())
    if families:
        p.error(f"--recipes: unknown {sorted(families)} (known: all, {', '.join(registry.families())})")
    unknown = set(args.paths.split(",")) - {"model", "stream", "resident"}
    if unknown:
        p.error(f"--paths: unknown {sorted(unknown)} (known: model, stream, resident)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m train.experiments.bench``; prints the Markdown table."""
    from train.errors import TrainError

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            if args.data is None:
                _say(f"building a small dataset (64 images, {min(args.img_size * 2, 512)} px; compiling the renderer "
                     "can take a minute the first time) ...")
                args.data = _build_default(Path(tmp), min(args.img_size * 2, 512), not args.no_progress)
            rows, context = run(args)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = markdown(rows, context)
    print(table)
    try:
        _write(args, table, {"context": context, "rows": [dataclasses.asdict(r) for r in rows]})
    except FracgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _write(args: argparse.Namespace, table: str, record: dict[str, Any]) -> None:
    """The table appended to ``--out``, the record written over ``--json``: never through a link.

    Raises:
        FracgenError: a file that is a link or cannot be written (a full disk).
    """
    from fracgen import folder as fs

    if args.out:
        fs.append_text(args.out, table + "\n")
    if args.json:
        fs.write_atomic(args.json, (json.dumps(record, indent=1) + "\n").encode(), "rerun")


if __name__ == "__main__":
    sys.exit(main())
