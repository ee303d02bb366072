"""train.run.log: TensorBoard scalars beside log.csv, and the package's absence said up front."""

import sys
import types

import pytest
from train_helpers import (
    tiny_cfg,
)

from train.errors import TrainError
from train.pretrain import pretrain


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
