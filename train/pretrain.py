"""LPCE pre-training: a timm model learns to tell the L perturbations of a fracgen dataset apart.

``pretrain(cfg, out)`` validates everything (dataset, shards, model name, batch split) before it creates the
run folder, trains ``cfg.train.steps`` optimizer steps with ``train.loop``, measures top-1 on the dataset's
own (un-augmented) images, and writes ``metrics.json`` then ``run.json`` = complete.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from train.config import Config
from train.data import make_pretrain_eval_loader, make_source
from train.errors import TrainError
from train.loop import (
    check_model_name,
    create_model,
    evaluate,
    seed_everything,
    setup,
    start_run_folder,
    train_loop,
    write_status,
)

log = logging.getLogger(__name__)


def pretrain(cfg: Config, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Pre-train ``cfg.model`` on the fracgen dataset ``cfg.data.path`` into the run folder ``out``.

    Args:
        cfg: resolved config (``train.config.load_config``).
        out: run folder (created; must not hold another run unless ``resume``).
        resume: continue the run in ``out`` exactly where its last checkpoint left it.

    Returns:
        The metrics written to ``out/metrics.json``: final loss, top-1 on the perturbation classes
        (``eval_top1``, percent), ``chance`` (100 / num_classes), steps, images/s.

    Raises:
        TrainError: bad dataset, shard, model name, batch split or run folder.
    """
    out = Path(out)
    check_model_name(cfg.model.name)
    env = setup(cfg)
    seed_everything(cfg.train.seed)
    source = make_source(cfg, env.device, env.rank, env.world_size)
    model = create_model(cfg, source.num_classes)
    eval_loader = make_pretrain_eval_loader(cfg) if env.is_main else None
    start_run_folder(out, cfg, resume, env.is_main)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp) if env.device.type == "cuda" else None

    def eval_fn(m: Any) -> dict[str, float]:
        return {"eval_top1": evaluate(m, eval_loader, env.device, amp_dtype)} if eval_loader is not None else {}

    try:
        result = train_loop(cfg, model, source, out, env, total_steps=cfg.train.steps, resume=resume,
                            eval_fn=eval_fn)
    except (Exception, KeyboardInterrupt) as e:
        if env.is_main:
            write_status(out, "failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        source.close()
    if result.get("stopped"):
        if env.is_main:
            write_status(out, "stopped", step=result["step"])
        return {"stopped": True, "steps": result["step"]}
    metrics = {
        "kind": "pretrain", "model": cfg.model.name, "dataset": cfg.data.path, "num_classes": source.num_classes,
        "chance": 100.0 / source.num_classes, "steps": result["step"], "final_loss": result["loss"],
        "eval_top1": result["eval"][-1]["eval_top1"] if result["eval"] else None,
        "images_per_s": result["images_per_s"], "elapsed_s": result["elapsed_s"], "device": str(env.device),
        "world_size": env.world_size, "source": type(source).__name__,
    }
    if env.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        write_status(out, "complete", steps=result["step"])
    if not result["step"]:
        raise TrainError("no step was trained")
    return metrics
