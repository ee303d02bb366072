"""The GPU-resident source: the dataset lives on the device as uint8, every batch is drawn and augmented there.

A 1p-frac dataset is small (1,000 grey 512 px images are 262 MB as bytes), so instead of decoding PNGs and
augmenting on CPU workers every step, the shards are read once, kept on the device as one channel of uint8,
and each micro-batch is gathered and augmented with a handful of batched tensor ops: no per-sample Python loop,
no host-device copy, no CPU-GPU sync point on the hot path.

The recipe is timm's ``create_transform(is_training=True, ...)`` (the released 1p-frac one), redone on batches:

1. RandomResizedCrop (``aug.rrc_scale``, ``aug.rrc_ratio``): per-sample crop boxes drawn exactly as
   timm/torchvision ``get_params`` draws them (10 attempts, integer box, central fallback); see
   ``sample_crop_params``.
2. Horizontal / vertical flips (``aug.hflip``, ``aug.vflip``).
3. RandAugment (``aug.auto_augment``, e.g. ``rand-m9-mstd0.5-inc1``): two layers per sample, each an op
   drawn uniformly from timm's 15 (``_RAND_INCREASING_TRANSFORMS`` / ``_RAND_TRANSFORMS``), applied with
   probability 0.5, magnitude ~ N(9, 0.5) clipped to [0, 10], random sign, same level functions as timm.
   All 15 are kept, because each is cheap on grey images and dropping one would change how often the
   others fire:

   - geometric (Rotate, ShearX, ShearY, TranslateXRel, TranslateYRel): composed with the crop and flips into
     one affine map per sample, so the image is resampled once (``F.affine_grid`` + ``F.grid_sample``,
     bicubic); where the map leaves the crop the pixel gets timm's fill (``round(255 * mean)``), as PIL does.
   - point-wise intensity ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd, Contrast,
     Brightness): a per-sample 256-entry lookup table built from the sample's histogram, with PIL's
     arithmetic (truncation, clipping, Equalize's step), applied by one gather.
   - Sharpness: PIL's SMOOTH 3x3 kernel (border pixels kept) blended with the image.
   - Color (saturation) is the identity on grey images; it keeps its slot so the others fire at timm's rate.

   Differences from the PIL chain, all deliberate: geometric ops are applied before intensity ops of the
   same sample whatever their layer order (the image is resampled once; when a geometric op follows an
   intensity op, the fill keeps its grey and stays out of the intensity op's histogram, as in PIL, but the
   histogram is that of the warped image); two geometric layers are one resampling, so the fill edge is
   sharp where PIL's second resampling blurs it; bicubic uses torch's a = -0.75 kernel (PIL: -0.5);
   downscaling is anti-aliased by a 2x mip level blended trilinearly (``antialias``) instead of PIL's
   support-scaled filter.
4. Normalisation with ``aug.mean`` / ``aug.std``, expanded to 3 channels.
5. Random erasing (``aug.re_prob``, ``aug.re_mode``): timm's ``RandomErasing`` box draws (area 0.02-1/3,
   aspect 0.3-3.3, 10 attempts), done for the whole batch with masks; timm's own batch call loops over the
   samples in Python.

Mixup/cutmix and label smoothing stay in the loop (timm ``Mixup`` on the device), shared with the streaming
source. The source interface is the one documented at the top of ``train/data.py``.

Options (``cfg.data.resident``, all optional):
    memory_budget_gb: device memory the images may take (default: half of the free device memory on CUDA,
        a quarter of the available RAM on CPU).
    split_ranks: under DDP, rank r holds only every world_size-th sample instead of the whole dataset.
    antialias: keep a 2x box-filtered copy for downscaling crops (default true; +25 % memory).
    load_workers: threads decoding PNGs at start-up (default min(16, cpu count)).
    prefetch: on CUDA, draw the next batch on a side stream while the model trains (default true).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from train.errors import DoesNotFit, TrainError

log = logging.getLogger(__name__)

# timm's RandAugment op names, in timm's order (``timm.data.auto_augment``).
RAND_OPS_INCREASING = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
RAND_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_RESIDENT_KEYS = ("memory_budget_gb", "split_ranks", "antialias", "load_workers", "prefetch")


# --------------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm RandAugment string (``rand-m9-mstd0.5-inc1``).

    Attributes:
        ops: op names, timm's order; drawn uniformly with replacement.
        magnitude: mean magnitude on timm's 0..10 scale.
        magnitude_std: std of the per-application magnitude noise (inf: uniform in [0, magnitude]).
        magnitude_max: upper clip of the magnitude.
        num_layers: ops per image.
        prob: probability that a drawn op is applied.
        increasing: timm's ``inc1`` level functions.
        translate_pct: TranslateXRel/YRel range as a fraction of the image side.
    """

    ops: tuple[str, ...]
    magnitude: float = 10.0
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    increasing: bool = False
    translate_pct: float = 0.45

    @classmethod
    def parse(cls, config: str) -> RandAugmentSpec:
        """Parse timm's RandAugment config string; only the ``rand-`` family with the default op set.

        Raises:
            TrainError: another policy (``augmix``, ``v0``) or an unknown section.
        """
        parts = config.split("-")
        if parts[0] != "rand":
            raise TrainError(f"aug.auto_augment {config!r}: the resident source knows RandAugment ('rand-...') only")
        kw: dict[str, Any] = {}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)([0-9.]+)", part)
            key, val = match.groups() if match else ("", "")
            if key == "m":
                kw["magnitude"] = float(val)
            elif key == "n":
                kw["num_layers"] = int(val)
            elif key == "p":
                kw["prob"] = float(val)
            elif key == "mstd":
                std = float(val)
                kw["magnitude_std"] = math.inf if std > 100 else std
            elif key == "mmax":
                kw["magnitude_max"] = float(val)
            elif key == "inc":
                kw["increasing"] = bool(int(val))
            else:
                raise TrainError(f"aug.auto_augment {config!r}: section {part!r} is not supported by the resident "
                                 "source (known: m, n, p, mstd, mmax, inc)")
        ops = RAND_OPS_INCREASING if kw.get("increasing") else RAND_OPS
        return cls(ops=ops, **kw)


