"""train.data.fetch: torchvision's CIFAR by default, a local ImageFolder root or tarball by option, and
without either (no internet) one line saying what to pass and nothing left behind. The network is never touched:
``urllib.request.urlopen`` (what torchvision downloads with) is replaced by one that refuses, or by one that serves a
generated CIFAR-10-format archive."""

import hashlib
import io
import pickle
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image
from train_helpers import (
    assert_one_line,
    run_cli,
)

from train.__main__ import main
from train.config import load_config
from train.data.downstream import open_downstream
from train.data.fetch import resolve_downstream, unpack_tarball
from train.errors import TrainError


@pytest.fixture
def offline(monkeypatch) -> list[str]:
    """No internet: every URL opened raises URLError; returns the URLs that were tried."""
    tried = []

    def refuse(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("[Errno 101] Network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried


def _run(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["python -m train", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv,option", [
    (["finetune", "--config", "tiny-finetune", "--out", "runs/ft"], "--data"),
    (["repro-small", "--cpu-check", "--out", "runs/repro"], "--cifar"),
    (["sweep", "sweep-cpu", "--out", "runs/sweep"], "--data"),
])
def test_without_internet_or_a_copy_one_line_and_nothing_left(argv, option, offline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _run(monkeypatch, capsys, *argv)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR-10 is not in data/"), err
    assert "could not be downloaded (URLError" in lines[0] and f"pass {option}" in lines[0]
    assert "an ImageFolder root (train/ and test/ inside) or a CIFAR-style tarball" in lines[0]
    assert offline, "the download was never tried"
    assert list(tmp_path.iterdir()) == []  # no run folder, no data/, no temporary download folder


def test_a_users_data_root_keeps_what_it_held(offline, tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep")
    with pytest.raises(TrainError, match=r"pass --cifar with"):
        resolve_downstream("cifar10", root, "--cifar")
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def _fake_cifar10(tmp_path: Path, monkeypatch) -> bytes:
    """A cifar-10-python.tar.gz of 6 x 10 tiny images; torchvision's md5 lists are pointed at it."""
    rng = np.random.default_rng(0)
    names = {}
    files = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        labels = list(range(10))
        data = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
        files[name] = pickle.dumps({"data": data, "labels": labels})
    files["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            names[name] = hashlib.md5(raw).hexdigest()
    archive = buf.getvalue()
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{i}", names[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", names["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": names["batches.meta"]})
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5(archive).hexdigest())
    return archive


class _Response(io.BytesIO):
    def __init__(self, url: str, data: bytes):
        super().__init__(data)
        self.url, self.length = url, len(data)


def test_default_downloads_once_into_the_data_root(tmp_path, monkeypatch):
    archive = _fake_cifar10(tmp_path, monkeypatch)
    tried = []

    def serve(request, *args, **kwargs):
        tried.append(request.full_url)
        return _Response(request.full_url, archive)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    root = tmp_path / "data"
    assert resolve_downstream("cifar10", root) == "cifar10"
    assert tried and sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no archive, no temp
    cfg = load_config("tiny-finetune", [], {"data.path": "CIFAR10", "data.root": str(root)})
    train, test, classes = open_downstream(cfg)
    assert (len(train), len(test), classes) == (50, 10, 10)
    assert tuple(train[0][0].shape) == (3, 64, 64)
    tried.clear()
    assert resolve_downstream("cifar10", root) == "cifar10" and not tried  # present: no second download


def test_torchvision_tarball_by_option(tmp_path, monkeypatch, offline):
    """An offline machine: the official cifar-10-python.tar.gz, downloaded elsewhere, passed by option."""
    tarball = tmp_path / "cifar-10-python.tar.gz"
    tarball.write_bytes(_fake_cifar10(tmp_path, monkeypatch))
    cfg = load_config("tiny-finetune", [], {"data.path": str(tarball), "data.root": str(tmp_path / "data")})
    train, test, classes = open_downstream(cfg)
    assert (len(train), len(test), classes) == (50, 10, 10) and not offline


def test_imagefolder_tarball_is_unpacked_once(cifar_mini_tarball, tmp_path):
    root = tmp_path / "data"
    path = resolve_downstream(str(cifar_mini_tarball), root, "--cifar")
    assert (Path(path) / "train").is_dir() and (Path(path) / "test").is_dir()
    stamp = (Path(path) / ".unpacked.json").stat().st_mtime_ns
    assert resolve_downstream(str(cifar_mini_tarball), root) == path
    assert (Path(path) / ".unpacked.json").stat().st_mtime_ns == stamp
    assert [p.name for p in root.iterdir()] == [Path(path).name]
    cfg = load_config("tiny-finetune", [], {"data.path": str(cifar_mini_tarball), "data.root": str(root)})
    train, test, classes = open_downstream(cfg)
    assert (len(train), len(test), classes) == (1000, 200, 10)


def test_damaged_tarball_is_one_line_and_leaves_nothing(cifar_mini_tarball, tmp_path):
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(cifar_mini_tarball.read_bytes()[:50_000])
    with pytest.raises(TrainError, match=r"tarball .*cut.tar.gz: cannot unpack it") as info:
        resolve_downstream(str(bad), tmp_path / "data")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists()


def test_a_folder_it_did_not_unpack_is_not_touched(cifar_mini_tarball, tmp_path):
    root = tmp_path / "data"
    theirs = root / unpack_tarball(cifar_mini_tarball, tmp_path / "probe").name
    theirs.mkdir(parents=True)
    (theirs / "mine.txt").write_text("x")
    with pytest.raises(TrainError, match="exists and was not unpacked from"):
        resolve_downstream(str(cifar_mini_tarball), root)
    assert [p.name for p in theirs.iterdir()] == ["mine.txt"]


def _image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 100, 50, 200)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("damage,fragment", [
    (lambda r: [p.unlink() for p in (r / "train" / "b").iterdir()], "Found no valid file for the classes b"),
    (lambda r: (r / "train" / "a" / "0.png").write_bytes(b""), "0.png: empty file"),
    (lambda r: (r / "test" / "b" / "1.png").write_text("not an image"), "1.png: not an image Pillow can read"),
    (lambda r: (r / "train" / "a" / "link.png").symlink_to(r / "nowhere.png"), "link.png: cannot be read"),
    (lambda r: (r / "test" / "b" / "loop.png").symlink_to(r / "test" / "b" / "loop.png"), "loop.png: cannot be read"),
])
def test_bad_image_folders_are_one_line(damage, fragment, tmp_path):
    root = _image_folder(tmp_path / "ds")
    cfg = load_config("tiny-finetune", [], {"data.path": str(root)})
    assert open_downstream(cfg)[2] == 2
    damage(root)
    with pytest.raises(TrainError, match=fragment) as info:
        open_downstream(cfg)
    assert "\n" not in str(info.value)


def test_a_damaged_torchvision_folder_is_not_replaced(tmp_path, offline):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"half")
    with pytest.raises(TrainError, match="cifar-10-batches-py is there but incomplete or damaged"):
        resolve_downstream("cifar10", tmp_path / "data")
    assert [p.name for p in folder.iterdir()] == ["data_batch_1"] and not offline


def test_repro_small_with_a_missing_dataset_leaves_nothing(tmp_path, monkeypatch, capsys, offline):
    monkeypatch.chdir(tmp_path)
    code, err = _run(monkeypatch, capsys, "repro-small", "--cpu-check", "--dataset", "out/typo", "--out", "runs/r")
    assert code == 2 and err.count("\n") == 1 and "dataset out/typo: no such folder" in err
    assert list(tmp_path.iterdir()) == [] and not offline


FT = ["--config", "tiny-finetune", "--epochs", "2", "--batch-size", "8", "--set", "finetune.eval_batch_size=12",
      "--set", "model.img_size=32", "--set", "train.log_every=1"]


def test_a_tarball_that_is_no_downstream_dataset_leaves_nothing(tmp_path, capsys, monkeypatch):
    from train.experiments.toy import write_toy_dataset

    monkeypatch.chdir(tmp_path)
    shard = write_toy_dataset(tmp_path / "ds", num_classes=2, per_class=2, size=32) / "train-000000.tar"
    code, _, err = run_cli(["finetune", *FT, "--data", shard, "--out", tmp_path / "fu"], capsys)
    assert_one_line(code, err, "holds neither train/ and test/")
    assert not (tmp_path / "data").exists() and not (tmp_path / "fu").exists()
