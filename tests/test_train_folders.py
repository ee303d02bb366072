"""train.experiments.folders: the folder of a sweep or repro-small is marked as that job's, and only run folders
the trainer wrote there are ever replaced."""

import json
from pathlib import Path

import pytest
from train_helpers import REPO, cli

from train.errors import TrainError
from train.experiments.folders import claim_folder, clear_run_folder
from train.run.folder import write_status


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
