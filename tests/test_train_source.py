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


@pytest.mark.parametrize("source", ["stream", "resident"])
def test_a_pretraining_batch_larger_than_its_dataset_is_served_and_said(source, tiny_dataset, caplog):
    """The 16 images of the tiny set in batches of 64: every batch repeats each image, under other augmentations
    (the tiny config draws 32 on purpose); a warning says so and which batch draws each image once."""
    import logging

    import torch

    from train.data.pretraining import make_source

    said = {}
    for batch in (64, 16):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="train.data.source"):
            src = make_source(tiny_cfg(tiny_dataset, f"data.source={source}", f"train.batch_size={batch}",
                                       "train.accum_steps=2"), torch.device("cpu"), 0, 1)
            images, _ = next(src.batches(0))
        src.close()
        assert images.shape[0] == batch // 2  # micro-batches of the batch asked for: not lowered
        said[batch] = [r.getMessage() for r in caplog.records if "more than the 16 images" in r.getMessage()]
    assert said[16] == [] and len(said[64]) == 1
    assert "train.batch_size 64 is more than the 16 images" in said[64][0]
    assert "about 4 times" in said[64][0] and "pass --batch-size 16 (train.batch_size) or less, a multiple of 2" in \
        said[64][0]
