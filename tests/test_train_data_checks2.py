"""Fine-tuning data checked like pre-training data: a resumed run's data must be the run's own, a WebDataset
split must hold what its ``_info.json`` lists, an evaluation set must have the run's classes, every allowed seed
works, and a checkpoint of an unfinished run is named."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

torch = pytest.importorskip("torch")

from train_helpers import assert_one_line, run_cli, snapshot  # noqa: E402

FT = ["--config", "tiny-finetune", "--epochs", "2", "--batch-size", "8", "--set", "finetune.eval_batch_size=12",
      "--set", "model.img_size=32", "--set", "train.log_every=1"]


def _images(folder: Path, n: int, shade: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), ((i * 30 + shade) % 256, 60, 120)).save(folder / f"{shade}-{i}.png")


def _image_folder(root: Path, classes=("airplane", "cat", "dog"), per_class: int = 8) -> Path:
    for split in ("train", "test"):
        for c in classes:
            _images(root / split / c, per_class)
    return root


def _stopped_run(tmp_path: Path, capsys) -> tuple[Path, Path]:
    data, out = _image_folder(tmp_path / "mr"), tmp_path / "fr"
    code, _, err = run_cli(["finetune", *FT, "--data", data, "--out", out, "--set", "train.stop_at=2",
                            "--set", "train.ckpt_every=1"], capsys)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    return data, out


@pytest.mark.parametrize("change", [
    lambda d: _images(d / "train" / "cat", 8, shade=7),           # more images: another schedule
    lambda d: [_images(d / s / "zzz", 8) for s in ("train", "test")],  # another class: another head
    lambda d: (d / "train" / "dog" / "0-0.png").write_bytes(        # same count, another file
        (d / "train" / "dog" / "0-0.png").read_bytes() + b"\0"),
])
def test_finetune_resume_refuses_changed_data_before_touching_the_run(change, tmp_path, capsys):
    data, out = _stopped_run(tmp_path, capsys)
    before = snapshot(out)
    change(data)
    code, _, err = run_cli(["finetune", *FT, "--data", data, "--out", out, "--resume"], capsys)
    assert_one_line(code, err, "--resume", "dataset.", "The data changed since the run stopped")
    assert snapshot(out) == before  # run.json still says stopped


def test_finetune_resume_takes_the_same_folder_spelled_otherwise(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_folder(Path("mr2"))
    code, _, err = run_cli(["finetune", *FT, "--data", "mr2", "--out", "fr2", "--set", "train.stop_at=2",
                            "--set", "train.ckpt_every=1"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["finetune", *FT, "--data", "./mr2", "--out", "fr2", "--resume"], capsys)
    assert code == 0, err
    metrics = json.loads(Path("fr2/metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["num_train"] == 24


def test_resume_compares_an_unrecorded_data_path_resolved(tmp_path, monkeypatch):
    from train.config import load_config
    from train.run.checkpoint import differences

    monkeypatch.chdir(tmp_path)
    Path("ds").mkdir()
    stored = {"config": load_config("tiny-finetune", [], {"data.path": "ds"}).to_dict(), "dataset": None}
    same = load_config("tiny-finetune", [], {"data.path": "./ds"})
    other = load_config("tiny-finetune", [], {"data.path": "ds2"})
    assert differences(stored, same, None, True) == []
    assert [k for k, _, _ in differences(stored, other, None, True)] == ["data.path"]


@pytest.mark.parametrize("seed", [0, 4_294_967_295])
def test_every_allowed_seed_streams(seed, tmp_path):
    from train_helpers import cfg_of

    from train.data.stream import StreamSource, _PrivateRng
    from train.experiments.toy import write_toy_dataset

    data = write_toy_dataset(tmp_path / "ds", num_classes=4, per_class=2, size=32)
    cfg = cfg_of(data, f"train.seed={seed}", "model.img_size=32", "data.workers=0")
    source = StreamSource(cfg, torch.device("cpu"), 0, 1)
    images, targets = next(source.batches(0))
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8,)
    # a seed torch took before keeps its generator (resumed and repeated runs stay bit-identical)
    assert torch.equal(_PrivateRng(2**64 - 1).torch, torch.Generator().manual_seed(2**64 - 1).get_state())


@pytest.mark.parametrize("source", ["stream", "resident"])
def test_an_eval_set_of_other_classes_is_refused(source, tmp_path, capsys):
    from train.experiments.toy import write_toy_dataset

    data = write_toy_dataset(tmp_path / "ds", num_classes=4, per_class=2, size=32)
    other = write_toy_dataset(tmp_path / "ds8", num_classes=8, per_class=1, size=32)
    code, _, err = run_cli(["pretrain", "--config", "tiny", "--data", data, "--out", tmp_path / "o", "--set",
                            "train.steps=2", "--set", f"data.source={source}", "--set", f"data.eval_path={other}",
                            "--set", "model.img_size=32", "--batch-size", "8"], capsys)
    assert_one_line(code, err, "data.eval_path", "has 8 classes", "has 4")
    assert not (tmp_path / "o").exists()


def _wds(root: Path) -> Path:
    from train.experiments.toy import write_toy_dataset

    write_toy_dataset(root, num_classes=4, per_class=4, size=32, shard_size=16)
    test = write_toy_dataset(root.with_name("t"), num_classes=4, per_class=3, size=32, shard_size=12, seed=1)
    (test / "train-000000.tar").rename(root / "test-000000.tar")
    info = json.loads((root / "_info.json").read_text())
    info["splits"]["test"] = {"name": "test", "num_samples": 12, "filenames": ["test-000000.tar"],
                              "shard_lengths": [12]}
    (root / "_info.json").write_text(json.dumps(info))
    return root


def test_finetune_refuses_a_webdataset_shard_cut_short(tmp_path, capsys):
    import tarfile

    root = _wds(tmp_path / "wds")
    shard = root / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    keys = sorted({m.name.split(".")[0] for m, _ in members})[:6]
    cut = tmp_path / "cut.tar"
    with tarfile.open(cut, "w") as tar:  # a valid tar of the first 6 samples: reads as a shorter shard
        for m, data in members:
            if m.name.split(".")[0] in keys:
                tar.addfile(m, io.BytesIO(data))
    cut.replace(shard)
    code, _, err = run_cli(["finetune", *FT, "--data", root, "--out", tmp_path / "fw"], capsys)
    assert_one_line(code, err, "test-000000.tar: 6 samples", "lists 12")
    assert not (tmp_path / "fw").exists()


@pytest.fixture(scope="module")
def stopped_pretraining(tmp_path_factory) -> Path:
    """A tiny pre-training stopped at step 2 of 4 (its run.json says stopped)."""
    from train_helpers import cfg_of

    from train.experiments.toy import write_toy_dataset
    from train.pretrain import pretrain

    root = tmp_path_factory.mktemp("pt")
    data = write_toy_dataset(root / "ds", num_classes=4, per_class=2, size=32)
    out = root / "pt"
    pretrain(cfg_of(data, "train.steps=4", "train.stop_at=2", "train.ckpt_every=1", "model.img_size=32"), out)
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    return out


def test_finetune_from_an_unfinished_pretraining_says_so(stopped_pretraining, tmp_path, capsys, caplog):
    data = _image_folder(tmp_path / "mr")
    code, _, err = run_cli(["finetune", *FT, "--epochs", "1", "--data", data, "--checkpoint", stopped_pretraining,
                            "--out", tmp_path / "ft"], capsys)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("is stopped" in w and "at step 2" in w for w in warned), warned
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["checkpoint_step"] == 2


def test_finetune_resume_needs_only_its_own_checkpoint(stopped_pretraining, tmp_path, capsys):
    ckpt = tmp_path / "pt"
    shutil.copytree(stopped_pretraining, ckpt)
    data, out = _image_folder(tmp_path / "mr"), tmp_path / "fr"
    first = ["finetune", *FT, "--data", data, "--checkpoint", ckpt, "--out", out]
    code, _, err = run_cli([*first, "--set", "train.stop_at=2", "--set", "train.ckpt_every=1"], capsys)
    assert code == 0, err
    shutil.copytree(out, tmp_path / "kept")
    code, _, err = run_cli([*first[:-1], tmp_path / "kept", "--resume"], capsys)  # the checkpoint still there
    assert code == 0, err
    shutil.rmtree(ckpt)
    code, _, err = run_cli([*first, "--resume"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["checkpoint_step"] == 2
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "kept" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same run


def test_a_tarball_that_is_no_downstream_dataset_leaves_nothing(tmp_path, capsys, monkeypatch):
    from train.experiments.toy import write_toy_dataset

    monkeypatch.chdir(tmp_path)
    shard = write_toy_dataset(tmp_path / "ds", num_classes=2, per_class=2, size=32) / "train-000000.tar"
    code, _, err = run_cli(["finetune", *FT, "--data", shard, "--out", tmp_path / "fu"], capsys)
    assert_one_line(code, err, "holds neither train/ and test/")
    assert not (tmp_path / "data").exists() and not (tmp_path / "fu").exists()


def test_finetune_from_a_timm_format_folder_records_no_step(stopped_pretraining, tmp_path, capsys):
    """timm's own save_for_hf folder (config.json + model.safetensors without this trainer's metadata) is a
    checkpoint load_pretrained takes: reading its step must not refuse it (it did, for one commit)."""
    import timm
    from timm.models._hub import save_for_hf

    hf = tmp_path / "hf"
    save_for_hf(timm.create_model(f"local-dir:{stopped_pretraining}", pretrained=True), hf, safe_serialization=True)
    data = _image_folder(tmp_path / "mr")
    code, _, err = run_cli(["finetune", *FT, "--epochs", "1", "--data", data, "--checkpoint", hf,
                            "--out", tmp_path / "ft"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["checkpoint_step"] is None


def test_a_json_label_naming_the_class_is_not_a_mismatch():
    """fracgen's json holds the integer label, which must equal cls; a downstream WebDataset's json may name the
    class instead ("cat"), which is no disagreement (fine-tuning did not read the json before its shards were
    checked like pre-training's)."""
    from train.data.shards import sample_label
    from train.errors import TrainError

    sample = {"__key__": "k", "__url__": "u", "jpg": b"", "cls": b"1"}
    assert sample_label({**sample, "json": b'{"label": "cat"}'}, 3, image_keys=("jpg",)) == 1
    with pytest.raises(TrainError, match="but its json says label 2"):
        sample_label({**sample, "json": b'{"label": 2}'}, 3, image_keys=("jpg",))
