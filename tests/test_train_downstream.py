"""train.data.downstream: ImageFolder and WebDataset splits for fine-tuning."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from train_helpers import (
    assert_one_line,
    ft_cfg,
    image_folder,
    run_cli,
)

from train.data.downstream import open_downstream


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

    data = image_folder(tmp_path / "if")
    with caplog.at_level("WARNING", logger="train.data.downstream"):
        assert open_downstream(ft_cfg(data))[2] == 2
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_images_outside_the_class_folders_are_named(tmp_path, caplog, split):

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


FT = ["--config", "tiny-finetune", "--epochs", "2", "--batch-size", "8", "--set", "finetune.eval_batch_size=12",
      "--set", "model.img_size=32", "--set", "train.log_every=1"]


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


# ------------------------------------------------------------------------------ a batch larger than the split
@pytest.mark.parametrize("extra, fix", [
    ([], "pass --batch-size 160 (train.batch_size) or less"),
    (["--accum-steps", "3"], "pass --batch-size 159 (train.batch_size) or less, a multiple of 3"),
    (["--accum-steps", "200", "--batch-size", "800"], "pass --batch-size 160 --accum-steps 1"),
])
def test_a_batch_larger_than_the_train_split_names_the_batch_that_fits(extra, fix, tmp_path, capsys):
    """160 images and the released recipe's batch of 768: refused before the run folder, with the option that fits;
    passing it trains."""
    data = image_folder(tmp_path / "if", train=80, test=2, size=8)
    argv = ["finetune", "--config", "tiny-finetune", "--data", data, "--epochs", "1", "--batch-size", "768"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "ft", *extra], capsys)
    assert_one_line(code, err, "the train split has 160 images, fewer than one batch", fix)
    assert not (tmp_path / "ft").exists()
    batch = fix.split("--batch-size ")[1].split()[0]
    accum = fix.split("--accum-steps ")[1].split()[0] if "--accum-steps 1" in fix else (extra[1] if extra else "1")
    code, out, err = run_cli([*argv, "--out", tmp_path / "ok", "--batch-size", batch, "--accum-steps", accum,
                              "--set", "model.img_size=16", "--set", "model.kwargs.patch_size=8"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["steps"] == 1