@dataclass(frozen=True)
class Recipe:
    """The on-device augmentation recipe; mirrors ``train.config.AugConfig``.

    Attributes:
        img_size: output side S in pixels.
        scale: RandomResizedCrop area fraction range.
        ratio: RandomResizedCrop aspect ratio (w / h) range.
        hflip: horizontal flip probability.
        vflip: vertical flip probability.
        rand_augment: RandAugment spec, or None.
        re_prob: random erasing probability.
        re_mode: ``pixel`` (per-pixel normal noise), ``rand`` (per-box normal colour) or ``const`` (zeros).
        mean: per-channel normalisation mean (3,).
        std: per-channel normalisation std (3,).
        interpolation: ``bicubic`` or ``bilinear``.
        antialias: blend a 2x box-filtered mip level in when the crop is downscaled.
    """

    img_size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.5
    rand_augment: RandAugmentSpec | None = None
    re_prob: float = 0.0
    re_mode: str = "pixel"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    antialias: bool = True

    @classmethod
    def from_config(cls, aug: Any, img_size: int, antialias: bool = True) -> Recipe:
        """Build from an ``AugConfig``-like object (attributes) or dict with the same keys."""
        get = aug.get if isinstance(aug, dict) else lambda k, d=None: getattr(aug, k, d)
        auto = get("auto_augment")
        interpolation = get("interpolation", "bicubic")
        if interpolation not in ("bicubic", "bilinear"):
            raise TrainError(f"aug.interpolation {interpolation!r}: the resident source does bicubic or bilinear")
        re_mode = get("re_mode", "pixel")
        if re_mode not in ("pixel", "rand", "const"):
            raise TrainError(f"aug.re_mode {re_mode!r}: must be pixel, rand or const")
        return cls(
            img_size=int(img_size),
            scale=tuple(get("rrc_scale", (0.08, 1.0))),
            ratio=tuple(get("rrc_ratio", (3 / 4, 4 / 3))),
            hflip=float(get("hflip", 0.5)),
            vflip=float(get("vflip", 0.5)),
            rand_augment=RandAugmentSpec.parse(auto) if auto else None,
            re_prob=float(get("re_prob", 0.0)),
            re_mode=re_mode,
            mean=tuple(float(x) for x in get("mean", (0.5,) * 3)),
            std=tuple(float(x) for x in get("std", (0.5,) * 3)),
            interpolation=interpolation,
            antialias=antialias,
        )


