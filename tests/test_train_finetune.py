"""train.finetune on the mini CIFAR-10 (the JPEG copy in ../shared/data, else a generated stand-in): from
scratch, from a fracgen checkpoint, linear probe of the first k blocks, resume. One torch thread, tiny ViT."""

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from train_helpers import (
    FT,
    assert_one_line,
    cfg_of,
    ft_cfg,
    image_folder,
    run_cli,
    shaded_folder,
    snapshot,
    tiny_cfg,
)

from train.config import load_config
from train.errors import TrainError
from train.finetune import finetune
from train.pretrain import pretrain


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A short tiny pre-training (the loss/accuracy figures are in test_train_pretrain)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pt") / "run"
    pretrain(load_config("tiny", ["train.steps=20", "data.eval_path=''"], {"data.path": str(tiny_dataset)}), out)
    return out / "model.safetensors"


def mini_cfg(data: Path, *overrides: str):
    return load_config("tiny-finetune", list(overrides), {"data.path": str(data)})


def test_finetune_from_scratch_end_to_end(cifar_mini, tmp_path):
    m = finetune(mini_cfg(cifar_mini), tmp_path / "run")
    assert m["num_train"] == 1000 and m["num_test"] == 200 and m["num_classes"] == 10
    assert m["steps"] == 40 and m["epochs"] == 2 and len(m["per_epoch"]) == 2
    assert m["top1"] >= 15.0, m  # 10% is chance; 2 epochs of 1,000 images
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["top1"] == m["top1"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_linear_probe_from_checkpoint_trains_only_the_head(cifar_mini, checkpoint, tmp_path):
    m = finetune(mini_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "finetune.probe_blocks=4",
                        "train.epochs=1"), tmp_path / "probe")
    assert m["trainable_params"] == 192 * 10 + 10
    before, after = load_file(str(checkpoint)), load_file(str(tmp_path / "probe" / "model.safetensors"))
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc1.weight", "norm.weight"):
        assert torch.equal(before[key], after[key]), key
    assert after["head.weight"].shape == (10, 192)
    assert m["top1"] is not None and 0 <= m["top1"] <= 100


def test_partial_probe_freezes_first_blocks(cifar_mini, checkpoint, tmp_path):
    m = finetune(mini_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "finetune.probe_blocks=2",
                        "train.epochs=1"), tmp_path / "probe2")
    before, after = load_file(str(checkpoint)), load_file(str(tmp_path / "probe2" / "model.safetensors"))
    assert torch.equal(before["blocks.1.attn.qkv.weight"], after["blocks.1.attn.qkv.weight"])
    assert not torch.equal(before["blocks.2.attn.qkv.weight"], after["blocks.2.attn.qkv.weight"])
    assert m["trainable_params"] > 192 * 10 + 10


def test_finetune_bad_input(cifar_mini, checkpoint, tmp_path):
    with pytest.raises(TrainError, match="unknown dataset 'imagenet-42'"):
        finetune(mini_cfg(Path("imagenet-42")), tmp_path / "a")
    with pytest.raises(TrainError, match="is a vit_tiny_patch16_224 .* this run builds vit_small_patch16_224"):
        finetune(mini_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "model.name=vit_small_patch16_224"),
                 tmp_path / "b")
    with pytest.raises(TrainError, match="patch_size"):
        finetune(mini_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "model.kwargs.patch_size=8"), tmp_path / "c")
    with pytest.raises(TrainError, match="probe_blocks=9 but the model has 4 blocks"):
        finetune(mini_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "finetune.probe_blocks=9"), tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_finetune_reads_webdataset_splits(tmp_path):
    from train.experiments.toy import write_toy_dataset

    root = write_toy_dataset(tmp_path / "wds", num_classes=4, per_class=25, size=32, shard_size=50)
    test = write_toy_dataset(tmp_path / "wds-test", num_classes=4, per_class=5, size=32, shard_size=50, seed=1)
    (test / "train-000000.tar").rename(root / "test-000000.tar")
    info = json.loads((root / "_info.json").read_text())
    info["splits"]["test"] = {"name": "test", "num_samples": 20, "filenames": ["test-000000.tar"], "shard_lengths": [20]}
    (root / "_info.json").write_text(json.dumps(info))
    m = finetune(mini_cfg(root, "train.epochs=3", "train.batch_size=20", "model.img_size=32"), tmp_path / "run")
    assert m["num_train"] == 100 and m["num_test"] == 20 and m["num_classes"] == 4
    assert m["steps"] == 15 and m["top1"] >= 0


