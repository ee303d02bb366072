"""The augmentation recipe, built from timm.

Per-sample transforms (RandomResizedCrop, flips, RandAugment, random erasing, normalisation) run where the
source decodes images (DataLoader workers for streaming; the resident source has its on-device twin).
Mixup/cutmix and label smoothing act on whole batches on the device, in the loop, for every source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from train.config import AugConfig
from train.errors import TrainError

log = logging.getLogger(__name__)


def make_train_transform(aug: AugConfig, img_size: int) -> Callable:
    """The per-sample training transform: PIL RGB image -> float tensor (3, img_size, img_size), normalised.

    Args:
        aug: the recipe; a piece is off when its probability is 0 or ``auto_augment`` is null.
        img_size: output side in pixels.
    """
    if aug.auto_augment:
        posterize_zero_bits()
    return create_transform(
        input_size=img_size,
        is_training=True,
        scale=tuple(aug.rrc_scale),
        ratio=tuple(aug.rrc_ratio),
        hflip=aug.hflip,
        vflip=aug.vflip,
        # timm ignores colour jitter when auto_augment is set; 0 keeps "RandAugment off" a clean ablation
        color_jitter=0.0,
        auto_augment=aug.auto_augment or None,
        interpolation=aug.interpolation,
        mean=tuple(aug.mean),
        std=tuple(aug.std),
        re_prob=aug.re_prob,
        re_mode=aug.re_mode,
    )


def check_aug(aug: AugConfig, img_size: int) -> None:
    """Build both transforms once, so that a value timm refuses is a one-line error before any data are read.

    timm checks ``interpolation`` and ``auto_augment`` only when it builds the transforms (a KeyError or an
    AssertionError in a DataLoader worker otherwise); building them takes milliseconds.

    Raises:
        TrainError: ``aug.interpolation`` or ``aug.auto_augment`` is not one timm knows.
    """
    # the eval transform takes the interpolation alone: built first, a bad one is not blamed on auto_augment
    try:
        make_eval_transform(aug, img_size)
    except (KeyError, ValueError, TypeError, AssertionError):
        raise TrainError(f"aug.interpolation: must be bicubic, bilinear, nearest, box, hamming or lanczos "
                         f"(got {aug.interpolation!r})") from None
    try:
        make_train_transform(aug, img_size)
    except (KeyError, ValueError, TypeError, AssertionError, IndexError) as e:
        why = str(e).splitlines()[-1] if str(e) else type(e).__name__
        raise TrainError(f"aug.auto_augment: must be a timm policy such as rand-m9-mstd0.5-inc1, augmix-m5 or "
                         f"original, or null (got {aug.auto_augment!r}: {why})") from None


def posterize_zero_bits() -> bool:
    """Let timm's PosterizeIncreasing keep 0 bits (an all-black image, as Pillow < 11 did) if Pillow refuses.

    rand-m9-mstd0.5-inc1 asks for posterize(bits=0) whenever the magnitude draw clips at 10; Pillow 11+ raises
    ValueError there, about once in a few hundred images, which ends a streaming run in its first batches.
    ``make_train_transform`` installs it before building the transform (timm binds the op function then), so
    DataLoader workers inherit it.

    Returns:
        True when the shim was installed.
    """
    from PIL import Image, ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("L", (1, 1)), 0)
        return False
    except ValueError:
        pass
    original = auto_augment.posterize
    if getattr(original, "_zero_bits_black", False):
        return True

    def posterize(img: Any, bits_to_keep: int, **kwargs: Any) -> Any:
        return img.point(lambda _: 0) if bits_to_keep <= 0 else original(img, bits_to_keep, **kwargs)

    posterize._zero_bits_black = True
    auto_augment.posterize = posterize
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = posterize
    return True


def make_eval_transform(aug: AugConfig, img_size: int) -> Callable:
    """The evaluation transform: resize to ``img_size / eval_crop_pct``, centre crop, normalise."""
    return create_transform(
        input_size=img_size,
        is_training=False,
        interpolation=aug.interpolation,
        mean=tuple(aug.mean),
        std=tuple(aug.std),
        crop_pct=aug.eval_crop_pct,
    )


def make_mixup(aug: AugConfig, num_classes: int) -> Mixup | None:
    """timm's batch Mixup/CutMix with label smoothing, or None when both alphas or the probability are 0.

    It works on device tensors; batches must have an even size.
    """
    if (aug.mixup <= 0 and aug.cutmix <= 0) or aug.mixup_prob <= 0:
        return None
    return Mixup(
        mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        mode=aug.mixup_mode,
        label_smoothing=aug.smoothing,
        num_classes=num_classes,
    )


def make_criterion(aug: AugConfig, mixup: Mixup | None) -> torch.nn.Module:
    """LPCE: cross entropy over the perturbation classes, on soft targets when mixup makes them."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return torch.nn.CrossEntropyLoss()
