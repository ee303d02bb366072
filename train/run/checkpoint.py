"""The checkpoint format: what a run folder keeps so that ``--resume`` continues exactly, and what it may change.

In a run folder (``train/run/folder.py``):
    config.json        timm's model config (``timm.models.save_config_for_hf``): architecture, num_classes,
                       model_args (the run's kwargs, img_size), mean/std; ``timm.create_model("local-dir:RUN",
                       pretrained=True)`` rebuilds the trained model from it and model.safetensors
    model.safetensors  the model (metadata: model name, timm kwargs, img_size, num_classes, step, config as JSON,
                       and what the run recorded about its data)
    state.safetensors  optimizer, scheduler, scaler, step, epoch, every rank's RNG states: what ``--resume`` needs,
                       stored without pickle (``train/run/safe_state.py``): loading it runs no code

Every file is written whole through ``train.run.folder.RunFolder`` (a temporary beside it, renamed over it, never
through a link), mode 0644. The three are renamed one after the other, so a kill between two renames leaves files
of different steps: ``--resume`` compares the steps and refuses such a pair. An earlier trainer's ``state.pt`` (a
pickle, which could run code) is never loaded: ``--resume`` of such a run is refused in one line.

A resumed run continues the steps its first command planned, so every setting that shapes those steps (model,
data, augmentation, optimizer, schedule, batch split, seed, source) must be the run's own; ``--resume`` with
another value is refused before the run folder is touched, naming each key with the run's value and the
command's. Only the keys of ``MAY_CHANGE`` (how often to log, checkpoint and evaluate, where and how fast it
runs) may differ. ``train.steps`` may not: the cosine schedule spans it, so another total changes the learning
rate of every step still to come. The dataset is compared by what the checkpoint recorded about it
(``train.data.pretraining.data_identity``, ``train.data.downstream.downstream_identity``), not by its path; a
checkpoint without that record is compared by ``data.path``, resolved (``./ds`` is ``ds``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from train.config import Config
from train.distributed import Dist, rng_state, seed_everything, set_rng_state
from train.errors import TrainError
from train.model import unwrap
from train.run import safe_state
from train.run.folder import (
    LEGACY_STATE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    STATUS_FILE,
    TIMM_CONFIG_FILE,
    RunFolder,
    checkpoint_files,
    trainer_status,
)
from train.step import TrainStep

log = logging.getLogger(__name__)

# The keys a resumed run may set otherwise than its first command, and why that leaves its steps as planned.
MAY_CHANGE: dict[str, str] = {
    "train.log_every": "how often a log row is written",
    "train.ckpt_every": "how often a checkpoint is written",
    "train.eval_every": "how often accuracy is measured (evaluation draws no random numbers)",
    "train.stop_at": "where a time-boxed job stops",
    "train.threads": "CPU threads",
    "train.device": "where it runs (bit-exact continuation needs the same kind of device)",
    "train.compile": "torch.compile, a speed choice (bit-exact continuation needs the same choice)",
    "data.verify": "whether sha256 is checked before step 1",
    "data.root": "where downloads and unpacked tarballs are kept",
    "data.resident.load_workers": "threads decoding PNGs at start-up",
    "finetune.eval_batch_size": "the test split's batch",
    "log.tensorboard": "TensorBoard scalars beside log.csv",
}
DATA_PATH = "data.path"  # compared through the dataset's identity when the checkpoint recorded one
_SHOWN = 6  # differences named in the one-line error; the rest are counted




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
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainError(f"checkpoint {path}: not a safetensors file ({e})") from None
    if "model" not in meta:
        raise TrainError(f"checkpoint {path}: no model name in its metadata (not written by train)")
    meta["kwargs"] = meta_kwargs(meta, path)
    for key in ("num_classes", "step"):
        try:
            meta[key] = int(meta.get(key, "0"))
        except ValueError:
            raise TrainError(f"checkpoint {path}: its metadata {key} is not an integer "
                             f"({meta[key][:40]!r}); the file was edited or not written by train") from None
    meta["path"] = str(path)
    return meta


def meta_kwargs(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """The timm kwargs a checkpoint's metadata records: a JSON object, or a one-line error naming the file."""
    try:
        kwargs = json.loads(meta.get("kwargs", "{}"))
    except ValueError:
        kwargs = None
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TrainError(f"checkpoint {path}: its metadata kwargs is not a JSON object of timm keyword arguments "
                         f"({meta['kwargs'][:40]!r}); the file was edited or not written by train")
    return kwargs


