"""numba kernels: the chaos game and the two raster styles; every random number arrives as an argument.

Styles: reference, the released look (x and y scaled independently into [pad, size - pad], truncated, a 3 x 3
patch of a 9-bit mask pasted at (x + 1, y + 1), value 127, later pastes over earlier, flipped top to bottom);
points, one pixel of value 127 per point, aspect kept, centred, flipped. ``render`` is the one-image path.
``render_chains`` runs LANES systems in one loop (one chain waits about 12 cycles on its previous point), in two
passes (bounding boxes, then the chains again with their points pasted) into 1-bit images (32 KB at 512 px, in
L1): no point is stored.
"""

from __future__ import annotations

import numba
import numpy as np

from fracgen.raster import MIN_SIZE, PAD, STYLES, VALUE  # noqa: F401 - the kernels' constants, numba-free


@numba.njit(inline="always")
def _choose(r: float, cumprob: np.ndarray) -> int:
    """The first map whose cumulative probability is >= r, else the last: cumprob ascends, so that is the
    number of maps (but the last) it exceeds. Counted without branches, which a random r mispredicts."""
    j = 0
    for m in range(cumprob.shape[0] - 1):
        j += r > cumprob[m]
    return j


@numba.njit(cache=True, nogil=True)
def chaos_game(maps: np.ndarray, cumprob: np.ndarray, uniforms: np.ndarray, points: np.ndarray) -> bool:
    """Run the chaos game from (0, 0); point t + 1 = w_j(point t) with j the first map whose cumulative
    probability is >= uniforms[t] (the released rule). It stops at the first non-finite point: a chain that
    leaves the finite numbers never comes back, so a diverging system costs only the steps up to it.

    Args:
        maps: (N, 6) float64 rows (a, b, c, d, e, f).
        cumprob: (N,) float64 cumulative map probabilities.
        uniforms: (T - 1,) float64 in [0, 1).
        points: (T, 2) float64, filled in place; points[0] = (0, 0). When the game diverges, points up to and
            including the first non-finite one are written and the rest are left as they were.

    Returns:
        True when every point is finite.
    """
    x = 0.0
    y = 0.0
    points[0, 0] = 0.0
    points[0, 1] = 0.0
    for t in range(points.shape[0] - 1):
        j = _choose(uniforms[t], cumprob)
        nx = maps[j, 0] * x + maps[j, 1] * y + maps[j, 4]
        y = maps[j, 2] * x + maps[j, 3] * y + maps[j, 5]
        x = nx
        points[t + 1, 0] = x
        points[t + 1, 1] = y
        if not (np.isfinite(x) and np.isfinite(y)):
            return False  # off the critical path: the branch is predicted, the chain's latency is unchanged
    return True


@numba.njit(cache=True, nogil=True)
def _bounds(points: np.ndarray) -> tuple[float, float, float, float]:
    xmin = xmax = points[0, 0]
    ymin = ymax = points[0, 1]
    for t in range(1, points.shape[0]):
        x = points[t, 0]
        y = points[t, 1]
        if x < xmin:
            xmin = x
        elif x > xmax:
            xmax = x
        if y < ymin:
            ymin = y
        elif y > ymax:
            ymax = y
    return xmin, xmax, ymin, ymax


def _row_bits_table() -> np.ndarray:
    """Each mask's patch rows as 3-bit fields, (512, 3) uint64: bit j of row i = mask bit 8 - (3 i + j)."""
    bits = (np.arange(512)[:, None] >> np.arange(8, -1, -1)) & 1  # (512, 9), patch[i, j] = bits[3 i + j]
    return (bits.reshape(512, 3, 3) << np.arange(3)).sum(axis=2).astype(np.uint64)


ROW_BITS = _row_bits_table()
_BLOCK = 256  # points whose places are computed at once (vectorised), then pasted; 4 chains x 2 x 256 float64 = 16 KB


