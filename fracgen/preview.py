"""Draw `preview.png`: what a dataset's images look like and how little its classes differ.

Layout, top to bottom: a caption (the build's name and the options its preset reads: sigma, Delta, L, C,
instances, seed, size); the base fractal (re-rendered from `params.json` by `plain_render`, for the fractal
presets; otherwise the first class's image) beside a grid of the first images of classes 0, 1, ...; then one
difference tile per class against its neighbour, in colour, so that differences of a few pixels stay visible.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from fracgen import dataset
from fracgen.dataset import PNG_SIGNATURE
from fracgen.errors import FracgenError, UsageError
from fracgen.folder import make_folders, remove_made, replaceable, write_atomic
from fracgen.presets import DEFAULT_PRESET, registry

logger = logging.getLogger(__name__)

TILE = 160  # px per perturbation tile; the base gets two tiles square
GAP = 8
COLUMNS = 4
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
ONLY_FIRST = np.array([255, 64, 64], np.uint8)  # lit only in class k
ONLY_SECOND = np.array([64, 200, 255], np.uint8)  # lit only in class k + 1
BOTH = np.array([110, 110, 110], np.uint8)
MIXED = np.array([255, 220, 64], np.uint8)  # a shrunk cell with pixels only in k and pixels only in k + 1


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 without sizes: the bitmap default font
        return ImageFont.load_default()


def _decode(data: bytes) -> np.ndarray:
    """PNG bytes -> (h, w, 3) uint8 RGB (a palette image is mapped through its palette)."""
    return dataset.decode_image(data, "RGB")


def _is_binary(images: list[np.ndarray]) -> bool:
    """True when every image is grey with at most two levels (the fractal look: background and lit)."""
    for rgb in images:
        grey = rgb[..., 0]
        if not (np.array_equal(grey, rgb[..., 1]) and np.array_equal(grey, rgb[..., 2])):
            return False
        if np.unique(grey).size > 2:
            return False
    return True


def _first_samples(root: Path, build: dict[str, Any], count: int) -> dict[int, np.ndarray]:
    """RGB images (h, w, 3) of labels 0..count-1, reading shards only until all are found (a recipe's rendered:
    the one case where the preview imports the numba kernels)."""
    if dataset.is_recipe(build):
        return _rendered_samples(root, count)
    found: dict[int, np.ndarray] = {}
    for record in build["shards"]:
        name = record.get("filename") if isinstance(record, dict) else None
        path = dataset.inside(root, name, f"{root / dataset.BUILD_JSON} shards")  # never a file elsewhere
        if not path.is_file():
            continue
        for sample in dataset.iter_shard(path):
            try:
                label = int(sample.get("cls", b"-1"))
            except ValueError:
                continue
            if 0 <= label < count and label not in found and "png" in sample:
                found[label] = _decode(sample["png"])
        if len(found) == count:
            break
    if not found:
        raise UsageError(f"{root} holds no readable samples to preview; run `fracgen verify {root}`")
    return found


def _rendered_samples(root: Path, count: int) -> dict[int, np.ndarray]:
    from fracgen.recipe import open_recipe

    recipe = open_recipe(root)
    per_class, classes = recipe.plan.config.per_class, recipe.plan.config.num_classes
    samples = recipe.render([label * per_class for label in range(min(count, classes))])
    return {s["cls"]: np.dstack([s["image"]] * 3) if s["image"].ndim == 2 else s["image"] for s in samples}


def _show(grey: np.ndarray, side: int) -> Image.Image:
    """Grey {0, 127} image -> bright RGB tile.

    Lit pixels become white. Shrinking averages the lit fraction per output pixel and brightens it with a
    square root, so dense regions keep their texture and sparse points stay visible.
    """
    lit = (grey > 0).astype(np.float64)
    h = lit.shape[0]
    factor = math.ceil(h / side)
    if factor > 1:
        pad = factor * math.ceil(h / factor) - h
        lit = np.pad(lit, ((0, pad), (0, pad)))
        n = lit.shape[0] // factor
        lit = np.sqrt(lit.reshape(n, factor, n, factor).mean(axis=(1, 3)))
    tile = Image.fromarray((lit * 255).round().astype(np.uint8), "L")
    return tile.resize((side, side), Image.Resampling.NEAREST).convert("RGB")


def _dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation by a (2r+1) x (2r+1) square."""
    n = 2 * radius + 1
    p = np.pad(mask, radius)
    h, w = mask.shape
    return np.logical_or.reduce([p[i : i + h, j : j + w] for i in range(n) for j in range(n)])