def model_bytes(model: torch.nn.Module, cfg: Config, num_classes: int, step: int,
                extra: dict[str, Any] | None = None) -> bytes:
    """The model as safetensors bytes, with its name, timm kwargs and config (and ``extra``) in the metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    meta = {"model": cfg.model.name, "kwargs": json.dumps(cfg.model.kwargs), "img_size": str(cfg.model.img_size),
            "num_classes": str(num_classes), "step": str(step), "config": json.dumps(cfg.to_dict()),
            "format": "pt"}
    meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (extra or {}).items()})
    return save(state, metadata=meta)


def timm_config_bytes(model: torch.nn.Module, cfg: Config, step: int) -> bytes:
    """``config.json`` as timm's own exporter (``save_config_for_hf``) writes it, with this run's tag.

    The exporter records the architecture, ``num_classes``, the factory's kwargs (``model_args``) and the
    preprocessing (``cfg.aug`` mean/std, interpolation, eval crop). The tag and licence it inherits from the
    architecture's default weights describe other weights, so they are replaced by this run's. The exporter writes
    a path, so it writes into a private temporary folder (nobody else can place a link there).
    """
    from timm.models._hub import save_config_for_hf

    a = cfg.aug
    with tempfile.TemporaryDirectory(prefix="fracgen-config-") as private:
        path = Path(private) / TIMM_CONFIG_FILE
        save_config_for_hf(unwrap(model), str(path), data_config={
            "mean": tuple(a.mean), "std": tuple(a.std), "interpolation": a.interpolation, "crop_pct": a.eval_crop_pct})
        config = json.loads(path.read_text())
    pretrained = config.get("pretrained_cfg", {})
    pretrained.pop("license", None)
    pretrained["tag"] = "fracgen"
    config["fracgen"] = {"step": step, "model": cfg.model.name, "kwargs": cfg.model.kwargs}
    return json.dumps(config, indent=2).encode()


def save_checkpoint(out: Path, trainer: TrainStep, cfg: Config, num_classes: int, steps_per_epoch: int,
                    env: Dist, record: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``state.safetensors`` at ``trainer.step``.

    Rank 0 writes; every rank must call (the RNG states are gathered). ``record`` (e.g. ``{"dataset": ...}``,
    ``train.data.pretraining.data_identity``) goes into the model's metadata beside the config, for ``--resume``.

    Raises:
        TrainError: a file cannot be written (a full disk says to free space and rerun with ``--resume``).
    """
    step = trainer.step
    rngs = [rng_state()]
    if env.world_size > 1:
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if not env.is_main:
        return
    model = model_bytes(trainer.model, cfg, num_classes, step, extra=record)
    config = timm_config_bytes(trainer.model, cfg, step)
    state = safe_state.dumps({"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                              "scaler": trainer.scaler.state_dict(), "step": step, "epoch": step // steps_per_epoch,
                              "rng": rngs, "config": cfg.to_dict()})
    # everything is made before the first rename: a kill now leaves a pair of different steps at worst,
    # which resume refuses, never a half-written file
    folder = RunFolder(out)
    folder.write(STATE_FILE, state)
    folder.write(MODEL_FILE, model)
    folder.write(TIMM_CONFIG_FILE, config)


def _damaged(out: Path, why: Any) -> str:
    text = str(why).splitlines()[0] if str(why) else type(why).__name__
    return (f"--resume: {out / STATE_FILE} is damaged ({text}); the run cannot continue from it: start it again "
            "in a new --out (or restore the file)")