def words_per_row(size: int) -> int:
    """uint64 words per row of a bit image: one bit per pixel, bit c % 64 of word c // 64 = column c."""
    return -(-size // 64)


# The three rows of a mask's patch packed in 9 bits (row i in bits 3 i .. 3 i + 2): one table load per point.
PATCH_FIELDS = (ROW_BITS[:, 0] | (ROW_BITS[:, 1] << np.uint64(3)) | (ROW_BITS[:, 2] << np.uint64(6))).astype(np.uint64)


@numba.njit(inline="always")
def _patch_place(px: int, py: int, top: int, words: int) -> tuple[int, int]:
    """The word of a point's patch's top row and the bit of its left column (integers only: a loop vectorises)."""
    col = px + 1
    return (top - py - 1) * words + (col >> 6), col & 63


@numba.njit(inline="always")
def _paste_patch(flat: np.ndarray, words: int, index: int, shift: int, mask: int) -> None:
    """Paste one point's 3 x 3 patch into a flattened bit image (``words`` uint64 per row): a read-modify-write
    of a 3-bit field per row, in 32 KB at 512 px (L1); unsigned indices spare numba's negative-index fix-up."""
    base = np.uint64(index)
    step = np.uint64(words)
    s = np.uint64(shift)
    seven = np.uint64(7)
    three = np.uint64(3)
    f = PATCH_FIELDS[mask]
    keep = ~(seven << s)
    flat[base] = (flat[base] & keep) | ((f & seven) << s)
    flat[base - step] = (flat[base - step] & keep) | (((f >> three) & seven) << s)
    flat[base - step - step] = (flat[base - step - step] & keep) | ((f >> (three + three)) << s)
    if s > np.uint64(61):  # the fields straddle two words (2 of 64 columns)
        r = np.uint64(64) - s
        keep = ~(seven >> r)
        base += np.uint64(1)
        flat[base] = (flat[base] & keep) | ((f & seven) >> r)
        flat[base - step] = (flat[base - step] & keep) | (((f >> three) & seven) >> r)
        flat[base - step - step] = (flat[base - step - step] & keep) | ((f >> (three + three)) >> r)


@numba.njit(cache=True, nogil=True)
def _popcount(bits: np.ndarray) -> int:
    lit = 0
    flat = bits.ravel()
    for k in range(flat.size):
        v = flat[k]
        v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
        v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
        v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        lit += (v * np.uint64(0x0101010101010101)) >> np.uint64(56)
    return lit


@numba.njit(cache=True, nogil=True)
def raster_reference_bits(points: np.ndarray, masks: np.ndarray, bits: np.ndarray, size: int) -> int:
    """Rasterise points in the released 1p-frac look (see the module docstring) into a bit image.

    Args:
        points: (T, 2) float64, all finite.
        masks: (T,) uint16 in [1, 511], one patch mask per point.
        bits: (size, words_per_row(size)) uint64, overwritten; bit c % 64 of word c // 64 of row r is pixel
            (r, c) of the image (after the top-to-bottom flip).
        size: image side in pixels.

    Returns:
        Number of lit pixels; 0 when the points span no width or height, or an infinite one.
    """
    bits[:] = 0
    xmin, xmax, ymin, ymax = _bounds(points)
    wx = xmax - xmin
    wy = ymax - ymin
    if not (wx > 0.0 and wy > 0.0 and np.isfinite(wx) and np.isfinite(wy)):
        return 0  # also guards the writes below: an infinite extent would index out of the image
    span = float(size - 2 * PAD)
    top = size - 1
    flat = bits.ravel()
    words = bits.shape[1]
    index = np.empty(_BLOCK, np.int64)
    shift = np.empty(_BLOCK, np.int64)
    for start in range(0, points.shape[0], _BLOCK):
        count = min(_BLOCK, points.shape[0] - start)
        for i in range(count):  # vectorised
            index[i], shift[i] = _patch_place(int((points[start + i, 0] - xmin) / wx * span + PAD),
                                              int((points[start + i, 1] - ymin) / wy * span + PAD), top, words)
        for i in range(count):
            _paste_patch(flat, words, index[i], shift[i], masks[start + i])
    return _popcount(bits)


def expand_bits(bits: np.ndarray, image: np.ndarray) -> None:
    """Write a bit image into a (size, size) uint8 image of values {0, VALUE}."""
    size = image.shape[1]
    np.multiply(np.unpackbits(bits.view(np.uint8), axis=1, count=size, bitorder="little"), VALUE, out=image)


def raster_reference(points: np.ndarray, masks: np.ndarray, image: np.ndarray, bits: np.ndarray | None = None) -> int:
    """Rasterise points in the released 1p-frac look (see the module docstring).

    Args:
        points: (T, 2) float64, all finite.
        masks: (T,) uint16 in [1, 511], one patch mask per point.
        image: (size, size) uint8, overwritten.
        bits: optional (size, words_per_row(size)) uint64 scratch buffer.

    Returns:
        Number of lit pixels; 0 when the points span no width or height, or an infinite one.
    """
    size = image.shape[0]
    if bits is None:
        bits = np.empty((size, words_per_row(size)), np.uint64)
    lit = raster_reference_bits(points, masks, bits, size)
    expand_bits(bits, image)
    return lit


@numba.njit(cache=True, nogil=True)
def raster_points(points: np.ndarray, image: np.ndarray) -> int:
    """Rasterise points as single pixels, aspect ratio kept and centred.

    Args:
        points: (T, 2) float64, all finite.
        image: (size, size) uint8, overwritten.

    Returns:
        Number of lit pixels; 0 when the points span no width and no height.
    """
    size = image.shape[0]
    image[:] = 0
    xmin, xmax, ymin, ymax = _bounds(points)
    extent = max(xmax - xmin, ymax - ymin)
    if not (extent > 0.0 and np.isfinite(extent)):
        return 0  # also guards the writes below: an infinite extent would index out of the image
    span = float(size - 2 * PAD)
    scale = span / extent
    ox = PAD + (span - (xmax - xmin) * scale) / 2.0
    oy = PAD + (span - (ymax - ymin) * scale) / 2.0
    top = size - 1
    for t in range(points.shape[0]):
        px = int((points[t, 0] - xmin) * scale + ox)
        py = int((points[t, 1] - ymin) * scale + oy)
        image[top - py, px] = VALUE
    return _count_lit(image)


@numba.njit(cache=True, nogil=True)
def _count_lit(image: np.ndarray) -> int:
    lit = 0
    flat = image.ravel()
    for k in range(flat.size):
        if flat[k] != 0:
            lit += 1
    return lit


MAX_CHAIN_MAPS = 256  # map choices are uint8
LANES = 4  # chains run together: enough independent steps to hide one step's latency (about 12 cycles)


@numba.njit(inline="always")
def _step(coef: np.ndarray, c: int, j: int, x: float, y: float) -> tuple[float, float]:
    return (coef[c, j, 0] * x + coef[c, j, 1] * y + coef[c, j, 4],
            coef[c, j, 2] * x + coef[c, j, 3] * y + coef[c, j, 5])


@numba.njit(cache=True, nogil=True)
def _chains_bounds(coef: np.ndarray, choices: np.ndarray, rows: np.ndarray, bounds: np.ndarray) -> None:
    """First pass of ``render_chains``: the bounding box of each of LANES chains, their points not stored.

    The chains are independent, so their steps overlap instead of each waiting on its own previous point; every
    block of steps checks whether any chain is still finite, so a batch that has wholly diverged stops there.
    """
    x0 = y0 = x1 = y1 = x2 = y2 = x3 = y3 = 0.0  # point 0 is (0, 0)
    a0 = b0 = c0 = d0 = a1 = b1 = c1 = d1 = a2 = b2 = c2 = d2 = a3 = b3 = c3 = d3 = 0.0  # xmin, xmax, ymin, ymax
    steps = choices.shape[1]
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    for start in range(0, steps, 4 * _BLOCK):
        for t in range(start, min(start + 4 * _BLOCK, steps)):
            x0, y0 = _step(coef, 0, choices[r0, t], x0, y0)
            x1, y1 = _step(coef, 1, choices[r1, t], x1, y1)
            x2, y2 = _step(coef, 2, choices[r2, t], x2, y2)
            x3, y3 = _step(coef, 3, choices[r3, t], x3, y3)
            a0, b0, c0, d0 = min(a0, x0), max(b0, x0), min(c0, y0), max(d0, y0)
            a1, b1, c1, d1 = min(a1, x1), max(b1, x1), min(c1, y1), max(d1, y1)
            a2, b2, c2, d2 = min(a2, x2), max(b2, x2), min(c2, y2), max(d2, y2)
            a3, b3, c3, d3 = min(a3, x3), max(b3, x3), min(c3, y3), max(d3, y3)
        if not (np.isfinite(x0 + y0) or np.isfinite(x1 + y1) or np.isfinite(x2 + y2) or np.isfinite(x3 + y3)):
            break
    # non-finite forever once non-finite (see chaos_game), so the last point decides divergence
    for c, (x, y, a, b, cc, d) in enumerate(((x0, y0, a0, b0, c0, d0), (x1, y1, a1, b1, c1, d1),
                                            (x2, y2, a2, b2, c2, d2), (x3, y3, a3, b3, c3, d3))):
        bounds[c, 0] = a if np.isfinite(x + y) else np.nan
        bounds[c, 1] = b
        bounds[c, 2] = cc
        bounds[c, 3] = d


@numba.njit(cache=True, nogil=True)
def _chains_raster(coef: np.ndarray, choices: np.ndarray, rows: np.ndarray, masks: np.ndarray,
                   bounds: np.ndarray, bits: np.ndarray, lit: np.ndarray) -> None:
    """Second pass of ``render_chains``: run the chains again (the same arithmetic gives the same points) and
    paste every point's patch, instead of storing 1.6 MB of points per image and reading them back."""
    size = bits.shape[1]
    words = bits.shape[2]
    span = float(size - 2 * PAD)
    top = size - 1
    xmin = np.zeros(LANES)
    ymin = np.zeros(LANES)
    wx = np.ones(LANES)
    wy = np.ones(LANES)
    ok = np.zeros(LANES, np.bool_)
    for c in range(LANES):
        lit[c] = -1
        bits[c] = 0
        if np.isnan(bounds[c, 0]):
            continue  # diverged
        lit[c] = 0
        xmin[c] = bounds[c, 0]
        ymin[c] = bounds[c, 2]
        wx[c] = bounds[c, 1] - bounds[c, 0]
        wy[c] = bounds[c, 3] - bounds[c, 2]
        ok[c] = wx[c] > 0.0 and wy[c] > 0.0 and np.isfinite(wx[c]) and np.isfinite(wy[c])
    if not ok.any():
        return
    pts = np.zeros((LANES, 2, _BLOCK))  # pts[:, :, 0] = (0, 0), point 0
    index = np.empty(_BLOCK, np.int64)
    shift = np.empty(_BLOCK, np.int64)
    x0 = y0 = x1 = y1 = x2 = y2 = x3 = y3 = 0.0
    total = choices.shape[1] + 1
    r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
    first = 1  # the block starting at point 0 has (0, 0) already in place
    for start in range(0, total, _BLOCK):
        count = min(_BLOCK, total - start)
        for i in range(first, count):
            t = start + i - 1
            x0, y0 = _step(coef, 0, choices[r0, t], x0, y0)
            x1, y1 = _step(coef, 1, choices[r1, t], x1, y1)
            x2, y2 = _step(coef, 2, choices[r2, t], x2, y2)
            x3, y3 = _step(coef, 3, choices[r3, t], x3, y3)
            pts[0, 0, i], pts[0, 1, i], pts[1, 0, i], pts[1, 1, i] = x0, y0, x1, y1
            pts[2, 0, i], pts[2, 1, i], pts[3, 0, i], pts[3, 1, i] = x2, y2, x3, y3
        first = 0
        for c in range(LANES):
            if not ok[c]:
                continue
            xs = pts[c, 0]
            ys = pts[c, 1]
            ax, ay, sx, sy = xmin[c], ymin[c], wx[c], wy[c]
            for i in range(count):  # vectorised: 8 divisions at once
                index[i], shift[i] = _patch_place(int((xs[i] - ax) / sx * span + PAD),
                                                  int((ys[i] - ay) / sy * span + PAD), top, words)
            image = bits[c].ravel()
            row = masks[c, start:start + count]
            for i in range(count):
                _paste_patch(image, words, index[i], shift[i], row[i])
    for c in range(LANES):
        if ok[c]:
            lit[c] = _popcount(bits[c])


@numba.njit(cache=True, nogil=True)
def map_choices(uniforms: np.ndarray, cumprob: np.ndarray) -> np.ndarray:
    """The map index of every chaos-game step: (T - 1,) uint8, the rule of ``chaos_game`` (at most 256 maps).

    Counted one cumulative probability at a time over all steps (a vectorised loop): 4-7x faster than
    choosing step by step.
    """
    out = np.zeros(uniforms.shape[0], np.uint8)
    for m in range(cumprob.shape[0] - 1):
        edge = cumprob[m]
        for t in range(uniforms.shape[0]):
            out[t] += np.uint8(uniforms[t] > edge)
    return out


def render_chains(maps: np.ndarray, choices: np.ndarray, masks: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Render several systems together in the reference look, each into its own bit image; same pixels as
    ``render`` of each system alone. Their steps are independent, so LANES chains run in one loop.

    Args:
        maps: (K, N, 6) float64, one system per chain (N the largest map count; unused rows are never chosen).
        choices: (T - 1,) uint8 map choices shared by every chain (``map_choices``: the perturbations of one
            fractal share them), or (K, T - 1), one row per chain.
        masks: (K, T) uint16 patch masks, one row per chain.
        bits: (K, size, words_per_row(size)) uint64, overwritten (see ``raster_reference_bits``).

    Returns:
        (K,) float64: each image's fill (lit pixels / size^2), or -1.0 where the chain diverged.
    """
    k = len(maps)
    size = bits.shape[1]
    shared = choices.ndim == 1
    choices = choices.reshape(1, -1) if shared else choices
    lit = np.empty(k, np.int64)
    bounds = np.empty((LANES, 4))
    part = np.empty(LANES, np.int64)
    for start in range(0, k, LANES):
        lanes = min(LANES, k - start)
        pick = np.arange(start, start + LANES).clip(max=k - 1)  # a short batch repeats its last chain
        rows = np.zeros(LANES, np.int64) if shared else pick
        coef = np.ascontiguousarray(maps[pick])
        lane_bits = bits[start:start + LANES] if lanes == LANES else np.empty((LANES,) + bits.shape[1:], np.uint64)
        _chains_bounds(coef, choices, rows, bounds)
        # a whole batch's masks as a view: the fancy-index copy (800 KB at 100,000 points) cost 60 us a call
        whole = lanes == LANES and masks.flags.c_contiguous
        _chains_raster(coef, choices, rows, masks[start:start + LANES] if whole else masks[pick], bounds, lane_bits,
                       part)
        if lanes < LANES:
            bits[start:] = lane_bits[:lanes]
        lit[start:start + lanes] = part[:lanes]
    return np.where(lit < 0, -1.0, lit / (size * size))


def render(
    maps: np.ndarray,
    probs: np.ndarray,
    uniforms: np.ndarray,
    masks: np.ndarray | None,
    image: np.ndarray,
    points: np.ndarray,
    style: str = "reference",
) -> float:
    """Render one system into ``image`` and return its fill (lit fraction), or -1.0 if it diverged.

    Args:
        maps: (N, 6) float64.
        probs: (N,) float64 map probabilities.
        uniforms: (T - 1,) float64 map-choice draws.
        masks: (T,) uint16 patch masks (reference style only).
        image: (size, size) uint8 output buffer.
        points: (T, 2) float64 scratch buffer.
        style: one of STYLES.

    Returns:
        Lit pixels / size^2 in [0, 1], or -1.0 when a point was not finite.
    """
    if not chaos_game(maps, np.cumsum(probs), uniforms, points):
        return -1.0
    return raster(points, masks, image, style) / image.size


def raster(points: np.ndarray, masks: np.ndarray | None, image: np.ndarray, style: str) -> int:
    """Rasterise finite points in a style; returns the number of lit pixels."""
    return raster_reference(points, masks, image) if style == "reference" else raster_points(points, image)


class Canvas:
    """Reusable buffers for rendering many images of one size and point count.

    Args:
        size: image side in pixels, >= MIN_SIZE.
        points: chaos-game points per image, >= 1.
    """

    def __init__(self, size: int, points: int):
        self.image = np.zeros((size, size), np.uint8)
        self.points = np.empty((points, 2), np.float64)
        self.bits = np.empty((size, words_per_row(size)), np.uint64)
        # samples rendered ahead (samples.render_ahead): index -> (bits, metadata); the announced ones not yet
        # rendered: index -> position in order
        self.ready: dict = {}
        self.pending: dict = {}
        self.order: list = []