def _pool_any(mask: np.ndarray, side: int) -> np.ndarray:
    """(h, h) bool -> (n, n) bool, n <= side: a cell is set when any pixel of its block is (max-pooling)."""
    h = mask.shape[0]
    factor = math.ceil(h / side)
    if factor == 1:
        return mask
    pad = factor * math.ceil(h / factor) - h
    padded = np.pad(mask, ((0, pad), (0, pad)))
    n = padded.shape[0] // factor
    return padded.reshape(n, factor, n, factor).any(axis=(1, 3))


def _difference(a: np.ndarray, b: np.ndarray, side: int) -> tuple[Image.Image, float]:
    """Colour map of where the shapes of a and b differ, and the fraction of their footprint that differs.

    Each image's footprint is its lit pixels dilated by one pixel (3 x 3). The reference raster pastes a 3 x 3
    patch with a random on/off mask at every point, drawn anew for each class; the dilation fills those
    patches, so the view shows where the shape moved rather than mask noise. Footprint only in a is red, only
    in b blue, in both grey (yellow where a shrunk cell holds both reds and blues). Shrinking max-pools, so no
    differing pixel disappears; when under 1% of the footprint differs, the differences are dilated two more
    pixels first, so that a handful of them is easy to spot.

    Args:
        a, b: (h, h) uint8 grey images of equal size.
        side: tile side in pixels.

    Returns:
        The (side, side) RGB tile and the differing fraction of the footprint union, in [0, 1].
    """
    fa, fb = _dilate(a > 0), _dilate(b > 0)
    only_a, only_b = fa & ~fb, fb & ~fa
    union = int((fa | fb).sum())
    changed = float((only_a | only_b).sum() / union) if union else 0.0
    if a.shape[0] > side and changed < 0.01:
        only_a, only_b = _dilate(only_a, 2), _dilate(only_b, 2)
    pa, pb, pboth = _pool_any(only_a, side), _pool_any(only_b, side), _pool_any(fa & fb, side)
    rgb = np.zeros((*pa.shape, 3), np.uint8)
    rgb[pboth] = BOTH
    rgb[pa] = ONLY_FIRST
    rgb[pb] = ONLY_SECOND
    rgb[pa & pb] = MIXED
    tile = Image.fromarray(rgb, "RGB").resize((side, side), Image.Resampling.NEAREST)
    return tile, changed


def _show_photo(rgb: np.ndarray, side: int) -> Image.Image:
    """A grey-level or colour image (noise, real images) as a tile: box-filtered when shrunk."""
    image = Image.fromarray(rgb, "RGB")
    shrink = rgb.shape[0] > side
    return image.resize((side, side), Image.Resampling.BOX if shrink else Image.Resampling.NEAREST)


def _photo_difference(a: np.ndarray, b: np.ndarray, side: int) -> tuple[Image.Image, float, float]:
    """|a - b| (mean over channels) stretched so its largest value is white.

    Returns:
        The tile, the mean absolute difference in [0, 255] and the stretch factor applied.
    """
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1)
    peak = float(diff.max())
    gain = 255.0 / peak if peak > 0 else 1.0
    grey = np.clip(diff * gain, 0, 255).astype(np.uint8)
    heat = np.stack([grey, (grey * 0.8).astype(np.uint8), (grey * 0.3).astype(np.uint8)], axis=-1)
    return _show_photo(heat, side), float(diff.mean()), gain