def read_state(out: Path) -> dict[str, Any]:
    """The training state in ``out``, read without pickle and checked to be of the shape this trainer writes.

    Raises:
        TrainError: an earlier trainer's ``state.pt`` (never loaded), or a damaged or foreign state file.
    """
    if not (out / STATE_FILE).is_file() and (out / LEGACY_STATE_FILE).is_file():
        raise TrainError(f"--resume: {out / LEGACY_STATE_FILE} is the training state of an earlier version of this "
                         "trainer, a Python pickle, which can run code when loaded: it is not loaded. Start the run "
                         "again in a new --out, or resume it with the version that wrote it")
    try:
        state = safe_state.load(out / STATE_FILE)
    except safe_state.StateError as e:
        raise TrainError(_damaged(out, e)) from None
    shape = {"optimizer": dict, "scheduler": dict, "scaler": dict, "step": int, "epoch": int, "rng": list}
    wrong = [k for k, kind in shape.items() if not isinstance(state.get(k) if isinstance(state, dict) else None, kind)]
    if wrong or isinstance(state["step"], bool) or state["step"] < 0 or not state["rng"]:
        raise TrainError(_damaged(out, f"not a training state this trainer wrote ({', '.join(wrong) or 'step'})"))
    return state


def _check_state_header(out: Path) -> None:
    """Refuse an earlier trainer's ``state.pt`` or a state file whose header is not this trainer's (empty, cut short,
    another file) before anything is read or written; nothing past the header is read.

    Raises:
        TrainError: naming the file and why.
    """
    if not (out / STATE_FILE).is_file() and not (out / LEGACY_STATE_FILE).is_file():
        return  # load_checkpoint names a checkpoint without its state
    if not (out / STATE_FILE).is_file():
        read_state(out)  # the earlier trainer's state.pt: refused without being read
    try:
        safe_state.check(out / STATE_FILE)
    except safe_state.StateError as e:
        raise TrainError(_damaged(out, e)) from None


