"""Params files (fracgen/systems.py): a build's params.json or `fracgen search` output gives the base systems;
a build from one renders the same bytes, and what the file leaves out (the fills) is measured and recorded."""

import json
import re

import pytest
from click.testing import CliRunner
from conftest import TINY, one_line
from test_build import files

from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import UsageError
from fracgen.systems import class_records

TINY_ARGS = ["--L", "16", "--size", "64", "--points", "5000", "--shard-size", "8", "--workers", "1",
             "--no-progress"]


def test_params_file_rebuilds_the_same_bytes(tiny_dataset, tmp_path):
    build(BuildConfig(**TINY), tmp_path / "p", workers=1, params=tiny_dataset / "params.json")
    got, want = files(tmp_path / "p"), files(tiny_dataset)
    assert got["train-000000.tar"] == want["train-000000.tar"]
    assert "--params params.json" in json.loads((tmp_path / "p" / "build.json").read_text())["command"]


def system(**extra):
    maps = [[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0.25, 0.5]]  # Sierpinski
    return json.dumps({"maps": maps, **extra})


def test_a_params_file_without_fills_records_the_measured_ones(tmp_path):
    (tmp_path / "p.json").write_text(system())
    result = CliRunner().invoke(cli, ["build", *TINY_ARGS, "--params", str(tmp_path / "p.json"),
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "params.json").read_text()
    assert "NaN" not in text and json.loads(text)["systems"][0]["fill"] > 0


def test_missing_params_file(tmp_path):
    result = CliRunner().invoke(cli, ["build", *TINY_ARGS, "--params", str(tmp_path / "nope.json"),
                                      str(tmp_path / "out")])
    one_line(result, "cannot read")


@pytest.mark.parametrize("params,fragment", [
    ({"classes": []}, "p records 0 classes, not one for each of the 2 labels"),
    ({"classes": [{"label": 1}]}, "p records 1 classes, not one for each of the 2 labels"),
    ({"classes": [{"label": 0}, {"label": 0}]}, "p records 2 classes, not one for each of the 2 labels"),
    ({"classes": [{"label": 1}, {"label": 2}]}, "p records 2 classes, not one for each of the 2 labels (label 2 beyond"),
    ({"classes": [{"label": -1}, {"label": 0}, {"label": 1}]}, "p records 3 classes, not one for each of the 2 labels "
                                                                "(label -1 beyond them)"),
    ({"classes": [{"label": 0}, {"label": "1"}]}, "p classes are malformed"),
    ({}, "p classes are malformed"),
    (None, "p classes are malformed"),
])
def test_class_records_are_one_for_each_label(params, fragment):
    with pytest.raises(UsageError, match=f"^{re.escape(fragment)}"):
        class_records(params, 2, "p")


def test_class_records_come_in_label_order():
    assert class_records({"classes": [{"label": 1, "x": 1}, {"label": 0}]}, 2, "p") == [{"label": 0}, {"label": 1, "x": 1}]
