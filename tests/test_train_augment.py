"""train.augment: timm's per-sample recipe, each piece switching off on its own."""


import pytest
from PIL import Image
from timm.data import auto_augment

from train.config import load_config
from train.errors import TrainError

pytestmark = pytest.mark.usefixtures("restore_timm_ops")  # the bench may patch timm's posterize


def test_posterize_shim_keeps_zero_bits_black() -> None:

    from train.augment import make_train_transform
    from train.config import load_config

    # building the released recipe installs the fix; Pillow >= 11 alone raises ValueError at magnitude 10
    make_train_transform(load_config("pretrain").aug, 32)
    img = Image.new("RGB", (4, 4), (200, 127, 3))
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10,
                                hparams={"magnitude_std": 0, "img_mean": (128,) * 3})
    assert set(op(img).getdata()) == {(0, 0, 0)}


def test_augmentation_pieces_switch_off(tiny_dataset):
    from train.augment import make_criterion, make_mixup, make_train_transform

    full = load_config("pretrain")
    text = repr(make_train_transform(full.aug, 224))
    assert "RandAugment" in text and "RandomErasing" in text and "RandomVerticalFlip" in text
    assert make_mixup(full.aug, 16) is not None
    off = load_config("pretrain", ["aug.auto_augment=null", "aug.re_prob=0", "aug.vflip=0", "aug.mixup=0", "aug.cutmix=0"])
    text = repr(make_train_transform(off.aug, 224))
    assert "RandAugment" not in text and "RandomErasing" not in text and "RandomVerticalFlip" not in text
    assert make_mixup(off.aug, 16) is None
    assert type(make_criterion(off.aug, None)).__name__ == "LabelSmoothingCrossEntropy"
    with pytest.raises(TrainError, match="unknown key 'aug.mixupp'"):
        load_config("pretrain", ["aug.mixupp=0"])
