"""train.loop: the step loop's stops (signals, ``train.stop_at``, a loss that is not finite) and exact
continuation from a checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from train_helpers import (
    QUICK,
    REPO,
    assert_one_line,
    assert_same_weights,
    cfg_of,
    image_folder,
    poison_loss,
    run_cli,
    start_cli,
    tiny_cfg,
    wait_for_step,
)

from train.config import load_config
from train.errors import TrainError
from train.pretrain import pretrain
from train.run import safe_state


def _rows(run: Path) -> list[dict]:
    import csv

    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    """6 steps in one go == 3 steps, stop, --resume to 6 (mixup, cutmix, RandAugment, erasing all on)."""
    recipe = ["data.source=stream", "train.steps=6", "train.batch_size=8", "train.log_every=1", "aug.mixup=0.8",
              "aug.cutmix=1.0", "aug.auto_augment=rand-m9-mstd0.5-inc1", "aug.re_prob=0.5", "aug.hflip=0.5",
              "aug.rrc_scale=[0.08,1.0]", "model.drop_path=0.1", "data.eval_path=''"]
    pretrain(tiny_cfg(tiny_dataset, *recipe), tmp_path / "straight")
    stopped = pretrain(tiny_cfg(tiny_dataset, *recipe, "train.stop_at=3"), tmp_path / "resumed")
    assert stopped == {"stopped": True, "steps": 3, "reason": "train.stop_at"}
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "stopped"
    pretrain(tiny_cfg(tiny_dataset, *recipe), tmp_path / "resumed", resume=True)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["loss"] for r in _rows(tmp_path / "straight")] == [r["loss"] for r in _rows(tmp_path / "resumed")]


def test_resume_with_the_command_that_stopped_runs_to_the_end(tiny_dataset, tmp_path):
    """`train.stop_at=N` stops at N; the same command with --resume continues to the end (not one step more)."""
    args = ["data.source=stream", "train.steps=6", "train.batch_size=8", "train.log_every=1", "data.eval_path=''",
            "train.stop_at=3"]
    assert pretrain(tiny_cfg(tiny_dataset, *args), tmp_path / "run")["steps"] == 3
    done = pretrain(tiny_cfg(tiny_dataset, *args), tmp_path / "run", resume=True)
    assert done.get("steps", done.get("step")) == 6 and not done.get("stopped"), done
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_that_resumes_exactly(tiny_dataset, tmp_path):
    """A SIGTERM'd tiny pre-training, resumed, ends with the weights of an uninterrupted one (every tensor)."""
    steps = 40
    proc = start_cli(tiny_dataset, tmp_path / "stopped", steps)
    wait_for_step(proc, tmp_path / "stopped", 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    status = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert status["status"] == "stopped" and status["reason"] == "SIGTERM", status
    assert 3 <= status["step"] < steps
    state = safe_state.load(tmp_path / "stopped" / "state.safetensors")
    assert state["step"] == status["step"]
    # stderr is a pipe: plain lines, no tqdm bar; the CPU is named and progress shows from the first step
    assert "\r" not in stderr
    assert "pre-training on the CPU" in stderr and "step 1 took" in stderr
    assert f"step 1/{steps}  loss " in stderr and f"step 3/{steps}  loss " in stderr
    assert "SIGTERM received" in stderr

    resumed = pretrain(tiny_cfg(tiny_dataset, f"train.steps={steps}"), tmp_path / "stopped", resume=True)
    assert resumed["steps"] == steps
    pretrain(tiny_cfg(tiny_dataset, f"train.steps={steps}"), tmp_path / "straight")
    assert_same_weights(tmp_path / "straight", tmp_path / "stopped")
    straight_log = (tmp_path / "straight" / "log.csv").read_text().splitlines()
    resumed_log = (tmp_path / "stopped" / "log.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in straight_log] == [r.split(",")[2] for r in resumed_log]  # the losses


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step(tiny_dataset, tmp_path):
    """2 CPU ranks (gloo): torchrun forwards SIGTERM, the ranks agree on the step, --resume ends where a straight
    run ends."""
    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                "-m", "train", "pretrain", "--config", "tiny", "--data", str(tiny_dataset), "--out", str(out),
                "--steps", "30", *[a for o in QUICK for a in ("--set", o)], *extra]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd(tmp_path / "stopped"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, tmp_path / "stopped", 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    status = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert status["status"] == "stopped" and status["reason"] == "SIGTERM", stderr[-2000:]
    assert stderr.count(f"stopped at step {status['step']} of 30 (SIGTERM)") == 2  # both ranks, the same step
    for out, extra in ((tmp_path / "stopped", ["--resume"]), (tmp_path / "straight", [])):
        done = subprocess.run(cmd(out, *extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    assert_same_weights(tmp_path / "straight", tmp_path / "stopped")


def test_a_loss_that_turns_nan_fails_the_run_naming_the_step(tiny_dataset, tmp_path, monkeypatch):
    from train.pretrain import pretrain

    poison_loss(monkeypatch, float("nan"), from_step=2)  # from the third step on
    cfg = load_config("tiny", ["data.source=stream", "train.batch_size=8", "train.log_every=1", "data.eval_path=''",
                               "train.steps=6"], {"data.path": str(tiny_dataset)})
    with pytest.raises(TrainError, match=r"the loss became nan by step 3"):
        pretrain(cfg, tmp_path / "run")
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed" and "step 3" in status["error"]


@pytest.fixture(scope="module")
def complete(tiny_dataset, tmp_path_factory):
    """A complete run of 6 steps."""
    out = tmp_path_factory.mktemp("attack2") / "done"
    assert pretrain(cfg_of(tiny_dataset), out)["steps"] == 6
    return out


def test_a_run_killed_after_its_last_checkpoint_reports_its_logged_loss(complete, tiny_dataset, tmp_path):
    """Killed between the final checkpoint and metrics.json: --resume finishes it with finite metrics."""
    from train.run.folder import write_status

    run = tmp_path / "run"
    shutil.copytree(complete, run)
    (run / "metrics.json").unlink()
    write_status(run, "running")
    logged = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:] if line.split(",")[4]]
    m = pretrain(cfg_of(tiny_dataset), run, resume=True)
    assert m["steps"] == 6 and m["final_loss"] == pytest.approx(float(logged[-1][2]))
    text = (run / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["final_loss"] == m["final_loss"]
    assert "nan" not in (run / "log.csv").read_text()


def test_a_finetune_whose_loss_becomes_nan_stops_with_one_line(tmp_path, monkeypatch, capsys):
    poison_loss(monkeypatch, float("inf"), from_step=1)  # from the second step on
    data = image_folder(tmp_path / "if", train=20)
    code, _, err = run_cli(["finetune", "--config", "tiny-finetune", "--data", data, "--out", tmp_path / "ft",
                        "--epochs", "1", "--batch-size", "10", "--set", "train.log_every=1"], capsys)
    assert_one_line(code, err, "the loss became inf by step 2")
    status = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert status["status"] == "failed" and not (tmp_path / "ft" / "metrics.json").exists()
