"""`fracgen search` (fracgen/search.py): a base system of the target sigma-factor, printed or written as a params
file that builds the same systems; what cannot succeed or fit is one line saying what to change."""

import errno
import json
import os

import numpy as np
from click.testing import CliRunner
from conftest import one_line

from fracgen import search
from fracgen.cli import cli

TINY_ARGS = ["--L", "8", "--size", "64", "--points", "3000", "--shard-size", "4", "--workers", "1", "--no-progress"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


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


def test_search_refuses_what_cannot_fit():
    one_line(CliRunner().invoke(cli, ["search", "--points", "10000000000"]), "--points 10000000000 needs about")


def test_search_disk_full_does_not_suggest_resume(tmp_path, monkeypatch):
    import fracgen.folder

    real_open = os.open

    def full(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fracgen.folder.os, "open", full)
    monkeypatch.setattr(search, "search", lambda *a, **k: search.System(
        maps=np.eye(2, 6), probabilities=np.array([0.5, 0.5]), sigma=1.0, fill=0.5))
    result = CliRunner().invoke(cli, ["search", "-o", str(tmp_path / "p.json")])
    one_line(result, "disk full", "run the search again")
    assert "--resume" not in result.output


def test_search_never_writes_over_a_users_file(tmp_path) -> None:
    """`-o` replaces only a params file an earlier `fracgen search` wrote (judged whole, however long), never a
    user's file."""
    runner = CliRunner()
    params = tmp_path / "params.json"
    params.write_text('{"my": "notes"}')
    command = ["search", "--size", "64", "--points", "2000", "-o", str(params)]
    one_line(runner.invoke(cli, command), "is not a params file written by `fracgen search`")
    assert params.read_text() == '{"my": "notes"}'
    params.unlink()
    for seed in ("0", "1"):  # a params file of an earlier search is replaced
        assert runner.invoke(cli, [*command, "--seed", seed]).exit_code == 0
    assert json.loads(params.read_text())["seed"] == 1
    big = dict(json.loads(params.read_text()), maps=[[0.123456789] * 6] * 1000)  # --maps 1000: ~170 KB
    params.write_text(json.dumps(big, indent=1))
    assert params.stat().st_size > 1 << 16
    assert runner.invoke(cli, command).exit_code == 0  # judged whole, not by its first 64 KiB
