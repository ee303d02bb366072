"""On-device augmentation: timm's training recipe (``train.config.AugConfig``) as a handful of batched tensor ops.

timm's ``create_transform(is_training=True, ...)`` (the released 1p-frac recipe) on batches of grey uint8 images
held on the device (``train/data/resident.py``): no per-sample Python loop, no host-device copy, no CPU-GPU sync point.

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

Mixup/cutmix and label smoothing stay in the loop (timm ``Mixup`` on the device), shared with the streaming source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from train.data.rand_augment import RandAugment, RandAugmentSpec
from train.errors import TrainError


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


class DeviceAugment:
    """The recipe of an ``AugConfig`` as batched tensor ops on one device.

    Args:
        aug: ``train.config.AugConfig`` (or any object with its attributes); read here: rrc_scale, rrc_ratio,
            interpolation (bicubic or bilinear), hflip, vflip, auto_augment (``rand-...`` or None), re_prob,
            re_mode (``pixel``, ``rand`` or ``const``), mean, std.
        img_size: output side S in pixels.
        device: where the images are.

    Raises:
        TrainError: an option the batched ops do not implement.
    """

    def __init__(self, aug: Any, img_size: int, device: torch.device) -> None:
        if aug.interpolation not in ("bicubic", "bilinear"):
            raise TrainError(f"aug.interpolation {aug.interpolation!r}: the resident source does bicubic or bilinear")
        if aug.re_mode not in ("pixel", "rand", "const"):
            raise TrainError(f"aug.re_mode {aug.re_mode!r}: must be pixel, rand or const")
        self.aug, self.img_size = aug, int(img_size)
        self.device = torch.device(device)
        self.spec = spec = RandAugmentSpec.parse(aug.auto_augment) if aug.auto_augment else None
        self.rand = RandAugment(spec, self.img_size, self.device) if spec else None
        self.mean = tuple(float(x) for x in aug.mean)
        self.ops = spec.ops if spec else ()
        self.fill = float(min(255, round(255 * self.mean[0])))  # timm's img_mean fill colour
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor([float(x) for x in aug.std], device=self.device).view(1, 3, 1, 1)
        self._norms: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}

    # -- draws

    def sample(self, gen: torch.Generator, n: int, height: int, width: int) -> BatchParams:
        """Draw every random choice of an ``n``-sample batch from ``height`` x ``width`` sources."""
        r, dev, spec = self.aug, self.device, self.spec
        crop = sample_crop_params(gen, n, height, width, tuple(r.rrc_scale), tuple(r.rrc_ratio), dev)
        flips = torch.rand((2, n), generator=gen, device=dev)
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
        erase = sample_erase_params(gen, n, self.img_size, float(r.re_prob), dev)
        return BatchParams(crop=crop, hflip=flips[0] < float(r.hflip), vflip=flips[1] < float(r.vflip), ops=ops,
                           magnitude=magnitude, sign=sign, erase=erase)

    # -- geometry

    def _geometry(self, p: BatchParams, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Normalised affine maps (B, 2, 3) float32: output -> source image, and output -> crop square."""
        size = float(self.img_size)
        n = p.crop.shape[0]
        dev = self.device
        i, j, h, w = p.crop.double().unbind(1)
        zero, one = torch.zeros_like(i), torch.ones_like(i)
        crop = torch.stack([w / size, zero, j, zero, h / size, i, zero, zero, one], 1).view(n, 3, 3)
        fx = torch.where(p.hflip, -1.0, 1.0).double()
        fy = torch.where(p.vflip, -1.0, 1.0).double()
        flip = torch.stack([fx, zero, (1 - fx) * size / 2, zero, fy, (1 - fy) * size / 2, zero, zero, one],
                           1).view(n, 3, 3)
        ra = (self.rand.affine(p.ops, p.magnitude, p.sign) if self.rand is not None
              else torch.eye(3, dtype=torch.float64, device=dev).repeat(n, 1, 1))
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
            (B, 3, S, S) float32, normalised with ``aug.mean`` / ``aug.std`` (pixel value v -> (v/255 - mean) / std);
            erased boxes hold the erasing fill instead.
        """
        r = self.aug
        n, _, height, width = images.shape
        size = self.img_size
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
        if self.spec is not None:
            # PIL fills where a RandAugment geometric op maps outside the crop square
            inside = F.affine_grid(to_crop, shape, align_corners=False).abs().amax(-1) <= 1
            x = torch.where(inside.unsqueeze(1), x, self.fill)
        x = torch.clamp(torch.round(x), 0, 255)  # PIL holds uint8 between ops
        if self.rand is not None:
            x = self.rand.intensity(x, p.ops, p.magnitude, p.sign, inside.unsqueeze(1))
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

