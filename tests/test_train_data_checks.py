"""Before step 1 the trainer refuses damaged data with one line naming the damage (issue 9 item 5).

Every source reads its shards through ``train.shards``, so each case runs on both; nothing is trained and no
run folder is made.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fracgen import dataset  # noqa: E402
from train.config import load_config  # noqa: E402
from train.data import shards as shards_mod  # noqa: E402
from train.data.pretraining import make_source  # noqa: E402
from train.data.shards import (  # noqa: E402
    plan_shards,  # noqa: E402
    read_info,  # noqa: E402
)
from train.errors import TrainError  # noqa: E402
from train.experiments.toy import write_toy_dataset  # noqa: E402
from train.pretrain import pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["stream", "resident"]


def _cfg(root: Path, source: str, *extra: str):
    return load_config("tiny", [f"data.source={source}", "data.workers=0", "train.steps=2", "train.batch_size=8",
                                *extra], {"data.path": str(root)})


def _refused(root: Path, source: str, tmp_path: Path, match: str, *extra: str) -> str:
    """pretrain refuses before it makes a run folder; returns the one-line message."""
    with pytest.raises(TrainError, match=match) as info:
        pretrain(_cfg(root, source, *extra), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    message = str(info.value)
    assert "\n" not in message
    return message


def _member_offsets(shard: Path) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of every member of a tar."""
    with tarfile.open(shard) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar]


@pytest.mark.parametrize("source", SOURCES)
def test_shard_cut_at_a_header_boundary_is_refused(tiny_copy, tmp_path, source):
    shard = tiny_copy / dataset.shard_name(0)
    size = shard.stat().st_size
    # the cut (truncate -s 18432) fell on a member header: cut at the header in the middle of the shard
    headers = sorted(off for _, off, _ in _member_offsets(shard))
    cut = headers[len(headers) // 2]
    os.truncate(shard, cut)
    msg = _refused(tiny_copy, source, tmp_path, rf"train-000000.tar: {cut} bytes, build.json records {size}")
    assert "fracgen verify" in msg


@pytest.mark.parametrize("source", SOURCES)
def test_cut_shard_without_build_json_is_refused_by_its_sample_count(tiny_copy, tmp_path, source):
    """Without build.json (a toy set, a copied folder) the count in _info.json still catches the cut."""
    (tiny_copy / dataset.BUILD_JSON).unlink()
    shard = tiny_copy / dataset.shard_name(1)
    members = _member_offsets(shard)
    keys = sorted({name.split(".")[0] for name, _, _ in members})
    cut = next(off for name, off, _ in members if name.startswith(keys[6] + "."))  # samples 0-5 stay whole
    os.truncate(shard, cut)
    _refused(tiny_copy, source, tmp_path, r"train-000001.tar: 6 samples, _info.json lists 8")


def _flip_idat_crc(shard: Path) -> bytes:
    """Flip a byte of the first PNG's IDAT CRC inside the shard (Pillow does not check it); returns the PNG."""
    name, _, data_off = next(m for m in _member_offsets(shard) if m[0].endswith(".png"))
    raw = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        png = tar.extractfile(name).read()
    idat = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[idat:idat + 4])
    pos = data_off + idat + 8 + length  # the first CRC byte after the IDAT data
    raw[pos] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return bytes(raw[data_off:data_off + len(png)])


@pytest.mark.parametrize("source", SOURCES)
def test_flipped_byte_in_a_png_that_still_decodes_is_refused(tiny_copy, tmp_path, source):
    shard = tiny_copy / dataset.shard_name(0)
    with tarfile.open(shard) as tar:
        original = next(tar.extractfile(m).read() for m in tar if m.name.endswith(".png"))
    damaged = _flip_idat_crc(shard)
    assert damaged != original and shard.stat().st_size == 30720
    # the premise: the damaged image decodes to the same pixels, so only the checksum can tell
    assert np.array_equal(dataset.decode_grey(damaged), dataset.decode_grey(original))
    _refused(tiny_copy, source, tmp_path, r"train-000000.tar: sha256 [0-9a-f]{12}\.\.\. does not match build.json")
    # --no-verify-data: the user's call, the source reads it
    src = make_source(_cfg(tiny_copy, source, "data.verify=false"), torch.device("cpu"), 0, 1)
    assert src.num_classes == 16
    src.close()


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


def _relabel(root: Path, shard: int, label: bytes) -> None:
    """Rewrite one shard with the first sample's label replaced (the count stays the same)."""
    samples = list(dataset.iter_shard(root / dataset.shard_name(shard)))
    samples[0]["cls"] = label
    dataset.write_shard(root, shard, [{k: v for k, v in s.items() if k != "__url__"} for s in samples])


@pytest.mark.parametrize("source", SOURCES)
def test_label_out_of_range_is_one_line_naming_shard_and_key(tmp_path, source):
    root = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=4, size=32, shard_size=8)
    _relabel(root, 1, b"4")
    key = next(dataset.iter_shard(root / dataset.shard_name(1)))["__key__"]
    _refused(root, source, tmp_path, rf"train-000001.tar: sample {key}: label 4 is out of range for the 4 classes",
             "model.img_size=32")


def test_label_out_of_range_on_the_command_line(tmp_path):
    root = write_toy_dataset(tmp_path / "toy", num_classes=4, per_class=4, size=32, shard_size=8)
    _relabel(root, 0, b"-1")
    proc = subprocess.run([sys.executable, "-m", "train", "pretrain", "--config", "tiny", "--data", str(root),
                           "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "8", "--img-size", "32"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "label -1 is out of range" in errors[0] and "train-000000.tar" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


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


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd"])
def test_shard_names_outside_the_folder_are_refused(tiny_copy, tmp_path, name):
    info = json.loads((tiny_copy / dataset.INFO_JSON).read_text())
    info["splits"]["train"]["filenames"][1] = name
    (tiny_copy / dataset.INFO_JSON).write_text(json.dumps(info))
    _refused(tiny_copy, "stream", tmp_path, "names shard .* outside the folder")
