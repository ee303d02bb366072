"""Sweeps: a toy grid runs end to end on CPU, reruns reuse what is complete."""

import csv
import subprocess
import sys

import pytest
import torch
import yaml
from train_helpers import (
    REPO,
)

from train.errors import TrainError
from train.experiments.sweep import load_sweep, points, run_sweep


def test_grid_is_the_cartesian_product(spec_file, tmp_path):
    spec = load_sweep(spec_file(tmp_path, grid={"delta": [0.1, 0.2], "L": [4, 8, 16]}))
    got = points(spec)
    assert len(got) == 6 and got[0] == {"delta": 0.1, "L": 4} and got[-1] == {"delta": 0.2, "L": 16}


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "train" / "configs").glob("sweep-*.yaml")))
def test_every_shipped_sweep_passes_the_up_front_checks(name):
    assert points(load_sweep(name))


@pytest.mark.slow
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
    """A pre-training stopped part-way (train.stop_at here, SIGTERM for a user) is not fine-tuned from as if
    complete, and a rerun keeps no such fine-tune: the sweep ends on one line and nothing is fine-tuned from the
    half-trained checkpoint; `set: null` reads as no settings."""
    torch.set_num_threads(1)
    spec = load_sweep(spec_file(tmp_path, grid={"delta": [0.1]}, scratch=False,
                                pretrain={"config": "tiny", "steps": 8, "set": ["train.stop_at=2"]}))
    out = tmp_path / "sweep"
    with pytest.raises(TrainError, match=r"sweep: .*pretrain stopped at step 2 \(train.stop_at\)"):
        run_sweep(spec, out, tmp_path / "data")
    assert not (out / "runs" / "delta0.1" / "finetune").exists()
    nulls = load_sweep(spec_file(tmp_path, finetune={"config": "tiny-finetune", "steps": 4, "set": None}))
    assert nulls["finetune"]["set"] == []


@pytest.mark.slow
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
