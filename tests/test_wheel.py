"""The wheel carries what the commands need (the card templates included), so fracgen works from an install
outside the checkout. Builds the wheel offline, installs it into a temporary folder and runs a tiny build and a
dry-run push from a folder where the source tree is not importable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel, runs the commands in processes of their own

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "fracgen", "train", "datasets_cards")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:4]}...: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the checkout gets no build/ or egg-info) and installed
    with --target into a folder of its own."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
        else:
            shutil.copy(path, src / name)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp / "dist"), str(src)], tmp, env)
    wheels = list((tmp / "dist").glob("fracgen-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
          str(wheels[0])], tmp, env)
    return site


def test_the_wheel_carries_the_card_templates(installed: Path) -> None:
    cards = sorted(p.name for p in (installed / "fracgen" / "cards").glob("*.md"))
    assert cards == sorted(p.name for p in (REPO / "datasets_cards").glob("*.md"))
    assert (installed / "train" / "configs" / "pretrain.yaml").is_file()
    wheel_names = zipfile.ZipFile(next(installed.parent.joinpath("dist").glob("*.whl"))).namelist()
    assert "fracgen/cards/1p-frac.md" in wheel_names and "fracgen/encode.py" in wheel_names


def test_build_and_dry_run_push_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(PYTHONPATH=str(installed), NUMBA_CACHE_DIR=str(tmp_path / "numba"), HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf"))
    where = _run([sys.executable, "-c", "import fracgen, fracgen.card as c; print(fracgen.__file__); "
                  "print(c.CARDS_DIR)"], work, env).split()
    assert all(Path(p).is_relative_to(installed) for p in where), where  # not the checkout, not /work/main

    cli = [sys.executable, "-m", "fracgen.cli"]
    _run([*cli, "build", "--sigma", "3.5", "--delta", "0.1", "--L", "4", "--size", "32", "--points", "2000",
          "--shard-size", "2", "--workers", "1", "out"], work, env)
    _run([*cli, "verify", "out"], work, env)
    _run([*cli, "push-to-hub", "out", "--repo-id", "alice/tiny", "--license", "cc-by-4.0", "--dry-run", "dry"], work, env)
    card = (work / "dry" / "README.md").read_text()
    assert card.startswith("---\n") and "dataset_info:" in card and "class_label:" in card
    listing = json.loads((work / "dry" / "files.json").read_text())["files"]
    assert {"train-000000.tar", "train-000001.tar", "README.md", "_info.json"} <= {f["path_in_repo"] for f in listing}


def test_the_wheel_installs_fracgen_train(installed: Path, tmp_path: Path) -> None:
    """The console script's entry point, importable from the wheel without the trainer's extra: one line, exit 2."""
    wheel = zipfile.ZipFile(next(installed.parent.joinpath("dist").glob("*.whl")))
    entry_points = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "fracgen-train = train.__main__:main" in entry_points
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['fracgen-train', '-h']; "
            "from train.__main__ import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: the trainer needs torch"), proc.stderr
    assert "pip install 'fracgen[train]'" in proc.stderr and len(proc.stderr.splitlines()) == 1
