"""Image bytes: the smallest lossless PNG a grey image allows, with its bit depth chosen from the grey levels
present (a 1-bit palette for the two-level reference look).

The PNG is written directly (IHDR, PLTE, one IDAT, IEND) because Pillow spends about 4x longer on the same
1-bit image, and PNG encoding is the most expensive stage of a build.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZLIB_LEVEL = 6
# For packed palette images (the fractal looks) zlib's run-length strategy is both the smallest and the
# fastest choice measured on 1p-frac images: 15.7 KB in 0.1 ms against 16.3 KB in 0.9 ms at the default
# strategy and level 6 (benchmarks/bench_build.py prints the encode cost).
PACKED_STRATEGY = (9, zlib.Z_RLE)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def grey_levels(image: np.ndarray) -> np.ndarray:
    """The grey levels present in an image, ascending: (k,) uint8."""
    return np.flatnonzero(np.bincount(image.ravel(), minlength=256)).astype(np.uint8)


def _pack(indices: np.ndarray, depth: int) -> np.ndarray:
    """Pack (h, w) palette indices < 2**depth into PNG scanlines of ``depth`` bits, most significant first."""
    if depth == 8:
        return indices
    if depth == 1:
        return np.packbits(indices, axis=1)
    per_byte = 8 // depth
    h, w = indices.shape
    padded = np.zeros((h, -(-w // per_byte) * per_byte), np.uint8)
    padded[:, :w] = indices
    shifts = np.arange(per_byte - 1, -1, -1, dtype=np.uint8) * depth
    return (padded.reshape(h, -1, per_byte) << shifts).sum(axis=2, dtype=np.uint8)


def encode_png(image: np.ndarray, levels: np.ndarray | None = None) -> bytes:
    """Encode a grey image as PNG.

    Up to 16 grey levels give a palette image of 1, 2 or 4 bits per pixel; more give 8-bit greyscale.
    Decoders return the original values exactly (as mode "P" in Pillow; ``convert("L")`` or ``"RGB"`` gives
    the grey values).

    Args:
        image: (h, w) uint8 grey, or (h, w, 3) uint8 RGB (stored as 8-bit RGB).
        levels: the grey levels present, ascending, if the caller knows them (skips a histogram).

    Returns:
        The PNG file's bytes.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 3:
        return _encode_rgb(image)
    h, w = image.shape
    if levels is None:
        levels = grey_levels(image)
    levels = np.asarray(levels, dtype=np.uint8)
    if len(levels) <= 16:
        depth = 1 if len(levels) <= 2 else 2 if len(levels) <= 4 else 4
        if len(levels) == 2 and levels[0] == 0:
            indices = (image != 0).view(np.uint8)
        else:
            lut = np.zeros(256, np.uint8)
            lut[levels] = np.arange(len(levels), dtype=np.uint8)
            indices = lut[image]
        rows = _pack(indices, depth)
        header = struct.pack(">IIBBBBB", w, h, depth, 3, 0, 0, 0)
        palette = _chunk(b"PLTE", np.repeat(levels, 3).tobytes())
    else:
        rows = image
        header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
        palette = b""
    return _png(header, palette, rows, PACKED_STRATEGY if palette else (ZLIB_LEVEL, zlib.Z_DEFAULT_STRATEGY))


def _encode_rgb(image: np.ndarray) -> bytes:
    h, w, c = image.shape
    if c != 3:
        raise ValueError(f"expected (h, w, 3) RGB, got {image.shape}")
    return _png(struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0), b"", image.reshape(h, w * 3),
                (ZLIB_LEVEL, zlib.Z_DEFAULT_STRATEGY))


def _png(header: bytes, palette: bytes, rows: np.ndarray, zlib_setting: tuple[int, int]) -> bytes:
    raw = np.zeros((rows.shape[0], rows.shape[1] + 1), np.uint8)  # column 0: filter type 0 (none) per scanline
    raw[:, 1:] = rows
    level, strategy = zlib_setting
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + palette
        + _chunk(b"IDAT", deflate.compress(raw.tobytes()) + deflate.flush())
        + _chunk(b"IEND", b"")
    )