def caption(build: dict[str, Any]) -> str:
    """The caption line: the build's name and the options its preset reads (sigma, Delta, L, seed, size...)."""
    from fracgen.card import preset_of, relevant_options

    config = build.get("config") or {}
    relevant = relevant_options(preset_of(build), config) | {"seed", "size"}
    parts = [str(build.get("name", "fracgen dataset"))]
    for key, label in (
        ("sigma", "sigma"),
        ("delta", "Delta"),
        ("L", "L"),
        ("fractals", "C"),
        ("categories", "C"),
        ("instances", "instances"),
        ("seed", "seed"),
        ("size", "size"),
    ):
        if key in config and key in relevant:
            parts.append(f"{label}={config[key]}")
    if "perturbation" in config and "perturbation" in relevant:
        parts.append(f"{config['perturbation']} perturbation")
    parts.append(f"{build.get('num_samples', '?')} images")
    return "   ".join(" ".join(str(p).split()) for p in parts)  # one line, whatever the records hold


def _checked_config(root: Path, build: dict[str, Any]) -> dict[str, Any]:
    """build.json's options, checked as a build checks them (and their memory) before anything is drawn: a
    recipe's as rendering reads them, a built dataset's as verify does."""
    from fracgen.config import BuildConfig, check_memory

    config = build.get("config")
    check_memory(BuildConfig.from_record(config, where=str(root / dataset.BUILD_JSON),
                                         strict=dataset.is_recipe(build)))
    return config


SOFTWARE = "fracgen preview"  # a tEXt chunk: what lets a later preview replace this file


def _ours(head: bytes) -> bool:
    """Whether a file's start is a preview fracgen drew (a PNG whose text chunk, before the pixels, says so)."""
    return head.startswith(PNG_SIGNATURE) and b"Software\x00" + SOFTWARE.encode() in head


def preview(root: Path | str, out: Path | str | None = None, *, count: int = 8) -> Path:
    """Write the dataset's preview image.

    Args:
        root: a complete dataset folder (with build.json).
        out: the PNG to write; default `root/preview.png`.
        count: perturbations shown (classes 0..count-1), 1..32.

    Returns:
        The path written.

    Raises:
        UsageError: `root` is not a complete dataset, holds no readable sample, or `count` is out of range.
    """
    if not 1 <= count <= 32:
        raise UsageError(f"count must be between 1 and 32, got {count}")
    root = Path(root)
    build = dataset.read_build(root)
    config = _checked_config(root, build)
    images = _first_samples(root, build, count)
    panel = _Panel.of(images, root, config)
    canvas = _compose(panel, caption(build))
    return _save(canvas, root, out)


@dataclass
class _Panel:
    """What the preview shows: the base picture and the first classes' images, with how to draw them."""

    samples: dict[int, np.ndarray]
    base: np.ndarray
    base_title: str
    binary: bool  # the fractal look (two grey levels): lit pixels and their differences, else photo tiles

    @classmethod
    def of(cls, images: dict[int, np.ndarray], root: Path, config: dict[str, Any]) -> _Panel:
        labels = sorted(images)
        binary = _is_binary(list(images.values()))
        family = registry.get(config.get("preset", DEFAULT_PRESET))
        base = family.preview_base(dataset.read_params(root), config) if binary and family is not None else None
        title = "base fractal (unperturbed)"
        if base is None:
            base, title = images[labels[0]][..., 0] if binary else images[labels[0]], f"class {labels[0]}"
        samples = {k: v[..., 0] for k, v in images.items()} if binary else images
        return cls(samples, base, title, binary)

    @property
    def legend(self) -> str:
        if self.binary:
            return ("each tile is one class; difference row (shapes closed by 1 px): red = only in class k, "
                    "blue = only in class k+1, yellow = both kinds nearby, grey = in both")
        return "each tile is one class; difference row: |class k - class k+1|, stretched so the largest is white"

    def show(self, image: np.ndarray, side: int) -> Image.Image:
        return _show(image, side) if self.binary else _show_photo(image, side)

    def difference(self, a: int, b: int) -> tuple[Image.Image, str]:
        if self.binary:
            tile, changed = _difference(self.samples[a], self.samples[b], TILE)
            return tile, f"{a} vs {b}: {100 * changed:.2f}% differ"
        tile, mean_abs, gain = _photo_difference(self.samples[a], self.samples[b], TILE)
        return tile, f"{a} vs {b}: mean {mean_abs:.2f}/255, x{gain:.0f}"


