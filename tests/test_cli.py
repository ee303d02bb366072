"""The command line (fracgen/cli.py): build, resume and shard ranges through click; what the command records; a
bad input or a failing disk is one line, exit status 2, no traceback and no files left behind; the readers stay
light. The tables of bad options are in test_hostile.py."""

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line

from fracgen import shard as shard_mod
from fracgen.cli import cli

TINY_ARGS = ["--L", "8", "--size", "64", "--points", "3000", "--shard-size", "4", "--workers", "1", "--no-progress"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_build_then_refuse_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    result = run("build", *TINY_ARGS, out)
    assert result.exit_code == 0, result.output
    assert "2 shards" in result.output and (out / "build.json").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    one_line(run("build", *TINY_ARGS, out), "not empty", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    one_line(run("build", "--resume", "--L", "9", out), "differ", "--L 9")
    result = run("build", "--resume", out)
    assert result.exit_code == 0 and "0 rendered now" in result.output


def test_shard_range_leaves_an_incomplete_build_that_resume_finishes(tmp_path):
    out = tmp_path / "o"
    result = run("build", *TINY_ARGS, "--shard-range", "1:2", out)
    assert result.exit_code == 0 and "incomplete" in result.output
    result = run("build", "--resume", out)
    assert result.exit_code == 0 and "1 already complete" in result.output


def test_options_ignored_beside_params_are_refused_and_not_recorded(tiny_dataset, tmp_path):
    params = str(tiny_dataset / "params.json")
    one_line(run("build", *TINY_ARGS, "--params", params, "--sigma", "2.0", tmp_path / "a"), "--sigma would be ignored")
    assert not (tmp_path / "a").exists()
    result = run("build", *TINY_ARGS, "--params", params, tmp_path / "b")
    assert result.exit_code == 0, result.output
    command = json.loads((tmp_path / "b" / "build.json").read_text())["command"]
    assert "--params params.json" in command and "--sigma" not in command and "--maps" not in command


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line(run("build", *TINY_ARGS, blocker / "out"), "cannot be written")
    one_line(run("build", *TINY_ARGS, blocker), "not a folder")


def test_an_out_name_over_255_characters_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["build", *TINY_ARGS, str(tmp_path / ("x" * 300))])
    one_line(result, "File name too long")
    result = CliRunner().invoke(cli, ["build", "--resume", str(tmp_path / ("x" * 300))])
    one_line(result, "File name too long")


def test_disk_full_is_one_line_and_leaves_no_partial_shard(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_mod, "encode_png", full)
    out = tmp_path / "out"
    one_line(run("build", *TINY_ARGS, out), "disk full", "--resume")
    assert not list(out.glob("*.tar*")) and not (out / "build.json").exists()


@pytest.mark.slow
def test_verify_and_preview_import_neither_numba_nor_torch(tiny_dataset, tmp_path):
    """The readers of a dataset stay light: no numba (the builder's kernels) and no torch (the trainer)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from fracgen.cli import cli\n"
        "for args in (['verify', sys.argv[1]], ['preview', sys.argv[1], '--out', sys.argv[2]]):\n"
        "    try:\n"
        "        cli(args, standalone_mode=False)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print(sorted(m for m in ('numba', 'torch', 'webdataset', 'fracgen.kernels.chaos') if m in sys.modules))\n"
    )
    out = tmp_path / "p.png"
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_dataset), str(out)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
    assert "OK:" in proc.stdout and out.is_file()
