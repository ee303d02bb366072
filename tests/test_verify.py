"""verify (fracgen/verify.py): a sound dataset passes; damaged ones fail naming the shard and the fault (the tables
of edited records and repacked samples are in test_hostile.py)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import rewrite_record

from fracgen.cli import cli
from fracgen.errors import UsageError
from fracgen.verify import verify


def _build(root: Path) -> dict:
    return json.loads((root / "build.json").read_text())


def test_sound_dataset_passes(tiny_copy: Path) -> None:
    report = verify(tiny_copy)
    build = _build(tiny_copy)
    assert report.ok, report.lines()
    assert report.num_samples == build["num_samples"]
    assert report.num_shards == len(build["shards"])
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("OK:")


def test_flipped_byte_names_the_shard(tiny_copy: Path) -> None:
    name = _build(tiny_copy)["shards"][-1]["filename"]
    data = bytearray((tiny_copy / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (tiny_copy / name).write_bytes(bytes(data))
    report = verify(tiny_copy)
    assert not report.ok
    assert list(report.shard_problems) == [name]
    assert any("sha256" in p for p in report.shard_problems[name])
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code == 1
    assert f"{name}: sha256" in result.output


def test_missing_shard_is_named(tiny_copy: Path) -> None:
    name = _build(tiny_copy)["shards"][0]["filename"]
    (tiny_copy / name).unlink()
    report = verify(tiny_copy)
    assert report.shard_problems[name] == ["missing"]
    assert f"{name}: missing" in report.lines()


def test_wrong_count_in_info_is_named(tiny_copy: Path) -> None:
    info = json.loads((tiny_copy / "_info.json").read_text())
    name = info["splits"]["train"]["filenames"][1]
    info["splits"]["train"]["shard_lengths"][1] += 1
    (tiny_copy / "_info.json").write_text(json.dumps(info))
    report = verify(tiny_copy)
    assert list(report.shard_problems) == [name]
    assert "_info.json records" in report.shard_problems[name][0]


def test_wrong_label_and_stray_shard(tiny_copy: Path) -> None:
    # A shard rewritten with a label that disagrees with its json, and checksums updated to match, so
    # only the label check can catch it.
    import tarfile

    build = _build(tiny_copy)
    record = build["shards"][0]
    path = tiny_copy / record["filename"]
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
    (tiny_copy / "build.json").write_text(json.dumps(build))
    (tiny_copy / "train-999999.tar").write_bytes(b"")
    report = verify(tiny_copy)
    assert any("label" in p for p in report.shard_problems[record["filename"]])
    assert "train-999999.tar" in report.shard_problems


def test_incomplete_build_is_a_usage_error(tiny_copy: Path) -> None:
    (tiny_copy / "build.json").unlink()
    with pytest.raises(UsageError, match="incomplete"):
        verify(tiny_copy)


def test_a_build_json_without_its_config_fails(tiny_copy: Path) -> None:
    build = json.loads((tiny_copy / "build.json").read_text())
    del build["config"]["sigma"]
    (tiny_copy / "build.json").write_text(json.dumps(build))
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code != 0 and "config lacks sigma" in result.output


@pytest.mark.parametrize("classes", [[], "first"])
def test_params_json_must_record_every_class(tiny_copy: Path, classes) -> None:
    """An empty or short class list, with its recorded sha256 made to match, is refused, not skipped."""
    params = json.loads((tiny_copy / "params.json").read_text())
    params["classes"] = [] if classes == [] else params["classes"][:1]
    rewrite_record(tiny_copy, "params.json", params)
    report = verify(tiny_copy)
    count, first = len(params["classes"]), "0" if classes == [] else "1"
    assert not report.ok and f"params.json records {count} classes, not one for each of the 16 labels (label " \
        f"{first} missing)" in report.dataset_problems, report.dataset_problems


def test_an_unknown_preset_is_named_not_the_options_it_lacks(tiny_copy: Path) -> None:
    build = json.loads((tiny_copy / "build.json").read_text())
    build["config"]["preset"] = "x"
    (tiny_copy / "build.json").write_text(json.dumps(build))
    report = verify(tiny_copy)
    assert not report.ok and any(p.startswith("build.json: unknown preset 'x' (known: 1p-frac, ")
                                 for p in report.dataset_problems), report.dataset_problems
    assert not any("lacks" in p for p in report.dataset_problems)


def test_a_dataset_of_the_old_image_format_is_named_with_the_command_that_rebuilds_it(tmp_path, monkeypatch):
    from conftest import TINY

    from fracgen import shard as shard_mod
    from fracgen.build import BuildConfig, build
    from fracgen.encode import encode_palette_png

    old = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(shard_mod, "encode_png", encode_palette_png)
        build(BuildConfig(**TINY), old, workers=1)
    result = CliRunner().invoke(cli, ["verify", str(old)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[1].startswith("dataset: 16 image(s) are palette PNGs"), lines
    command = lines[1].split("rebuild with: ", 1)[1]
    import shlex

    args = shlex.split(command)
    assert args[:2] == ["fracgen", "build"] and args[-1] == str(tmp_path / "old-8bit")
    rebuilt = CliRunner().invoke(cli, args[1:])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert verify(tmp_path / "old-8bit").ok
    assert (old / "params.json").read_bytes() == (tmp_path / "old-8bit" / "params.json").read_bytes()


def test_an_old_format_dataset_of_an_unknown_family_gets_the_plain_advice(tmp_path, monkeypatch):
    """The rebuild command is written from build.json's config only when that config reads."""
    from conftest import TINY

    from fracgen import shard as shard_mod
    from fracgen.build import BuildConfig, build
    from fracgen.encode import encode_palette_png

    old = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(shard_mod, "encode_png", encode_palette_png)
        build(BuildConfig(**TINY), old, workers=1)
    record = json.loads((old / "build.json").read_text())
    (old / "build.json").write_text(json.dumps(dict(record, config=dict(record["config"], preset="nosuch"))))
    result = CliRunner().invoke(cli, ["verify", str(old)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "palette PNGs, the format of earlier fracgen builds (most readers decode them to {0, 1}); rebuild with " \
           "a current fracgen using the options in build.json" in result.output


NOT_A_HEAD = "build.json recipe head is not a list of the first samples' json"
OTHER_RECORDS = "its first samples render other records than build.json recipe head holds"


@pytest.mark.parametrize("change,fragment", [
    ({"recipe": {"head": 5}}, NOT_A_HEAD), ({"recipe": {"head": None}}, NOT_A_HEAD),
    ({"recipe": {"head": [1, 2]}}, NOT_A_HEAD), ({"recipe": {"head": "abc"}}, NOT_A_HEAD),
    ({"recipe": {"head": []}}, "build.json recipe head holds 0 samples, not the first 8"),
    ({"recipe": {"head": [{}] * 8}}, OTHER_RECORDS),
    ({"config": {"seed": 7}}, OTHER_RECORDS),
])
def test_a_recipe_whose_head_is_not_what_it_renders_fails(tmp_path, change, fragment) -> None:
    """The card describes a recipe's samples from its head, and a recipe is its records: verify renders its first
    samples and refuses a head push-to-hub could not describe, or options that no longer render it."""
    from conftest import TINY

    from fracgen.build import BuildConfig, build

    root = tmp_path / "recipe"
    build(BuildConfig(**TINY), root, workers=1, recipe_only=True)
    record = json.loads((root / "build.json").read_text())
    for key, value in change.items():
        record[key] = {**record[key], **value}
    (root / "build.json").write_text(json.dumps(record))
    report = verify(root)
    assert not report.ok and any(p.startswith(fragment) for p in report.dataset_problems), report.dataset_problems


def test_a_size_no_float_holds_is_named_in_a_short_line(tiny_copy: Path) -> None:
    record = json.loads((tiny_copy / "build.json").read_text())
    (tiny_copy / "build.json").write_text(json.dumps(dict(record, config=dict(record["config"], size=10**400))))
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code == 1 and "got an integer of 1329 bits" in result.output, result.output
    assert max(map(len, result.output.splitlines())) < 300, result.output


def test_a_deleted_params_json_fails(tiny_copy: Path) -> None:
    (tiny_copy / "params.json").unlink()
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code == 1
    assert "dataset: params.json is missing" in result.output


def test_a_shard_record_without_a_filename_is_one_usage_error(tiny_copy: Path) -> None:
    build = _build(tiny_copy)
    build["shards"][0] = "train-000000.tar"
    (tiny_copy / "build.json").write_text(json.dumps(build))
    result = CliRunner().invoke(cli, ["verify", str(tiny_copy)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "shards[0] is not an object with a filename" in result.output


def test_records_that_are_links_to_regular_files_verify_but_shards_linked_outside_do_not(tiny_copy: Path,
                                                                                          tmp_path: Path) -> None:
    """A `cp -rs` copy holds links: a record linked to a regular file is read like the file, but a shard linked to
    a file outside the folder is refused (push-to-hub would publish what it points at)."""
    linked = tmp_path / "linked"
    linked.mkdir()
    for path in tiny_copy.iterdir():
        if path.is_file():
            if path.suffix == ".tar":
                shutil.copy(path, linked / path.name)
            else:
                (linked / path.name).symlink_to(path)
    assert verify(linked).ok, verify(linked).lines()
    (linked / "train-000001.tar").unlink()
    (linked / "train-000001.tar").symlink_to(tiny_copy / "train-000001.tar")
    report = verify(linked)
    assert not report.ok and report.shard_problems["train-000001.tar"] == [
        "is a link to a file outside the dataset folder; copy the file in"]
    (linked / "train-000001.tar").unlink()
    (linked / "train-000001.tar").symlink_to(linked / "train-000000.tar")  # inside: read (and found wrong)
    assert "is a link to a file outside" not in " ".join(verify(linked).lines())


def test_a_source_image_linked_outside_the_folder_is_refused(tmp_path: Path) -> None:
    from test_pins import photo

    from fracgen.build import BuildConfig, build

    root = tmp_path / "real"
    build(BuildConfig(preset="real", L=2, size=48, shard_size=2), root, workers=1, source=photo(tmp_path))
    assert verify(root).ok
    (root / "source.png").unlink()
    (root / "source.png").symlink_to(tmp_path / "photo.png")  # the same bytes, outside the folder
    assert any("source.png (config.source): is a link to a file outside" in line for line in verify(root).lines())
