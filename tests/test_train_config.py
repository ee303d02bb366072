"""train.config: YAML defaults, overrides and checks that accept what they should."""
import pytest
from train_helpers import (
    cfg_of,
)

from train.config import load_config
from train.model import check_timm_names


@pytest.mark.parametrize("override", ["optim.opt=sgd", "optim.opt=lookahead_adamw", "optim.clip_grad=0",
                                      "optim.clip_grad=null", "train.device=cuda:1", "data.shuffle_buffer=0",
                                      "model.kwargs={patch_size: 8, depth: 2}", "aug.mean=[0, 0.1, 1]"])
def test_good_config_values_still_load(override):
    from train.model import check_timm_names

    check_timm_names(load_config("tiny", [override]))


@pytest.mark.parametrize("override", ["data.resident.memory_budget_gb=0.5", "data.resident.memory_budget_gb=null",
                                      "data.resident.load_workers=0", "data.resident.load_workers=2",
                                      "data.resident.split_ranks=true", "data.resident.prefetch=false"])
def test_good_resident_options_still_load(override, tiny_dataset):
    import yaml

    key, raw = override.removeprefix("data.resident.").split("=")
    assert cfg_of(tiny_dataset, override).data.resident[key] == yaml.safe_load(raw)


@pytest.mark.parametrize("name", ["tiny", "pretrain", "finetune"])
def test_the_shipped_configs_pass_the_checks(name):
    check_timm_names(load_config(name, ["train.device=cpu"]))
