"""On-device augmentation: timm's training recipe (``train.config.AugConfig``) as a handful of batched tensor ops.

timm's ``create_transform(is_training=True, ...)`` (the released 1p-frac recipe) on batches of grey uint8 images
held on the device (``train/resident.py``): no per-sample Python loop, no host-device copy, no CPU-GPU sync point.

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
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from train.errors import TrainError

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
        self.mean = tuple(float(x) for x in aug.mean)
        self.ops = spec.ops if spec else ()
        self.fill = float(min(255, round(255 * self.mean[0])))  # timm's img_mean fill colour
        self._code = {name: k for k, name in enumerate(self.ops)}
        self._values = torch.arange(256, dtype=torch.float64, device=self.device)
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor([float(x) for x in aug.std], device=self.device).view(1, 3, 1, 1)
        # constants made once: a tensor built from a Python list on the hot path is a host-to-device copy, and
        # PyTorch synchronises the stream after a copy from pageable memory (a CPU-GPU sync point)
        self._eye6 = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64, device=self.device)
        self._geo_codes = torch.tensor([self._code[g] for g in _GEOMETRIC if g in self._code] or [-2],
                                       device=self.device)
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

    def _layer_matrix(self, op: Tensor, level: Tensor) -> Tensor:
        """PIL's output-to-input affine map of one RandAugment layer, (B, 3, 3) float64, in pixels of S."""
        size = float(self.img_size)
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
        spec = self.spec
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
        ra = torch.eye(3, dtype=torch.float64, device=dev).repeat(n, 1, 1)
        if self.spec is not None:
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
        if self.spec is not None:
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

