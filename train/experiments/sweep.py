"""``fracgen-train sweep CONFIG`` (``make sweep``): a grid of build + pre-train + fine-tune, one results table and a
plot.

A sweep YAML names the dataset options to vary (any ``fracgen.build.BuildConfig`` field: ``delta``, ``L``,
``sigma``, ``style``, ``perturbation``, ``preset``, ...), the options every point shares, and the pre-training
and fine-tuning budgets in steps (the same for every point, so the points compare like with like):

    name: delta
    grid: {delta: [0.001, 0.01, 0.05, 0.1, 0.2, 1.0]}   # several keys: their cartesian product
    build: {L: 1000}
    pretrain: {config: pretrain, steps: 5000, set: ["train.batch_size=256"]}
    finetune: {config: finetune, data: cifar10, steps: 2000, set: []}  # data: the default
    scratch: true                                    # fine-tune from scratch once: the baseline
    paper: {title: "CIFAR-100, paper Table 5", values: {0.001: 1.2, 0.1: 84.2}}

``finetune.data`` (or ``--data``, which overrides it) is anything ``train.data.fetch.resolve_downstream`` takes:
``cifar10`` / ``cifar100`` (torchvision, downloaded into ``--data-root`` once; the default), an ImageFolder root
or a CIFAR-style tarball (an ImageFolder packed as ``.tar.gz``, or ``cifar-10-python.tar.gz``). It is made local before anything is
built, so a machine without it stops with one line and leaves nothing.

``load_sweep`` checks the whole sweep before anything is built: every grid point is a ``BuildConfig`` fracgen
accepts (``validate()``) with a folder name of its own, and both stages' configs resolve with their ``set``
lists. Every point's dataset, pre-training and fine-tuning go in their own folders under ``--out``; a rerun reuses the
complete ones (a dataset with ``build.json``, a run with ``metrics.json``), so an interrupted sweep continues.
Results: ``results.csv``, ``results.md`` and ``results.png`` (fine-tuning top-1 against the varied option,
the scratch baseline and the paper's figures on their own axis, since the paper's dataset may differ).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from fracgen import dataset
from fracgen.errors import FracgenError
from fracgen.folder import single_name
from train.config import CONFIG_DIR, read_yaml_mapping
from train.errors import TrainError
from train.run.folder import METRICS_FILE, RunFolder, out_option

log = logging.getLogger(__name__)



def load_sweep(name_or_path: str | Path) -> dict[str, Any]:
    """Read and check a sweep YAML (a path, or a name in ``train/configs/`` such as ``sweep-delta``).

    Raises:
        TrainError: missing file, bad YAML, an empty grid, or an option BuildConfig does not have.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise TrainError(f"sweep config {name_or_path} not found")
    spec = read_yaml_mapping(path, "sweep config", "name:, grid:, build:, pretrain:, finetune:")
    for section in ("build", "pretrain", "finetune", "paper"):
        if spec.get(section) is not None and not isinstance(spec[section], dict):
            raise TrainError(f"sweep config {path}: {section} must be a mapping, got {type(spec[section]).__name__}")
    grid = spec.get("grid")
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise TrainError(f"sweep config {path}: 'grid' must map at least one build option to a non-empty list")
    for stage in ("pretrain", "finetune"):
        steps = (spec.get(stage) or {}).get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise TrainError(f"sweep config {path}: {stage}.steps must be a positive integer (the budget)")
    data = (spec.get("finetune") or {}).get("data", "cifar10")
    if not isinstance(data, str) or not data:
        raise TrainError(f"sweep config {path}: finetune.data must name the real dataset (cifar10, cifar100, an "
                         "ImageFolder root or a tarball)")
    spec["finetune"]["data"] = data
    values = (spec.get("paper") or {}).get("values")
    if values is not None and not isinstance(values, dict):
        raise TrainError(f"sweep config {path}: paper.values must map a grid value to the paper's figure, got "
                         f"{type(values).__name__}")
    _check_points(spec, path)
    _check_stages(spec, path)
    spec.setdefault("name", path.stem)
    try:  # it names the default --out (runs/sweep-NAME): one folder inside runs/, never a path elsewhere
        single_name(spec["name"], f"sweep config {path}: name")
    except FracgenError as e:
        raise TrainError(str(e)) from None
    spec["_path"] = str(path)
    return spec


