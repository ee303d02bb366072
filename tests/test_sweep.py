"""Sweeps: a toy grid runs end to end on CPU, reruns reuse what is complete, bad grids are one-line errors."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from train.errors import TrainError  # noqa: E402
from train.experiments.sweep import load_sweep, points, run_sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec_file(cifar_mini_tarball):
    """Write the toy sweep (sweep-cpu.yaml, fine-tuning on the mini CIFAR-10 tarball) with changes."""
    def write(tmp_path, **changes):
        return _spec_file(tmp_path, cifar_mini_tarball, **changes)
    return write


def _spec_file(tmp_path, data, **changes):
    spec = yaml.safe_load((REPO / "train" / "configs" / "sweep-cpu.yaml").read_text())
    spec["finetune"]["data"] = str(data)
    spec["pretrain"]["steps"], spec["finetune"]["steps"] = 8, 4
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_is_the_cartesian_product(spec_file, tmp_path):
    spec = load_sweep(spec_file(tmp_path, grid={"delta": [0.1, 0.2], "L": [4, 8, 16]}))
    got = points(spec)
    assert len(got) == 6 and got[0] == {"delta": 0.1, "L": 4} and got[-1] == {"delta": 0.2, "L": 16}


@pytest.mark.parametrize("changes,fragment", [
    ({"grid": {}}, "grid"),
    ({"grid": {"delta": []}}, "grid"),
    ({"grid": {"dleta": [0.1]}}, "unknown build option(s) dleta"),
    ({"pretrain": {"config": "tiny"}}, "pretrain.steps"),
    # F-SWEEP: a point fracgen would refuse, a typo in a stage's set, sections of the wrong shape
    ({"grid": {"delta": [0.1, -5]}}, "point delta-5: --delta must be"),
    ({"grid": {"L": [4, 0]}}, "point L0: "),
    ({"build": {"L": 16, "size": 64, "points": -1}}, "point delta0.001: --points"),
    ({"grid": {"delta": [0.1, 0.10]}}, "share the folder name delta0.1"),
    ({"pretrain": {"config": "tiny", "steps": 8, "set": ["train.bogus=1"]}}, "pretrain: config: unknown key 'train.bogus'"),
    ({"finetune": {"config": "tiny-finetune", "steps": 4, "set": ["optim.lr=-1"]}}, "finetune: optim.lr"),
    ({"finetune": {"config": "nosuch", "steps": 4}}, "finetune: config 'nosuch' not found"),
    ({"pretrain": {"config": "tiny", "steps": 8, "set": "train.seed=1"}}, "pretrain.set must be a list"),
    ({"pretrain": {"config": "tiny", "steps": 8, "set": ["model.name=bogus_net"]}}, "pretrain: "),
    ({"pretrain": [1]}, "pretrain must be a mapping"),
    ({"build": [1]}, "build must be a mapping"),
    ({"paper": {"values": [1, 2]}}, "paper.values must map a grid value"),
])
def test_bad_sweeps_are_refused(spec_file, tmp_path, changes, fragment):
    with pytest.raises(TrainError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(spec_file(tmp_path, **changes))


@pytest.mark.parametrize("text", ["- 1\n", "just text\n", "3\n"])
def test_a_sweep_yaml_that_is_not_a_mapping_is_refused(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(TrainError, match="top level must be a mapping"):
        load_sweep(path)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "train" / "configs").glob("sweep-*.yaml")))
def test_every_shipped_sweep_passes_the_up_front_checks(name):
    assert points(load_sweep(name))


def test_a_bad_grid_point_is_refused_before_anything_is_built(spec_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "sweep", str(spec_file(tmp_path, grid={"delta": [0.1, -5]})),
                           "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "data")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "point delta-5" in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "data").exists()


def test_empty_grid_is_one_line_on_the_command_line(spec_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "sweep", str(spec_file(tmp_path, grid={"delta": []})),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "grid" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_toy_sweep_runs_end_to_end_and_reruns_from_its_results(spec_file, tmp_path):
    torch.set_num_threads(1)
    spec = load_sweep(spec_file(tmp_path))
    out = tmp_path / "sweep"
    rows = run_sweep(spec, out, tmp_path / "data")
    assert [r["point"] for r in rows] == ["scratch", "delta0.001", "delta0.1"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["delta"] for r in table] == ["", "0.001", "0.1"]
    assert table[2]["paper"] == "84.2" and table[1]["paper"] == "1.2"
    for r in table[1:]:
        assert 0 <= float(r["finetune_top1"]) <= 100 and r["gain_over_scratch"] != ""
    md = (out / "results.md").read_text()
    assert "| delta0.1 | 0.1 |" in md and "paper Table 5" in md
    assert (out / "results.png").stat().st_size > 10_000
    for name in ("delta0.001", "delta0.1"):
        assert (out / "datasets" / name / "build.json").is_file()
        assert (out / "runs" / name / "pretrain" / "model.safetensors").is_file()
    stamp = (out / "runs" / "delta0.1" / "pretrain" / "metrics.json").stat().st_mtime_ns
    assert run_sweep(spec, out, tmp_path / "data") == rows  # complete parts are reused, not trained again
    assert (out / "runs" / "delta0.1" / "pretrain" / "metrics.json").stat().st_mtime_ns == stamp
    # another budget into the same folder would reuse these runs as its own: refused before anything runs
    other = load_sweep(spec_file(tmp_path, finetune={**spec["finetune"], "steps": 5}))
    with pytest.raises(TrainError, match=r"holds a sweep of other settings \(finetune differ\)"):
        run_sweep(other, out, tmp_path / "data")
    assert (out / "runs" / "delta0.1" / "pretrain" / "metrics.json").stat().st_mtime_ns == stamp


def test_a_stopped_stage_ends_the_sweep_and_nothing_builds_on_it(spec_file, tmp_path):
    """A pre-training stopped part-way (train.stop_at here, SIGTERM for a user) used to be fine-tuned from as if
    complete, then the sweep crashed on its missing metrics; a rerun kept that fine-tune. Now the sweep ends on one
    line and nothing is fine-tuned from the half-trained checkpoint; `set: null` reads as no settings."""
    torch.set_num_threads(1)
    spec = load_sweep(spec_file(tmp_path, grid={"delta": [0.1]}, scratch=False,
                                pretrain={"config": "tiny", "steps": 8, "set": ["train.stop_at=2"]}))
    out = tmp_path / "sweep"
    with pytest.raises(TrainError, match=r"sweep: .*pretrain stopped at step 2 \(train.stop_at\)"):
        run_sweep(spec, out, tmp_path / "data")
    assert not (out / "runs" / "delta0.1" / "finetune").exists()
    nulls = load_sweep(spec_file(tmp_path, finetune={"config": "tiny-finetune", "steps": 4, "set": None}))
    assert nulls["finetune"]["set"] == []


def test_finetune_data_defaults_to_cifar10_and_data_overrides_it(spec_file, tmp_path):
    spec = yaml.safe_load(spec_file(tmp_path).read_text())
    del spec["finetune"]["data"]
    path = tmp_path / "no-data.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_sweep(path)["finetune"]["data"] == "cifar10"
    proc = subprocess.run([sys.executable, "-m", "train", "sweep", str(path), "--out", str(tmp_path / "o"),
                           "--data", str(tmp_path / "missing.tar.gz"), "--data-root", str(tmp_path / "data")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "unknown dataset" in proc.stderr and "(--data)" in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "data").exists()
