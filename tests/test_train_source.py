"""train.data.source: the micro-batch split."""


import pytest
from train_helpers import (
    tiny_cfg,
)

from train.errors import TrainError


def test_batch_must_divide_across_ranks(tiny_dataset):
    from train.data.source import micro_batch_size

    cfg = tiny_cfg(tiny_dataset, "train.batch_size=32")
    assert micro_batch_size(cfg, 4) == 8
    with pytest.raises(TrainError, match="batch_size 32 does not divide across 3 ranks"):
        micro_batch_size(cfg, 3)
