"""The dataset contract (fracgen/dataset/): what it writes, it reads back, and so do webdataset and timm's schema;
the files a dataset's records name stay inside its folder."""

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from fracgen import dataset
from fracgen.dataset import DatasetError, DatasetInfo
from fracgen.errors import FracgenError
from fracgen.folder import dump_json


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "__key__": dataset.sample_key(i),
            "png": _png((rng.random((12, 10)) * 255).astype(np.uint8)),
            "cls": str(i % 3).encode(),
            "json": json.dumps({"label": i % 3}).encode(),
        }
        for i in range(n)
    ]


def test_a_written_shard_reads_back_sample_by_sample(tmp_path):
    written = _samples(5)
    sha256, count, size = dataset.write_shard(tmp_path, 3, written)
    path = tmp_path / dataset.shard_name(3)
    assert path.name == "train-000003.tar" and count == 5 and size == path.stat().st_size
    assert sha256 == dataset.sha256_file(path)
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary name is gone
    for source in (path, str(path)):
        read = list(dataset.iter_shard(source))
        assert [{k: v for k, v in s.items() if k != "__url__"} for s in read] == written
        assert read[0]["__url__"] == str(path)
    with open(path, "rb") as f:  # a stream (a download, a pipe) reads the same
        assert [s["png"] for s in dataset.iter_shard(f)] == [s["png"] for s in written]


def test_webdataset_groups_the_shard_as_iter_shard_does(tmp_path):
    dataset.write_shard(tmp_path, 0, _samples(4))
    path = str(tmp_path / dataset.shard_name(0))
    ours = [(s["__key__"], s["cls"], s["png"]) for s in dataset.iter_shard(path)]
    theirs = [(s["__key__"], s["cls"], s["png"]) for s in wds.WebDataset(path, shardshuffle=False)]
    assert ours == theirs and len(ours) == 4


def test_the_same_samples_give_the_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert dataset.write_shard(a, 0, _samples(3)) == dataset.write_shard(b, 0, _samples(3))
    with tarfile.open(a / dataset.shard_name(0)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["00000000.cls", "00000000.json", "00000000.png"]
    assert {(m.mtime, m.mode, m.uname) for m in members} == {(dataset.MTIME, 0o444, "fracgen")}


def test_a_key_with_a_dot_is_refused_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="dot"):
        dataset.write_shard(tmp_path, 0, [{"__key__": "a.b", "cls": b"0"}])
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_shard_fails_naming_it_after_the_good_samples(tmp_path):
    dataset.write_shard(tmp_path, 0, _samples(4))
    path = tmp_path / dataset.shard_name(0)
    with tarfile.open(path) as tar:
        cut = [m for m in tar.getmembers() if m.name.endswith(".png")][2].offset_data + 10
    path.write_bytes(path.read_bytes()[:cut])  # inside sample 2's png
    read = []
    with pytest.raises(DatasetError, match=f"shard {path}"):
        for sample in dataset.iter_shard(path):
            read.append(sample["__key__"])
    assert read == ["00000000", "00000001"]


def test_info_round_trip_in_timms_schema(tmp_path):
    rows = [{"filename": dataset.shard_name(0), "num_samples": 8}, {"filename": dataset.shard_name(1), "num_samples": 3}]
    info = DatasetInfo.from_shards("tiny", 5, rows)
    dataset.write_info(tmp_path, info)
    raw = json.loads((tmp_path / dataset.INFO_JSON).read_text())
    assert raw == {"name": "tiny", "num_classes": 5, "splits": {"train": {
        "name": "train", "num_samples": 11, "filenames": ["train-000000.tar", "train-000001.tar"],
        "shard_lengths": [8, 3]}}}
    back = dataset.read_info(tmp_path)
    assert back == info and back.train.filenames == ("train-000000.tar", "train-000001.tar")


def test_a_missing_info_or_split_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        dataset.read_info(tmp_path)
    with pytest.raises(DatasetError, match="no train split"):
        _ = DatasetInfo(name="x", num_classes=1, splits={}).train


def test_decode_grey_reads_a_palette_png_as_its_grey_levels():
    grey = np.zeros((6, 7), np.uint8)
    grey[2:4, 1:5] = 127
    palette = Image.fromarray(grey).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    out = dataset.decode_grey(buf.getvalue())
    assert out.dtype == np.uint8 and out.shape == (6, 7)
    np.testing.assert_array_equal(out, grey)
    assert dataset.decode_image(_png(grey), "RGB").shape == (6, 7, 3)
    with pytest.raises(DatasetError, match="cannot decode"):
        dataset.decode_grey(b"\x89PNG not really")


def test_params_and_build_round_trip(tmp_path):
    assert dataset.read_params(tmp_path) is None
    dataset.write_params(tmp_path, {"systems": [], "classes": [{"label": 0}]})
    assert dataset.read_params(tmp_path) == {"systems": [], "classes": [{"label": 0}]}
    assert not dataset.is_complete(tmp_path)
    dataset.write_build(tmp_path, {"shards": [], "name": "x"})
    assert dataset.is_complete(tmp_path) and dataset.read_build(tmp_path)["name"] == "x"
    assert (tmp_path / dataset.BUILD_JSON).read_bytes() == dump_json({"shards": [], "name": "x"})


def test_a_build_json_without_shards_is_refused(tmp_path):
    from fracgen.errors import UsageError

    with pytest.raises(UsageError, match="incomplete"):
        dataset.read_build(tmp_path)
    (tmp_path / dataset.BUILD_JSON).write_text("[]")
    with pytest.raises(UsageError, match="'shards'"):
        dataset.read_build(tmp_path)


def test_a_marker_counts_only_while_its_shard_verifies(tmp_path):
    sha256, count, size = dataset.write_shard(tmp_path, 1, _samples(2))
    (tmp_path / dataset.STATS).mkdir(parents=True)
    dataset.write_marker(tmp_path, {"shard": 1, "sha256": sha256, "bytes": size, "num_samples": count})
    assert dataset.read_marker(tmp_path, 1)["num_samples"] == 2
    shard = tmp_path / dataset.shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    assert dataset.read_marker(tmp_path, 1) is None


def test_inside_refuses_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "source.png").symlink_to(tmp_path / "victim.png")
    with pytest.raises(FracgenError, match="not a file inside"):
        dataset.inside(tmp_path / "ds", "source.png", "config")


def test_a_record_that_cannot_be_read_is_named_not_raised(tmp_path, monkeypatch):
    """changed_records on an unreadable params.json (a permission, a file system error): one problem, no OSError."""
    import errno

    from fracgen.dataset import records

    (tmp_path / "params.json").write_text("{}")

    def unreadable(path):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(records, "sha256_file", unreadable)
    assert records.changed_records(tmp_path, {"params.json": "0" * 64}) == \
        ["params.json cannot be read (Permission denied)"]
