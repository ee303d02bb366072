"""Image bytes: PNGs that every reader decodes to the same pixels.

Grey images are 8-bit greyscale PNGs (colour type 0) and RGB images 8-bit RGB, so ``np.asarray(PIL.Image.open(f))``,
torchvision's ``decode_image``, webdataset, timm and ``datasets`` all return the stored values ({0, 127} for the
fractal looks). ``encode_palette_png`` writes the palette format of earlier fracgen builds, which decodes to its
indices ({0, 1}) wherever a reader does not convert it: for ``verify``'s message about such datasets and the bench.

Cost: two-level images (the fractal looks, Canny edges) go through a numba deflate that reads the scanlines as
8-byte words (``kernels/deflate.py``: faster than zlib's fastest setting on the same 8-bit data, about 1.1x zlib's
best size); many-level images with ``fast=True`` (the contour and noise families) through a greedy LZ77 over four
distances (``kernels/deflate_many.py``: about 0.5 ms a 512 px contour image against 5-7 ms for zlib level 6, at
1.2-1.5x its bytes); photos through zlib. ``tests/test_encode.py`` checks every stream with zlib and Pillow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from fracgen.kernels.deflate import deflate_two_level, two_level_value
from fracgen.kernels.deflate_many import deflate_grey_parts

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
ZLIB_LEVEL = 6
# The old palette format: zlib's run-length strategy was both the smallest and the fastest choice measured for
# 1p-frac images packed to 1 bit; up to 16 grey levels were packed.
PACKED_STRATEGY = (9, zlib.Z_RLE)
FEW_LEVELS = 16



def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def grey_levels(image: np.ndarray) -> np.ndarray:
    """The grey levels present in an image, ascending: (k,) uint8."""
    return np.flatnonzero(np.bincount(image.ravel(), minlength=256)).astype(np.uint8)


def encode_png(image: np.ndarray, levels: np.ndarray | None = None, *, fast: bool = False) -> bytes:
    """Encode an image as an 8-bit PNG that decodes to ``image`` in every reader.

    Args:
        image: (h, w) uint8 grey (stored as 8-bit greyscale), or (h, w, 3) uint8 RGB (stored as 8-bit RGB).
        levels: the grey levels present, if the caller knows them (skips a scan); they choose the compressor,
            so they must be right.
        fast: RGB images and grey ones of more than two levels through fracgen's few-distance deflate
            (``deflate_many``) instead of zlib level 6: about 8x faster and 1.2-1.6x larger on the contour
            looks (RCDB, VisualAtom) and 3-4x faster at the same size on noise, for which the build sets it;
            photos stay on zlib (1.3-1.6x larger).

    Returns:
        The PNG file's bytes.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 3:
        h, w, c = image.shape
        if c != 3:
            raise ValueError(f"expected (h, w, 3) RGB, got {image.shape}")
        idat = (deflate_grey_parts(image) if fast else None) or _zlib(_scanlines(image.reshape(h, w * 3)))
        return _png(struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0), b"", idat)
    h, w = image.shape
    if levels is None:
        v = two_level_value(image)
    else:
        values = {0, *(int(x) for x in levels)}  # 0: the filter bytes
        v = max(values) if len(values) <= 2 else None
    if v is not None:
        idat = deflate_two_level(_scanlines(image), v)
    else:
        idat = deflate_grey_parts(image) if fast else None
    return _png(struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0), b"", idat or _zlib(_scanlines(image)))


def encode_palette_png(image: np.ndarray, levels: np.ndarray | None = None) -> bytes:
    """The palette format of earlier fracgen builds: up to 16 grey levels as a 1, 2 or 4-bit palette PNG, else 8-bit
    grey.

    Kept to measure the new format against (``make bench``) and to build a dataset of the old format in tests.
    A palette PNG decodes to palette indices unless the reader converts it to "L" or "RGB".
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 3:
        return encode_png(image)
    h, w = image.shape
    levels = np.asarray(grey_levels(image) if levels is None else levels, dtype=np.uint8)
    if len(levels) > FEW_LEVELS:
        return _png(struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0), b"", _zlib(_scanlines(image)))
    depth = 1 if len(levels) <= 2 else 2 if len(levels) <= 4 else 4
    if len(levels) == 2 and levels[0] == 0:
        indices = (image != 0).view(np.uint8)
    else:
        lut = np.zeros(256, np.uint8)
        lut[levels] = np.arange(len(levels), dtype=np.uint8)
        indices = lut[image]
    if depth == 1:
        rows = np.packbits(indices, axis=1)
    else:
        per_byte = 8 // depth
        padded = np.zeros((h, -(-w // per_byte) * per_byte), np.uint8)
        padded[:, :w] = indices
        shifts = np.arange(per_byte - 1, -1, -1, dtype=np.uint8) * depth
        rows = (padded.reshape(h, -1, per_byte) << shifts).sum(axis=2, dtype=np.uint8)
    palette = _chunk(b"PLTE", np.repeat(levels, 3).tobytes())
    return _png(struct.pack(">IIBBBBB", w, h, depth, 3, 0, 0, 0), palette, _zlib(_scanlines(rows), PACKED_STRATEGY))


def _scanlines(rows: np.ndarray) -> np.ndarray:
    """PNG's filtered data: each row prefixed by filter type 0 (none); (h, row bytes + 1) uint8."""
    raw = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = rows
    return raw


def _zlib(raw: np.ndarray, setting: tuple[int, int] = (ZLIB_LEVEL, zlib.Z_DEFAULT_STRATEGY)) -> bytes:
    level, strategy = setting
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    return deflate.compress(raw.tobytes()) + deflate.flush()


def _png(header: bytes, palette: bytes, idat: bytes | list) -> bytes:
    """The PNG file; ``idat`` is the zlib stream or its pieces (joined here, once: ``deflate_grey_parts``)."""
    pieces = [idat] if isinstance(idat, bytes) else idat
    crc = zlib.crc32(b"IDAT")
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return b"".join([_SIGNATURE, _chunk(b"IHDR", header), palette,
                     struct.pack(">I", sum(len(piece) for piece in pieces)), b"IDAT", *pieces,
                     struct.pack(">I", crc & 0xFFFFFFFF), _IEND])
