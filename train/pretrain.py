"""LPCE pre-training: a timm model learns to tell the L perturbations of a fracgen dataset apart.

``pretrain(cfg, out)`` validates everything (dataset, shards, model name, batch split) before it creates the
run folder, trains ``cfg.train.steps`` optimizer steps with ``train.loop``, measures top-1 on the dataset's
own (un-augmented) images, and writes ``metrics.json`` then ``run.json`` = complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from train.bounds import check_cpus
from train.config import Config
from train.data.pretraining import check_eval_set, data_identity, make_pretrain_eval_loader, make_source
from train.data.shards import read_info
from train.data.source import Source
from train.distributed import Dist, seed_everything, setup
from train.errors import TrainError
from train.loop import Loop, evaluate
from train.model import check_timm_names, create_model
from train.run.checkpoint import check_resume, completed_run
from train.run.folder import out_path, run_job, start_run_folder
from train.run.log import check_tensorboard
from train.step import amp_dtype, check_fits

log = logging.getLogger(__name__)


def pretrain(cfg: Config, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Pre-train ``cfg.model`` on the fracgen dataset ``cfg.data.path`` into the run folder ``out``.

    Args:
        cfg: resolved config (``train.config.load_config``).
        out: run folder (created; must not hold another run unless ``resume``).
        resume: continue the run in ``out`` exactly where its last checkpoint left it (from step 0 when it
            stopped before its first checkpoint).

    Returns:
        The metrics written to ``out/metrics.json``: final loss, top-1 on the perturbation classes
        (``eval_top1``, percent), ``chance`` (100 / num_classes), steps, images/s; on ``--resume`` of a
        complete run, its ``metrics.json`` with ``already_complete`` (nothing is trained or written).

    Raises:
        TrainError: bad dataset, shard, model name, batch split or run folder.
    """
    out = out_path(out)
    check_timm_names(cfg)
    check_tensorboard(cfg)
    check_cpus(cfg)
    if resume:  # another config is refused before the shards are read; the dataset is compared once opened
        check_resume(out, cfg, compare_data=False)
        if (done := completed_run(out, cfg, compare_data=False)) is not None:
            return done
    env = setup(cfg)
    check_fits(cfg, env, read_info(cfg.data.path).num_classes)  # _info.json alone: no shard is read yet
    seed_everything(cfg.train.seed)
    check_eval_set(cfg)
    source = make_source(cfg, env.device, env.rank, env.world_size)
    try:
        loop, data = _prepare(cfg, source, out, env)
        start_run_folder(out, cfg, resume, env, check=lambda: check_resume(out, cfg, data), begin=loop.restore)
    except BaseException:
        source.close()
        raise

    def train() -> dict[str, Any]:
        try:
            return loop.run()
        finally:
            source.close()

    def metrics(result: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "pretrain", "model": cfg.model.name, "dataset": cfg.data.path,
            "num_classes": source.num_classes, "chance": 100.0 / source.num_classes, "steps": result["step"],
            "final_loss": result["loss"], "eval_top1": result["eval"][-1]["eval_top1"] if result["eval"] else None,
            "images_per_s": result["images_per_s"], "elapsed_s": result["elapsed_s"], "device": str(env.device),
            "world_size": env.world_size, "source": type(source).__name__,
        }

    result = run_job(out, env, train, metrics, complete="steps")
    if not result.get("stopped") and not result["steps"]:
        raise TrainError("no step was trained")
    return result


def _prepare(cfg: Config, source: Source, out: Path, env: Dist) -> tuple[Loop, dict[str, Any]]:
    """The model, its evaluation on the dataset's own images and the loop, before the run folder is taken; and what
    the checkpoints record of the dataset (``train.data.pretraining.data_identity``)."""
    data = data_identity(cfg, source)
    model = create_model(cfg, source.num_classes)
    # the evaluation set is the first samples of the training set unless data.eval_path says otherwise: the
    # source kept their bytes from its one read of the shards (its ``head``), and need not hold them longer
    head, source.head = getattr(source, "head", None), None
    eval_loader = make_pretrain_eval_loader(cfg, head) if env.is_main else None
    if env.device.type == "cpu" and env.is_main:
        _say_cpu(cfg)
    amp = amp_dtype(cfg.train.amp, env.device)

    def eval_fn(m: Any) -> dict[str, float]:
        return {"eval_top1": evaluate(m, eval_loader, env.device, amp)} if eval_loader is not None else {}

    return Loop(cfg, model, source, out, env, cfg.train.steps, eval_fn, {"dataset": data}), data


# the tiny config's work (steps x batch x pixels), which a CPU does in minutes
_CPU_SIZED = 300 * 32 * 64 * 64


def _say_cpu(cfg: Config) -> None:
    """Say that the run is on the CPU; a warning with the released recipe's scale when it is far beyond tiny."""
    t, px = cfg.train, cfg.model.img_size
    if t.steps * t.batch_size * px * px <= 10 * _CPU_SIZED:
        log.info("pre-training on the CPU (no CUDA device is visible): %d steps of %d images at %d px",
                 t.steps, t.batch_size, px)
        return
    log.warning("pre-training on the CPU (no CUDA device is visible): %d steps of %d images at %d px. The released "
                "recipe (240,000 steps of 256 at 224 px) is sized for GPUs; the time of the first step, logged "
                "next, gives this run's length here. For a CPU run use --config tiny (64 px, 300 steps)",
                t.steps, t.batch_size, px)
