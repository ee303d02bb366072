"""Config values that only timm, the resident source or a checkpoint's metadata used to judge, mid-run: each is a
one-line ``error: ...`` (exit 2) before the dataset is read or a run folder is made. Tiny models, one thread."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import save_file
from train_helpers import QUICK, assert_one_line, cfg_of, run_cli

from train.config import load_config
from train.errors import TrainError
from train.model import check_timm_names


def pretrain_argv(data, out, *overrides):
    argv = ["pretrain", "--config", "tiny", "--data", data, "--out", out]
    for item in [*QUICK, *overrides]:
        argv += ["--set", item]
    return argv


# ------------------------------------------------------------------------ timm's transforms and architecture
@pytest.mark.parametrize("override, fragment", [
    ("aug.interpolation=foo", "aug.interpolation: must be bicubic"),
    ("aug.interpolation=random", "aug.interpolation: must be bicubic"),  # the eval transform has no 'random'
    ("aug.auto_augment=garbage", "aug.auto_augment: must be a timm policy"),
    ("aug.auto_augment=rand-m9-w99", "aug.auto_augment: must be a timm policy"),
    ("model.kwargs.num_heads=5", "dim should be divisible by num_heads"),
    ("model.kwargs.embed_dim=7", "dim should be divisible by num_heads"),
    ("model.kwargs.num_heads=0", "bad model.kwargs"),
    ("model.kwargs.embed_dim=-3", "bad model.kwargs"),
])
def test_values_timm_refuses_are_one_line_before_the_run_folder(override, fragment, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_argv(tiny_dataset, out, override), capsys)
    assert_one_line(code, err, fragment)
    assert not out.exists()


def test_finetune_refuses_a_bad_policy_before_it_opens_its_data(tmp_path):
    from train.finetune import finetune

    cfg = load_config("finetune", ["aug.auto_augment=garbage", "train.device=cpu"],
                      {"data.path": str(tmp_path / "no-such-data")})
    with pytest.raises(TrainError, match="aug.auto_augment: .*'garbage'"):
        finetune(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["tiny", "pretrain", "finetune"])
def test_the_shipped_configs_pass_the_checks(name):
    check_timm_names(load_config(name, ["train.device=cpu"]))


def test_the_architecture_check_builds_no_weights(tiny_dataset, monkeypatch):
    """The check runs on the meta device: no parameter gets memory (a ViT-L would take seconds and 1 GB)."""
    import timm

    devices = []
    real = timm.create_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(timm, "create_model", spy)
    check_timm_names(cfg_of(tiny_dataset))
    assert devices == ["meta"]


# ------------------------------------------------------------------------------------- resident options
@pytest.mark.parametrize("override, key", [
    ("data.resident.memory_budget_gb=abc", "data.resident.memory_budget_gb"),
    ("data.resident.memory_budget_gb=0", "data.resident.memory_budget_gb"),
    ("data.resident.memory_budget_gb=.nan", "data.resident.memory_budget_gb"),
    ("data.resident.load_workers=-3", "data.resident.load_workers"),
    ("data.resident.load_workers=abc", "data.resident.load_workers"),
    ("data.resident.load_workers=1.5", "data.resident.load_workers"),
    ("data.resident.split_ranks=yes please", "data.resident.split_ranks"),
    ("data.resident.antialias=0", "data.resident.antialias"),
    ("data.resident.prefetch=off please", "data.resident.prefetch"),
])
def test_bad_resident_options_are_refused_by_the_config(override, key, tiny_dataset, tmp_path, capsys):
    with pytest.raises(TrainError, match=f"^{key}: must be"):
        cfg_of(tiny_dataset, override)
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_argv(tiny_dataset, out, override), capsys)
    assert_one_line(code, err, key)
    assert not out.exists()


@pytest.mark.parametrize("override", ["data.resident.memory_budget_gb=0.5", "data.resident.memory_budget_gb=null",
                                      "data.resident.load_workers=0", "data.resident.load_workers=2",
                                      "data.resident.split_ranks=true", "data.resident.prefetch=false"])
def test_good_resident_options_still_load(override, tiny_dataset):
    cfg_of(tiny_dataset, override)


# ------------------------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("opt, fragment", [
    ("adahessian", "second-order"),
    ("lookahead_adahessian", "second-order"),
])
def test_second_order_optimizers_are_refused(opt, fragment, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(pretrain_argv(tiny_dataset, out, f"optim.opt={opt}"), capsys)
    assert_one_line(code, err, f"optim.opt: {opt}", fragment)
    assert not out.exists()


@pytest.mark.parametrize("opt", ["bnbadam", "bnbadamw8bit", "fusedadam", "fusedlamb"])
def test_bitsandbytes_and_apex_optimizers_are_refused_on_the_cpu(opt, tiny_dataset):
    """Not installed (here) or installed (elsewhere): the tiny config trains on the CPU, where neither runs."""
    with pytest.raises(TrainError, match=f"optim.opt: {opt} .*(not installed|needs a CUDA device)"):
        check_timm_names(cfg_of(tiny_dataset, f"optim.opt={opt}"))


def _pretend(monkeypatch, installed: set, missing: set) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in installed:
            return object()
        return None if name in missing else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_an_installed_bitsandbytes_still_needs_cuda(tiny_dataset, monkeypatch):
    _pretend(monkeypatch, {"bitsandbytes"}, set())
    with pytest.raises(TrainError, match="optim.opt: bnbadam .*needs a CUDA device .*train.device=cpu"):
        check_timm_names(cfg_of(tiny_dataset, "optim.opt=bnbadam"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_timm_names(cfg_of(tiny_dataset, "optim.opt=bnbadam", "train.device=auto"))


def test_kron_needs_opt_einsum(tiny_dataset, monkeypatch):
    _pretend(monkeypatch, set(), {"opt_einsum"})
    with pytest.raises(TrainError, match="optim.opt: kronw needs the opt_einsum package"):
        check_timm_names(cfg_of(tiny_dataset, "optim.opt=kronw"))
    _pretend(monkeypatch, {"opt_einsum"}, set())
    check_timm_names(cfg_of(tiny_dataset, "optim.opt=kronw"))


@pytest.mark.parametrize("opt", ["adamw", "sgd", "lamb", "lookahead_adamw", "lion"])
def test_first_order_optimizers_pass(opt, tiny_dataset):
    check_timm_names(cfg_of(tiny_dataset, f"optim.opt={opt}"))


# ----------------------------------------------------------------------------------------- YAML keys
@pytest.mark.parametrize("content, fragment", [
    ("1: 2\n", "config root: key 1 is not a name"),
    ("train: {1: 2}\n", "config train: key 1 is not a name"),
    ("aug: {true: 2}\n", "config aug: key True is not a name"),
])
def test_a_config_key_that_is_not_a_name_is_one_line(content, fragment, tiny_dataset, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    out = tmp_path / "run"
    code, _, err = run_cli(["pretrain", "--config", path, "--data", tiny_dataset, "--out", out], capsys)
    assert_one_line(code, err, fragment)
    assert not out.exists()


# ------------------------------------------------------------------------------- checkpoint metadata
def _checkpoint(folder, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt", **meta})
    return path


@pytest.mark.parametrize("kwargs", ["{not json", "[1,2]", "3", "null"])
def test_checkpoint_kwargs_that_are_not_a_json_object_are_named(kwargs, tmp_path):
    from train.finetune import adopt_architecture, read_architecture
    from train.run.checkpoint import read_checkpoint_meta

    path = _checkpoint(tmp_path / "run", model="vit_tiny_patch16_224", kwargs=kwargs)
    for read in (read_architecture, read_checkpoint_meta):
        with pytest.raises(TrainError, match=f"checkpoint {path}: its metadata kwargs is not a JSON object"):
            read(path)
    cfg = load_config("finetune", ["model.kwargs={}"])
    with pytest.raises(TrainError, match="its metadata kwargs"):
        adopt_architecture(cfg, path)


def test_checkpoint_step_that_is_not_a_number_is_named(tmp_path):
    from train.run.checkpoint import read_checkpoint_meta

    path = _checkpoint(tmp_path / "run", model="vit_tiny_patch16_224", kwargs="{}", step="two")
    with pytest.raises(TrainError, match=f"checkpoint {path}: its metadata step is not an integer"):
        read_checkpoint_meta(path)


@pytest.mark.parametrize("config", [
    [1], "text", {"architecture": 3},
    {"architecture": "vit_tiny_patch16_224", "pretrained_cfg": {}, "model_args": [1]},
])
def test_a_timm_config_of_the_wrong_shape_is_named(config, tmp_path):
    from train.finetune import read_architecture

    path = _checkpoint(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrainError, match="config.json: not a timm config"):
        read_architecture(path)


def test_checkpoint_kwargs_timm_refuses_are_named(tmp_path):
    from train.finetune import load_pretrained

    path = _checkpoint(tmp_path / "run", model="vit_tiny_patch16_224", kwargs=json.dumps({"num_heads": 5}))
    cfg = load_config("finetune", ["model.img_size=32"])
    with pytest.raises(TrainError, match="does not fit vit_tiny_patch16_224: dim should be divisible by num_heads"):
        load_pretrained(cfg, path, 10)


# ---------------------------------------------------------------------------------------- train.bench
@pytest.mark.parametrize("argv, fragment", [
    (["--threads", "-1"], "--threads must be >= 0"),
    (["--workers", "-2"], "--workers must be >= 0"),
    (["--device", "gpu"], "--device: must be auto, cpu"),
    (["--json", "/nonexistent-fracgen/x.json"], "--json: no folder /nonexistent-fracgen"),
    (["--out", "/nonexistent-fracgen/x.md"], "--out: no folder /nonexistent-fracgen"),
])
def test_bench_refuses_bad_options_before_measuring(argv, fragment, capsys):
    from train.experiments import bench

    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    err = capsys.readouterr().err
    assert_one_line(exit_.value.code, err, fragment)


def test_bench_json_into_a_folder_is_refused(tmp_path, capsys):
    from train.experiments import bench

    with pytest.raises(SystemExit):
        bench.parse_args(["--json", str(tmp_path)])
    assert_one_line(2, capsys.readouterr().err, f"--json: {tmp_path} is a folder")


@pytest.mark.parametrize("override, fragment", [("model.kwargs.num_heads=5", "dim should be divisible by num_heads"),
                                                ("optim.opt=adahessian", "second-order")])
def test_bench_refuses_what_timm_refuses_in_one_line(override, fragment, tiny_dataset, capsys, monkeypatch):
    from train.experiments import bench

    def measured(*_):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(bench, "time_steps", measured)
    code = bench.main(["--data", str(tiny_dataset), "--img-size", "32", "--batch", "2", "--steps", "1",
                       "--warmup", "0", "--paths", "model", "--no-progress", "--set", override])
    assert_one_line(code, capsys.readouterr().err, fragment)
