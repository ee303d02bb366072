"""The trainer's commands (``fracgen-train``, or ``python -m train``): parse, validate, call the functions.

``train/__main__.py`` runs them: it checks the trainer's extra is installed first and prints every ``TrainError``
as one ``error:`` line, exit status 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from train.config import load_config
from train.errors import TrainError
from train.experiments.repro import repro_small
from train.experiments.sweep import sweep
from train.make_words import MakeWords, flag_options, mapping
from train.run.folder import out_option


def _common(f):
    options = [
        click.option("--config", "config", default=None, help="YAML in train/configs/ (by name) or a path."),
        click.option("--data", default=None,
                     help="pretrain: a fracgen build folder, a recipe folder (rendered while training), a brace "
                          "pattern or URL; finetune: cifar10, cifar100, an ImageFolder root (train/ and test/), or "
                          "a tarball of one."),
        click.option("--out", required=True, callback=out_option, help="Run folder."),
        click.option("--model", default=None, help="timm model name."),
        click.option("--img-size", type=click.IntRange(min=8), default=None, help="Training resolution (px)."),
        click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Global batch size."),
        click.option("--accum-steps", type=click.IntRange(min=1), default=None, help="Gradient accumulation."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate."),
        click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader workers per rank."),
        click.option("--device", default=None, help="auto, cpu or cuda."),
        click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of the run."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Any config key, e.g. --set aug.mixup=0 --set model.kwargs.patch_size=8."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _values(**flags) -> dict:
    keys = {"data": "data.path", "model": "model.name", "img_size": "model.img_size", "steps": "train.steps",
            "batch_size": "train.batch_size", "accum_steps": "train.accum_steps", "lr": "optim.lr",
            "workers": "data.workers", "device": "train.device", "seed": "train.seed",
            "source": "data.source", "checkpoint": "finetune.checkpoint", "epochs": "train.epochs",
            "probe_blocks": "finetune.probe_blocks", "verify_data": "data.verify",
            "fresh_masks": "data.fresh_masks"}
    return {keys[k]: v for k, v in flags.items() if k in keys and v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Pre-train timm models on fracgen datasets (LPCE) and fine-tune them on real images.

    On a CPU without network: fracgen-train toy-data, then the tiny configs (docs/training.md).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if mapping():  # run by make: warnings name the make variables the user typed
        for handler in logging.getLogger().handlers:
            handler.addFilter(MakeWords(flag_options(cli)))


@cli.command()
@_common
@click.option("--source", type=click.Choice(["auto", "stream", "resident"]), default=None, help="Data path.")
@click.option("--verify-data/--no-verify-data", default=None,
              help="Check every shard's sha256 against build.json before step 1 [default: when the dataset is "
                   "a local build of at most 4 GiB]; sizes, sample counts and labels are always checked.")
@click.option("--fresh-masks/--no-fresh-masks", default=None,
              help="A recipe read live: new patch masks each time an image is shown (the paper's 'w/ Aug.') "
                   "[default: no].")
def pretrain(config, out, resume, overrides, **flags) -> None:
    """LPCE pre-training on a fracgen dataset (default config: the released recipe)."""
    from train.pretrain import pretrain as run

    m = run(load_config(config or "pretrain", list(overrides), _values(**flags)), out, resume=resume)
    _report(m, out, lambda: f"pre-trained {m['steps']} steps: loss {_num(m['final_loss'], '.3f')}, top-1 on its "
            f"{m['num_classes']} classes "
            + ("not measured (data.eval_path is empty)" if m.get("eval_top1") is None else f"{m['eval_top1']}%")
            + f" (chance {m['chance']:.1f}%); {out}/model.safetensors")


@cli.command()
@_common
@click.option("--checkpoint", default=None, help="Pre-trained run folder or its model.safetensors (omit: from scratch).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Fine-tuning epochs.")
@click.option("--probe-blocks", type=click.IntRange(min=0), default=None,
              help="Freeze embeddings + first k blocks (k = depth: linear probe).")
def finetune(config, out, resume, overrides, **flags) -> None:
    """Fine-tune or probe on real images (default config: the released fine-tuning recipe).

    --steps sets the length in steps instead of the config's epochs (which would otherwise win).
    """
    from train.finetune import finetune as run

    if flags.get("steps") is not None:
        if flags.get("epochs") is not None:
            raise TrainError("--steps and --epochs both set the fine-tuning length: give one of them")
        flags["epochs"] = 0  # train.epochs = 0: the length is train.steps
    m = run(load_config(config or "finetune", list(overrides), _values(**flags)), out, resume=resume)
    _report(m, out, lambda: f"fine-tuned {m['steps']} steps ({m['checkpoint'] or 'scratch'}): "
            f"test top-1 {m['top1']:.2f}%")


def _num(value: float | None, spec: str) -> str:
    """A metric as text; None (``metrics.json`` writes a value that is not finite as null) as ``n/a``."""
    return "n/a" if value is None else format(value, spec)


def _report(metrics: dict, out: Path, summary) -> None:
    """One line from rank 0: the run's summary, or how to continue a run stopped by train.stop_at."""
    if os.environ.get("RANK", "0") != "0":
        return
    if metrics.get("already_complete"):
        click.echo(f"{out} is complete ({metrics.get('steps')} steps); nothing to do")
    elif metrics.get("stopped"):
        reason = metrics.get("reason", "train.stop_at")
        click.echo(f"stopped at step {metrics['steps']} ({reason}); a checkpoint is in {out}: the same command with --resume continues")
        if reason.startswith("SIG"):  # stopped by a signal: the shell's convention, 128 + its number
            sys.exit(128 + signal.Signals[reason].value)
    else:
        click.echo(summary())


@cli.command("toy-data")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--classes", type=click.IntRange(2, 100), default=10, show_default=True)
@click.option("--train-per-class", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--test-per-class", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--size", type=click.IntRange(8, 512), default=32, show_default=True, help="Image side (px).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def toy_data(out: Path, classes: int, train_per_class: int, test_per_class: int, size: int, seed: int) -> None:
    """Write a small labelled ImageFolder into OUT (generated here: no download), for fine-tuning offline.

    Coloured stripes under noise, a class per colour and pattern: a fine-tuning on them checks the pipeline in
    seconds on a CPU and says nothing about transfer.
    """
    from train.experiments.toy import write_toy_imagefolder

    write_toy_imagefolder(out, classes, train_per_class, test_per_class, size, seed)
    click.echo(f"wrote {out}: {classes} classes, {classes * train_per_class} train + {classes * test_per_class} "
               f"test images of {size} px")


cli.add_command(repro_small)
cli.add_command(sweep)
