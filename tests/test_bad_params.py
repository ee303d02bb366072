"""Builder inputs that used to pass silently or end in the wrong message (issue 9, item 12, builder part)."""

import json
import os

import pytest
from click.testing import CliRunner
from conftest import TINY, one_line
from test_output import TINY_ARGS

from fracgen import dataset, search
from fracgen.build import BuildConfig, build
from fracgen.cli import cli
from fracgen.errors import FracgenError, UsageError

CFG = BuildConfig(**TINY)


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


def test_options_ignored_beside_params_are_refused_and_not_recorded(tiny_dataset, tmp_path):
    params = str(tiny_dataset / "params.json")
    one_line(CliRunner().invoke(cli, ["build", *TINY_ARGS, "--params", params, "--sigma", "2.0",
                                      str(tmp_path / "a")]), "--sigma would be ignored")
    assert not (tmp_path / "a").exists()
    result = CliRunner().invoke(cli, ["build", *TINY_ARGS, "--params", params, str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    command = json.loads((tmp_path / "b" / "build.json").read_text())["command"]
    assert "--params params.json" in command and "--sigma" not in command and "--maps" not in command


def test_a_build_whose_classes_cannot_be_drawn_stops_and_overwrite_replaces_it(tmp_path, monkeypatch):
    def overflow(*args, **kwargs):
        raise FracgenError("class 0: no perturbation with a finite chaos game; lower --delta")

    monkeypatch.setattr(CFG.family, "render", overflow)
    with pytest.raises(FracgenError, match="lower --delta"):
        build(CFG, tmp_path / "out", workers=1)
    assert not list((tmp_path / "out").glob("train-*"))
    monkeypatch.undo()
    lower = BuildConfig(**{**TINY, "delta": 0.05})
    with pytest.raises(UsageError, match="options differ: --delta 0.05"):
        build(lower, tmp_path / "out", workers=1, resume=True)
    assert build(lower, tmp_path / "out", workers=1, overwrite=True).complete


def test_a_damaged_systems_file_is_reported_as_such(tiny_copy):
    path = tiny_copy / dataset.SYSTEMS_JSON
    path.write_text('{"systems": [{"maps": "x"}]}')
    with pytest.raises(UsageError, match=r"systems.json is damaged .*--overwrite") as err:
        build(None, tiny_copy, workers=1, resume=True)
    assert "--params" not in str(err.value)


def test_search_disk_full_does_not_suggest_resume(tmp_path, monkeypatch):
    import errno

    import fracgen.folder

    real_open = os.open

    def full(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fracgen.folder.os, "open", full)
    monkeypatch.setattr(search, "search", lambda *a, **k: search.System(
        maps=__import__("numpy").eye(2, 6), probabilities=__import__("numpy").array([0.5, 0.5]), sigma=1.0,
        fill=0.5))
    result = CliRunner().invoke(cli, ["search", "-o", str(tmp_path / "p.json")])
    one_line(result, "disk full", "run the search again")
    assert "--resume" not in result.output


def test_options_from_a_mapping_give_the_cli_config():
    assert BuildConfig.checked(dict(TINY)) == CFG
