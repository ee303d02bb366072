"""timm's RandAugment (``rand-m9-mstd0.5-inc1``) as batched tensor ops on grey images held on a device.

The 15 ops of timm's ``_RAND_INCREASING_TRANSFORMS`` / ``_RAND_TRANSFORMS`` with timm's level functions: the geometric
ones (Rotate, ShearX/Y, TranslateX/YRel) as one affine map per sample and layer, composed by
``train/data/device_augment.py`` with the crop and flips so the image is resampled once; the point-wise ones as a
per-sample 256-entry lookup table built from the sample's histogram with PIL's arithmetic, applied by one gather;
Sharpness as PIL's SMOOTH kernel blended with the image; Color is the identity on grey images (it keeps its slot
so the others fire at timm's rate). Cost per layer: a histogram, a (B, 256) table and a gather per image.
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
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


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


class RandAugment:
    """The RandAugment layers of a parsed spec on one device (used by ``DeviceAugment``).

    Args:
        spec: the parsed policy.
        img_size: output side S in pixels.
        device: where the images are.
    """

    def __init__(self, spec: RandAugmentSpec, img_size: int, device: torch.device) -> None:
        self.spec, self.img_size, self.device = spec, int(img_size), torch.device(device)
        self.ops = spec.ops
        self._code = {name: k for k, name in enumerate(self.ops)}
        self._values = torch.arange(256, dtype=torch.float64, device=self.device)
        # constants made once: a tensor built from a Python list on the hot path is a host-to-device copy, and
        # PyTorch synchronises the stream after a copy from pageable memory (a CPU-GPU sync point)
        self._eye6 = torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64, device=self.device)
        self._geo_codes = torch.tensor([self._code[g] for g in GEOMETRIC if g in self._code] or [-2],
                                       device=self.device)

    def affine(self, ops: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
        """The geometric layers of every sample composed: (B, 3, 3) float64 output-to-input maps in pixels of S."""
        n = ops.shape[0]
        ra = torch.eye(3, dtype=torch.float64, device=self.device).repeat(n, 1, 1)
        lv = self.levels(ops, magnitude, sign)
        for layer in range(ops.shape[1]):
            op = ops[:, layer]
            level = torch.zeros(n, dtype=torch.float64, device=self.device)
            for name, key in (("Rotate", "rotate"), ("ShearX", "shear"), ("ShearY", "shear"),
                              ("TranslateXRel", "translate"), ("TranslateYRel", "translate")):
                if name in self._code:
                    level = torch.where(op == self._code[name], lv[key][:, layer], level)
            ra = ra @ self._layer_matrix(op, level)  # layer 1 then layer 2: p_in = M1 (M2 p)
        return ra

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

    def levels(self, op: Tensor, magnitude: Tensor, sign: Tensor) -> dict[str, Tensor]:
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

    def intensity(self, x: Tensor, ops: Tensor, magnitude: Tensor, sign: Tensor, inside: Tensor) -> Tensor:
        """Apply the point-wise and Sharpness layers in layer order.

        Args:
            x: (B, 1, S, S) float32 with integer values 0..255, already geometrically transformed.
            ops, magnitude, sign: the draws (``BatchParams``), (B, layers) each.
            inside: (B, 1, S, S) bool, False where a RandAugment geometric op filled the pixel.

        Returns:
            (B, 1, S, S) float32, integer values 0..255.

        In PIL a geometric op of a later layer fills *after* an earlier intensity op; here the image was resampled
        first, so for such a sample and layer the fill pixels are left out of the histogram and keep the fill.
        """
        n = x.shape[0]
        levels = self.levels(ops, magnitude, sign)
        sharp_code = self._code.get("Sharpness", self._code.get("SharpnessIncreasing"))
        geometric = torch.isin(ops, self._geo_codes)  # (B, layers)
        # later[:, l]: a geometric op comes after layer l
        later = torch.flip(torch.cumsum(torch.flip(geometric.int(), [1]), 1), [1]) - geometric.int() > 0
        for layer in range(ops.shape[1]):
            op = ops[:, layer]
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
