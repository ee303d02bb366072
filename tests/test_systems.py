"""Params files (fracgen/systems.py): a build's params.json or `fracgen search` output gives the base systems;
a build from one renders the same bytes, and what the file leaves out (the fills) is measured and recorded."""

import json

from click.testing import CliRunner
from conftest import TINY, one_line
from test_build import files

from fracgen.build import BuildConfig, build
from fracgen.cli import cli

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
