"""Run configuration: YAML defaults in ``train/configs/``, flag overrides, the resolved config saved with the run.

A config is a tree of dataclasses so that a typo in a YAML file or an override is an error, not a silently
ignored key. ``load_config("pretrain", ["train.steps=300", "aug.mixup=0"])`` reads
``train/configs/pretrain.yaml`` (or a path), applies the overrides (values parsed as YAML) and validates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.bounds import check_static
from train.errors import TrainError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    """The timm model.

    Attributes:
        name: a timm model name (``timm.list_models()``).
        drop_path: stochastic depth rate.
        img_size: training resolution in pixels (square).
        kwargs: extra ``timm.create_model`` keyword arguments, e.g. ``{patch_size: 8, depth: 4}``.
    """

    name: str = "vit_tiny_patch16_224"
    drop_path: float = 0.1
    img_size: int = 224
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the data are and how they are read.

    Attributes:
        path: pre-training: a fracgen dataset (folder with ``_info.json``, a brace pattern or URL of shards) or
            a recipe (``fracgen build --recipe-only``: rendered while training, ``train/data/recipe.py``);
            fine-tuning: a torchvision name (``cifar10``, ``cifar100``: downloaded into ``root`` once), an
            ImageFolder root (``train/`` and ``test/`` or ``val/``), a CIFAR-style tarball (unpacked into
            ``root`` once) or a WebDataset folder (``train/data/downstream.py``).
        source: ``auto`` (resident when ``train.data.resident`` exists and the data fit, else stream),
            ``stream`` or ``resident``.
        workers: DataLoader worker processes per rank (0: load in the main process).
        shuffle_buffer: samples in the WebDataset shuffle buffer.
        root: where torchvision datasets are downloaded and fine-tuning tarballs unpacked (``data/``).
        eval_path: pre-training accuracy is measured on this dataset (default: ``path`` itself, whose
            classes are the perturbations); empty to skip.
        eval_samples: at most this many samples for pre-training accuracy.
        resident: options of the GPU-resident source (``train/data/resident.py``), free-form.
        verify: check each shard's sha256 against ``build.json`` while it is read before the first step:
            ``auto`` (when the dataset is a local build of at most 4 GiB), ``true`` or ``false``
            (``train/data/shards.py``; sizes, sample counts and labels are always checked).
        fresh_masks: a recipe's patch masks drawn afresh each time a sample is shown (1p-frac, FractalDB, OFDB;
            the stream source only: ``train/data/recipe.py``).
    """

    path: str = ""
    source: str = "auto"
    workers: int = 8
    shuffle_buffer: int = 1000
    root: str = "data"
    eval_path: str | None = None
    eval_samples: int = 1000
    resident: dict[str, Any] = field(default_factory=dict)
    verify: str | bool = "auto"
    fresh_masks: bool = False


