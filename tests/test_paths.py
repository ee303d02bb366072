"""Every path a dataset's own files name stays inside the dataset folder (issue 9, item 8), and preview's
hostile-record cases end in one line (item 11)."""

import json

import pytest
from click.testing import CliRunner
from conftest import one_line

from fracgen import dataset
from fracgen.cli import cli
from fracgen.errors import FracgenError


def test_inside_refuses_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "source.png").symlink_to(tmp_path / "victim.png")
    with pytest.raises(FracgenError, match="not a file inside"):
        dataset.inside(tmp_path / "ds", "source.png", "config")


def test_preview_survives_a_newline_in_the_name(tiny_copy):
    record = json.loads((tiny_copy / "build.json").read_text())
    record["name"] = "a\nb"
    (tiny_copy / "build.json").write_text(json.dumps(record))
    result = CliRunner().invoke(cli, ["preview", str(tiny_copy)])
    assert result.exit_code == 0, result.output


def test_preview_out_on_a_folder_that_cannot_be_written(tiny_dataset):
    out = "/proc/fracgen-no-such/p.png"  # read-only even for root
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_dataset), "--out", out]), "cannot write")


def test_preview_out_on_a_full_disk_leaves_nothing(tiny_dataset, tmp_path, monkeypatch):
    def full(path, data, then="rerun with --resume"):
        raise FracgenError(f"disk full while writing {path}; free space and {then}")

    from fracgen import preview

    monkeypatch.setattr(preview, "write_atomic", full)
    out = tmp_path / "p.png"
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_dataset), "--out", str(out)]), "disk full")
    assert not out.exists()


def test_preview_of_an_undecodable_image(tiny_copy):
    for shard in (0, 1):
        samples = [{k: v for k, v in x.items() if k != "__url__"} | {"png": b"\x89PNG\r\n\x1a\nbroken"}
                   for x in dataset.iter_shard(tiny_copy / dataset.shard_name(shard))]
        dataset.write_shard(tiny_copy, shard, samples)
    one_line(CliRunner().invoke(cli, ["preview", str(tiny_copy)]), "cannot decode")
