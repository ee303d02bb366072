"""Numba kernels for the contour datasets, RCDB and VisualAtom: the float32 Perlin noise, Pillow's 1-pixel line
and the per-image drawing of nested rings. No I/O, no global random state.

Every random number arrives as an array argument (the contour family's ``draw_strokes`` makes them), so the caller's
seeded generator decides every pixel. The arithmetic is the released scripts' own, operation for operation
(``rcdb_render/make_rcdb.py`` of CVPR2022-Pretrained-ViT-PyTorch and ``visual_atomic_renderer/render_VisualAtom.py``
of CVPR2023-FDSL-on-VisualAtom), so the same draws give the same pixels as the released drawing:

- ``pnoise1``: the ``noise`` package's 1-D Perlin noise at its defaults (octaves 1, repeat 1024, base 0), which
  reads its argument as a C float and computes in float32.
- ``draw_line``: ``ImageDraw.line((x0, y0, x1, y1), width=1)``: coordinates truncated toward zero, Bresenham
  from the start point (end excluded), then the end point; pixels off the canvas skipped; later ink overwrites.
- the rings: a start polygon of V vertices (radius R, stretched by ox and oy, never drawn) is pushed outward K
  times, vertex v along its own direction theta_v = 2 pi v / V by Perlin noise minus a constant; after each push
  the closed polygon is drawn in that ring's grey. RCDB draws dark rings on white and adds its centre when
  drawing; VisualAtom draws on black, starts its polygon at the centre and adds two sine waves to the push.
"""

from __future__ import annotations

import math

import numba
import numpy as np

