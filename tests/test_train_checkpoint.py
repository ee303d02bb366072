"""train.run.checkpoint: the files of a checkpoint, loading them in timm alone, and what ``--resume`` may
change (the run's config and data, compared before the folder is touched)."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from train_helpers import (
    FT,
    QUICK,
    REPO,
    assert_one_line,
    cfg_of,
    cli,
    run_cli,
    shaded_folder,
    snapshot,
    tiny_cfg,
)

from train.config import load_config
from train.errors import TrainError
from train.pretrain import pretrain
from train.run import safe_state
from train.run.checkpoint import MAY_CHANGE, check_resume


def assert_refused(code, err, *fragments):
    assert_one_line(code, err, *fragments, start="error: --resume: ")


@pytest.fixture(scope="module")
def other_build(tmp_path_factory):
    """Another build with the tiny set's shape (16 classes, 16 samples) but another seed: other images."""
    from conftest import TINY

    from fracgen.build import BuildConfig, build

    root = tmp_path_factory.mktemp("seed7") / "ds"
    build(BuildConfig(**{**TINY, "seed": 7}), root, workers=1)
    return root


def test_every_key_that_may_change_on_resume_leaves_it_alone(stopped, tiny_dataset):
    others = {"train.log_every": 3, "train.ckpt_every": 7, "train.eval_every": 5, "train.stop_at": 5,
              "train.threads": 2, "train.device": "cuda", "train.compile": True, "data.verify": False,
              "data.root": "elsewhere", "data.resident.load_workers": 3, "finetune.eval_batch_size": 7,
              "log.tensorboard": True}
    assert set(others) == set(MAY_CHANGE)
    readme = (REPO / "docs" / "training.md").read_text()
    for key, value in others.items():
        assert f"`{key}`" in readme, key
        check_resume(stopped, cfg_of(tiny_dataset, f"{key}={json.dumps(value)}"))
    with pytest.raises(TrainError, match=re.escape("optim.warmup_steps=20, this command gives 1")):
        check_resume(stopped, cfg_of(tiny_dataset, "optim.warmup_steps=1"))


def test_another_dataset_is_refused_and_the_same_one_moved_continues(tiny_dataset, other_build, tmp_path, capsys):
    run, ref = tmp_path / "run", tmp_path / "ref"
    pretrain(cfg_of(tiny_dataset, "train.steps=4", "train.stop_at=2"), run)
    before = snapshot(run)
    sets = [a for q in QUICK for a in ("--set", q)]
    code, err = cli(["pretrain", "--config", "tiny", "--data", other_build, "--out", run, "--resume", *sets,
                     "--steps", "4"], capsys)
    assert_refused(code, err, f"data.path={tiny_dataset}, this command gives {other_build}",
                   "dataset.shards_sha256=")
    assert snapshot(run) == before

    # the same build elsewhere, with other log/checkpoint intervals: the steps are those of an unbroken run
    moved = shutil.copytree(tiny_dataset, tmp_path / "moved")
    m = pretrain(cfg_of(moved, "train.steps=4", "train.log_every=3", "train.ckpt_every=1"), run, resume=True)
    assert m["steps"] == 4 and f"path: {moved}" in (run / "config.yaml").read_text()
    pretrain(cfg_of(tiny_dataset, "train.steps=4"), ref)
    a, b = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_under_another_process_count_warns_and_gives_new_ranks_their_own_stream(stopped, tiny_dataset,
                                                                                        caplog):
    """A checkpoint of one process resumed by two (``torchrun`` with more GPUs, as timm allows): the run goes on
    with a warning, and rank 1, which the checkpoint has no RNG state for, does not replay rank 0's stream."""
    from train.data.source import micro_batch_size
    from train.distributed import Dist
    from train.model import create_model
    from train.run.checkpoint import load_checkpoint
    from train.step import TrainStep

    cfg = cfg_of(tiny_dataset, "train.stop_at=2")
    stored = safe_state.load(stopped / "state.safetensors")["rng"]
    assert len(stored) == 1

    def restore(rank: int) -> torch.Tensor:
        trainer = TrainStep(cfg, create_model(cfg, 16), 16, micro_batch_size(cfg, 2), torch.device("cpu"), 6)
        assert load_checkpoint(stopped, trainer, Dist(rank, 2, rank, torch.device("cpu"))) == 2
        return torch.get_rng_state()

    with caplog.at_level("WARNING", logger="train.run.checkpoint"):
        rank0 = restore(0)
    assert torch.equal(rank0, stored[0]["torch"])
    assert "written by 1 process(es) and this run has 2" in caplog.text and "from step 2 on" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="train.run.checkpoint"):
        rank1 = restore(1)
    assert not torch.equal(rank1, stored[0]["torch"]) and caplog.text == ""  # rank 0 alone says it
    assert torch.equal(restore(1), rank1)  # and its own stream is the same on every resume


