"""verify: a sound dataset passes; damaged ones fail naming the shard and the fault."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakedata import dataset  # noqa: F401 - fixture

from fracgen.cli_publish import verify_command
from fracgen.errors import UsageError
from fracgen.verify import verify


def _build(root: Path) -> dict:
    return json.loads((root / "build.json").read_text())


def test_sound_dataset_passes(dataset: Path) -> None:  # noqa: F811
    report = verify(dataset)
    build = _build(dataset)
    assert report.ok, report.lines()
    assert report.num_samples == build["num_samples"]
    assert report.num_shards == len(build["shards"])
    result = CliRunner().invoke(verify_command, [str(dataset)])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("OK:")


def test_flipped_byte_names_the_shard(dataset: Path) -> None:  # noqa: F811
    name = _build(dataset)["shards"][-1]["filename"]
    data = bytearray((dataset / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (dataset / name).write_bytes(bytes(data))
    report = verify(dataset)
    assert not report.ok
    assert list(report.shard_problems) == [name]
    assert any("sha256" in p for p in report.shard_problems[name])
    result = CliRunner().invoke(verify_command, [str(dataset)])
    assert result.exit_code == 1
    assert f"{name}: sha256" in result.output


def test_missing_shard_is_named(dataset: Path) -> None:  # noqa: F811
    name = _build(dataset)["shards"][0]["filename"]
    (dataset / name).unlink()
    report = verify(dataset)
    assert report.shard_problems[name] == ["missing"]
    assert f"{name}: missing" in report.lines()


def test_wrong_count_in_info_is_named(dataset: Path) -> None:  # noqa: F811
    info = json.loads((dataset / "_info.json").read_text())
    name = info["splits"]["train"]["filenames"][1]
    info["splits"]["train"]["shard_lengths"][1] += 1
    (dataset / "_info.json").write_text(json.dumps(info))
    report = verify(dataset)
    assert list(report.shard_problems) == [name]
    assert "_info.json records" in report.shard_problems[name][0]


def test_wrong_label_and_stray_shard(dataset: Path) -> None:  # noqa: F811
    # A shard rewritten with a label that disagrees with its json, and checksums updated to match, so
    # only the label check can catch it.
    import hashlib
    import tarfile

    build = _build(dataset)
    record = build["shards"][0]
    path = dataset / record["filename"]
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    first_cls = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".cls"))
    label = int(members[first_cls][1])
    wrong = str((label + 1) % build["num_classes"]).encode()
    members[first_cls][0].size = len(wrong)
    members[first_cls] = (members[first_cls][0], wrong)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        import io

        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    record["bytes"] = path.stat().st_size
    (dataset / "build.json").write_text(json.dumps(build))
    (dataset / "train-999999.tar").write_bytes(b"")
    report = verify(dataset)
    assert any("label" in p for p in report.shard_problems[record["filename"]])
    assert "train-999999.tar" in report.shard_problems


def test_incomplete_build_is_a_usage_error(dataset: Path) -> None:  # noqa: F811
    (dataset / "build.json").unlink()
    with pytest.raises(UsageError, match="incomplete"):
        verify(dataset)
