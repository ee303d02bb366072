"""train.model: what only timm can judge (the architecture on the meta device, the optimizer)."""


import importlib.util

import pytest
import torch
from train_helpers import (
    cfg_of,
)

from train.errors import TrainError
from train.model import check_timm_names


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
