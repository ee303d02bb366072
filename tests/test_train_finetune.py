"""train.finetune on the mini CIFAR-10 (the JPEG copy in ../shared/data, else a generated stand-in): from scratch, from a fracgen
checkpoint, linear probe of the first k blocks, and the one-line errors. One torch thread, tiny ViT."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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


def ft_cfg(data: Path, *overrides: str):
    return load_config("tiny-finetune", list(overrides), {"data.path": str(data)})


def test_finetune_from_scratch_end_to_end(cifar_mini, tmp_path):
    m = finetune(ft_cfg(cifar_mini), tmp_path / "run")
    assert m["num_train"] == 1000 and m["num_test"] == 200 and m["num_classes"] == 10
    assert m["steps"] == 40 and m["epochs"] == 2 and len(m["per_epoch"]) == 2
    assert m["top1"] >= 15.0, m  # 10% is chance; 2 epochs of 1,000 images
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["top1"] == m["top1"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "complete"
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_linear_probe_from_checkpoint_trains_only_the_head(cifar_mini, checkpoint, tmp_path):
    m = finetune(ft_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "finetune.probe_blocks=4",
                        "train.epochs=1"), tmp_path / "probe")
    assert m["trainable_params"] == 192 * 10 + 10
    before, after = load_file(str(checkpoint)), load_file(str(tmp_path / "probe" / "model.safetensors"))
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc1.weight", "norm.weight"):
        assert torch.equal(before[key], after[key]), key
    assert after["head.weight"].shape == (10, 192)
    assert m["top1"] is not None and 0 <= m["top1"] <= 100


def test_partial_probe_freezes_first_blocks(cifar_mini, checkpoint, tmp_path):
    m = finetune(ft_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "finetune.probe_blocks=2",
                        "train.epochs=1"), tmp_path / "probe2")
    before, after = load_file(str(checkpoint)), load_file(str(tmp_path / "probe2" / "model.safetensors"))
    assert torch.equal(before["blocks.1.attn.qkv.weight"], after["blocks.1.attn.qkv.weight"])
    assert not torch.equal(before["blocks.2.attn.qkv.weight"], after["blocks.2.attn.qkv.weight"])
    assert m["trainable_params"] > 192 * 10 + 10


def test_finetune_bad_input(cifar_mini, checkpoint, tmp_path):
    with pytest.raises(TrainError, match="unknown dataset 'imagenet-42'"):
        finetune(ft_cfg(Path("imagenet-42")), tmp_path / "a")
    with pytest.raises(TrainError, match="is a vit_tiny_patch16_224 .* this run builds vit_small_patch16_224"):
        finetune(ft_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "model.name=vit_small_patch16_224"),
                 tmp_path / "b")
    with pytest.raises(TrainError, match="patch_size"):
        finetune(ft_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "model.kwargs.patch_size=8"), tmp_path / "c")
    with pytest.raises(TrainError, match="probe_blocks=9 but the model has 4 blocks"):
        finetune(ft_cfg(cifar_mini, f"finetune.checkpoint={checkpoint}", "finetune.probe_blocks=9"), tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_finetune_reads_webdataset_splits(tmp_path):
    from train.experiments.toy import write_toy_dataset

    root = write_toy_dataset(tmp_path / "wds", num_classes=4, per_class=25, size=32, shard_size=50)
    test = write_toy_dataset(tmp_path / "wds-test", num_classes=4, per_class=5, size=32, shard_size=50, seed=1)
    (test / "train-000000.tar").rename(root / "test-000000.tar")
    info = json.loads((root / "_info.json").read_text())
    info["splits"]["test"] = {"name": "test", "num_samples": 20, "filenames": ["test-000000.tar"], "shard_lengths": [20]}
    (root / "_info.json").write_text(json.dumps(info))
    m = finetune(ft_cfg(root, "train.epochs=3", "train.batch_size=20", "model.img_size=32"), tmp_path / "run")
    assert m["num_train"] == 100 and m["num_test"] == 20 and m["num_classes"] == 4
    assert m["steps"] == 15 and m["top1"] >= 0

