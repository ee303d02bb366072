"""``repro-small --cpu-check``: the GPU script runs end to end at toy scale (no figures asserted), and stops
cleanly."""
import json
from pathlib import Path

import pytest
import torch
from train_helpers import run_cli

from train.experiments.repro import repro_small


@pytest.mark.slow
def test_repro_small_cpu_check(tiny_dataset, cifar_mini_tarball, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "repro"
    repro_small.main(["--cpu-check", "--out", str(out), "--dataset", str(tiny_dataset),
                      "--cifar", str(cifar_mini_tarball), "--data-root", str(tmp_path / "data"), "--budgets", "1,2",
                      "--finetune-seconds", "1", "--variant", "lr:optim.lr=1e-3"], standalone_mode=False)
    report = json.loads((out / "repro.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["budget1s", "budget2s", "lr"]
    assert report["runs"][0]["pretrain_steps"] < report["runs"][1]["pretrain_steps"]
    assert report["pretrain_rate"] > 0 and report["released_schedule_estimate_min"] > 0
    assert all(0 <= r["finetune_top1"] <= 100 for r in report["runs"]) and report["scratch_top1"] is not None
    table = (out / "repro.md").read_text()
    assert "CPU CHECK" in table and f"fine-tuning data: {cifar_mini_tarball}" in table
    assert "| lr optim.lr=1e-3 |" in table
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [cifar_mini_tarball.name.split(".")[0]]


def test_repro_dataset_folder_is_out_ds_and_a_toy_build_is_not_reused_for_the_real_one(tmp_path, monkeypatch):
    """With a relative --out the dataset folder is OUT/ds (not OUT/OUT/ds), and a folder holding an earlier
    --cpu-check's toy set is not reused as the default 1p-frac set: a build of other options is replaced."""

    import fracgen.build
    from fracgen.config import BuildConfig
    from train.experiments.repro import _build_dataset

    monkeypatch.chdir(tmp_path)
    out = Path("runs") / "repro"
    out.mkdir(parents=True)
    ds = _build_dataset(out, True, {})  # the toy set of --cpu-check
    assert ds == out / "ds" and (tmp_path / "runs" / "repro" / "ds" / "build.json").is_file()
    assert _build_dataset(out, True, {}) == ds  # the same options: reused
    calls = []
    monkeypatch.setattr(fracgen.build, "build", lambda config, root, **kw: calls.append((config, root, kw)))
    _build_dataset(out, False, {})  # the real run: the default 1p-frac set, built over the toy one
    (config, root, kw), = calls
    assert config == BuildConfig() and root == ds and kw["overwrite"] and not kw["resume"]


def test_repro_small_stopped_by_sigterm_ends_cleanly_keeping_what_finished(tiny_dataset, cifar_mini_tarball, tmp_path,
                                                                           monkeypatch, capsys):
    """A sub-run stopped by SIGTERM returns no metrics: repro-small says so and exits 143, no KeyError."""
    import train.finetune
    import train.pretrain

    calls = []

    def fake_pretrain(cfg, out, resume=False):
        calls.append(out.name)
        if out.name == "pretrain-budget2s":
            return {"stopped": True, "steps": 3, "reason": "SIGTERM"}
        return {"images_per_s": 100.0, "eval_top1": 50.0, "num_classes": 16, "final_loss": 1.0}

    def fake_finetune(cfg, out, resume=False):
        return {"images_per_s": 100.0, "top1": 20.0}

    monkeypatch.setattr(train.pretrain, "pretrain", fake_pretrain)
    monkeypatch.setattr(train.finetune, "finetune", fake_finetune)
    out = tmp_path / "repro"
    code, _, err = run_cli(["repro-small", "--cpu-check", "--out", out, "--dataset", tiny_dataset, "--cifar",
                        cifar_mini_tarball, "--data-root", tmp_path / "data", "--budgets", "1,2"], capsys)
    assert code == 143 and "Traceback" not in err and "stopped by SIGTERM" in err, (code, err)
    assert calls == ["calib-pretrain", "pretrain-budget1s", "pretrain-budget2s"]
    partial = json.loads((out / "repro-partial.json").read_text())
    assert partial["stopped"] == "SIGTERM" and [r["name"] for r in partial["runs"]] == ["budget1s"]
    assert not (out / "repro.json").exists()
