"""The single real image of the 1p-frac paper (Tables 11-12), ``real``: load one photo, optionally reduce it to its
Canny edges and to grey, and perturb its geometry once per class. Pure NumPy and Pillow.

Geometry. Every transform is a sampling map: output pixel p takes the input's value at T(p), read with bilinear
interpolation and 0 outside the input, so no transform needs an inverse. Affine and polynomial transforms work
in normalised coordinates about the image centre, u = (col - (W - 1) / 2) / s and v = (row - (H - 1) / 2) / s
with s = (max(H, W) - 1) / 2, so u, v lie in [-1, 1] on a square image. Each draws eps ~ U[-Delta/2, Delta/2]
per parameter, like the paper's additive Eq. 9:
    affine: (u', v') = M (u, v, 1), M = [[1, 0, 0], [0, 1, 0]] + eps (6 parameters).
    elastic: a smooth displacement field. A GRID x GRID lattice of (dx, dy) offsets, as fractions of the image
        width and height, spread evenly over the image and interpolated by a cubic B-spline (C2, and a convex
        combination of the offsets, so no pixel moves more than Delta/2 of the image side on either axis).
    polynomial: u' = u + sum_k a_k m_k(u, v), v' = v + sum_k b_k m_k(u, v) over the second-order monomials
        m = (1, u, v, u^2, u v, v^2) (12 parameters).
The displacement is computed and added to the pixel grid, so Delta = 0 samples every pixel at its own
position and gives back the input exactly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fracgen.errors import UsageError
from fracgen.options import Option
from fracgen.presets.registry import Family, register
from fracgen.seeds import CLASS, generator

EDGES = ("canny", "none")
COLORS = ("rgb", "grey")
TRANSFORMS = ("affine", "elastic", "polynomial")
MONOMIALS = ("1", "u", "v", "u^2", "uv", "v^2")
ELASTIC_GRID = 4  # control points per axis; a finer lattice gives a more local, rippling warp
FLAT = 1e-6  # a largest gradient under this (grey fraction per pixel) is a flat image: no edges


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image file, crop its centre square and resize it.

    EXIF orientation is applied; palette, grey, alpha and 16-bit images are converted to RGB; an animation gives
    its first frame.

    Args:
        path: an image file Pillow can read (PNG, JPEG, ...).
        size: output side in pixels, >= 1.

    Returns:
        (size, size, 3) uint8 RGB: the largest centred square, resized with Pillow's bicubic filter
        (antialiased when shrinking).

    Raises:
        UsageError: the file is missing, a folder, not an image, or truncated; the one-line message names it.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = _to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise UsageError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{path}: cannot read it as an image ({reason})") from None
    width, height = im.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, np.uint8).copy()


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB of any mode; 16-bit grey ("I;16*", and "I" as Pillow opens some 16-bit files) scaled to 8 bits by
    1/257, rounded, where Pillow's own conversion would clip every value over 255 to white."""
    if im.mode == "I" or im.mode.startswith("I;16"):
        wide = np.clip(np.asarray(im, np.int64), 0, 65535)
        return Image.fromarray(((wide * 2 + 257) // 514).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luma by ITU-R 601-2 (Pillow's "L": 0.299 R + 0.587 G + 0.114 B), rounded.

    Args:
        image: (H, W, 3) uint8 RGB, or (H, W) uint8 (returned as a copy).

    Returns:
        (H, W) uint8.
    """
    if image.ndim == 2:
        return image.copy()
    luma = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def _shift_sum(padded: np.ndarray, kernel: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Correlate along ``axis``: sum_i kernel[i] * padded[i : i + n] (vectorised over the other axis)."""
    out = np.zeros(padded.shape[:axis] + (n,) + padded.shape[axis + 1:])
    for i, k in enumerate(kernel):  # a loop over the kernel taps, not the pixels
        if k != 0:
            out += k * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return x
    radius = max(1, int(np.ceil(4.0 * sigma)))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    h, w = x.shape
    x = _shift_sum(np.pad(x, ((radius, radius), (0, 0)), mode="edge"), kernel, 0, h)
    return _shift_sum(np.pad(x, ((0, 0), (radius, radius)), mode="edge"), kernel, 1, w)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-connected binary dilation by one pixel."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            out |= p[dr: dr + h, dc: dc + w]
    return out


def canny(grey: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny's edge detector (Canny 1986) in NumPy: Gaussian blur, Sobel, non-maximum suppression, hysteresis.

    Borders are extended by their edge pixels, so the frame of the image is not an edge. Non-maximum
    suppression compares each pixel with its two neighbours along the gradient direction rounded to 45 degrees,
    and keeps one pixel of a tie. Hysteresis keeps every weak pixel 8-connected, through weak pixels, to a strong
    one.

    Args:
        grey: (H, W) uint8 in [0, 255].
        sigma: standard deviation of the Gaussian blur in pixels, >= 0 (0: no blur); the kernel is cut at 4 sigma.
        low: weak threshold, as a fraction of the image's largest gradient magnitude, 0 <= low <= high.
        high: strong threshold, the same way, <= 1. Relative thresholds make the edges of a photo independent of
            its contrast.

    Returns:
        (H, W) uint8 in {0, 255}; all 0 for a flat image.
    """
    if grey.ndim != 2:
        raise ValueError(f"grey must be (H, W), got {grey.shape}")
    if not (sigma >= 0 and 0 <= low <= high <= 1):
        raise ValueError(f"need sigma >= 0 and 0 <= low <= high <= 1, got sigma={sigma}, low={low}, high={high}")
    h, w = grey.shape
    blurred = np.pad(_gaussian_blur(grey.astype(np.float64) / 255.0, sigma), 1, mode="edge")
    # Sobel divided by 8: the slope in grey fraction per pixel
    dx = blurred[:, 2:] - blurred[:, :-2]
    dy = blurred[2:, :] - blurred[:-2, :]
    gx = (dx[:-2] + 2 * dx[1:-1] + dx[2:]) / 8
    gy = (dy[:, :-2] + 2 * dy[:, 1:-1] + dy[:, 2:]) / 8
    magnitude = np.hypot(gx, gy)
    top = magnitude.max(initial=0.0)
    if top < FLAT:
        return np.zeros((h, w), np.uint8)
    # direction in 45-degree steps, modulo 180: 0 along columns, 1 down-right, 2 along rows, 3 down-left
    sector = np.rint(np.arctan2(gy, gx) / (np.pi / 4)).astype(np.int64) % 4
    step_r = np.array([0, 1, 1, 1])[sector]
    step_c = np.array([1, 1, 0, -1])[sector]
    rows, cols = np.indices((h, w))
    padded = np.pad(magnitude, 1)
    ahead = padded[rows + 1 + step_r, cols + 1 + step_c]
    behind = padded[rows + 1 - step_r, cols + 1 - step_c]
    tie = 1e-9 * top  # a symmetric step gives two equal maxima up to rounding: keep the first, not whichever rounds up
    thin = (magnitude >= ahead - tie) & (magnitude > behind + tie)
    strong = thin & (magnitude >= high * top)
    weak = thin & (magnitude >= low * top)
    edges = strong
    while True:  # grows by one pixel per pass; costs a pass per pixel of the longest weak-only run
        grown = _dilate(edges) & weak
        if np.array_equal(grown, edges):
            break
        edges = grown
    return np.where(edges, 255, 0).astype(np.uint8)


def prepare(image: np.ndarray, edges: str = "canny", color: str = "grey") -> np.ndarray:
    """The image a real-image dataset perturbs.

    Args:
        image: (H, W, 3) uint8 RGB, e.g. from ``load_image``, or (H, W) uint8 grey.
        edges: "canny" (edges of the grey image with ``canny``'s defaults) or "none".
        color: "grey" or "rgb". With "canny" and "rgb", the RGB pixels on an edge are kept and the rest set to 0.

    Returns:
        "grey": (H, W) uint8 (canny: {0, 255}); "rgb": (H, W, 3) uint8.
    """
    if edges not in EDGES:
        raise ValueError(f"edges must be one of {EDGES}, got {edges!r}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, got {color!r}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W, 3) or (H, W), got {image.shape}")
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    grey = to_grey(image)
    if edges == "none":
        return grey if color == "grey" else rgb.copy()
    mask = canny(grey)
    return mask if color == "grey" else np.where(mask[..., None] > 0, rgb, 0).astype(np.uint8)


MIN_SOURCE_FILL = 0.005  # the prepared source must differ from its background on this fraction of pixels
MIN_KEPT = 0.25  # and every class's image must keep this share of the source's fill (else it is redrawn)


def fill(image: np.ndarray) -> float:
    """The fraction of pixels that differ from the image's most common value (its background): the real-image
    counterpart of a fractal's lit fraction. 0.0 for a flat image."""
    flat = image.reshape(image.shape[0] * image.shape[1], -1)
    keys = flat[:, 0].astype(np.int64) if flat.shape[1] == 1 else \
        (flat[:, 0].astype(np.int64) << 16) | (flat[:, 1].astype(np.int64) << 8) | flat[:, 2]
    background = np.bincount(keys).argmax()
    return float(np.mean(keys != background))


def check_source(prepared: np.ndarray, path: str | Path, edges: str) -> float:
    """Refuse a source with nothing to perturb (a flat, tiny or edge-less image); return its fill.

    Raises:
        UsageError: naming the image, its fill and what to try.
    """
    found = fill(prepared)
    if found < MIN_SOURCE_FILL:
        what = "its Canny edges are (nearly) empty" if edges == "canny" else "it is (nearly) flat"
        hint = "try --edges none or another image" if edges == "canny" else "use an image with visible structure"
        raise UsageError(f"IMAGE {path}: {what} (fill {found:.4f} < {MIN_SOURCE_FILL}), so every class would be "
                         f"the same blank image; {hint}")
    return found


def draw_transform(kind: str, delta: float, rng: np.random.Generator, *, grid: int = ELASTIC_GRID) -> dict:
    """One class's geometric perturbation (see the module docstring).

    Args:
        kind: one of TRANSFORMS.
        delta: perturbation degree Delta >= 0; every parameter's eps ~ U[-Delta/2, Delta/2].
        rng: the class's generator; takes 6 (affine), 2 grid^2 (elastic) or 12 (polynomial) uniforms.
        grid: elastic only: control points per axis, >= 2.

    Returns:
        JSON-able dict with "kind" and: affine: "matrix", 2 x 3 nested list [[1 + e0, e1, e2], [e3, 1 + e4, e5]]
        mapping (u, v, 1) to (u', v'); elastic: "grid", grid x grid x 2 nested list of (dx, dy) offsets as
        fractions of width and height, row-major from the top-left control point; polynomial: "coefficients",
        2 x 6 nested list (the u' row, then the v' row), in the order of MONOMIALS.
    """
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown transform {kind!r}; expected one of {TRANSFORMS}")
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    half = delta / 2
    if kind == "affine":
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + rng.uniform(-half, half, (2, 3))
        return {"kind": kind, "matrix": matrix.tolist()}
    if kind == "elastic":
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        return {"kind": kind, "grid": rng.uniform(-half, half, (grid, grid, 2)).tolist()}
    return {"kind": kind, "coefficients": rng.uniform(-half, half, (2, len(MONOMIALS))).tolist()}


def _bspline_weights(n: int, g: int) -> np.ndarray:
    """(n, g) weights of g control points at n evenly spread samples; rows are >= 0 and sum to 1."""
    t = np.arange(n) * (g - 1) / max(n - 1, 1)
    x = np.abs(t[:, None] - np.arange(-1, g + 1)[None, :])  # knots -1 and g repeat the edge control points
    w = np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))
    w[:, 1] += w[:, 0]
    w[:, -2] += w[:, -1]
    return w[:, 1:-1]


def source_coordinates(kind: str, params: dict, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel reads the input.

    Args:
        kind: one of TRANSFORMS.
        params: from ``draw_transform``.
        shape: the image's shape, (H, W) or (H, W, C).

    Returns:
        rows, cols: (H, W) float64 pixel coordinates in the input (may fall outside it).
    """
    if params.get("kind", kind) != kind:
        raise ValueError(f"params are for {params['kind']!r}, not {kind!r}")
    h, w = shape[:2]
    rows, cols = np.indices((h, w), dtype=np.float64)
    if kind == "elastic":
        lattice = np.asarray(params["grid"], np.float64)
        g_r, g_c = lattice.shape[:2]
        wr, wc = _bspline_weights(h, g_r), _bspline_weights(w, g_c)
        return rows + (wr @ lattice[..., 1] @ wc.T) * h, cols + (wr @ lattice[..., 0] @ wc.T) * w
    scale = max(max(h, w) - 1, 1) / 2
    u = (cols - (w - 1) / 2) / scale
    v = (rows - (h - 1) / 2) / scale
    if kind == "affine":
        m = np.asarray(params["matrix"], np.float64)
        du = (m[0, 0] - 1) * u + m[0, 1] * v + m[0, 2]
        dv = m[1, 0] * u + (m[1, 1] - 1) * v + m[1, 2]
    elif kind == "polynomial":
        a, b = np.asarray(params["coefficients"], np.float64)
        monomials = (np.ones_like(u), u, v, u * u, u * v, v * v)
        du = sum(c * m for c, m in zip(a, monomials, strict=True))
        dv = sum(c * m for c, m in zip(b, monomials, strict=True))
    else:
        raise ValueError(f"unknown transform {kind!r}; expected one of {TRANSFORMS}")
    return rows + dv * scale, cols + du * scale


def bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``image`` at fractional positions, 0 outside it (a corner outside the image counts as 0).

    Args:
        image: (H, W) or (H, W, C) uint8.
        rows, cols: (h, w) float64 pixel coordinates; non-finite ones read 0.

    Returns:
        (h, w) or (h, w, C) uint8, rounded to nearest.
    """
    h, w = image.shape[:2]
    # keep far-away and non-finite positions outside but representable as integers
    rows = np.clip(np.nan_to_num(rows, nan=-2.0, posinf=h + 1.0, neginf=-2.0), -2.0, h + 1.0)
    cols = np.clip(np.nan_to_num(cols, nan=-2.0, posinf=w + 1.0, neginf=-2.0), -2.0, w + 1.0)
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = rows - r0, cols - c0
    r0, c0 = r0.astype(np.intp), c0.astype(np.intp)
    source = image.astype(np.float64)
    out = np.zeros(rows.shape + image.shape[2:])
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            weight = wr * wc * ((r >= 0) & (r < h) & (c >= 0) & (c < w))
            value = source[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)]
            out += (weight[..., None] if image.ndim == 3 else weight) * value
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_transform(image: np.ndarray, kind: str, params: dict) -> np.ndarray:
    """One class's image: ``image`` resampled through the transform.

    Args:
        image: (H, W) or (H, W, C) uint8.
        kind: one of TRANSFORMS.
        params: from ``draw_transform``.

    Returns:
        Same shape and dtype as ``image``; equal to it when the parameters are the identity (Delta = 0).
    """
    rows, cols = source_coordinates(kind, params, image.shape)
    return bilinear(image, rows, cols)


@lru_cache(maxsize=2)
def _prepared(path: str, size: int, edges: str, color: str) -> np.ndarray:
    return prepare(load_image(path, size), edges=edges, color=color)


class Real(Family):
    """L geometric perturbations of one real image (``fracgen build-real IMAGE OUT``)."""

    name = "real"
    description = ("single real image baseline of the 1p-frac paper (Tables 11-12): one real image whose geometry "
                   "is perturbed into L classes.")
    options = frozenset({"delta", "L", "size", "seed", "shard_size", "edges", "color", "transform"})
    own_options = (
        Option("edges", str, "canny", "canny: the image's Canny edges (the paper's best); none: the image itself.",
               choices=EDGES, label="edges"),
        Option("color", str, "grey", "Grey or RGB images.", choices=COLORS, label="colour"),
        Option("transform", str, "affine", "How each class perturbs the image's geometry.", choices=TRANSFORMS,
               label="geometric transform"),
    )
    takes_source = True

    def dataset_name(self, config) -> str:
        return f"real-{config.transform}-{config.edges}-{config.color}-delta{config.delta}-L{config.L}"

    def image_mode(self, config) -> str:
        return "RGB" if config.color == "rgb" else "L"

    def check_source(self, path: Path, config) -> None:
        """Refuse a source image that does not decode, or with nothing to perturb (UsageError)."""
        check_source(prepare(load_image(path, config.size), edges=config.edges, color=config.color), path,
                     config.edges)

    def render_one(self, plan, label: int, instance: int) -> tuple[np.ndarray, dict]:
        cfg = plan.config
        source = _prepared(plan.source, cfg.size, cfg.edges, cfg.color)
        wanted = MIN_KEPT * fill(source)
        rng = generator(cfg.seed, CLASS, 0, label)
        for redraws in range(cfg.max_redraws + 1):  # a transform that moves the image out of view is drawn again
            params = draw_transform(cfg.transform, cfg.delta, rng)
            image = apply_transform(source, cfg.transform, params)
            if fill(image) >= wanted:
                meta = {"label": label, "perturbation": label, "transform": cfg.transform, "params": params}
                return image, meta | ({"redraws": redraws} if redraws else {})
        raise UsageError(f"class {label}: no {cfg.transform} transform within --delta {cfg.delta} kept the image in "
                         f"view in {cfg.max_redraws + 1} draws; lower --delta")


register(Real())