# --------------------------------------------------------------------------------------------- params


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def sample_crop_params(gen: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float],
                       ratio: tuple[float, float], device: torch.device) -> Tensor:
    """RandomResizedCrop boxes for ``n`` samples, drawn like timm's / torchvision's ``get_params``.

    Ten attempts per sample (area fraction ~ U(scale), log aspect ~ U(log ratio), rounded to integer sides);
    the first attempt that fits is taken, the central crop with the clamped aspect ratio otherwise; the
    offset is uniform over the positions that keep the box inside the image.

    Returns:
        (n, 4) int64: top i, left j, height h, width w, with 0 <= i <= height - h and 0 <= j <= width - w.
    """
    attempts = 10
    area = height * width
    target = _uniform(gen, (n, attempts), scale[0], scale[1], device) * area
    aspect = torch.exp(_uniform(gen, (n, attempts), math.log(ratio[0]), math.log(ratio[1]), device))
    w = torch.round(torch.sqrt(target * aspect))  # torch.round rounds half to even, like Python's round
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting attempt
    any_ok = ok.any(dim=1)
    in_ratio = width / height  # the central fallback, as in get_params
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w.gather(1, first).squeeze(1), torch.full_like(any_ok, fw, dtype=w.dtype))
    h = torch.where(any_ok, h.gather(1, first).squeeze(1), torch.full_like(any_ok, fh, dtype=h.dtype))
    u = torch.rand((2, n), generator=gen, device=device)
    i = torch.where(any_ok, torch.floor(u[0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    j = torch.where(any_ok, torch.floor(u[1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([i, j, h, w], dim=1).long()


def sample_erase_params(gen: torch.Generator, n: int, size: int, prob: float, device: torch.device) -> Tensor:
    """Random-erasing boxes for ``n`` samples of side ``size``, drawn like timm's ``RandomErasing._erase``.

    Returns:
        (n, 4) int64: top, left, h, w; h = w = 0 where the sample is not erased (probability 1 - prob, or
        no attempt fitted).
    """
    attempts = 10
    area = size * size
    target = _uniform(gen, (n, attempts), 0.02, 1 / 3, device) * area
    aspect = torch.exp(_uniform(gen, (n, attempts), math.log(0.3), math.log(1 / 0.3), device))
    h = torch.round(torch.sqrt(target * aspect))
    w = torch.round(torch.sqrt(target / aspect))
    ok = (w < size) & (h < size)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)
    erase = ok.any(dim=1) & (torch.rand(n, generator=gen, device=device) <= prob)
    h = torch.where(erase, h.gather(1, first).squeeze(1), 0)
    w = torch.where(erase, w.gather(1, first).squeeze(1), 0)
    u = torch.rand((2, n), generator=gen, device=device)
    top = torch.floor(u[0] * (size - h + 1))
    left = torch.floor(u[1] * (size - w + 1))
    return torch.stack([top, left, h, w], dim=1).long()


@dataclass
class BatchParams:
    """Every random draw of one augmented batch (B samples); all tensors on the device.

    Attributes:
        crop: (B, 4) int64 RandomResizedCrop box (i, j, h, w) in source pixels.
        hflip: (B,) bool.
        vflip: (B,) bool.
        ops: (B, n_layers) int64 index into the spec's ops, -1 where the layer is skipped (prob).
        magnitude: (B, n_layers) float32 in [0, magnitude_max].
        sign: (B, n_layers) float32 +-1 (timm's ``_randomly_negate``).
        erase: (B, 4) int64 erasing box (top, left, h, w), zero size where not erased.
    """

    crop: Tensor
    hflip: Tensor
    vflip: Tensor
    ops: Tensor
    magnitude: Tensor
    sign: Tensor
    erase: Tensor


# --------------------------------------------------------------------------------------------- batch op


class DeviceAugment:
    """The recipe as batched tensor ops on one device.

    Args:
        recipe: what to do.
        device: where the images are.
    """

    def __init__(self, recipe: Recipe, device: torch.device) -> None:
        self.recipe = recipe
        self.device = torch.device(device)
        spec = recipe.rand_augment
        self.ops = spec.ops if spec else ()
        self.fill = float(min(255, round(255 * recipe.mean[0])))  # timm's img_mean fill colour
        self._code = {name: k for k, name in enumerate(self.ops)}
        self._values = torch.arange(256, dtype=torch.float64, device=self.device)
        self._mean = torch.tensor(recipe.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(recipe.std, device=self.device).view(1, 3, 1, 1)
        # constants made once: a tensor built from a Python list on the hot path is a host-to-device copy, and
        # PyTorch synchronises the stream after a copy from pageable memory (a CPU-GPU sync point)
        self._eye6 = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64, device=self.device)
        self._geo_codes = torch.tensor([self._code[g] for g in _GEOMETRIC if g in self._code] or [-2],
                                       device=self.device)
        self._norms: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}

    # -- draws

    def sample(self, gen: torch.Generator, n: int, height: int, width: int) -> BatchParams:
        """Draw every random choice of an ``n``-sample batch from ``height`` x ``width`` sources."""
        r, dev = self.recipe, self.device
        crop = sample_crop_params(gen, n, height, width, r.scale, r.ratio, dev)
        flips = torch.rand((2, n), generator=gen, device=dev)
        spec = r.rand_augment
        layers = spec.num_layers if spec else 0
        ops = torch.randint(0, max(len(self.ops), 1), (n, layers), generator=gen, device=dev)
        applied = torch.rand((n, layers), generator=gen, device=dev) <= (spec.prob if spec else 0.0)
        ops = torch.where(applied, ops, -1)
        if spec is None:
            magnitude = torch.zeros((n, 0), device=dev)
        elif spec.magnitude_std == math.inf:
            magnitude = _uniform(gen, (n, layers), 0.0, spec.magnitude, dev)
        else:
            magnitude = spec.magnitude + spec.magnitude_std * torch.randn((n, layers), generator=gen, device=dev)
        if spec is not None:
            magnitude = magnitude.clamp(0.0, spec.magnitude_max)
        sign = torch.where(torch.rand((n, layers), generator=gen, device=dev) > 0.5, -1.0, 1.0)
        erase = sample_erase_params(gen, n, r.img_size, r.re_prob, dev)
        return BatchParams(crop=crop, hflip=flips[0] < r.hflip, vflip=flips[1] < r.vflip, ops=ops,
                           magnitude=magnitude, sign=sign, erase=erase)

    # -- geometry

    def _layer_matrix(self, op: Tensor, level: Tensor) -> Tensor:
        """PIL's output-to-input affine map of one RandAugment layer, (B, 3, 3) float64, in pixels of S."""
        size = float(self.recipe.img_size)
        n = op.shape[0]
        m = torch.eye(3, dtype=torch.float64, device=self.device).repeat(n, 1, 1)
        lv = level.double()
        code = self._code
        # Rotate: PIL's Image.rotate(deg) about the centre; level is degrees.
        phi = -torch.deg2rad(lv)
        cos, sin = torch.cos(phi), torch.sin(phi)
        c = size / 2
        rot = torch.stack([cos, sin, c - cos * c - sin * c, -sin, cos, c + sin * c - cos * c], dim=1)
        eye = self._eye6.expand(n, 6)
        zero = torch.zeros_like(lv)
        one = torch.ones_like(lv)
        candidates = {
            "Rotate": rot,
            "ShearX": torch.stack([one, lv, zero, zero, one, zero], dim=1),  # shear about the top-left corner
            "ShearY": torch.stack([one, zero, zero, lv, one, zero], dim=1),
            "TranslateXRel": torch.stack([one, zero, lv * size, zero, one, zero], dim=1),
            "TranslateYRel": torch.stack([one, zero, zero, zero, one, lv * size], dim=1),
        }
        rows = eye
        for name, mat in candidates.items():
            if name in code:
                rows = torch.where((op == code[name])[:, None], mat, rows)
        m[:, :2, :] = rows.view(n, 2, 3)
        return m

    def _levels(self, op: Tensor, magnitude: Tensor, sign: Tensor) -> dict[str, Tensor]:
        """timm's level functions for every op, evaluated for the whole batch: name -> (B,) float64."""
        spec = self.recipe.rand_augment
        m = magnitude.double() / 10.0  # timm's _LEVEL_DENOM
        s = sign.double()
        if spec.increasing:
            enhance = torch.clamp(1.0 + s * m * 0.9, min=0.1)
            bits = 4 - torch.floor(m * 4)
            thresh = 256 - torch.clamp(torch.floor(m * 256), max=256)
        else:
            enhance = m * 1.8 + 0.1
            bits = torch.floor(m * 4)
            thresh = torch.clamp(torch.floor(m * 256), max=256)
        return {
            "rotate": s * m * 30.0, "shear": s * m * 0.3, "translate": s * m * spec.translate_pct,
            "enhance": enhance, "bits": bits, "thresh": thresh,
            "add": torch.clamp(torch.floor(m * 110), max=128),
        }

    def _geometry(self, p: BatchParams, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Normalised affine maps (B, 2, 3) float32: output -> source image, and output -> crop square."""
        size = float(self.recipe.img_size)
        n = p.crop.shape[0]
        dev = self.device
        i, j, h, w = p.crop.double().unbind(1)
        zero, one = torch.zeros_like(i), torch.ones_like(i)
        crop = torch.stack([w / size, zero, j, zero, h / size, i, zero, zero, one], 1).view(n, 3, 3)
        fx = torch.where(p.hflip, -1.0, 1.0).double()
        fy = torch.where(p.vflip, -1.0, 1.0).double()
        flip = torch.stack([fx, zero, (1 - fx) * size / 2, zero, fy, (1 - fy) * size / 2, zero, zero, one],
                           1).view(n, 3, 3)
        ra = torch.eye(3, dtype=torch.float64, device=dev).repeat(n, 1, 1)
        if self.recipe.rand_augment is not None:
            lv = self._levels(p.ops, p.magnitude, p.sign)
            for layer in range(p.ops.shape[1]):
                op = p.ops[:, layer]
                level = torch.zeros(n, dtype=torch.float64, device=dev)
                for name, key in (("Rotate", "rotate"), ("ShearX", "shear"), ("ShearY", "shear"),
                                  ("TranslateXRel", "translate"), ("TranslateYRel", "translate")):
                    if name in self._code:
                        level = torch.where(op == self._code[name], lv[key][:, layer], level)
                ra = ra @ self._layer_matrix(op, level)  # layer 1 then layer 2: p_in = M1 (M2 p)
        if (height, width) not in self._norms:
            self._norms[(height, width)] = tuple(torch.tensor(m, dtype=torch.float64, device=dev) for m in (
                [[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]],  # output [-1, 1] -> pixels
                [[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]],  # source pixels -> [-1, 1]
                [[2 / size, 0, -1], [0, 2 / size, -1], [0, 0, 1]],  # crop-square pixels -> [-1, 1]
            ))
        out_to_px, src_norm, crop_norm = self._norms[(height, width)]
        to_source = src_norm @ crop @ flip @ ra @ out_to_px
        to_crop = crop_norm @ ra @ out_to_px
        return to_source[:, :2].float(), to_crop[:, :2].float()

    # -- intensity

    def _lut(self, op: Tensor, levels: dict[str, Tensor], layer: int, hist: Tensor) -> Tensor:
        """Per-sample 256-entry lookup tables (B, 256) float64 with PIL's arithmetic for the point-wise ops."""
        v = self._values.expand(op.shape[0], 256)
        lut = v
        code = self._code

        def pick(name: str, table: Tensor) -> None:
            nonlocal lut
            if name in code:
                lut = torch.where((op == code[name])[:, None], table, lut)

        def blend(degenerate: Tensor, factor: Tensor) -> Tensor:
            # PIL Image.blend: truncation toward zero, clipped to [0, 255]
            return torch.clamp(torch.trunc(degenerate + factor[:, None] * (v - degenerate)), 0, 255)

        total = hist.sum(1, keepdim=True).clamp(min=1)
        nonzero = hist > 0
        lo = nonzero.to(torch.uint8).argmax(1, keepdim=True).double()
        hi = 255 - nonzero.flip(1).to(torch.uint8).argmax(1, keepdim=True).double()
        scale = 255.0 / torch.clamp(hi - lo, min=1)
        auto = torch.clamp(torch.trunc(v * scale - lo * scale), 0, 255)
        pick("AutoContrast", torch.where(hi > lo, auto, v))
        # Equalize (PIL ImageOps.equalize): step from all but the last non-empty bin
        last = hist.gather(1, hi.long())
        step = torch.floor((total - last) / 256)
        before = torch.cumsum(hist, 1) - hist
        eq = torch.clamp(torch.floor((torch.floor(step / 2) + before) / torch.clamp(step, min=1)), max=255)
        pick("Equalize", torch.where((step > 0) & (nonzero.sum(1, keepdim=True) > 1), eq, v))
        pick("Invert", 255 - v)
        bits = levels["bits"][:, layer : layer + 1]
        quantum = torch.pow(2.0, 8 - torch.clamp(bits, max=8))
        pick("Posterize" if "Posterize" in code else "PosterizeIncreasing",
             torch.where(bits >= 8, v, torch.floor(v / quantum) * quantum))
        thresh = levels["thresh"][:, layer : layer + 1]
        pick("Solarize" if "Solarize" in code else "SolarizeIncreasing", torch.where(v < thresh, v, 255 - v))
        add = levels["add"][:, layer : layer + 1]
        pick("SolarizeAdd", torch.where(v < 128, torch.clamp(v + add, max=255), v))
        factor = levels["enhance"][:, layer]
        mean = torch.floor((hist * v).sum(1, keepdim=True) / total + 0.5)  # PIL: int(mean of L + 0.5)
        pick("Contrast" if "Contrast" in code else "ContrastIncreasing", blend(mean.expand_as(v), factor))
        pick("Brightness" if "Brightness" in code else "BrightnessIncreasing", blend(torch.zeros_like(v), factor))
        return lut

    def _intensity(self, x: Tensor, p: BatchParams, inside: Tensor) -> Tensor:
        """Apply the point-wise and Sharpness layers in layer order.

        Args:
            x: (B, 1, S, S) float32 with integer values 0..255, already geometrically transformed.
            p: the draws.
            inside: (B, 1, S, S) bool, False where a RandAugment geometric op filled the pixel.

        Returns:
            (B, 1, S, S) float32, integer values 0..255.

        In PIL a geometric op of a later layer fills *after* an earlier intensity op; here the image was resampled
        first, so for such a sample and layer the fill pixels are left out of the histogram and keep the fill.
        """
        n = x.shape[0]
        levels = self._levels(p.ops, p.magnitude, p.sign)
        sharp_code = self._code.get("Sharpness", self._code.get("SharpnessIncreasing"))
        geometric = torch.isin(p.ops, self._geo_codes)  # (B, layers)
        # later[:, l]: a geometric op comes after layer l
        later = torch.flip(torch.cumsum(torch.flip(geometric.int(), [1]), 1), [1]) - geometric.int() > 0
        for layer in range(p.ops.shape[1]):
            op = p.ops[:, layer]
            keep_fill = later[:, layer].view(n, 1, 1, 1) & ~inside  # (B, 1, S, S)
            flat = x.view(n, -1).long()  # (B, S*S) int64: a transient of 8 bytes per pixel
            hist = torch.zeros((n, 256), dtype=torch.int32, device=x.device)
            hist.scatter_add_(1, flat, (~keep_fill).view(n, -1).int())
            lut = self._lut(op, levels, layer, hist.double()).float()
            new = lut.gather(1, flat).view_as(x)
            if sharp_code is not None:
                # Sharpness: PIL's SMOOTH filter (rounded, border copied) blended with the image
                # SMOOTH = (3x3 box sum + 4 x centre) / 13; a box filter is far cheaper than a 1-channel conv
                # (exact: the sums are integers and k / 13 is never within float error of a half)
                smooth = torch.floor((F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[:, :, 1:-1, 1:-1]) / 13 + 0.5)
                degenerate = x.clone()
                degenerate[:, :, 1:-1, 1:-1] = smooth
                factor = levels["enhance"][:, layer].float().view(n, 1, 1, 1)
                sharp = torch.clamp(torch.trunc(degenerate + factor * (x - degenerate)), 0, 255)
                new = torch.where((op == sharp_code).view(n, 1, 1, 1), sharp, new)
            x = torch.where(keep_fill, x, new)
        return x

    # -- the whole op

    def apply(self, images: Tensor, p: BatchParams, mip: Tensor | None = None,
              gen: torch.Generator | None = None) -> Tensor:
        """Augment a batch with the given draws.

        Args:
            images: (B, 1, H, W) uint8 source images (already gathered).
            p: the draws, from ``sample``.
            mip: (B, 1, H/2, W/2) uint8 2x box-filtered copies for anti-aliased downscaling, or None.
            gen: generator of the erasing noise (``pixel`` and ``rand`` modes); torch's default if None.

        Returns:
            (B, 3, S, S) float32, normalised with the recipe's mean/std (pixel value v -> (v/255 - mean) / std);
            erased boxes hold the erasing fill instead.
        """
        r = self.recipe
        n, _, height, width = images.shape
        size = r.img_size
        to_source, to_crop = self._geometry(p, height, width)
        shape = (n, 1, size, size)
        grid = F.affine_grid(to_source, shape, align_corners=False)  # (B, S, S, 2)
        # border padding: bicubic taps just outside the source repeat the edge (PIL clamps likewise)
        x = F.grid_sample(images.float(), grid, mode=r.interpolation, padding_mode="border", align_corners=False)
        if mip is not None:
            # trilinear mip blend: weight of the 2x level = log2 of the downscale factor, clipped to [0, 1]
            down = torch.sqrt(p.crop[:, 2].float() * p.crop[:, 3].float()) / size
            t = torch.clamp(torch.log2(down), 0, 1).view(n, 1, 1, 1)
            x2 = F.grid_sample(mip.float(), grid, mode=r.interpolation, padding_mode="border", align_corners=False)
            x = torch.lerp(x, x2, t)
        if r.rand_augment is not None:
            # PIL fills where a RandAugment geometric op maps outside the crop square
            inside = F.affine_grid(to_crop, shape, align_corners=False).abs().amax(-1) <= 1
            x = torch.where(inside.unsqueeze(1), x, self.fill)
        x = torch.clamp(torch.round(x), 0, 255)  # PIL holds uint8 between ops
        if r.rand_augment is not None:
            x = self._intensity(x, p, inside.unsqueeze(1))
        out = (x.expand(n, 3, size, size) / 255.0 - self._mean) / self._std
        if r.re_prob > 0:
            top, left, h, w = p.erase.unbind(1)
            ys = torch.arange(size, device=self.device)
            rows = (ys >= top[:, None]) & (ys < (top + h)[:, None])  # (B, S)
            cols = (ys >= left[:, None]) & (ys < (left + w)[:, None])
            box = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)  # (B, 1, S, S)
            if r.re_mode == "pixel":
                noise = torch.randn((n, 3, size, size), generator=gen, device=self.device)
            elif r.re_mode == "rand":
                noise = torch.randn((n, 3, 1, 1), generator=gen, device=self.device)
            else:
                noise = torch.zeros((1, 1, 1, 1), device=self.device)
            out = torch.where(box, noise, out)
        return out

    def __call__(self, images: Tensor, gen: torch.Generator, mip: Tensor | None = None) -> Tensor:
        """Draw and apply: (B, 1, H, W) uint8 -> (B, 3, S, S) float32 normalised."""
        p = self.sample(gen, images.shape[0], images.shape[2], images.shape[3])
        return self.apply(images, p, mip, gen)


# --------------------------------------------------------------------------------------------- loading


def _seed(*parts: int) -> int:
    """A 64-bit seed from integer parts (seed, epoch, rank, step), independent of any global state."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])


def _read_info(root: Path) -> dict[str, Any]:
    """``_info.json`` of a fracgen dataset folder: num_classes and the train split's shard names."""
    try:
        info = json.loads((root / "_info.json").read_text())
        split = info["splits"]["train"]
        return {"num_classes": int(info["num_classes"]), "num_samples": int(split["num_samples"]),
                "filenames": list(split["filenames"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainError(f"{root / '_info.json'}: not a fracgen _info.json ({e.__class__.__name__}: {e})") from None


def _shard_members(path: Path) -> Iterator[tuple[str, bytes, int, Path]]:
    """(key, png bytes, label, shard path) of every sample of one shard, in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError) as e:
        raise TrainError(f"shard {path}: corrupt tar ({e})") from None
    for key, parts in samples.items():
        if "png" not in parts or "cls" not in parts:
            raise TrainError(f"shard {path}: sample {key!r} lacks png or cls")
        try:
            label = int(parts["cls"])
        except ValueError:
            raise TrainError(f"shard {path}: sample {key}: cls {parts['cls'][:20]!r} is not an integer") from None
        yield key, parts["png"], label, path


def _decode(member: tuple[str, bytes, int, Path]) -> np.ndarray:
    """A member's PNG -> (H, W) uint8 grey (a 1-bit palette image decodes to {0, 127}).

    Raises:
        TrainError: naming the shard and the sample, when the PNG does not decode.
    """
    key, png, _, path = member
    try:
        with Image.open(io.BytesIO(png)) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for damaged files
        raise TrainError(f"shard {path}: sample {key}: cannot decode its png ({e})") from None


def probe_dataset(root: str | Path) -> dict[str, Any]:
    """What loading ``root`` would cost, without reading it all: num_classes, num_samples, height, width."""
    root = Path(root)
    info = _read_info(root)
    if not info["filenames"]:
        raise TrainError(f"{root}: _info.json lists no shards")
    first = next(_shard_members(root / info["filenames"][0]), None)
    if first is None:
        raise TrainError(f"shard {root / info['filenames'][0]}: empty")
    height, width = _decode(first).shape
    return {**info, "height": height, "width": width}


def load_images(root: str | Path, *, rank: int = 0, world_size: int = 1, split_ranks: bool = False,
                workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and decode every sample of a dataset folder (or this rank's share of them).

    Args:
        root: a fracgen dataset folder.
        rank, world_size: this process's place in DDP.
        split_ranks: keep only the samples whose position (in key order) is rank modulo world_size.
        workers: decoding threads (PIL releases the GIL while decoding).

    Returns:
        images (N, H, W) uint8 and labels (N,) int64, in key order.

    Raises:
        TrainError: unreadable shard, a sample without png/cls, or images of different sizes.
    """
    root = Path(root)
    info = _read_info(root)
    members = [m for name in info["filenames"] for m in _shard_members(root / name)]
    members.sort(key=lambda m: m[0])
    if split_ranks and world_size > 1:
        members = members[rank::world_size]
    if not members:
        raise TrainError(f"{root}: no samples for rank {rank} of {world_size}")
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(_decode, members, chunksize=64))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise TrainError(f"{root}: images of different sizes {sorted(shapes)[:3]}; the resident source needs one size")
    labels = np.array([m[2] for m in members], dtype=np.int64)
    return np.stack(arrays), labels


def default_budget(device: torch.device) -> int:
    """Bytes the images may take: half of the free memory of a CUDA device, a quarter of available RAM else."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)  # a CPU-GPU sync point, once at start-up
        return free // 2
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 // 4
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def dataset_bytes(num_images: int, height: int, width: int, antialias: bool) -> int:
    """Device bytes of ``num_images`` resident images: one uint8 channel, plus the 2x mip level if antialiased."""
    return num_images * (height * width + ((height // 2) * (width // 2) if antialias else 0))


def estimate_batch_bytes(batch: int, height: int, width: int, size: int, antialias: bool = True) -> int:
    """Rough peak transient bytes of one augmented micro-batch (gathered sources, grids, LUT indices, output)."""
    src = height * width * (1 + 4) * (1.25 if antialias else 1.0)  # gathered uint8 + its float copy
    per_pixel = 2 * 2 * 4 + 6 * 4 + 8 + 2 * 3 * 4  # two grids, float transients, int64 indices, out + noise
    return int(batch * (src + per_pixel * size * size))


# --------------------------------------------------------------------------------------------- source


class ResidentSource:
    """Batches drawn and augmented on the device from images held there (``train/data.py``'s interface).

    Epochs follow the streaming source's bookkeeping: ``ceil(num_samples / batch_size)`` optimizer steps of
    ``accum_steps`` micro-batches each. An epoch's order is one random permutation of the dataset (shared by
    all ranks when every rank holds everything, rank r taking micro-batch slots r, r + world_size, ...; per
    rank otherwise), wrapping around at the end; every micro-batch's augmentation draws come from a generator
    seeded by ``(seed, epoch, rank, index)``, so ``batches(epoch, start)`` resumes exactly.

    Args:
        images: (N, H, W) uint8 grey images (numpy or tensor), moved to ``device``.
        labels: (N,) int64 labels.
        num_classes: classes of the whole dataset.
        recipe: the augmentation.
        device: where the images live and batches are made.
        batch_size: global batch (all ranks, all accumulation micro-steps).
        accum_steps: gradient-accumulation micro-steps per optimizer step.
        seed: base seed.
        rank, world_size: DDP place.
        split_ranks: ``images`` are this rank's share only (sampling stays within it).
        num_samples: samples of the whole dataset (defines the epoch length); default ``len(images)``.
        prefetch: on CUDA, draw the next batch on a side stream (see ``batches``).
    """

    def __init__(self, images: np.ndarray | Tensor, labels: np.ndarray | Tensor, num_classes: int, recipe: Recipe,
                 device: torch.device, *, batch_size: int, accum_steps: int = 1, seed: int = 0, rank: int = 0,
                 world_size: int = 1, split_ranks: bool = False, num_samples: int | None = None,
                 prefetch: bool = True) -> None:
        if batch_size % (world_size * accum_steps):
            raise TrainError(f"train.batch_size {batch_size} does not divide into {world_size} ranks x "
                             f"{accum_steps} accumulation steps")
        self.device = torch.device(device)
        self.num_classes = int(num_classes)
        self.micro_batch = batch_size // (world_size * accum_steps)
        self.rank, self.world_size, self.seed, self.split_ranks = rank, world_size, seed, split_ranks
        images = torch.as_tensor(images)
        self.images = images.to(self.device).unsqueeze(1)  # (N, 1, H, W) uint8
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.mip = None
        if recipe.antialias:
            # 2x box filter, in chunks so the float transient stays small
            self.mip = torch.cat([F.avg_pool2d(c.float(), 2).round_().to(torch.uint8)
                                  for c in self.images.split(256)])
        self.augment = DeviceAugment(recipe, self.device)
        total = num_samples if num_samples is not None else len(self.labels)
        self._len = math.ceil(total / batch_size) * accum_steps
        self._gen = torch.Generator(device=self.device)
        self._stream = torch.cuda.Stream(self.device) if prefetch and self.device.type == "cuda" else None
        self._perm: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Device bytes held by the images (and their mip level)."""
        return self.images.nbytes + (self.mip.nbytes if self.mip is not None else 0) + self.labels.nbytes

    def _epoch_perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            parts = (self.seed, epoch, self.rank) if self.split_ranks else (self.seed, epoch)
            self._gen.manual_seed(_seed(*parts))
            # argsort of uniforms: a permutation made on the device by a sort, with no host round trip
            keys = torch.rand(len(self.labels), generator=self._gen, device=self.device)
            self._perm = (epoch, torch.argsort(keys))
        return self._perm[1]

    def indices(self, epoch: int, index: int) -> Tensor:
        """Dataset rows of micro-batch ``index`` of ``epoch`` on this rank: (micro_batch,) int64 on the device."""
        perm = self._epoch_perm(epoch)
        slot = index if self.split_ranks else index * self.world_size + self.rank
        pos = slot * self.micro_batch + torch.arange(self.micro_batch, device=self.device)
        return perm[pos % len(perm)]

    def draw(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Micro-batch ``index`` of ``epoch``: images (B, 3, S, S) float32 normalised, targets (B,) int64."""
        rows = self.indices(epoch, index)
        self._gen.manual_seed(_seed(self.seed, epoch, self.rank, index, 1))  # no sync: a host-side seed
        mip = self.mip.index_select(0, rows) if self.mip is not None else None
        images = self.augment(self.images.index_select(0, rows), self._gen, mip)
        return images, self.labels.index_select(0, rows)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield micro-batches ``start .. len-1`` of ``epoch`` (see the class docstring).

        On CUDA with ``prefetch``, batch k + 1 is drawn on a side stream while the caller's stream trains on
        batch k, so the augmentation kernels can overlap the model's; the batches are the same either way.
        """
        if self._stream is None:
            for index in range(start, self._len):
                yield self.draw(epoch, index)
            return
        main, side = torch.cuda.current_stream(self.device), self._stream
        side.wait_stream(main)  # the images were uploaded on the main stream

        def produce(index: int) -> tuple[Tensor, Tensor] | None:
            if index >= self._len:
                return None
            with torch.cuda.stream(side):
                return self.draw(epoch, index)

        ahead = produce(start)
        for index in range(start, self._len):
            batch = ahead
            main.wait_stream(side)  # no host wait: the main stream waits on the GPU for the batch
            for t in batch:
                t.record_stream(main)  # the allocator must not reuse it before main is done with it
            ahead = produce(index + 1)
            yield batch

    def close(self) -> None:
        """Drop the device copies."""
        self.images = self.mip = self.labels = None
        self._perm = None


def make_resident_source(cfg: Any, device: torch.device, rank: int = 0, world_size: int = 1) -> ResidentSource:
    """The resident source of a run config (``train.config.Config``), as ``train.data.make_source`` asks for it.

    Raises:
        DoesNotFit: the images exceed the memory budget, the device ran out of memory while loading them, or
            ``cfg.data.path`` is not a local dataset folder (the streaming source handles patterns and URLs).
        TrainError: bad options, a bad dataset, or no memory left for one augmented micro-batch (the message
            says which micro-batch would fit).
    """
    device = torch.device(device)
    opts = dict(cfg.data.resident or {})
    unknown = sorted(set(opts) - set(_RESIDENT_KEYS))
    if unknown:
        raise TrainError(f"data.resident: unknown option(s) {unknown} (known: {', '.join(_RESIDENT_KEYS)})")
    split = bool(opts.get("split_ranks", False))
    antialias = bool(opts.get("antialias", True))
    root = Path(cfg.data.path)
    if not root.is_dir():
        raise DoesNotFit(f"resident source: data.path {cfg.data.path!r} is not a local dataset folder")
    probe = probe_dataset(root)
    n_local = math.ceil(probe["num_samples"] / world_size) if split else probe["num_samples"]
    need = dataset_bytes(n_local, probe["height"], probe["width"], antialias)
    budget_gb = opts.get("memory_budget_gb")
    budget = int(float(budget_gb) * 2**30) if budget_gb is not None else default_budget(device)
    if need > budget:
        hint = "" if split or world_size == 1 else "; data.resident.split_ranks: true holds 1/world_size per rank"
        raise DoesNotFit(
            f"resident source: {n_local} images of {probe['height']}x{probe['width']} need {need / 2**30:.2f} GiB "
            f"on {device}, over the budget of {budget / 2**30:.2f} GiB (data.resident.memory_budget_gb{hint})")
    recipe = Recipe.from_config(cfg.aug, cfg.model.img_size, antialias=antialias)
    images, labels = load_images(root, rank=rank, world_size=world_size, split_ranks=split,
                                 workers=opts.get("load_workers"))
    try:
        source = ResidentSource(images, labels, probe["num_classes"], recipe, device,
                                batch_size=cfg.train.batch_size, accum_steps=cfg.train.accum_steps,
                                seed=cfg.train.seed, rank=rank, world_size=world_size, split_ranks=split,
                                num_samples=probe["num_samples"], prefetch=bool(opts.get("prefetch", True)))
    except torch.OutOfMemoryError:
        raise DoesNotFit(f"resident source: out of device memory loading {need / 2**30:.2f} GiB of images on "
                         f"{device}; lower data.resident.memory_budget_gb") from None
    try:
        source.draw(0, 0)  # allocate the batch op's transients once, so an OOM shows here and not mid-run
    except torch.OutOfMemoryError:
        per = estimate_batch_bytes(1, probe["height"], probe["width"], recipe.img_size, antialias)
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 4 * default_budget(device)
        fit = max(int(free * 0.8) // per, 0)
        source.close()
        raise TrainError(
            f"resident source: out of device memory drawing a micro-batch of {source.micro_batch} "
            f"(about {per * source.micro_batch / 2**20:.0f} MiB; {free / 2**30:.2f} GiB free after the "
            f"{need / 2**30:.2f} GiB of images): a micro-batch of at most {fit} would fit; raise "
            "train.accum_steps or lower train.batch_size or data.resident.memory_budget_gb") from None
    log.info("resident source: %d images %dx%d on %s (%.1f MiB)", len(labels), probe["height"], probe["width"],
             device, source.nbytes / 2**20)
    return source