def load_checkpoint(out: Path, trainer: TrainStep, env: Dist) -> int:
    """Restore the model, optimizer, scheduler, scaler and this rank's RNG states from ``out``.

    Everything is read and checked before the first state is set: a checkpoint of another shape (a hostile or
    damaged file) is one line, not a failure later in the run.

    Returns:
        The step the checkpoint was written at.

    Raises:
        TrainError: one of the two files is missing or damaged, or they were written at different steps.
    """
    has_model, has_state = checkpoint_files(out)
    if not (has_model and has_state):
        missing, there = (MODEL_FILE, STATE_FILE) if has_state else (STATE_FILE, MODEL_FILE)
        raise TrainError(f"--resume: {out} has {there} but no {missing}; the checkpoint is incomplete")
    state = read_state(out)
    model_step = read_checkpoint_meta(out / MODEL_FILE)["step"]
    if model_step != state["step"]:
        raise TrainError(f"--resume: {out}/{MODEL_FILE} is from step {model_step} but {STATE_FILE} from step "
                         f"{state['step']} (a checkpoint cut short); resume cannot continue exactly")
    try:
        unwrap(trainer.model).load_state_dict(load_file(str(out / MODEL_FILE), device=str(env.device)))
    except (RuntimeError, SafetensorError, OSError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainError(f"--resume: {out / MODEL_FILE} does not fit the run's model ({why}); the checkpoint was "
                         "changed or not written by this run") from None
    try:
        _check_optimizer_state(trainer, state["optimizer"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        _restore_rngs(state, env, state["step"], out)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, SafetensorError) as e:
        raise TrainError(_damaged(out, e)) from None
    return state["step"]


def _check_optimizer_state(trainer: TrainStep, stored: dict[str, Any]) -> None:
    """Refuse an optimizer state whose tensors do not fit the parameters (torch would fail at the first step).

    Raises:
        ValueError: naming the first tensor that does not fit.
    """
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    entries = stored.get("state")
    if not isinstance(entries, dict) or not isinstance(stored.get("param_groups"), list):
        raise ValueError("an optimizer state without state and param_groups")
    for index, entry in entries.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise ValueError(f"optimizer state for parameter {index!r} of {len(params)}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() == params[index].dim() and (
                    value.shape != params[index].shape or not value.is_floating_point()):
                raise ValueError(f"optimizer {name} of parameter {index} is {tuple(value.shape)} "
                                 f"{value.dtype}, the parameter {tuple(params[index].shape)}")


def _restore_rngs(state: dict[str, Any], env: Dist, step: int, out: Path) -> None:
    """This rank's RNG states as the checkpoint stored them. Under another process count (more or fewer GPUs,
    as timm's scripts allow) the global batch and the schedule stay the run's, so the run goes on with a warning;
    a rank the checkpoint has no state for gets its own seed from (seed, rank, step), not rank 0's stream (every
    such rank would otherwise draw rank 0's dropout and mixup)."""
    stored = state["rng"]
    if len(stored) != env.world_size and env.is_main:
        log.warning("--resume: %s was written by %d process(es) and this run has %d: the global batch and the "
                    "schedule are the run's, but from step %d on the samples each process reads and their random "
                    "augmentations differ from an uninterrupted run", out, len(stored), env.world_size, step)
    if env.rank < len(stored):
        set_rng_state(stored[env.rank])
        return
    train = state.get("config", {}).get("train") if isinstance(state.get("config"), dict) else None
    seed = train.get("seed") if isinstance(train, dict) else None
    seed = seed if isinstance(seed, int) and seed >= 0 else 0
    seed_everything(int(np.random.SeedSequence([seed, env.rank, step]).generate_state(1)[0]))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"kwargs": {"depth": 4}}}`` -> ``{"model.kwargs.depth": 4}`` (an empty mapping adds nothing)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _same_path(a: Any, b: Any) -> bool:
    """``data.path`` of the run and of the command name the same place (``./ds`` and ``ds`` do)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and a and b) or "://" in a or "://" in b:
        return False
    return Path(a).resolve() == Path(b).resolve()


def stored_run(out: Path) -> dict[str, Any] | None:
    """The config, dataset record (or None) and, for a fine-tuning, the pre-training step it started from
    (``checkpoint_step``), as the checkpoint in ``out`` records them; None without one.

    Read from ``model.safetensors``'s metadata (``read_checkpoint_meta``: its header alone); ``load_checkpoint``
    checks later that ``state.pt`` is of the same step.
    """
    if not (out / MODEL_FILE).is_file():
        return None
    try:
        meta = read_checkpoint_meta(out)
        config = json.loads(meta["config"])
        data = json.loads(meta["dataset"]) if "dataset" in meta else None
    except (TrainError, ValueError, KeyError):
        return None  # not a checkpoint this trainer wrote whole: load_checkpoint names what is wrong
    stored = {"config": config, "dataset": data if isinstance(data, dict) else None}
    if "checkpoint_step" in meta:  # a fine-tuning's: the pre-training step it started from
        try:
            stored["checkpoint_step"] = json.loads(meta["checkpoint_step"])
        except ValueError:
            stored["checkpoint_step"] = None
    return stored


def differences(stored: dict[str, Any], cfg: Config, data: dict[str, Any] | None,
                compare_data: bool) -> list[tuple[str, Any, Any]]:
    """(key, the run's value, the command's value) for every key ``--resume`` may not change.

    A key the stored config lacks (written before the key existed) counts as its default.
    """
    defaults = flatten(Config().to_dict())
    theirs = {**defaults, **flatten(stored["config"])}
    ours = flatten(cfg.to_dict())
    recorded = stored.get("dataset")
    by_identity = recorded is not None and data is not None
    found = []
    for key in sorted(set(theirs) | set(ours)):
        if key in MAY_CHANGE or (key == DATA_PATH and (by_identity or not compare_data)):
            continue
        if key == DATA_PATH and _same_path(theirs.get(key), ours.get(key)):
            continue
        if theirs.get(key, "unset") != ours.get(key, "unset"):
            found.append((key, theirs.get(key, "unset"), ours.get(key, "unset")))
    if by_identity and compare_data:
        other = [(f"dataset.{key}", recorded.get(key, "unset"), data.get(key, "unset"))
                 for key in sorted(set(recorded) | set(data)) if recorded.get(key, "unset") != data.get(key, "unset")]
        path = (DATA_PATH, theirs.get(DATA_PATH), ours.get(DATA_PATH))
        found += ([path] if other and path[1] != path[2] else []) + other
    return found


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:16] + "…"


def check_resume(out: Path, cfg: Config, data: dict[str, Any] | None = None, compare_data: bool = True) -> None:
    """Refuse ``--resume`` of the checkpoint in ``out`` with a config (or dataset) other than the run's.

    An earlier trainer's ``state.pt``, or a state file that is not whole, is refused here too (its header alone is
    read; ``load_checkpoint`` reads and checks the rest).

    Args:
        out: the run folder (nothing is written to it).
        cfg: the command's resolved config.
        data: ``data_identity`` (pre-training) or ``downstream_identity`` (fine-tuning) of the command's
            dataset (None: ``data.path`` is compared).
        compare_data: False before the dataset is opened (an early check of the config alone).

    Raises:
        TrainError: ``--resume: RUN was run with KEY=OLD, this command gives NEW; ...``, or
            ``--resume: RUN/state.safetensors is damaged (...)``.
    """
    stored = stored_run(out)
    if stored is None:
        return
    _check_state_header(out)
    found = differences(stored, cfg, data, compare_data)
    if not found:
        return
    shown = "; ".join(f"{k}={_show(a)}, this command gives {_show(b)}" for k, a, b in found[:_SHOWN])
    more = f"; and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    if all(k.startswith("dataset.") for k, _, _ in found):  # the settings agree: the data itself changed
        raise TrainError(f"--resume: {out} was run with {shown}{more}. The data changed since the run stopped: "
                         "restore it as it was, or start a new run in another --out")
    raise TrainError(f"--resume: {out} was run with {shown}{more}. Resume with the run's own settings "
                     f"(--config {out / 'config.yaml'}) or use a new --out (what may change on resume: docs/training.md)")


def completed_run(out: Path, cfg: Config, compare_data: bool = True) -> dict[str, Any] | None:
    """On ``--resume``: the metrics of the complete run in ``out``, which has nothing left to do; else None.

    The folder is left byte for byte as it is (no lock, no ``config.yaml``, no checkpoint rewritten), so a
    requeue script that always passes ``--resume`` may run again after the job ended. The command's config
    must still be the run's (``check_resume``): another ``train.steps`` is another run, not this one.

    Args:
        out: the run folder.
        cfg: the command's resolved config.
        compare_data: compare ``data.path`` too (False for pre-training, whose dataset is compared by identity).

    Returns:
        ``metrics.json`` with ``"already_complete": True``, or None when ``out`` holds no complete run.

    Raises:
        TrainError: another config than the run's, or a run marked complete whose ``metrics.json`` is unreadable.
    """
    status = trainer_status(out) if out.is_dir() else None
    if status is None or status.get("status") != "complete":
        return None
    check_resume(out, cfg, compare_data=compare_data)
    raw = RunFolder(out).read(METRICS_FILE)
    try:
        metrics = json.loads(raw) if raw is not None else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        metrics = None
    if not isinstance(metrics, dict):
        raise TrainError(f"--resume: {out} is marked complete ({STATUS_FILE}) but its {METRICS_FILE} is missing or "
                         "unreadable: there is nothing to resume; start the run again in a new --out")
    return {**metrics, "already_complete": True}