def test_finetune_refuses_a_bad_policy_before_it_opens_its_data(tmp_path):
    from train.finetune import finetune

    cfg = load_config("finetune", ["aug.auto_augment=garbage", "train.device=cpu"],
                      {"data.path": str(tmp_path / "no-such-data")})
    with pytest.raises(TrainError, match="aug.auto_augment: .*'garbage'"):
        finetune(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- checkpoint metadata
def _checkpoint(folder, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": "pt", **meta})
    return path


def test_checkpoint_kwargs_timm_refuses_are_named(tmp_path):
    from train.finetune import load_pretrained

    path = _checkpoint(tmp_path / "run", model="vit_tiny_patch16_224", kwargs=json.dumps({"num_heads": 5}))
    cfg = load_config("finetune", ["model.img_size=32"])
    with pytest.raises(TrainError, match="does not fit vit_tiny_patch16_224: dim should be divisible by num_heads"):
        load_pretrained(cfg, path, 10)


@pytest.fixture(scope="module")
def complete(tiny_dataset, tmp_path_factory):
    """A complete run of 6 steps."""
    out = tmp_path_factory.mktemp("attack2") / "done"
    assert pretrain(cfg_of(tiny_dataset), out)["steps"] == 6
    return out


def test_resume_of_a_complete_finetune_does_nothing(complete, tmp_path):
    from train.finetune import finetune

    data = image_folder(tmp_path / "if")
    cfg = ft_cfg(data, f"finetune.checkpoint={complete}")
    first = finetune(cfg, tmp_path / "ft")
    before = snapshot(tmp_path / "ft")
    again = finetune(ft_cfg(data, f"finetune.checkpoint={complete}"), tmp_path / "ft", resume=True)
    assert again["already_complete"] and again["top1"] == first["top1"]
    assert snapshot(tmp_path / "ft") == before


# ------------------------------------------------------------------------------------ a loss that is not finite (F-NAN)
def test_a_checkpoint_with_nan_weights_is_refused_before_the_run_folder(complete, tmp_path, capsys):
    """A checkpoint whose weights hold NaN (metadata kept) would fine-tune to a NaN loss: named up front."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = complete / "model.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    tensors["blocks.0.attn.qkv.weight"].fill_(float("nan"))
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)
    data = image_folder(tmp_path / "if")
    code, _, err = run_cli(["finetune", "--config", "tiny-finetune", "--data", data, "--checkpoint",
                        tmp_path / "nan.safetensors", "--out", tmp_path / "ft", "--epochs", "1", "--batch-size", "10"],
                       capsys)
    assert_one_line(code, err, "nan.safetensors", "blocks.0.attn.qkv.weight", "NaN or inf")
    assert not (tmp_path / "ft").exists()


@pytest.fixture(scope="module")
def stopped_pretraining(tmp_path_factory) -> Path:
    """A tiny pre-training stopped at step 2 of 4 (its run.json says stopped)."""
    from train_helpers import cfg_of

    from train.experiments.toy import write_toy_dataset
    from train.pretrain import pretrain

    root = tmp_path_factory.mktemp("pt")
    data = write_toy_dataset(root / "ds", num_classes=4, per_class=2, size=32)
    out = root / "pt"
    pretrain(cfg_of(data, "train.steps=4", "train.stop_at=2", "train.ckpt_every=1", "model.img_size=32"), out)
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    return out


def test_finetune_from_an_unfinished_pretraining_says_so(stopped_pretraining, tmp_path, capsys, caplog):
    data = shaded_folder(tmp_path / "mr")
    code, _, err = run_cli(["finetune", *FT, "--epochs", "1", "--data", data, "--checkpoint", stopped_pretraining,
                            "--out", tmp_path / "ft"], capsys)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("is stopped" in w and "at step 2" in w for w in warned), warned
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["checkpoint_step"] == 2


def test_finetune_resume_needs_only_its_own_checkpoint(stopped_pretraining, tmp_path, capsys):
    ckpt = tmp_path / "pt"
    shutil.copytree(stopped_pretraining, ckpt)
    data, out = shaded_folder(tmp_path / "mr"), tmp_path / "fr"
    first = ["finetune", *FT, "--data", data, "--checkpoint", ckpt, "--out", out]
    code, _, err = run_cli([*first, "--set", "train.stop_at=2", "--set", "train.ckpt_every=1"], capsys)
    assert code == 0, err
    shutil.copytree(out, tmp_path / "kept")
    code, _, err = run_cli([*first[:-1], tmp_path / "kept", "--resume"], capsys)  # the checkpoint still there
    assert code == 0, err
    shutil.rmtree(ckpt)
    code, _, err = run_cli([*first, "--resume"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["checkpoint_step"] == 2
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "kept" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same run


def test_finetune_from_a_timm_format_folder_records_no_step(stopped_pretraining, tmp_path, capsys):
    """timm's own save_for_hf folder (config.json + model.safetensors without this trainer's metadata) is a
    checkpoint load_pretrained takes: reading its step must not refuse it (it did, for one commit)."""
    import timm
    from timm.models._hub import save_for_hf

    hf = tmp_path / "hf"
    save_for_hf(timm.create_model(f"local-dir:{stopped_pretraining}", pretrained=True), hf, safe_serialization=True)
    data = shaded_folder(tmp_path / "mr")
    code, _, err = run_cli(["finetune", *FT, "--epochs", "1", "--data", data, "--checkpoint", hf,
                            "--out", tmp_path / "ft"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["checkpoint_step"] is None


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