def test_checkpoint_files_are_whole_same_step_and_0644(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset, "train.steps=6", "train.stop_at=2")
    assert pretrain(cfg, tmp_path / "a")["steps"] == 2
    assert pretrain(tiny_cfg(tiny_dataset, "train.steps=6", "train.stop_at=3"), tmp_path / "b")["steps"] == 3
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "state.safetensors", "config.json", "run.json", "log.csv"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644 & ~umask, name
    assert not list((tmp_path / "a").glob("*.tmp*"))

    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    before = snapshot(tmp_path / "a")
    with pytest.raises(TrainError, match=r"model.safetensors is from step 3 but state.safetensors from step 2"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "a", resume=True)
    assert snapshot(tmp_path / "a") == before  # the failed start changed nothing: run.json still says stopped
    (tmp_path / "b" / "state.safetensors").unlink()
    with pytest.raises(TrainError, match="has model.safetensors but no state.safetensors"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "b", resume=True)


def test_run_folder_loads_in_timm_alone_with_the_trainers_logits(tiny_dataset, tmp_path, monkeypatch):
    import train.pretrain as pt

    made, create = [], pt.create_model

    def keep(cfg, num_classes):  # the very model the trainer trains
        made.append(create(cfg, num_classes))
        return made[-1]

    monkeypatch.setattr(pt, "create_model", keep)
    pretrain(tiny_cfg(tiny_dataset, "train.steps=4", "model.drop_path=0.1", "aug.mean=[0.25,0.5,0.75]"),
             tmp_path / "run")
    trained = made[0].eval()

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 16
    assert config["model_args"]["depth"] == 4 and config["model_args"]["patch_size"] == 16
    assert config["model_args"]["img_size"] in (64, [64, 64])
    assert config["pretrained_cfg"]["mean"] == [0.25, 0.5, 0.75] and config["pretrained_cfg"]["input_size"] == [3, 64, 64]

    model = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True).eval()
    assert len(model.blocks) == 4 and model.num_classes == 16
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
        random_init = timm.create_model(f"local-dir:{tmp_path / 'run'}").eval()
        assert not torch.allclose(random_init(x), trained(x))  # the weights came from the folder
    assert tuple(timm.data.resolve_data_config({}, model=model)["mean"]) == (0.25, 0.5, 0.75)
    # what timm's push_to_hf_hub uploads (save_for_hf of the loaded model) loads back the same
    from timm.models import save_for_hf

    save_for_hf(model, str(tmp_path / "pushed"), safe_serialization=True)
    again = timm.create_model(f"local-dir:{tmp_path / 'pushed'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(again(x), trained(x))


@pytest.fixture(scope="module")
def complete(tiny_dataset, tmp_path_factory):
    """A complete run of 6 steps."""
    out = tmp_path_factory.mktemp("attack2") / "done"
    assert pretrain(cfg_of(tiny_dataset), out)["steps"] == 6
    return out


# ------------------------------------------------------------------- docs/training.md's plain-timm recipe
def test_the_readme_recipe_for_older_checkpoints_loads_the_trained_head(complete, tiny_dataset):
    """docs/training.md's block, run as written on a checkpoint without config.json, gives the trainer's logits."""
    import re

    import torch
    from safetensors.torch import load_file

    from train.model import create_model

    readme = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
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


def test_finetune_resume_takes_the_same_folder_spelled_otherwise(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shaded_folder(Path("mr2"))
    code, _, err = run_cli(["finetune", *FT, "--data", "mr2", "--out", "fr2", "--set", "train.stop_at=2",
                            "--set", "train.ckpt_every=1"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["finetune", *FT, "--data", "./mr2", "--out", "fr2", "--resume"], capsys)
    assert code == 0, err
    metrics = json.loads(Path("fr2/metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["num_train"] == 24


def test_resume_compares_an_unrecorded_data_path_resolved(tmp_path, monkeypatch):
    from train.run.checkpoint import differences

    monkeypatch.chdir(tmp_path)
    Path("ds").mkdir()
    stored = {"config": load_config("tiny-finetune", [], {"data.path": "ds"}).to_dict(), "dataset": None}
    same = load_config("tiny-finetune", [], {"data.path": "./ds"})
    other = load_config("tiny-finetune", [], {"data.path": "ds2"})
    assert differences(stored, same, None, True) == []
    assert [k for k, _, _ in differences(stored, other, None, True)] == ["data.path"]
