"""The run folder: what a pre-training or fine-tuning run leaves behind, and its status from start to end.

Only rank 0 writes:
    config.yaml        the resolved config
    run.json           {"status": "running" | "stopped" | "failed" | "complete", ...}; "complete" is written last
    log.csv            step, epoch, loss, lr, images_per_s, elapsed_s, eval_top1 every log_every steps
                       (and a row per evaluation without images_per_s)
    model.safetensors, state.pt   the checkpoint (``train/checkpoint.py``)
    metrics.json       the job's results, written before run.json says complete
    curves.png         loss / lr / accuracy curves, drawn at the end
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from train.checkpoint import STATE_FILE
from train.config import Config
from train.distributed import Dist
from train.errors import TrainError

STATUS_FILE = "run.json"
LOG_FILE = "log.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


def start_run_folder(out: Path, cfg: Config, resume: bool, is_main: bool) -> None:
    """Create (or, on resume, check) the run folder; refuse to mix a new run into an old one.

    Rank 0 decides and tells the others, so that a refusal stops every rank instead of leaving them waiting.
    """
    error = ""
    if is_main:
        status = out / STATUS_FILE
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
    (out / STATUS_FILE).write_text(json.dumps({"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               **extra}, indent=1))


def run_job(out: Path, env: Dist, train: Callable[[], dict[str, Any]],
            metrics: Callable[[dict[str, Any]], dict[str, Any]], complete: str) -> dict[str, Any]:
    """Run a training job in its folder and keep ``run.json`` true to how it ended.

    Args:
        out: the run folder, started by ``start_run_folder``.
        env: this process (rank 0 writes).
        train: runs the loop; returns ``train_loop``'s result.
        metrics: the loop's result -> the job's metrics (written to ``metrics.json``).
        complete: the metrics key repeated in the "complete" status (e.g. ``steps``, ``top1``).

    Returns:
        The metrics, or ``{"stopped": True, "steps": n}`` when ``train.stop_at`` ended the run early.
    """
    try:
        result = train()
    except (Exception, KeyboardInterrupt) as e:
        if env.is_main:
            write_status(out, "failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    if result.get("stopped"):
        if env.is_main:
            write_status(out, "stopped", step=result["step"])
        return {"stopped": True, "steps": result["step"]}
    values = metrics(result)
    if env.is_main:
        (out / METRICS_FILE).write_text(json.dumps(values, indent=1))
        write_status(out, "complete", **{complete: values[complete]})
    return values


class CsvLog:
    """``log.csv``, one row per log window or evaluation; opening it drops rows past the step resumed from.

    Args:
        out: the run folder.
        step: the step the run starts at (rows a crashed run wrote after its last checkpoint are redone).
        enabled: False on ranks other than 0 (nothing is read or written).
    """

    FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s", "eval_top1")

    def __init__(self, out: Path, step: int, enabled: bool = True) -> None:
        self.path, self.enabled = out / LOG_FILE, enabled
        if not enabled:
            return
        rows = []
        if self.path.is_file():
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, epoch: int, loss: float, lr: float, elapsed_s: float,
              images_per_s: float | None = None, eval_top1: float | None = None) -> None:
        """Append one row; ``images_per_s`` None marks an evaluation row (it repeats the last loss)."""
        if not self.enabled:
            return
        row = {"step": step, "epoch": epoch, "loss": f"{loss:.5f}", "lr": f"{lr:.3e}",
               "images_per_s": "" if images_per_s is None else f"{images_per_s:.1f}",
               "elapsed_s": f"{elapsed_s:.1f}", "eval_top1": "" if eval_top1 is None else eval_top1}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow(row)


def plot_curves(out: Path) -> None:
    """``curves.png``: loss, learning rate and (when present) accuracy against step, from ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / LOG_FILE) as f:
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
    fig.savefig(out / CURVES_FILE, dpi=100)
    plt.close(fig)