def _check_points(spec: dict[str, Any], path: Path) -> None:
    """Every grid point must be a build fracgen accepts, with a folder name of its own: checked before any is built.

    Raises:
        TrainError: ``sweep config PATH: point delta-5: --delta must be ...``.
    """
    from fracgen.build import BuildConfig
    from fracgen.errors import FracgenError

    seen: dict[str, dict[str, Any]] = {}
    for point in points(spec):
        name = _label(point)
        try:
            single_name(name, f"sweep config {path}: grid point {point}: its folder name")
        except FracgenError as e:
            raise TrainError(str(e)) from None
        if name in seen:
            raise TrainError(f"sweep config {path}: grid points {seen[name]} and {point} share the folder name {name}")
        seen[name] = point
        try:
            BuildConfig.checked({**(spec.get("build") or {}), **point})
        except FracgenError as e:
            raise TrainError(f"sweep config {path}: point {name}: {e}") from None


def _check_stages(spec: dict[str, Any], path: Path) -> None:
    """The pre-training and fine-tuning configs with their ``set`` lists, resolved as the sweep will resolve them.

    Raises:
        TrainError: ``sweep config PATH: pretrain: <what load_config refuses>`` (a typo in a key, a bad value).
    """
    from train.config import load_config
    from train.model import check_timm_names

    for stage, default in (("pretrain", "pretrain"), ("finetune", "finetune")):
        section = spec[stage]
        sets = section.get("set") or []
        name = section.get("config", default)
        if not isinstance(sets, list) or not all(isinstance(x, str) for x in sets):
            raise TrainError(f"sweep config {path}: {stage}.set must be a list of KEY=VALUE strings")
        section["set"] = sets  # `set: null` means none, as the check read it
        if not isinstance(name, str) or not name:
            raise TrainError(f"sweep config {path}: {stage}.config must name a config (e.g. {default}) or a YAML path")
        extra = ["train.epochs=0"] if stage == "finetune" else []
        try:
            cfg = load_config(name, [*sets, *extra, f"train.steps={section['steps']}"],
                              {"data.path": "the sweep's data"})
            check_timm_names(cfg)
        except TrainError as e:
            raise TrainError(f"sweep config {path}: {stage}: {e}") from None


def points(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid's points in order: the cartesian product of its lists, the first key varying slowest."""
    keys = list(spec["grid"])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(spec["grid"][k] for k in keys))]


def _label(point: dict[str, Any]) -> str:
    return "-".join(f"{k}{v}" for k, v in point.items()).replace("/", "_")


def _done(run: Path) -> dict[str, Any] | None:
    """The metrics of a complete stage in ``run``, or None (it runs again: ``_fresh`` replaces what is there)."""
    raw = RunFolder(run).read(METRICS_FILE)
    try:
        metrics = json.loads(raw) if raw is not None else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return metrics if isinstance(metrics, dict) else None


IDENTITY = "sweep.json"  # in the sweep folder: the settings its runs were made with


