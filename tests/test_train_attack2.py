"""Second hostile round on the trainer: a damaged ``state.pt`` on ``--resume`` (F-RES3), ``--resume`` of a complete
run (F-RES4), a loss or metric that is not finite (F-NAN). Each refusal is one line, exit 2, folder untouched.
One torch thread, tiny ViT, a few steps."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from train_helpers import QUICK, assert_one_line, cfg_of, poison_loss, run_cli, snapshot

from train.config import load_config
from train.pretrain import pretrain

cli = run_cli


def resume_argv(data, out):
    argv = ["pretrain", "--config", "tiny", "--data", data, "--out", out, "--resume"]
    for item in QUICK:
        argv += ["--set", item]
    return argv


@pytest.fixture(scope="module")
def complete(tiny_dataset, tmp_path_factory):
    """A complete run of 6 steps."""
    out = tmp_path_factory.mktemp("attack2") / "done"
    assert pretrain(cfg_of(tiny_dataset), out)["steps"] == 6
    return out


# ------------------------------------------------------------------------------------ damaged state.pt (F-RES3)
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_state_file_is_one_line_and_the_folder_is_untouched(stopped, tiny_dataset, tmp_path, damage,
                                                                       capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    state = run / "state.pt"
    data = state.read_bytes()
    state.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"PK\x03\x04" + b"x" * 500}[damage])
    before = snapshot(run)
    code, _, err = cli(resume_argv(tiny_dataset, run), capsys)
    assert_one_line(code, err, f"{state} is damaged")
    assert snapshot(run) == before


def test_a_state_file_damaged_inside_its_archive_is_one_line(stopped, tiny_dataset, tmp_path):
    """A zip whose central directory is intact but whose pickle is not: found when torch loads it."""
    import zipfile

    from train.errors import TrainError

    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    with zipfile.ZipFile(run / "state.pt") as src:
        names = src.namelist()
        entries = {n: src.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("/data.pkl"))
    entries[pkl] = b"\x80\x02garbage"
    with zipfile.ZipFile(run / "state.pt", "w", zipfile.ZIP_STORED) as dst:
        for n in names:
            dst.writestr(n, entries[n])
    with pytest.raises(TrainError, match=r"state\.pt is damaged"):
        pretrain(cfg_of(tiny_dataset), run, resume=True)


def test_an_eof_error_is_not_taken_for_ctrl_c(monkeypatch, tmp_path):
    """click turns EOFError into Abort ("aborted", 130 like Ctrl-C); a real one must stay itself."""
    import train.pretrain

    def eof(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(train.pretrain, "pretrain", eof)
    from train.__main__ import main

    old = sys.argv
    sys.argv = ["python -m train", "pretrain", "--config", "tiny", "--data", "x", "--out", str(tmp_path / "r")]
    try:
        with pytest.raises(EOFError, match="Ran out of input"):
            main()
    finally:
        sys.argv = old


def image_folder(root: Path, classes=("cat", "dog"), train=10, test=4, size=16) -> Path:
    """A small ImageFolder root (train/, test/) of flat-colour PNGs, one colour per class."""
    from PIL import Image

    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (size, size), (40 * c + 3 * i, 200 - 40 * c, 90)).save(root / split / name / f"{i}.png")
    return root


def ft_cfg(data, *overrides):
    return load_config("tiny-finetune", ["train.epochs=1", "train.batch_size=10", "train.log_every=1", *overrides],
                       {"data.path": str(data)})


# ----------------------------------------------------------------------------- --resume of a complete run (F-RES4)
def test_resume_of_a_complete_run_says_so_and_leaves_the_folder_byte_identical(complete, tiny_dataset, tmp_path,
                                                                                capsys):
    run = tmp_path / "run"
    shutil.copytree(complete, run)
    before = snapshot(run)
    code, out, err = cli(resume_argv(tiny_dataset, run), capsys)
    assert code == 0 and f"{run} is complete (6 steps); nothing to do" in out, (code, out, err)
    assert snapshot(run) == before
    # another total is another run, still refused
    code, _, err = cli([*resume_argv(tiny_dataset, run), "--steps", "9"], capsys)
    assert_one_line(code, err, "train.steps=6, this command gives 9")
    assert snapshot(run) == before


def test_a_run_killed_after_its_last_checkpoint_reports_its_logged_loss(complete, tiny_dataset, tmp_path):
    """Killed between the final checkpoint and metrics.json: --resume finishes it with finite metrics."""
    from train.run.folder import write_status

    run = tmp_path / "run"
    shutil.copytree(complete, run)
    (run / "metrics.json").unlink()
    write_status(run, "running")
    logged = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:] if line.split(",")[4]]
    m = pretrain(cfg_of(tiny_dataset), run, resume=True)
    assert m["steps"] == 6 and m["final_loss"] == pytest.approx(float(logged[-1][2]))
    text = (run / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["final_loss"] == m["final_loss"]
    assert "nan" not in (run / "log.csv").read_text()


def test_resume_of_a_complete_finetune_does_nothing(complete, tmp_path):
    from train.finetune import finetune

    data = image_folder(tmp_path / "if")
    cfg = ft_cfg(data, f"finetune.checkpoint={complete}")
    first = finetune(cfg, tmp_path / "ft")
    before = snapshot(tmp_path / "ft")
    again = finetune(ft_cfg(data, f"finetune.checkpoint={complete}"), tmp_path / "ft", resume=True)
    assert again["already_complete"] and again["top1"] == first["top1"]
    assert snapshot(tmp_path / "ft") == before


# ------------------------------------------------------------------------------------ a loss that is not finite (F-NAN)
def test_a_checkpoint_with_nan_weights_is_refused_before_the_run_folder(complete, tmp_path, capsys):
    """A checkpoint whose weights hold NaN (metadata kept) would fine-tune to a NaN loss: named up front."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = complete / "model.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    tensors["blocks.0.attn.qkv.weight"].fill_(float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    data = image_folder(tmp_path / "if")
    code, _, err = cli(["finetune", "--config", "tiny-finetune", "--data", data, "--checkpoint",
                        tmp_path / "nan.safetensors", "--out", tmp_path / "ft", "--epochs", "1", "--batch-size", "10"],
                       capsys)
    assert_one_line(code, err, "nan.safetensors", "blocks.0.attn.qkv.weight", "NaN or inf")
    assert not (tmp_path / "ft").exists()


def test_a_finetune_whose_loss_becomes_nan_stops_with_one_line(tmp_path, monkeypatch, capsys):
    poison_loss(monkeypatch, float("inf"), from_step=1)  # from the second step on
    data = image_folder(tmp_path / "if", train=20)
    code, _, err = cli(["finetune", "--config", "tiny-finetune", "--data", data, "--out", tmp_path / "ft",
                        "--epochs", "1", "--batch-size", "10", "--set", "train.log_every=1"], capsys)
    assert_one_line(code, err, "the loss became inf by step 2")
    status = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert status["status"] == "failed" and not (tmp_path / "ft" / "metrics.json").exists()


def test_metrics_never_hold_nan(tmp_path):
    """Whatever a job reports, metrics.json is strict JSON: a value that is not finite is written as null."""
    from train.distributed import Dist
    from train.run.folder import run_job

    (tmp_path / "run").mkdir()
    env = Dist(rank=0, world_size=1, local_rank=0, device=__import__("torch").device("cpu"))
    result = {"step": 3, "loss": float("nan"), "images_per_s": float("inf"), "eval": [], "elapsed_s": 1.0}
    values = run_job(tmp_path / "run", env, lambda: result,
                     lambda r: {"steps": r["step"], "final_loss": r["loss"], "images_per_s": r["images_per_s"],
                                "per_epoch": [{"step": 3, "eval_top1": float("-inf")}]}, complete="steps")
    text = (tmp_path / "run" / "metrics.json").read_text()
    written = json.loads(text, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    assert written["final_loss"] is None and written["images_per_s"] is None
    assert written["per_epoch"][0]["eval_top1"] is None and written["steps"] == 3
    assert values["final_loss"] is None


# -------------------------------------------------------------------------------------- repro-small (F-REPRO)
@pytest.mark.parametrize("args,fragment", [
    (["--budgets", "-5"], "--budgets '-5': every budget must be a finite number of seconds > 0"),
    (["--budgets", "0"], "> 0 (got 0)"),
    (["--budgets", "inf"], "> 0 (got inf)"),
    (["--budgets", "1.2,1.7"], "two budgets of the same whole seconds"),
    (["--variant", "x:bogus.key=1"], "--variant x: "),
    (["--variant", "x:model.img_size=abc"], "model.img_size"),
    (["--variant", "x:model.kwargs.patch_size=128"], "model.kwargs.patch_size"),
    (["--variant", "x:model.name=bogus_net"], "bogus_net"),
    (["--variant", "x:build.delta=-5"], "--delta"),
    (["--variant", "x:build.bogus=1"], "unknown build option(s) build.bogus"),
    (["--variant", "x:optim.lr=1e-3,nokey"], "expected NAME:KEY=VAL"),
    (["--variant", "a:optim.lr=1e-3", "--variant", "a:optim.lr=1e-4"], "must be unique"),
    (["--variant", "budget1s:optim.lr=1e-3"], "must be unique"),
    (["--variant", "../x:optim.lr=1e-3"], "must be unique"),
    (["--pretrain-set", "train.bogus=1"], "train.bogus"),
    (["--finetune-set", "optim.lr=-1"], "optim.lr"),
    (["--pretrain-img-size", "17", "--pretrain-set", "model.kwargs.patch_size=32"], "model.kwargs.patch_size"),
])
def test_repro_small_refuses_bad_options_before_any_work(tiny_dataset, cifar_mini_tarball, tmp_path, args, fragment,
                                                         capsys):
    out, root = tmp_path / "repro", tmp_path / "data"
    code, _, err = cli(["repro-small", "--cpu-check", "--out", out, "--dataset", tiny_dataset, "--cifar",
                        cifar_mini_tarball, "--data-root", root, "--budgets", "1", *args], capsys)
    assert_one_line(code, err, fragment)
    assert not out.exists() and not root.exists()  # nothing unpacked, built or trained


def test_repro_small_stopped_by_sigterm_ends_cleanly_keeping_what_finished(tiny_dataset, cifar_mini_tarball, tmp_path,
                                                                           monkeypatch, capsys):
    """A sub-run stopped by SIGTERM returns no metrics: repro-small says so and exits 143, no KeyError."""
    import train.finetune
    import train.pretrain

    calls = []

    def fake_pretrain(cfg, out, resume=False):
        calls.append(out.name)
        if out.name == "pretrain-budget2s":
            return {"stopped": True, "steps": 3, "reason": "SIGTERM"}
        return {"images_per_s": 100.0, "eval_top1": 50.0, "num_classes": 16, "final_loss": 1.0}

    def fake_finetune(cfg, out, resume=False):
        return {"images_per_s": 100.0, "top1": 20.0}

    monkeypatch.setattr(train.pretrain, "pretrain", fake_pretrain)
    monkeypatch.setattr(train.finetune, "finetune", fake_finetune)
    out = tmp_path / "repro"
    code, _, err = cli(["repro-small", "--cpu-check", "--out", out, "--dataset", tiny_dataset, "--cifar",
                        cifar_mini_tarball, "--data-root", tmp_path / "data", "--budgets", "1,2"], capsys)
    assert code == 143 and "Traceback" not in err and "stopped by SIGTERM" in err, (code, err)
    assert calls == ["calib-pretrain", "pretrain-budget1s", "pretrain-budget2s"]
    partial = json.loads((out / "repro-partial.json").read_text())
    assert partial["stopped"] == "SIGTERM" and [r["name"] for r in partial["runs"]] == ["budget1s"]
    assert not (out / "repro.json").exists()


# ---------------------------------------------------------------------------- README's plain-timm recipe (F-DOC)
def test_the_readme_recipe_for_older_checkpoints_loads_the_trained_head(complete, tiny_dataset):
    """train/README.md's block, run as written on a checkpoint without config.json, gives the trainer's logits."""
    import re

    import torch
    from safetensors.torch import load_file

    from train.model import create_model

    readme = (Path(__file__).resolve().parents[1] / "train" / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "pretrained_cfg_overlay" in b)
    assert 'path = "runs/pt/model.safetensors"' in block
    scope: dict = {}
    exec(block.replace("runs/pt/model.safetensors", str(complete / "model.safetensors")), scope)  # noqa: S102
    model = scope["model"].eval()
    weights = load_file(str(complete / "model.safetensors"))
    assert model.state_dict().keys() == weights.keys()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    trainer = create_model(cfg_of(tiny_dataset), 16)
    trainer.load_state_dict(weights)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), trainer.eval()(x))


