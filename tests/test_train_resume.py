"""``--resume`` continues a checkpoint only with the run's own config and dataset, refused before the folder is
touched (F-RES1); an absent or empty ``--out`` starts the run (F-RES2); sweep and repro-small replace only the
run folders they wrote. One torch thread, tiny ViT, a few steps."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import QUICK, assert_one_line, cfg_of, cli, snapshot

from train.errors import TrainError
from train.pretrain import pretrain
from train.run.checkpoint import MAY_CHANGE, check_resume
from train.run.folder import claim_folder, clear_run_folder, write_status

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("args,fragment", [
    (["--set", "model.kwargs.depth=2"], "model.kwargs.depth=4, this command gives 2"),
    (["--img-size", "32"], "model.img_size=64, this command gives 32"),
    (["--model", "vit_small_patch16_224"], "model.name=vit_tiny_patch16_224, this command gives vit_small"),
    (["--batch-size", "16"], "train.batch_size=8, this command gives 16"),
    (["--seed", "5"], "train.seed=0, this command gives 5"),
    (["--lr", "1e-2"], "this command gives 0.01"),
    (["--accum-steps", "2"], "train.accum_steps=1, this command gives 2"),
    (["--source", "resident"], "data.source=stream, this command gives resident"),
    (["--set", "aug.hflip=0.5"], "this command gives 0.5"),
    (["--steps", "8"], "train.steps=6, this command gives 8"),  # the cosine spans train.steps
    (["--workers", "2"], "data.workers=0, this command gives 2"),  # the stream's sample order depends on it
])
def test_resume_with_another_setting_is_refused_before_the_folder_is_touched(stopped, tiny_dataset, args,
                                                                              fragment, capsys):
    before = snapshot(stopped)
    sets = [a for q in QUICK for a in ("--set", q)]
    code, err = cli(["pretrain", "--config", "tiny", "--data", tiny_dataset, "--out", stopped, "--resume", *sets,
                     *args], capsys)
    assert_refused(code, err, f"{stopped} was run with", fragment, f"--config {stopped / 'config.yaml'}")
    assert snapshot(stopped) == before  # config.yaml and run.json untouched, no lock left behind


def test_every_key_that_may_change_on_resume_leaves_it_alone(stopped, tiny_dataset):
    others = {"train.log_every": 3, "train.ckpt_every": 7, "train.eval_every": 5, "train.stop_at": 5,
              "train.threads": 2, "train.device": "cuda", "train.compile": True, "data.verify": False,
              "data.root": "elsewhere", "data.resident.load_workers": 3, "finetune.eval_batch_size": 7,
              "log.tensorboard": True}
    assert set(others) == set(MAY_CHANGE)
    readme = (REPO / "train" / "README.md").read_text()
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


@pytest.mark.parametrize("made", [False, True])
def test_resume_of_an_absent_or_empty_folder_starts_the_run(tiny_dataset, tmp_path, made, caplog):
    """A run killed before it made its folder is requeued with --resume: it starts from step 0."""
    out = tmp_path / "kr"
    if made:
        out.mkdir()
    with caplog.at_level("WARNING"):
        assert pretrain(cfg_of(tiny_dataset, "train.steps=2"), out, resume=True)["steps"] == 2
    assert "holds no run yet" in caplog.text and "starting one from step 0" in caplog.text
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# ------------------------------------------------------------------------- sweep / repro-small folders
def _run_folder(path: Path, *extra: str) -> Path:
    path.mkdir(parents=True)
    write_status(path, "failed", error="x")
    (path / "config.yaml").write_text("a: 1\n")
    (path / "tensorboard").mkdir()
    (path / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    for name in extra:
        (path / name).write_text("mine")
    return path


def test_clear_run_folder_removes_only_a_run_the_trainer_wrote(tmp_path):
    assert not any(clear_run_folder(_run_folder(tmp_path / "ours")).iterdir())
    for folder in (_run_folder(tmp_path / "with-notes", "notes.txt"), _run_folder(tmp_path / "board"),
                   tmp_path / "users"):
        if folder.name == "board":
            (folder / "tensorboard" / "mine.txt").write_text("mine")
        if folder.name == "users":
            folder.mkdir()
            (folder / "config.yaml").write_text("mine")
        listing = sorted(str(p) for p in folder.rglob("*"))
        with pytest.raises(TrainError, match="holds files this trainer did not write"):
            clear_run_folder(folder)
        assert sorted(str(p) for p in folder.rglob("*")) == listing


def test_claim_folder_takes_only_its_own_kind(tmp_path):
    claim_folder(tmp_path / "s", "sweep")
    claim_folder(tmp_path / "s", "sweep")
    assert json.loads((tmp_path / "s" / "job.json").read_text())["kind"] == "sweep"
    with pytest.raises(TrainError, match="not a repro-small folder"):
        claim_folder(tmp_path / "s", "repro-small")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match=r"holds files that are not a sweep folder \(notes.txt\)"):
        claim_folder(tmp_path / "mine", "sweep")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def _no_training(*args, **kwargs):
    raise AssertionError("a run started in a folder that holds a user's files")


@pytest.mark.parametrize("marked", [False, True])
def test_sweep_and_repro_never_delete_a_users_files(cifar_mini_tarball, tmp_path, marked, monkeypatch, capsys):
    import yaml

    from train.experiments.sweep import load_sweep, run_sweep

    monkeypatch.setattr("train.finetune.finetune", _no_training)
    monkeypatch.setattr("train.pretrain.pretrain", _no_training)
    spec = yaml.safe_load((REPO / "train" / "configs" / "sweep-cpu.yaml").read_text())
    spec["finetune"]["data"] = str(cifar_mini_tarball)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    for kind, inside in (("sweep", "runs/scratch/finetune"), ("repro-small", "calib-pretrain")):
        out = tmp_path / kind
        (out / inside).mkdir(parents=True)
        (out / inside / "notes.txt").write_text("mine")
        if marked:
            (out / "job.json").write_text(json.dumps({"kind": kind, "time": "2026-01-01T00:00:00"}))
        if kind == "sweep":
            with pytest.raises(TrainError, match="not a sweep folder" if not marked else "did not write"):
                run_sweep(load_sweep(tmp_path / "sweep.yaml"), out, tmp_path / "data")
        else:
            code, err = cli(["repro-small", "--cpu-check", "--cifar", cifar_mini_tarball, "--data-root",
                             tmp_path / "data", "--out", out], capsys)
            last = err.strip().splitlines()[-1]  # a marked folder is the repro's own: it builds its dataset first
            assert code == 2 and last.startswith("error: ") and "Traceback" not in err, err
            assert ("not a repro-small folder" if not marked else "did not write") in last
        assert (out / inside / "notes.txt").read_text() == "mine"


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
    stored = torch.load(stopped / "state.pt", map_location="cpu", weights_only=False)["rng"]
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