def _claim_settings(spec: dict[str, Any], ft_data: str, out: Path) -> None:
    """Record what the sweep's runs and datasets are made of, or refuse a folder holding those of other settings.

    The complete parts of an earlier run are reused by their folder names alone, so a rerun with another YAML,
    budget or fine-tuning data into the same folder would otherwise mix two sweeps in one table.

    Raises:
        TrainError: ``out`` holds a sweep of other settings (or an unreadable record of them).
    """
    settings = {k: spec.get(k) for k in ("grid", "build", "pretrain", "finetune")}
    settings["scratch"] = spec.get("scratch", True)
    settings["finetune"] = {**settings["finetune"], "data": ft_data}
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    folder = RunFolder(out, "rerun")
    raw = folder.read(IDENTITY)
    if raw is not None:
        try:
            stored = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            stored = None
        if stored != settings:
            differ = sorted(k for k in settings if not isinstance(stored, dict) or stored.get(k) != settings[k])
            raise TrainError(f"--out {out} holds a sweep of other settings ({', '.join(differ)} differ); its runs "
                             "would be reused as if they were this sweep's: use another --out")
        return
    folder.write(IDENTITY, (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode())


def end_if_stopped(metrics: dict[str, Any], job: str, where: Path, kept: str = "") -> dict[str, Any]:
    """A stage's metrics; a stage stopped part-way ends the whole job (a sweep, repro-small), so nothing builds on
    a half-trained checkpoint.

    Args:
        metrics: what ``pretrain`` / ``finetune`` returned.
        job: the job's name for the messages.
        where: the stage's run folder.
        kept: said after the stop (where the finished rows went).

    Raises:
        SystemExit: 128 + the signal's number when SIGTERM / SIGINT stopped it (the trainer's convention).
        TrainError: it stopped for another reason (``train.stop_at`` in a stage's settings).
    """
    if not metrics.get("stopped"):
        return metrics
    reason = str(metrics.get("reason", ""))
    if not reason.startswith("SIG"):
        raise TrainError(f"{job}: {where} stopped at step {metrics.get('steps')} ({reason}): a {job} run must run "
                         "to its end (drop train.stop_at)")
    click.echo(f"{job} stopped by {reason} during {where} (step {metrics.get('steps')}){kept}; run the same command "
               "again to redo the rest (complete parts are kept)", err=True)
    sys.exit(128 + signal.Signals[reason].value)


def _fresh(run: Path) -> Path:
    """An incomplete run of an earlier sweep starts again; a folder the trainer did not write is refused."""
    from train.experiments.folders import clear_run_folder

    return clear_run_folder(run)


def run_sweep(spec: dict[str, Any], out: Path, data_root: str | Path = "data",
              option: str = "finetune.data") -> list[dict[str, Any]]:
    """Run every point of a sweep (skipping complete parts) and write the results.

    Args:
        spec: a checked sweep (``load_sweep``).
        out: the sweep's folder. Relative paths in the spec are taken from the current folder.
        data_root: where torchvision downloads and unpacked tarballs go.
        option: how the user sets the fine-tuning data, named in errors.

    Returns:
        One row per point (and one for the scratch baseline).
    """
    from fracgen.build import BuildConfig, build
    from train.config import load_config
    from train.data.fetch import resolve_downstream
    from train.experiments.folders import check_job_folder, claim_folder
    from train.finetune import finetune
    from train.pretrain import pretrain

    check_job_folder(out, "sweep")
    # the fine-tuning data first: without it nothing is built and no folder is made
    ft_data = resolve_downstream(str(spec["finetune"]["data"]), data_root, option)
    claim_folder(out, "sweep")
    _claim_settings(spec, str(ft_data), out)
    pt, ft = spec["pretrain"], spec["finetune"]

    def ft_run(name: str, ckpt: Path | None, redo: bool = False) -> dict[str, Any]:
        run = out / "runs" / name / "finetune"
        if redo or (m := _done(run)) is None:  # redo: its checkpoint was trained again
            cfg = load_config(ft.get("config", "finetune"),
                              [*ft.get("set", []), "train.epochs=0", f"train.steps={ft['steps']}",
                               f"finetune.checkpoint={ckpt or 'null'}"],
                              {"data.path": ft_data, "data.root": str(data_root)})
            m = end_if_stopped(finetune(cfg, _fresh(run)), "sweep", run)
        return m

    rows = []
    if spec.get("scratch", True):
        m = ft_run("scratch", None)
        rows.append({"point": "scratch", **{k: "" for k in spec["grid"]}, "pretrain_top1": "", "chance": "",
                     "pretrain_loss": "", "finetune_top1": m["top1"]})
    for point in points(spec):
        name = _label(point)
        ds = out / "datasets" / name
        if not dataset.is_complete(ds):
            config = BuildConfig(**{**(spec.get("build") or {}), **point})
            build(config, ds, resume=ds.exists(), progress=True)
        run = out / "runs" / name / "pretrain"
        trained = (pm := _done(run)) is None
        if trained:
            cfg = load_config(pt.get("config", "pretrain"), [*pt.get("set", []), f"train.steps={pt['steps']}"],
                              {"data.path": str(ds)})
            pm = end_if_stopped(pretrain(cfg, _fresh(run)), "sweep", run)
        fm = ft_run(name, run / "model.safetensors", redo=trained)
        rows.append({"point": name, **point, "pretrain_top1": pm["eval_top1"], "chance": round(pm["chance"], 3),
                     "pretrain_loss": "" if pm["final_loss"] is None else round(pm["final_loss"], 4), "finetune_top1": fm["top1"]})
    write_results(spec, rows, out)
    return rows


def write_results(spec: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """``results.csv``, ``results.md`` and ``results.png`` (the plot beside the paper's figures)."""
    paper = spec.get("paper") or {}
    reference = {str(k): v for k, v in (paper.get("values") or {}).items()}
    keys = list(spec["grid"])
    scratch = next((r["finetune_top1"] for r in rows if r["point"] == "scratch"), None)
    for r in rows:
        r["gain_over_scratch"] = "" if scratch is None or r["point"] == "scratch" else round(
            r["finetune_top1"] - scratch, 2)
        r["paper"] = reference.get(str(r[keys[0]]), "") if len(keys) == 1 and r["point"] != "scratch" else ""
    columns = ["point", *keys, "pretrain_loss", "pretrain_top1", "chance", "finetune_top1", "gain_over_scratch",
               "paper"]
    folder = RunFolder(out, "rerun")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    folder.write("results.csv", text.getvalue().encode())
    head = (f"Sweep `{spec['name']}` ({spec['_path']}): pre-training {spec['pretrain']['steps']} steps, "
            f"fine-tuning {spec['finetune']['steps']} steps on {spec['finetune']['data']}"
            + (f"; paper column: {paper.get('title', 'the paper')}" if reference else ""))
    lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    folder.write("results.md", ("\n".join(lines) + "\n").encode())
    folder.write("results.png", _plot(spec, rows, keys, reference, scratch))


def _plot(spec, rows, keys, reference, scratch) -> bytes:
    """``results.png``: fine-tuning top-1 against the varied option, scratch, and the paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["point"] != "scratch"]
    numeric = len(keys) == 1 and all(isinstance(r[keys[0]], int | float) for r in pts)
    xs = [r[keys[0]] for r in pts] if numeric else list(range(len(pts)))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, [r["finetune_top1"] for r in pts], "o-", label="fine-tuned from each point (this run)")
    if scratch is not None:
        ax.axhline(scratch, color="grey", ls=":", label="from scratch (this run)")
    ax.set_ylabel("fine-tuning top-1 (%)")
    if numeric:
        ax.set_xlabel(keys[0])
        if keys[0] == "delta" or (min(xs) > 0 and max(xs) / min(xs) > 50):
            ax.set_xscale("log")
    else:
        ax.set_xticks(xs, [r["point"] for r in pts], rotation=30, ha="right")
    if reference and numeric:
        twin = ax.twinx()
        ref = [(x, reference[str(x)]) for x in xs if str(x) in reference]
        twin.plot([x for x, _ in ref], [v for _, v in ref], "s--", color="tab:red",
                  label=(spec.get("paper") or {}).get("title", "paper"))
        twin.set_ylabel("paper top-1 (%)", color="tab:red")
        twin.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"sweep {spec['name']}")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()


@click.command("sweep")
@click.argument("config")
@click.option("--out", default=None, callback=out_option, help="Sweep folder [default: runs/sweep-NAME].")
@click.option("--data", default=None,
              help="Fine-tuning data, overriding the YAML's finetune.data: cifar10 / cifar100 (downloaded into "
                   "--data-root once), an ImageFolder root or a CIFAR-style tarball.")
@click.option("--data-root", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Where torchvision downloads and unpacked tarballs go.")
def sweep(config: str, out: Path | None, data: str | None, data_root: Path) -> None:
    """Run the grid of build + pre-train + fine-tune in CONFIG (a YAML path or a name in train/configs/).

    Fine-tunes on the YAML's finetune.data (default cifar10, downloaded once); on a machine without internet
    pass --data with a local copy.
    """
    spec = load_sweep(config)
    if data:
        spec["finetune"]["data"] = data
    out = out or Path("runs") / f"sweep-{spec['name']}"
    rows = run_sweep(spec, out, data_root, "--data" if data else f"--data (or finetune.data in {spec['_path']})")
    click.echo((out / "results.md").read_text())
    click.echo(f"{len(rows)} rows: {out / 'results.csv'}, {out / 'results.png'}")
