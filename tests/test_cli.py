"""The command line: every bad input is one line, exit status 2, no traceback and no files left behind."""

import errno
import json
import os
from pathlib import Path

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


def test_missing_params_file(tmp_path):
    one_line(run("build", *TINY_ARGS, "--params", tmp_path / "nope.json", tmp_path / "out"), "cannot read")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line(run("build", *TINY_ARGS, blocker / "out"), "cannot be written")
    one_line(run("build", *TINY_ARGS, blocker), "not a folder")


def test_disk_full_is_one_line_and_leaves_no_partial_shard(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_mod, "encode_png", full)
    out = tmp_path / "out"
    one_line(run("build", *TINY_ARGS, out), "disk full", "--resume")
    assert not list(out.glob("*.tar*")) and not (out / "build.json").exists()


def test_search_prints_and_writes_params(tmp_path):
    result = run("search", "--sigma", "3.5", "--seed", "3", "--size", "64", "--points", "3000")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert set(data) >= {"maps", "probabilities", "sigma", "seed", "fill"}
    assert abs(data["sigma"] - 3.5) <= 0.1 and data["fill"] >= 0.05 and data["seed"] == 3
    out = tmp_path / "p.json"
    assert run("search", "--sigma", "3.5", "--seed", "3", "--size", "64", "--points", "3000", "-o", out).exit_code == 0
    assert json.loads(out.read_text()) == data
    build_out = tmp_path / "b"
    assert run("build", *TINY_ARGS, "--params", out, build_out).exit_code == 0
    assert json.loads((build_out / "params.json").read_text())["systems"][0]["maps"] == data["maps"]


def test_search_that_cannot_succeed_says_what_to_change():
    one_line(run("search", "--sigma", "0.5", "--max-attempts", "5", "--size", "64", "--points", "2000"),
                   "--min-fill", "5 attempts")


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