# The released Perlin arguments are random.uniform(0, 10000) = 0 + 10000 * random(): the kernels take the
# random() values and multiply, which numpy's Generator.uniform(0, 10000) would also give, bit for bit.
PERLIN_MAX = 10000.0
# noise's PERM table (_noise.h; Ken Perlin's permutation). noise indexes it with (i & 255), so 256 entries do.
PERM = np.array([
    151, 160, 137, 91, 90, 15, 131, 13, 201, 95, 96, 53, 194, 233, 7, 225, 140, 36, 103, 30, 69, 142, 8, 99, 37,
    240, 21, 10, 23, 190, 6, 148, 247, 120, 234, 75, 0, 26, 197, 62, 94, 252, 219, 203, 117, 35, 11, 32, 57,
    177, 33, 88, 237, 149, 56, 87, 174, 20, 125, 136, 171, 168, 68, 175, 74, 165, 71, 134, 139, 48, 27, 166, 77,
    146, 158, 231, 83, 111, 229, 122, 60, 211, 133, 230, 220, 105, 92, 41, 55, 46, 245, 40, 244, 102, 143, 54,
    65, 25, 63, 161, 1, 216, 80, 73, 209, 76, 132, 187, 208, 89, 18, 169, 200, 196, 135, 130, 116, 188, 159, 86,
    164, 100, 109, 198, 173, 186, 3, 64, 52, 217, 226, 250, 124, 123, 5, 202, 38, 147, 118, 126, 255, 82, 85,
    212, 207, 206, 59, 227, 47, 16, 58, 17, 182, 189, 28, 42, 223, 183, 170, 213, 119, 248, 152, 2, 44, 154,
    163, 70, 221, 153, 101, 155, 167, 43, 172, 9, 129, 22, 39, 253, 19, 98, 108, 110, 79, 113, 224, 232, 178,
    185, 112, 104, 218, 246, 97, 228, 251, 34, 242, 193, 238, 210, 144, 12, 191, 179, 162, 241, 81, 51, 145,
    235, 249, 14, 239, 107, 49, 192, 214, 31, 181, 199, 106, 157, 184, 84, 204, 176, 115, 121, 50, 45, 127, 4,
    150, 254, 138, 236, 205, 93, 222, 114, 67, 29, 24, 72, 243, 141, 128, 195, 78, 66, 215, 61, 156, 180,
], dtype=np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _grad1(h: int, t: np.float32) -> np.float32:
    # noise's grad1 sets g = -1 (not -g) when bit 3 is set.
    g = np.float32(-1.0) if h & 8 else np.float32((h & 7) + 1)
    return g * t


@numba.njit(cache=True, nogil=True)
def pnoise1_f32(x: np.float32) -> np.float32:
    """``noise.pnoise1(x)`` for a float32 ``x`` (|x| < 2**31), in the package's float32 arithmetic.

    The package keeps ``floor(x) % 1024`` and then ``& 255``; with 1024 a multiple of 256 that is ``floor(x) & 255``
    for either sign, and the next lattice point is ``(floor(x) + 1) & 255``.
    """
    fl = np.floor(x)
    i = np.int64(fl)
    t = x - fl
    fx = t * t * t * (t * (t * np.float32(6.0) - np.float32(15.0)) + np.float32(10.0))
    a = _grad1(PERM[i & 255], t)
    b = _grad1(PERM[(i + 1) & 255], t - np.float32(1.0))
    return (a + fx * (b - a)) * np.float32(0.4)


@numba.njit(cache=True, nogil=True)
def _pnoise1_array(x: np.ndarray, out: np.ndarray) -> None:
    for j in range(x.shape[0]):
        out[j] = pnoise1_f32(np.float32(x[j]))


def pnoise1(x: np.ndarray) -> np.ndarray:
    """Vectorised ``noise.pnoise1`` (octaves 1, repeat 1024, base 0).

    Args:
        x: any shape, float; rounded to float32 first, as the package's C parser does.

    Returns:
        float32 array of the shape of ``x``, values in about [-0.95, 0.95].
    """
    flat = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    out = np.empty(flat.shape[0], np.float32)
    _pnoise1_array(flat, out)
    return out.reshape(np.shape(x))


@numba.njit(cache=True, nogil=True, inline="always")
def _bresenham(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, ink: np.uint8, inside: bool) -> None:
    """Pillow's ``line32`` without its end point; ``inside`` says both ends are on the canvas (no pixel checks).

    Pillow sends dx == dy to its vertical branch and this to the horizontal one: both step both axes every pixel.
    Pixels are written through unsigned indices once known to be on the canvas: numba then skips its
    negative-index wraparound, about 30% of the time per pixel.
    """
    h, w = img.shape
    dx = x1 - x0
    xs = 1
    if dx < 0:
        dx = -dx
        xs = -1
    dy = y1 - y0
    ys = 1
    if dy < 0:
        dy = -dy
        ys = -1
    x = x0
    y = y0
    if dx >= dy:
        e = 2 * dy - dx
        if inside:
            for _ in range(dx):
                img[np.uint64(y), np.uint64(x)] = ink
                if e >= 0:
                    y += ys
                    e -= 2 * dx
                e += 2 * dy
                x += xs
        else:
            for _ in range(dx):
                if 0 <= x < w and 0 <= y < h:
                    img[np.uint64(y), np.uint64(x)] = ink
                if e >= 0:
                    y += ys
                    e -= 2 * dx
                e += 2 * dy
                x += xs
    else:
        e = 2 * dx - dy
        if inside:
            for _ in range(dy):
                img[np.uint64(y), np.uint64(x)] = ink
                if e >= 0:
                    x += xs
                    e -= 2 * dy
                e += 2 * dx
                y += ys
        else:
            for _ in range(dy):
                if 0 <= x < w and 0 <= y < h:
                    img[np.uint64(y), np.uint64(x)] = ink
                if e >= 0:
                    x += xs
                    e -= 2 * dy
                e += 2 * dx
                y += ys


@numba.njit(cache=True, nogil=True, inline="always")
def _outcode(x: int, y: int, w: int, h: int) -> int:
    """Which canvas edges (x, y) lies beyond: bits left, right, top, bottom (0 = on the canvas)."""
    return (x < 0) | ((x >= w) << 1) | ((y < 0) << 2) | ((y >= h) << 3)


@numba.njit(cache=True, nogil=True)
def draw_line(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, ink: int) -> None:
    """Pillow's ``line32`` followed by the end point, as ``ImageDraw.line`` draws one width-1 segment.

    Args:
        img: (H, W) uint8, drawn in place (row y, column x).
        x0, y0, x1, y1: integer pixel coordinates (already truncated), any value; off-canvas pixels are skipped.
        ink: grey level in [0, 255].
    """
    h, w = img.shape
    c0 = _outcode(x0, y0, w, h)
    c1 = _outcode(x1, y1, w, h)
    # Every Bresenham pixel lies in the end points' bounding box: a segment wholly beyond one edge draws nothing.
    if c0 & c1:
        return
    g = np.uint8(ink)
    _bresenham(img, x0, y0, x1, y1, g, (c0 | c1) == 0)
    if c1 == 0:
        img[np.uint64(y1), np.uint64(x1)] = g


@numba.njit(cache=True, nogil=True)
def _rings(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    cosv: np.ndarray,
    sinv: np.ndarray,
    wave1: np.ndarray,
    wave2: np.ndarray,
    greys: np.ndarray,
    uniforms: np.ndarray,
    coef: float,
    gain: float,
    lw: float,
    offx: float,
    offy: float,
) -> None:
    """Push the polygon (x, y) outward once per ring and draw it; x and y are updated in place.

    The push of vertex v is ``((p * coef) * gain - coef) - wave1[v] - wave2[v]`` with p = pnoise1(PERLIN_MAX * u):
    RCDB has gain 2 and no waves (subtracting 0.0 and multiplying by 1.0 are exact, so one kernel serves both).
    """
    h, w = img.shape
    nv = x.shape[0]
    ix = np.empty(nv + 1, np.int64)
    iy = np.empty(nv + 1, np.int64)
    code = np.empty(nv + 1, np.int64)
    for k in range(greys.shape[0]):
        ink = np.uint8(max(0, min(greys[k], 255)))  # Pillow clips a tuple ink to 8 bits (RCDB draws up to 256)
        for v in range(nv):
            px = np.float64(pnoise1_f32(np.float32(PERLIN_MAX * uniforms[k, 0, v])))
            py = np.float64(pnoise1_f32(np.float32(PERLIN_MAX * uniforms[k, 1, v])))
            nx = (px * coef) * gain - coef - wave1[v] - wave2[v]
            ny = (py * coef) * gain - coef - wave1[v] - wave2[v]
            x[v] -= cosv[v] * (nx - lw)
            y[v] -= sinv[v] * (ny - lw)
            ix[v] = np.int64(x[v] + offx)  # C's (int) cast: toward zero
            iy[v] = np.int64(y[v] + offy)
            code[v] = _outcode(ix[v], iy[v], w, h)
        ix[nv] = ix[0]
        iy[nv] = iy[0]
        code[nv] = code[0]
        # draw_line inlined: outcodes are computed once per vertex rather than twice per segment.
        for v in range(nv):
            c0 = code[v]
            c1 = code[v + 1]
            if c0 & c1:
                continue
            _bresenham(img, ix[v], iy[v], ix[v + 1], iy[v + 1], ink, (c0 | c1) == 0)
            if c1 == 0:
                img[np.uint64(iy[v + 1]), np.uint64(ix[v + 1])] = ink


@numba.njit(cache=True, nogil=True)
def _start_polygon(
    nv: int, radius: float, ox: float, oy: float, cx: float, cy: float, scale: np.ndarray, n1: int, n2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The start polygon ``(cos * R * ox) * scale + cx`` and the per-vertex tables, in the released order."""
    angle = (math.pi * 2) / nv
    x = np.empty(nv)
    y = np.empty(nv)
    cosv = np.empty(nv)
    sinv = np.empty(nv)
    wave1 = np.zeros(nv)
    wave2 = np.zeros(nv)
    for v in range(nv):
        cosv[v] = math.cos(angle * v)
        sinv[v] = math.sin(angle * v)
        x[v] = (cosv[v] * radius * ox) * scale[v] + cx
        y[v] = (sinv[v] * radius * oy) * scale[v] + cy
        if n1 >= 0:
            wave1[v] = 0.5 * math.sin(angle * v * n1)
            wave2[v] = 0.5 * math.sin(angle * v * n2)
    return x, y, cosv, sinv, wave1, wave2


@numba.njit(cache=True, nogil=True)
def draw_rings(img, greys, uniforms, scale, geometry, n1, n2):  # pragma: no cover - compiled
    """Draw the rings of one image into ``img``: ``_start_polygon`` then ``_rings`` in one call from Python (the six
    arrays between them stay in numba: about 5 us of boxing and argument checks a call).

    Args:
        img: (size, size) uint8, filled with the background.
        greys: (K,) int64 ring greys; uniforms: (K, 2, V) float64 in [0, 1); scale: (V,) float64 radius multipliers.
        geometry: (10,) float64: R, ox, oy, start x, start y, c, gain, lw, offset x, offset y.
        n1, n2: the two sine waves' frequencies (VisualAtom), or -1 for none.
    """
    x, y, cosv, sinv, wave1, wave2 = _start_polygon(uniforms.shape[2], geometry[0], geometry[1], geometry[2],
                                                    geometry[3], geometry[4], scale, n1, n2)
    _rings(img, x, y, cosv, sinv, wave1, wave2, greys, uniforms, geometry[5], geometry[6], geometry[7],
           geometry[8], geometry[9])