@dataclass
class AugConfig:
    """The augmentation recipe; each piece switches off on its own (0, null or false).

    Defaults are the released 1p-frac recipe (OFDB code).
    """

    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 4 / 3)
    interpolation: str = "bicubic"
    hflip: float = 0.5
    vflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.5
    re_mode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    eval_crop_pct: float = 1.0


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (in optimizer steps)."""

    opt: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    lr_min: float = 5e-6
    warmup_steps: int = 20
    warmup_lr: float = 1e-6
    clip_grad: float | None = None


@dataclass
class TrainConfig:
    """The step loop.

    Attributes:
        steps: optimizer steps in total (pre-training); fine-tuning uses ``epochs`` when it is > 0.
        epochs: fine-tuning epochs (an epoch = one pass over the train split); 0: use ``steps``.
        batch_size: global batch (all ranks, all accumulation micro-steps).
        accum_steps: gradient accumulation micro-steps per optimizer step.
        amp: ``bf16``, ``fp16`` or ``none``; only used on CUDA.
        compile: ``torch.compile`` the model (CUDA).
        device: ``auto``, ``cpu``, ``cuda``.
        seed: every random draw of the run derives from it.
        log_every: a CSV row every N optimizer steps.
        ckpt_every: a checkpoint every N optimizer steps (0: only at the end).
        eval_every: pre-training accuracy every N steps (0: only at the end).
        threads: torch CPU threads (0: torch's default).
        stop_at: stop after this step with a checkpoint, as if interrupted (time-boxed jobs; 0: never);
            the schedule still spans ``steps``, and ``--resume`` continues.
    """

    steps: int = 240_000
    epochs: int = 0
    batch_size: int = 256
    accum_steps: int = 1
    amp: str = "bf16"
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 5000
    eval_every: int = 0
    threads: int = 0
    stop_at: int = 0


@dataclass
class FinetuneConfig:
    """Fine-tuning / linear probing.

    Attributes:
        checkpoint: a fracgen pre-training checkpoint (``model.safetensors``); empty: from scratch.
        probe_blocks: freeze the patch embedding and the first k transformer blocks of the checkpoint and
            train the rest (0: full fine-tuning; k = depth: linear probe of the head alone).
        eval_batch_size: batch for the test split.
    """

    checkpoint: str | None = None
    probe_blocks: int = 0
    eval_batch_size: int = 256


@dataclass
class LogConfig:
    """What the run logs besides ``log.csv``.

    Attributes:
        tensorboard: also write the log rows as TensorBoard scalars to ``RUN/tensorboard/`` (needs the
            ``tensorboard`` package).
    """

    tensorboard: bool = False


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), ready for YAML/JSON."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(values, dict):
        raise TrainError(f"config {where or 'root'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if not isinstance(key, str):  # YAML reads ``1: 2`` as an int key
            raise TrainError(f"config {where.rstrip('.') or 'root'}: key {key!r} is not a name "
                             f"(known: {', '.join(fields)})")
        if key not in fields:
            raise TrainError(f"config: unknown key {where + key!r} (known: {', '.join(fields)})")
        sub = fields[key].type
        nested = {"ModelConfig": ModelConfig, "DataConfig": DataConfig, "AugConfig": AugConfig,
                  "OptimConfig": OptimConfig, "TrainConfig": TrainConfig, "FinetuneConfig": FinetuneConfig, "LogConfig": LogConfig}
        if isinstance(sub, str) and sub in nested:
            kwargs[key] = _build(nested[sub], value or {}, f"{where}{key}.")
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = _coerce(str(sub), value, where + key)
    return cls(**kwargs)


def _coerce(kind: str, value: Any, key: str) -> Any:
    """Numbers YAML read as strings (``1e-3``: YAML 1.1 wants ``1.0e-3``) become numbers; wrong types are errors."""
    if value is None:
        return value
    base = kind.split("|")[0].strip()
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool):
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if base == "bool" and not isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise TrainError(f"{key}: must be {kind} (got {value!r})") from None
    return value


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` of ``text``, refusing aliases (``*name``): a few lines of them expand into gigabytes once
    the config is copied or written (a "billion laughs"), and no config of this trainer needs one.

    Raises:
        TrainError: ``<where>: YAML aliases are not accepted ...``, or ``yaml.YAMLError`` for text that is not YAML.
    """
    try:
        if "*" in text and any(isinstance(token, yaml.AliasToken) for token in yaml.scan(text)):
            raise TrainError(f"{where}: YAML aliases (*name) are not accepted in a config; write the values out")
        return yaml.safe_load(text)
    except RecursionError:  # PyYAML composes nested collections recursively
        raise TrainError(f"{where}: nested too deeply to be a config") from None


def read_yaml_mapping(path: Path, what: str, sections: str) -> dict[str, Any]:
    """The mapping a YAML config file holds (empty for an empty file), read by ``safe_yaml``.

    Raises:
        TrainError: ``{what} {path}: ...`` on one line: not UTF-8, not YAML, or not a mapping (of ``sections``).
    """
    try:
        tree = safe_yaml(path.read_text(encoding="utf-8"), f"{what} {path}") or {}
    except UnicodeDecodeError:
        raise TrainError(f"{what} {path}: not UTF-8 text (a YAML file is)") from None
    except yaml.YAMLError as e:
        raise TrainError(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise TrainError(f"{what} {path}: its top level must be a mapping of {sections}, got {type(tree).__name__}")
    return tree


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TrainError(f"override {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(name_or_path: str | Path = "pretrain", overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Config:
    """Read a YAML config, apply overrides and validate.

    Args:
        name_or_path: a file in ``train/configs/`` without ``.yaml`` (``pretrain``, ``finetune``,
            ``tiny``, ...) or a path to a YAML file.
        overrides: ``section.key=value`` strings; values are parsed as YAML (``aug.auto_augment=null``).
        values: dotted keys to values, applied after ``overrides`` (what the CLI flags set).

    Returns:
        The validated config.

    Raises:
        TrainError: unknown file, unknown key, or an invalid value.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise TrainError(f"config {str(name_or_path)!r} not found (built-in: {known}, or a YAML path)")
    tree = read_yaml_mapping(path, "config", "sections (model:, data:, ...)")
    for item in overrides or []:
        if "=" not in item:
            raise TrainError(f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_yaml(raw, f"override {item!r}") if raw.strip() else None
        except yaml.YAMLError as e:
            raise TrainError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        _set(tree, key.strip(), value)
    for key, value in (values or {}).items():
        if value is not None:
            _set(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check types and ranges that do not depend on the machine (``train.bounds.BOUNDS``), before anything is read or
    written; what the machine allows is checked when a job starts (``train.bounds.check_cpus``, ``check_memory``).

    Raises:
        TrainError: ``<key>: must be <what is allowed> (got <value>)``.
    """
    check_static(cfg)