# ------------------------------------------------------------------------------ odd ImageFolders (F-FT2)
def test_a_one_class_image_folder_fine_tunes_with_a_warning(tmp_path, caplog):
    """timm's ImageFolder takes one class, so does the trainer; top-1 is 100 % by construction and it says so."""
    from train.finetune import finetune

    data = image_folder(tmp_path / "if", classes=("only",))
    with caplog.at_level("WARNING", logger="train.data.downstream"):
        m = finetune(ft_cfg(data), tmp_path / "ft")
    assert m["num_classes"] == 1 and m["top1"] == 100.0
    warned = [r.getMessage() for r in caplog.records if "single class" in r.getMessage()]
    assert len(warned) == 1 and str(data) in warned[0]


def test_two_classes_give_no_class_warning(tmp_path, caplog):
    from train.data.downstream import open_downstream

    data = image_folder(tmp_path / "if")
    with caplog.at_level("WARNING", logger="train.data.downstream"):
        assert open_downstream(ft_cfg(data))[2] == 2
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_outside_the_class_folders_are_named(tmp_path, caplog, split):
    from PIL import Image

    from train.data.downstream import open_downstream

    data = image_folder(tmp_path / "if")
    for name in ("loose.png", "stray.JPG"):
        Image.new("RGB", (16, 16)).save(data / split / name, format="PNG")
    (data / split / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="train.data.downstream"):
        train, test, classes = open_downstream(ft_cfg(data))
    assert classes == 2 and len(train) == 20 and len(test) == 8
    warned = [r.getMessage() for r in caplog.records if "outside any class folder" in r.getMessage()]
    assert len(warned) == 1 and "2 image(s)" in warned[0] and "loose.png" in warned[0] and "stray.JPG" in warned[0]
    assert str(data / split) in warned[0] and "notes.txt" not in warned[0]
