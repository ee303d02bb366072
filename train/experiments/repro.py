"""``fracgen-train repro-small`` (``make repro-small``): does 1p-frac pre-training beat scratch on CIFAR-10 within a
short GPU budget?

1. Make the fine-tuning data local first (``--cifar``, default torchvision's CIFAR-10, downloaded into
   ``--data-root`` once; or an ImageFolder root or a CIFAR-style tarball: ``train.data.fetch``), so a machine
   without it stops with one line and leaves nothing; then build the default 1p-frac dataset (sigma 3.5,
   Delta 0.1, L = 1000, 512 px) with ``fracgen.build`` unless ``--dataset`` names one.
2. Measure the pre-training and fine-tuning rates with short calibration runs (warm-up excluded), and turn
   every time budget into a step count, so the cosine schedules end where the budget ends.
3. Pre-train ViT-Tiny once per ``--budgets`` entry (seconds), plus once per ``--variant`` at the smallest
   budget (the recipe choices: resolution and patch size, LR and warm-up, rendering look, Delta).
4. Fine-tune each pre-trained model and one scratch model with an identical step budget; print and write
   the table (``repro.md``, ``repro.json``) with the full released schedule's time estimated from the rate.

``--cpu-check`` runs the same steps at toy scale (tiny build, a 4-block ViT at 64 px, budgets of seconds) to
check the script without a GPU; its figures mean nothing about transfer (``--cifar`` with a small local
ImageFolder or tarball makes it faster than the torchvision download).
"""

from __future__ import annotations

import logging
import math
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fracgen import dataset
from train.config import Config, load_config
from train.errors import TrainError
from train.run.folder import RunFolder, out_option

log = logging.getLogger(__name__)

RELEASED_STEPS = 240_000
RELEASED_BATCH = 256


def _build_dataset(out: Path, cpu_check: bool, overrides: dict[str, Any]) -> Path:
    from fracgen.build import BuildConfig, build
    from fracgen.output import stored_config

    name = "ds-" + "-".join(f"{k}{v}" for k, v in sorted(overrides.items())) if overrides else "ds"
    ds = out / name
    base = dict(L=16, size=64, points=5000, shard_size=8) if cpu_check else {}
    wanted = BuildConfig(**{**base, **overrides})
    stored = stored_config(ds)
    if stored == wanted and dataset.is_complete(ds):
        return ds
    if stored is not None and stored != wanted:  # an earlier --cpu-check's toy set, say: this folder's own build
        log.info("%s holds a build of other options: building it again", ds)
    t0 = time.perf_counter()
    build(wanted, ds, workers=None, resume=stored == wanted, overwrite=stored not in (None, wanted), progress=True)
    log.info("built %s in %.0f s", ds, time.perf_counter() - t0)
    return ds


def _rate(metrics: dict[str, Any]) -> float:
    return float(metrics.get("images_per_s") or 0.0)


def _steps(seconds: float, rate: float, batch: int) -> int:
    return max(2, int(seconds * rate / batch))


@click.command("repro-small")
@click.option("--out", default="runs/repro-small", show_default=True, callback=out_option)
@click.option("--dataset", default=None, help="A fracgen dataset folder (default: build the default 1p-frac).")
@click.option("--cifar", default="cifar10", show_default=True,
              help="Fine-tuning data: cifar10 / cifar100 (torchvision, downloaded into --data-root once), an "
                   "ImageFolder root (train/, test/) or a CIFAR-style tarball (a packed ImageFolder, or "
                   "cifar-10-python.tar.gz).")
