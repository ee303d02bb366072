"""Image bytes: PNGs that every reader decodes to the same pixels.

Grey images are stored as 8-bit greyscale PNG (colour type 0) and RGB images as 8-bit RGB, so
``np.asarray(PIL.Image.open(f))``, ``torchvision.io.decode_image``, webdataset's decoders, timm's wds reader
and ``datasets`` all return the stored values ({0, 127} for the reference look). Before issue 10, images with
up to 16 grey levels were palette PNGs of 1-4 bits: smaller, but a palette PNG decodes to its indices
({0, 1}) wherever the reader does not convert it (``encode_palette_png`` keeps that format, for the benchmark
and for tests of ``verify``'s message about datasets built with it).

Speed: zlib's fastest setting (``Z_RLE``) spends about 6x longer on a 512 x 512 8-bit image than it did on
the same image packed to 1 bit, and PNG encoding is the most expensive stage of a build after the chaos game.
Two-level images (the fractal looks, Canny edges) are therefore deflated by a numba kernel (``deflate.py``) that
reads the scanlines as 8-byte words: a word equal to the one before it extends a copy at distance 8, any other
word is 8 literals from a table, all in one dynamic-Huffman block. It encodes the default 1p-frac image faster
than the old 1-bit path did (``make bench`` prints both, with the sizes: about 1.5x the 1-bit PNG, 1.1x zlib's
best on the same 8-bit data). Whether an image has two levels is found by a numba scan that stops at the third
value (``np.bincount`` took 0.37 ms a 512 px image, as long as the encoder).

The contour looks (RCDB, VisualAtom: a background and one-pixel lines of about 80 greys) cost 4.8 ms (RCDB) and
7.2 ms (VisualAtom) a 512 px image through zlib level 6, 20x and 5x their drawing. With ``fast=True`` (the build
sets it for the contour and noise presets) they go through ``deflate_many.py``, a greedy LZ77 over four
distances (1 and the row stride -1, 0, +1): about 0.47 ms and 0.56 ms (CPU, 2-core AMD EPYC VM, 300 images),
1.5x and 1.2x zlib 6's bytes on average (up to 3x on some sparse RCDB images); noise (RGB) about 4x faster at the
same size.
Photos stay on zlib: the kernel gave 1.05-1.6x their bytes. ``tests/test_encode.py`` checks every stream with
zlib and the images with Pillow; ``benchmarks/bench_contours.py`` measures the contour figures. The kernels cost
a few CPU-seconds of JIT compilation the first time a machine builds (cached in NUMBA_CACHE_DIR afterwards).
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
    """The format before issue 10: up to 16 grey levels as a 1, 2 or 4-bit palette PNG, else 8-bit grey.

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
