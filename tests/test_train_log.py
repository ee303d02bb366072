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


def test_rows_of_a_log_that_are_not_the_trainers_are_left_out_on_resume(tmp_path, caplog):
    """A resumed run keeps the rows up to its step; rows that are not numbers where the trainer writes numbers (an
    edited or damaged log.csv) are dropped with a warning instead of ending the run."""
    from train.run.log import CsvLog, read_rows

    (tmp_path / "run.json").write_text('{"status": "stopped", "time": "t"}')
    (tmp_path / "log.csv").write_text("step,epoch,loss,lr,images_per_s,elapsed_s,eval_top1\n"
                                      "1,0,2.5,1e-3,100.0,1.0,\n2,0,nan?,1e-3,100.0,2.0,\nx,0,2.1,1e-3,1,3,\n"
                                      "3,0,2.0,1e-3,,4.0,50\n4,0,1.9,1e-3,100.0,5.0,\n")
    with caplog.at_level("WARNING", logger="train.run.log"):
        log = CsvLog(tmp_path, step=3)
    assert [r["step"] for r in read_rows(tmp_path)] == ["1", "3"]
    assert log.last_loss == 2.5 and "2 row(s) of log.csv are not this trainer's" in caplog.text
