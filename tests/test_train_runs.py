"""Run folders: stops by signal, runs killed before their first checkpoint, checkpoint integrity and file modes,
timm's folder layout (``local-dir:``), logs a file can hold, TensorBoard. One torch thread, tiny ViT."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import timm
import torch
from conftest import free_port
from safetensors.torch import load_file

from train.config import load_config
from train.errors import TrainError
from train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
# 8 images of 64 px per step on the stream source, no evaluation: a step takes a fraction of a second
QUICK = ["data.source=stream", "train.batch_size=8", "train.log_every=1", "data.eval_path=''"]


def tiny_cfg(data: Path, *overrides: str, **values):
    return load_config("tiny", [*QUICK, *overrides], {"data.path": str(data), **values})


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def start_cli(data: Path, out: Path, steps: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "train", "pretrain", "--config", "tiny", "--data", str(data), "--out", str(out),
           "--steps", str(steps), *[a for o in QUICK for a in ("--set", o)], *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 240) -> None:
    """Wait until ``log.csv`` has a row at ``step`` or later."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        log = out / "log.csv"
        if log.is_file():
            rows = log.read_text().splitlines()[1:]
            if rows and int(rows[-1].split(",")[0]) >= step:
                return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no step {step} after {timeout} s")


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
    state = torch.load(tmp_path / "stopped" / "state.pt", weights_only=False)
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


def test_killed_before_the_first_checkpoint(tiny_dataset, tmp_path):
    """kill -9 before any checkpoint: the folder is refused while in use, then --resume starts from step 0
    (the weights of a fresh run) and so does a plain rerun."""
    run = tmp_path / "killed"
    proc = start_cli(tiny_dataset, run, 5000)
    wait_for_step(proc, run, 2)
    with pytest.raises(TrainError, match=r"in use by another training process \(pid \d+\)"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), run)
    proc.kill()
    proc.communicate(timeout=60)
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    assert not (run / "state.pt").exists() and not (run / "model.safetensors").exists()
    shutil.copytree(run, tmp_path / "killed-again")

    assert pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), run, resume=True)["steps"] == 6
    assert pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "killed-again")["steps"] == 6
    pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "fresh")
    assert_same_weights(tmp_path / "fresh", run)
    assert_same_weights(tmp_path / "fresh", tmp_path / "killed-again")
    assert [r.split(",")[0] for r in (run / "log.csv").read_text().splitlines()[1:]] == [str(i) for i in range(1, 7)]
    # a finished run is still protected (--resume of an absent folder: test_train_resume.py)
    with pytest.raises(TrainError, match="already holds a run"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), run)


def test_checkpoint_files_are_whole_same_step_and_0644(tiny_dataset, tmp_path):
    cfg = tiny_cfg(tiny_dataset, "train.steps=6", "train.stop_at=2")
    assert pretrain(cfg, tmp_path / "a")["steps"] == 2
    assert pretrain(tiny_cfg(tiny_dataset, "train.steps=6", "train.stop_at=3"), tmp_path / "b")["steps"] == 3
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "state.pt", "config.json", "run.json", "log.csv"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list((tmp_path / "a").glob("*.tmp"))

    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(TrainError, match=r"model.safetensors is from step 3 but state.pt from step 2"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "a", resume=True)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["status"] == "failed"
    (tmp_path / "b" / "state.pt").unlink()
    with pytest.raises(TrainError, match="has model.safetensors but no state.pt"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=6"), tmp_path / "b", resume=True)


def test_run_folder_loads_in_timm_alone_with_the_trainers_logits(tiny_dataset, tmp_path, monkeypatch):
    import train.pretrain as pt

    made, create = [], pt.create_model

    def keep(cfg, num_classes):  # the very model the trainer trains
        made.append(create(cfg, num_classes))
        return made[-1]

    monkeypatch.setattr(pt, "create_model", keep)
    pretrain(tiny_cfg(tiny_dataset, "train.steps=4", "model.drop_path=0.1", "aug.mean=[0.25,0.5,0.75]"),
             tmp_path / "run")
    trained = made[0].eval()

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 16
    assert config["model_args"]["depth"] == 4 and config["model_args"]["patch_size"] == 16
    assert config["model_args"]["img_size"] in (64, [64, 64])
    assert config["pretrained_cfg"]["mean"] == [0.25, 0.5, 0.75] and config["pretrained_cfg"]["input_size"] == [3, 64, 64]

    model = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True).eval()
    assert len(model.blocks) == 4 and model.num_classes == 16
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
        random_init = timm.create_model(f"local-dir:{tmp_path / 'run'}").eval()
        assert not torch.allclose(random_init(x), trained(x))  # the weights came from the folder
    assert tuple(timm.data.resolve_data_config({}, model=model)["mean"]) == (0.25, 0.5, 0.75)
    # what timm's push_to_hf_hub uploads (save_for_hf of the loaded model) loads back the same
    from timm.models import save_for_hf

    save_for_hf(model, str(tmp_path / "pushed"), safe_serialization=True)
    again = timm.create_model(f"local-dir:{tmp_path / 'pushed'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(again(x), trained(x))


def test_finetune_takes_the_architecture_from_a_run_folder_and_reloads_with_its_head(tiny_dataset, cifar_mini,
                                                                                      tmp_path):
    from train.data.downstream import open_downstream
    from train.finetune import finetune
    from train.loop import evaluate

    pretrain(tiny_cfg(tiny_dataset, "train.steps=4"), tmp_path / "pt")
    # the fine-tuning config names no kwargs: depth 4 and patch 16 come from the run folder
    cfg = load_config("tiny-finetune", ["model.kwargs={}", "train.epochs=1", f"finetune.checkpoint={tmp_path / 'pt'}"],
                      {"data.path": str(cifar_mini)})
    m = finetune(cfg, tmp_path / "ft")
    assert load_config(tmp_path / "ft" / "config.yaml").model.kwargs == {"patch_size": 16, "depth": 4}

    model = timm.create_model(f"local-dir:{tmp_path / 'ft'}", pretrained=True)
    assert model.num_classes == 10 and len(model.blocks) == 4
    _, test_set, _ = open_downstream(cfg)
    loader = torch.utils.data.DataLoader(test_set, batch_size=100)
    assert evaluate(model, loader, torch.device("cpu"), None) == m["top1"]  # the head came back with it

    with pytest.raises(TrainError, match=r"drop model.kwargs.depth \(the checkpoint's kwargs are used\)"):
        finetune(load_config("tiny-finetune", ["model.kwargs={depth: 2}", f"finetune.checkpoint={tmp_path / 'pt'}"],
                             {"data.path": str(cifar_mini)}), tmp_path / "bad")


def test_tensorboard_scalars_and_the_missing_package(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(TrainError, match="log.tensorboard=true needs the tensorboard package: pip install tensorboard"):
        pretrain(tiny_cfg(tiny_dataset, "train.steps=2", "log.tensorboard=true"), tmp_path / "no-tb")
    assert not (tmp_path / "no-tb").exists()

    scalars = []

    class Writer:  # records what the trainer hands TensorBoard's SummaryWriter
        def __init__(self, log_dir, purge_step=None):
            scalars.append(("dir", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    pretrain(tiny_cfg(tiny_dataset, "train.steps=3", "log.tensorboard=true"), tmp_path / "tb")
    assert scalars[0] == ("dir", str(tmp_path / "tb" / "tensorboard"), None)
    assert [s[2] for s in scalars if s[0] == "train/loss"] == [1, 2, 3]
    assert {s[0] for s in scalars} >= {"train/lr", "train/images_per_s", "closed"}


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