def _compose(panel: _Panel, text: str) -> Image.Image:
    """The picture: the caption and legend, the base beside a grid of the classes, then the difference row."""
    labels = sorted(panel.samples)
    columns = min(COLUMNS, len(labels))
    rows, label_h, caption_h = math.ceil(len(labels) / columns), 18, 64
    cell_h = TILE + label_h
    base_side = max(2 * TILE + GAP, rows * cell_h - label_h)
    grid_w = columns * (TILE + GAP)
    diff_columns = min(len(labels), max(1, (base_side + GAP + grid_w) // (TILE + GAP)))
    title_font, small = _font(18), _font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(measure.textlength(text, font=title_font), measure.textlength(panel.legend, font=small))
    width = max(GAP + base_side + GAP + grid_w, int(text_w) + 2 * GAP)
    diff_top = caption_h + max(base_side + label_h, rows * cell_h) + GAP + 22
    canvas = Image.new("RGB", (width, diff_top + math.ceil(len(labels) / diff_columns) * cell_h + GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, 8), text, fill=TEXT, font=title_font)
    draw.text((GAP, 34), panel.legend, fill=TEXT, font=small)
    canvas.paste(panel.show(panel.base, base_side), (GAP, caption_h))
    draw.text((GAP, caption_h + base_side + 2), panel.base_title, fill=TEXT, font=small)
    for i, label in enumerate(labels):
        x, y = 2 * GAP + base_side + (i % columns) * (TILE + GAP), caption_h + (i // columns) * cell_h
        canvas.paste(panel.show(panel.samples[label], TILE), (x, y))
        draw.text((x, y + TILE + 2), f"class {label}", fill=TEXT, font=small)
    draw.text((GAP, diff_top - 20), "differences from the next class", fill=TEXT, font=small)
    for i, label in enumerate(labels):
        tile, note = panel.difference(label, labels[(i + 1) % len(labels)])
        x, y = GAP + (i % diff_columns) * (TILE + GAP), diff_top + (i // diff_columns) * cell_h
        canvas.paste(tile, (x, y))
        draw.text((x, y + TILE + 2), note, fill=TEXT, font=small)
    return canvas


def _save(canvas: Image.Image, root: Path, out: Path | str | None) -> Path:
    """Write the picture as a PNG marked as fracgen's (``_ours``), atomically; only over a file fracgen drew."""
    default = root / dataset.PREVIEW_PNG
    out = Path(out) if out is not None else default
    # a PNG stands in the dataset's own preview.png (older fracgens wrote no mark); elsewhere only fracgen's own
    replaceable(out, (lambda head: head.startswith(PNG_SIGNATURE)) if out == default else _ours,
                "preview drawn by fracgen")
    encoded = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    canvas.save(encoded, format="PNG", optimize=True, pnginfo=info)
    made = make_folders(out.parent, "--out folder")
    try:
        write_atomic(out, encoded.getvalue(), then="rerun")  # a full disk leaves no truncated image
    except FracgenError:
        remove_made(made)
        raise
    logger.info("wrote %s (%dx%d)", out, *canvas.size)
    return out
