"""train.data.shards: the dataset's records, the checked read of every shard, a sample's checks."""

import io
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from fracgen import dataset
from train.config import load_config
from train.data import shards as shards_mod
from train.data.pretraining import make_source
from train.data.shards import plan_shards, read_info
from train.errors import TrainError
from train.experiments.toy import write_toy_dataset

SOURCES = ["stream", "resident"]


def _cfg(root: Path, source: str, *extra: str):
    return load_config("tiny", [f"data.source={source}", "data.workers=0", "train.steps=2", "train.batch_size=8",
                                *extra], {"data.path": str(root)})


def test_verify_auto_skips_sha256_over_the_size_limit_and_true_insists(tiny_dataset, tmp_path, monkeypatch):
    info = read_info(str(tiny_dataset))
    assert plan_shards(str(tiny_dataset), info, "auto").verify
    assert not plan_shards(str(tiny_dataset), info, False).verify
    monkeypatch.setattr(shards_mod, "VERIFY_AUTO_MAX_BYTES", 30720)  # the dataset holds 2 x 30720
    assert not plan_shards(str(tiny_dataset), info, "auto").verify
    assert plan_shards(str(tiny_dataset), info, True).verify
    toy = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=2, size=32, shard_size=4)
    assert not plan_shards(str(toy), read_info(str(toy)), "auto").verify
    with pytest.raises(TrainError, match="data.verify=true: .* has no build.json"):
        plan_shards(str(toy), read_info(str(toy)), True)
    with pytest.raises(TrainError, match="data.verify: must be auto, true or false"):
        load_config("tiny", ["data.verify=maybe"])


@pytest.mark.parametrize("source", SOURCES)
def test_a_dataset_of_one_class_is_warned_about(tmp_path, source, caplog):
    root = write_toy_dataset(tmp_path / "toy", num_classes=1, per_class=8, size=32, shard_size=8)
    with caplog.at_level(logging.WARNING, logger="train.data.shards"):
        src = make_source(_cfg(root, source, "model.img_size=32"), torch.device("cpu"), 0, 1)
    src.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "single class" in warnings[0] and "learns nothing" in warnings[0]


def test_sixteen_classes_are_not_warned_about(tiny_dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="train.data.shards"):
        make_source(_cfg(tiny_dataset, "stream"), torch.device("cpu"), 0, 1).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _png(size):


    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, "PNG")
    return buf.getvalue()


def test_the_stream_checks_each_sample_as_it_decodes(tiny_copy):
    """Shards read while training (remote ones are not read first) get the same checks, from the PNG header."""
    from train.data.samples import decode_sample as _decode

    sample = next(dataset.iter_shard(tiny_copy / dataset.shard_name(0)))
    assert _decode(sample, 16, 64)[0].shape == (64, 64)
    with pytest.raises(TrainError, match="image is 8x8 px, build.json records size 64"):
        _decode({**sample, "png": _png(8)}, 16, 64)
    with pytest.raises(TrainError, match="but its json says label"):
        _decode({**sample, "cls": str((int(sample["cls"]) + 3) % 16).encode()}, 16, 64)


def test_a_json_label_naming_the_class_is_not_a_mismatch():
    """fracgen's json holds the integer label, which must equal cls; a downstream WebDataset's json may name the
    class instead ("cat"), which is no disagreement (fine-tuning did not read the json before its shards were
    checked like pre-training's)."""
    from train.data.samples import sample_label
    from train.errors import TrainError

    sample = {"__key__": "k", "__url__": "u", "jpg": b"", "cls": b"1"}
    assert sample_label({**sample, "json": b'{"label": "cat"}'}, 3, image_keys=("jpg",)) == 1
    with pytest.raises(TrainError, match="but its json says label 2"):
        sample_label({**sample, "json": b'{"label": 2}'}, 3, image_keys=("jpg",))


def test_info_json_nested_too_deeply_is_a_dataset_error_not_a_crash(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(dataset.DatasetError, match="_info.json is not valid JSON \\(nested too deeply\\)"):
        dataset.parse_info(deep)
    (tmp_path / dataset.INFO_JSON).write_bytes(deep)
    with pytest.raises(TrainError, match="nested too deeply"):
        read_info(str(tmp_path))