@click.option("--data-root", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Where torchvision downloads and unpacked tarballs go.")
# The defaults fit one 10-minute GPU call: 80 s scratch + (60 + 80) + (150 + 80) s, plus calibration and data.
@click.option("--budgets", default="60,150", show_default=True, help="Pre-training budgets in seconds.")
@click.option("--finetune-seconds", type=click.FloatRange(min=1), default=80, show_default=True)
@click.option("--pretrain-img-size", type=click.IntRange(min=16), default=None, help="Default: the config's.")
@click.option("--variant", "variants", multiple=True, metavar="NAME:KEY=VAL[,KEY=VAL]",
              help="A recipe choice pre-trained at the smallest budget, e.g. 'lr1e-3:optim.lr=1e-3' or "
                   "'px112:model.img_size=112'; build.delta=0.05 / build.style=points rebuild the data.")
@click.option("--pretrain-set", multiple=True, metavar="KEY=VALUE", help="Override for every pre-training.")
@click.option("--finetune-set", multiple=True, metavar="KEY=VALUE", help="Override for every fine-tuning.")
@click.option("--cpu-check", is_flag=True, help="Toy scale on CPU, to check the script without a GPU.")
def repro_small(out: Path, dataset: str | None, cifar: str, data_root: Path, budgets: str, finetune_seconds: float,
                pretrain_img_size: int | None, variants: tuple[str, ...], pretrain_set: tuple[str, ...],
                finetune_set: tuple[str, ...], cpu_check: bool) -> None:
    """Pre-train on 1p-frac for a few budgets, fine-tune against scratch on CIFAR-10, print the gain.

    Without --cifar it fine-tunes on torchvision's CIFAR-10, downloaded into --data-root once; on a machine
    without internet pass --cifar with a local copy.
    """
    from train.data.fetch import resolve_downstream
    from train.experiments.folders import check_job_folder, claim_folder

    budget_list = _budgets(budgets)
    parsed_variants = _variants(variants, budget_list)
    plan = _Plan(out, data_root, cpu_check, list(pretrain_set), list(finetune_set), pretrain_img_size)
    plan.check(dataset, cifar, parsed_variants)
    check_job_folder(out, "repro-small")
    # the fine-tuning data first: without it (no internet, no copy) nothing is built or written
    plan.cifar_root = resolve_downstream(cifar, data_root, "--cifar")
    claim_folder(out, "repro-small")
    ds = Path(dataset) if dataset else _build_dataset(out, cpu_check, {})
    rates = plan.calibrate(ds, finetune_seconds)
    runs: list[dict[str, Any]] = []
    scratch = plan.finetune(rates["finetune_steps"], None, "finetune-scratch", runs)
    schedule = [(f"budget{int(b)}s", b, []) for b in budget_list]
    schedule += [(name, budget_list[0], sets) for name, sets in parsed_variants]
    for name, seconds, sets in schedule:
        runs.append(plan.pretrain_and_finetune(name, seconds, sets, ds, rates, scratch, runs))
    _write_report(out, {**rates, "device": _device_name(), "versions": _versions(), "cpu_check": cpu_check,
                        "dataset": str(ds), "cifar": str(cifar), "scratch_top1": scratch["top1"], "runs": runs,
                        "released_schedule_estimate_min": RELEASED_STEPS * RELEASED_BATCH / rates["pretrain_rate"]
                        / 60})


class _Plan:
    """The configs of every sub-run of one repro-small, and the sub-runs themselves.

    Args:
        out: the repro folder.
        data_root: where the fine-tuning data are kept.
        cpu_check: toy scale (the tiny configs).
        pretrain_set, finetune_set: the user's overrides of every pre-training / fine-tuning.
        pretrain_img_size: ``--pretrain-img-size`` (None: the config's).
    """

    def __init__(self, out: Path, data_root: Path, cpu_check: bool, pretrain_set: list[str],
                 finetune_set: list[str], pretrain_img_size: int | None) -> None:
        self.out, self.data_root, self.cpu_check = out, data_root, cpu_check
        self.pt_base, self.ft_base = ("tiny", "tiny-finetune") if cpu_check else ("pretrain", "finetune")
        self.pt_common = [*pretrain_set, "train.log_every=20", "train.ckpt_every=0"]
        if pretrain_img_size:
            self.pt_common.append(f"model.img_size={pretrain_img_size}")
        self.ft_common = ["train.epochs=0", "train.log_every=20", "train.ckpt_every=0", *finetune_set]
        if not cpu_check:
            # 224 px as in the paper; batch 256 suits a 100 s budget better than the released 768
            self.ft_common = ["train.batch_size=256", "optim.lr=0.005", *self.ft_common]
        self.cifar_root: str | None = None

    def pt_cfg(self, steps: int, extra: list[str], data: Path | str) -> Config:
        warm = max(1, min(steps // 10, 500))
        return load_config(self.pt_base, [*self.pt_common, f"train.steps={steps}", f"optim.warmup_steps={warm}",
                                          *extra], {"data.path": str(data)})

    def ft_cfg(self, steps: int, ckpt: Path | None, data: Path | str | None = None) -> Config:
        return load_config(self.ft_base, [*self.ft_common, f"train.steps={steps}",
                                          f"optim.warmup_steps={max(1, steps // 10)}",
                                          f"finetune.checkpoint={ckpt or 'null'}"],
                           {"data.path": str(data or self.cifar_root), "data.root": str(self.data_root)})

    def check(self, dataset: str | None, cifar: str, variants: list[tuple[str, list[str]]]) -> None:
        """Every config and build this run will use, before anything is downloaded, built or trained."""
        from train.data.shards import read_info
        from train.model import check_timm_names

        if dataset:
            read_info(dataset)  # a typo'd --dataset is one line before anything is written
        check_timm_names(self.ft_cfg(2, None, cifar))
        for name, sets in [("", []), *variants]:
            build_sets = _build_sets(sets)
            if build_sets:
                _check_build(self.cpu_check, build_sets, name)
            cfg = _named(name, lambda sets=sets: self.pt_cfg(2, [s for s in sets if not s.startswith("build.")],
                                                             dataset or "the dataset"))
            check_timm_names(cfg)

    def calibrate(self, ds: Path, finetune_seconds: float) -> dict[str, Any]:
        """Images/s of pre-training and fine-tuning (the last log window: after warm-up and compilation), and the
        fine-tuning step count every row gets."""
        calib_steps = 40 if not self.cpu_check else 20
        pt_cfg = self.pt_cfg(calib_steps, ["data.eval_path=''", "train.log_every=10"], ds)
        pt_rate = _rate(_done(_pretrain(pt_cfg, self.out / "calib-pretrain"), self.out, "calib-pretrain", []))
        ft_rate = _rate(self.finetune(calib_steps, None, "calib-finetune", []))
        if pt_rate <= 0 or ft_rate <= 0:
            raise TrainError("calibration measured no throughput")
        ft_batch = self.ft_cfg(2, None).train.batch_size
        ft_steps = _steps(finetune_seconds, ft_rate, ft_batch)
        log.info("rates: pre-training %.0f images/s, fine-tuning %.0f images/s; fine-tuning %d steps", pt_rate,
                 ft_rate, ft_steps)
        return {"pretrain_rate": pt_rate, "finetune_rate": ft_rate, "finetune_steps": ft_steps,
                "finetune_batch": ft_batch, "pretrain_batch": self.pt_cfg(2, [], ds).train.batch_size}

    def finetune(self, steps: int, ckpt: Path | None, run: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
        from train.finetune import finetune

        return _done(finetune(self.ft_cfg(steps, ckpt), _fresh(self.out / run)), self.out, run, runs)

    def pretrain_and_finetune(self, name: str, seconds: float, sets: list[str], ds: Path, rates: dict[str, Any],
                              scratch: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
        """One row: pre-train for ``seconds`` (as steps at the measured rate), fine-tune, compare with scratch."""
        build_sets = _build_sets(sets)
        data = _build_dataset(self.out, self.cpu_check, build_sets) if build_sets else ds
        steps = _steps(seconds, rates["pretrain_rate"], rates["pretrain_batch"])
        t0 = time.perf_counter()
        cfg = self.pt_cfg(steps, [s for s in sets if not s.startswith("build.")], data)
        pm = _done(_pretrain(cfg, self.out / f"pretrain-{name}"), self.out, f"pretrain-{name}", runs)
        pt_wall = time.perf_counter() - t0
        fm = self.finetune(rates["finetune_steps"], self.out / f"pretrain-{name}" / "model.safetensors",
                           f"finetune-{name}", runs)
        return {"name": name, "pretrain_budget_s": seconds, "pretrain_steps": steps, "pretrain_wall_s": pt_wall,
                "pretrain_images_per_s": pm["images_per_s"], "pretrain_top1": pm["eval_top1"],
                "num_classes": pm["num_classes"], "finetune_top1": fm["top1"], "gain": fm["top1"] - scratch["top1"],
                "sets": sets}


def _pretrain(cfg: Config, run: Path) -> dict[str, Any]:
    from train.pretrain import pretrain

    return pretrain(cfg, _fresh(run))


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def _write_report(out: Path, report: dict[str, Any]) -> None:
    """``repro.json`` and ``repro.md``; the table printed."""
    report.pop("pretrain_batch", None)
    folder = RunFolder(out, "rerun")
    folder.write_json("repro.json", report)
    table = _table(report)
    folder.write("repro.md", (table + "\n").encode())
    click.echo(table)


def _budgets(text: str) -> list[float]:
    """``--budgets``: seconds > 0, separated by commas, in increasing order."""
    try:
        found = sorted(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise TrainError(f"--budgets {text!r}: expected seconds separated by commas") from None
    if not found:
        raise TrainError("--budgets: give at least one budget")
    bad = [b for b in found if not (math.isfinite(b) and b > 0)]
    if bad:
        raise TrainError(f"--budgets {text!r}: every budget must be a finite number of seconds > 0 (got {bad[0]:g})")
    if len({int(b) for b in found}) < len(found):  # each names its folders by whole seconds
        raise TrainError(f"--budgets {text!r}: two budgets of the same whole seconds")
    return found


def _variants(variants: tuple[str, ...], budgets: list[float]) -> list[tuple[str, list[str]]]:
    """``--variant NAME:KEY=VAL[,KEY=VAL]`` as (name, ["KEY=VAL", ...]); names unique and usable as folders."""
    parsed: list[tuple[str, list[str]]] = []
    taken = {f"budget{int(b)}s" for b in budgets}
    for v in variants:
        name, _, sets = v.partition(":")
        items = [s.strip() for s in sets.split(",") if s.strip()]
        if not name or not items or any("=" not in s for s in items):
            raise TrainError(f"--variant {v!r}: expected NAME:KEY=VAL[,KEY=VAL]")
        if name in taken or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise TrainError(f"--variant {v!r}: the name must be unique (not a budget's, {', '.join(sorted(taken))}) "
                             "and made of letters, digits, '.', '_', '-' (it names the run folders)")
        taken.add(name)
        parsed.append((name, items))
    return parsed


def _build_sets(sets: list[str]) -> dict[str, Any]:
    """The ``build.KEY=VAL`` items of a variant as BuildConfig fields (values parsed as YAML)."""
    return {s.split("=", 1)[0][len("build."):]: _yaml(s.split("=", 1)[1]) for s in sets if s.startswith("build.")}


def _check_build(cpu_check: bool, overrides: dict[str, Any], name: str) -> None:
    """Refuse a variant whose ``build.*`` options fracgen would refuse, before anything is built."""
    from fracgen.build import BuildConfig
    from fracgen.errors import FracgenError

    base = dict(L=16, size=64, points=5000, shard_size=8) if cpu_check else {}
    try:
        BuildConfig.checked({**base, **overrides}, prefix="build.")
    except FracgenError as e:
        raise TrainError(f"--variant {name}: {e}") from None


def _named(name: str, make: Callable[[], Any]) -> Any:
    """``make()``, its TrainError prefixed with the variant it came from."""
    try:
        return make()
    except TrainError as e:
        raise TrainError(f"--variant {name}: {e}" if name else str(e)) from None


def _done(metrics: dict[str, Any], out: Path, run: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A sub-run's metrics; a sub-run that stopped ends repro-small, keeping the finished rows (``end_if_stopped``)."""
    from train.experiments.sweep import end_if_stopped

    if metrics.get("stopped") and runs:
        RunFolder(out, "rerun").write_json("repro-partial.json", {"stopped": metrics.get("reason", ""), "at": run,
                                                                  "runs": runs})
    kept = f"; the {len(runs)} finished row(s) are in {out / 'repro-partial.json'}" if runs else ""
    return end_if_stopped(metrics, "repro-small", out / run, kept)


def _fresh(path: Path) -> Path:
    """A run folder for this repro run: an old one from a previous repro is replaced, anything else refused."""
    from train.experiments.folders import clear_run_folder

    return clear_run_folder(path)


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _versions() -> dict[str, str]:
    import timm
    import torch

    return {"torch": torch.__version__, "timm": timm.__version__, "cuda": str(torch.version.cuda)}


def _pct(value: float | None, spec: str) -> str:
    return "n/a" if value is None else f"{value:{spec}}%"


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"repro-small on {r['device']} ({', '.join(f'{k} {v}' for k, v in r['versions'].items())})"
        + (" -- CPU CHECK AT TOY SCALE, NOT A RESULT" if r["cpu_check"] else ""),
        f"fine-tuning data: {r['cifar']}" + (" (a JPEG q75 copy: figures sit slightly below published ones)"
                                             if "jpeg" in str(r["cifar"]).lower() else ""),
        f"pre-training {r['pretrain_rate']:.0f} images/s; the released schedule (240k steps of 256) would take "
        f"about {r['released_schedule_estimate_min']:.0f} min at this rate",
        f"fine-tuning: {r['finetune_steps']} steps of {r['finetune_batch']} for every row; scratch top-1 "
        f"{r['scratch_top1']:.2f}%",
        "",
        "| run | pre-train s | steps | top-1 on its classes | fine-tuned top-1 | gain over scratch |",
        "|---|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        lines.append(f"| {run['name']} {' '.join(run['sets'])} | {run['pretrain_wall_s']:.0f} | {run['pretrain_steps']} | "
                     f"{_pct(run['pretrain_top1'], '.1f')} of {run['num_classes']} | {run['finetune_top1']:.2f}% | "
                     f"{run['gain']:+.2f} |")
    return "\n".join(lines)
