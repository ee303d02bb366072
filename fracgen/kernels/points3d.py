"""numba kernels of 3D-OFDB: the 3D chaos game, its normalisation and acceptance test, and a point renderer that
restates the released OpenGL pipeline (``3d-ofdb-generator/`` of ryoo-nakamura/OFDB: ``category_search.py`` and
``instance.py`` in float64 Python and numpy 1.22, ``render1view.py`` with PyGLM and OpenGL on Mesa's llvmpipe),
operation by operation, so that the same draws give the same bits:

- chaos game from the origin (not stored), one float64 point per uniform, the first map whose cumulative
  probability is >= u (none: the previous point again); probabilities |det| / sum with numpy 1.22's det bits;
- joint min-max of x, y, z to [-1, 1], minus a centroid summed left to right and divided by the released
  ``point_num``; accepted when y has no NaN and np.var of each row (numpy 1.22's sums) exceeds the threshold;
- the camera of view i of V: float32 rotations about y by i / V * 2 pi, 30 degrees and the jitter (degrees), eye
  at distance 4, GLM's lookAt and perspective (45 degrees, near 1, far 100) with the C library's cosf/sinf/tanf;
- the vertex shader ``P * (V * (M * p))`` in float32 without FMA (Mesa lowers ffma on llvmpipe), llvmpipe's clip
  test, 1 / w, the viewport as one fused multiply-add and the legacy size-1 point rule (x_w, y_w rounded to 1/256
  pixel, then >> 8); row 0 of an image is the window's bottom row, as glReadPixels returns it and the release saves.

Matrices are float32 (4, 4) arrays indexed as GLM: ``m[c, r]`` is column c, row r. No I/O; every random number
arrives as an argument.
"""

from __future__ import annotations

import math

import numba
import numpy as np

F32 = np.float32
DEG = 0.01745329251994329576923690768489  # GLM's radians() factor, applied to Python floats in double
CAM_DIST = 4.0  # render1view.py: camDist
FOVY_DEG, Z_NEAR, Z_FAR = 45.0, 1.0, 100.0  # glm.perspective(glm.radians(45.0), 1, zNear, zFar)
BASE_DEG = 30.0  # the second rotation of every view
VAR_BUFFER = 8192  # numpy 1.22's reduction buffer: np.var sums pairwise within it, buffers left to right
_PW_BLOCK = 128  # numpy's pairwise-summation leaf


# ---------------------------------------------------------------------------------- chaos game and normalisation


@numba.njit(cache=True, nogil=True)
def abs_det3(m: np.ndarray) -> float:
    """|np.linalg.det| of a map's matrix (m: (12,) float64 a..l; a..i row-major), bit-equal to numpy 1.22.0 with
    its OpenBLAS: getf2's left-looking LU with partial pivoting (the first largest |pivot|, multipliers scaled by
    1 / pivot, u22 = a22 - (l20 u02 + l21 u12)), then exp(log|u00| + log|u11| + log|u22|)."""
    a = m[:9].copy().reshape(3, 3)
    piv = np.zeros(3, np.int64)
    for j in range(3):
        for i in range(j):  # the earlier columns' row swaps, applied to this one
            if piv[i] != i:
                a[i, j], a[piv[i], j] = a[piv[i], j], a[i, j]
        if j == 1:
            for i in range(1, 3):
                a[i, 1] = a[i, 1] - a[i, 0] * a[0, 1]
        elif j == 2:
            a[1, 2] = a[1, 2] - a[1, 0] * a[0, 2]
            a[2, 2] = a[2, 2] - (a[2, 0] * a[0, 2] + a[2, 1] * a[1, 2])
        p = j
        for i in range(j + 1, 3):
            if abs(a[i, j]) > abs(a[p, j]):
                p = i
        piv[j] = p
        if a[p, j] == 0.0:
            return 0.0  # numpy: log(0) = -inf, exp(-inf) = 0
        for k in range(j + 1):
            a[j, k], a[p, k] = a[p, k], a[j, k]
        r = 1.0 / a[j, j]
        for i in range(j + 1, 3):
            a[i, j] = a[i, j] * r
    acc = 0.0
    for i in range(3):
        acc += math.log(abs(a[i, i]))
    return math.exp(acc)


@numba.njit(cache=True, nogil=True)
def map_probabilities(maps: np.ndarray) -> np.ndarray:
    """category_search.py: p_m = |det(map m)| / (the running sum of them). maps (N, 12) -> (N,) float64."""
    n = maps.shape[0]
    probs = np.empty(n)
    total = 0.0
    for m in range(n):
        probs[m] = abs_det3(maps[m])
        total += probs[m]
    for m in range(n):
        probs[m] = probs[m] / total
    return probs


@numba.njit(cache=True, nogil=True, inline="always")
def _choose(cumulative: np.ndarray, u: float) -> int:
    # the first map with u <= cumulative[j], counted without branches (the choice is random: a branch mispredicts
    # half the time); N when there is none
    j = 0
    for k in range(cumulative.shape[0]):
        j += cumulative[k] < u
    return j


@numba.njit(cache=True, nogil=True)
def chaos_game(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray, out: np.ndarray, limits: np.ndarray,
               stop: bool = False) -> bool:
    """The released chaos game: x' = a x + b y + c z + j (d e f k, g h i l), float64, left to right, no FMA. Once a
    coordinate is not finite no later one is (each adds a multiple of every old one: inf x 0 is NaN), so the last
    point tells whether all were finite.

    Args:
        maps: (N, 12) float64 rows (a..l).
        probs: (N,) float64 map probabilities.
        uniforms: (n,) float64 in [0, 1); the released ``calculate(point_num)`` uses point_num - 1 of its draws.
        out: (3, >= n) float64; columns 0..n-1 receive the points.
        limits: (2,) float64; receives the smallest and largest coordinate (valid when every point is finite).
        stop: return once a point is not finite (the search refuses such a cloud whatever follows).

    Returns:
        True when every point is finite.
    """
    cumulative = np.cumsum(probs)  # sequential, as set_param's temp_proba += proba
    n_maps = maps.shape[0]
    x = y = z = 0.0
    mn = np.inf
    mx = -np.inf
    for i in range(uniforms.shape[0]):
        j = _choose(cumulative, uniforms[i])
        if j < n_maps:  # no map: the released loop stores its previous point again
            nx = x * maps[j, 0] + y * maps[j, 1] + z * maps[j, 2] + maps[j, 9]
            ny = x * maps[j, 3] + y * maps[j, 4] + z * maps[j, 5] + maps[j, 10]
            z = x * maps[j, 6] + y * maps[j, 7] + z * maps[j, 8] + maps[j, 11]
            x, y = nx, ny
        out[0, i] = x
        out[1, i] = y
        out[2, i] = z
        mn = min(mn, x, y, z)
        mx = max(mx, x, y, z)
        if stop and (i & 255) == 255 and not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            return False
    limits[0] = mn
    limits[1] = mx
    return math.isfinite(x) and math.isfinite(y) and math.isfinite(z)


@numba.njit(cache=True, nogil=True)
def normalise(points: np.ndarray, n: int, divisor: float, limits: np.ndarray) -> None:
    """min_max(axis=None) to [-1, 1] then ``centoroid``, in place on columns 0..n-1 of points (3, >= n) float64.

    min_max: ``((p - min) / (max - min)) * (1.0 - (-1.0)) - 1.0``, min and max (``limits``, (2,)) over x, y and z
    jointly. centoroid: minus ``sum(row) / divisor``, the sum Python's built-in (left to right), the divisor the
    released ``point_num`` (one more than the points).
    """
    mn = limits[0]
    span = limits[1] - mn
    for r in range(3):
        for k in range(n):
            points[r, k] = ((points[r, k] - mn) / span) * 2.0 - 1.0
    # three left-to-right sums side by side: each is a chain of dependent adds, interleaved they overlap
    sx = sy = sz = 0.0
    for k in range(n):
        sx += points[0, k]
        sy += points[1, k]
        sz += points[2, k]
    cx, cy, cz = sx / divisor, sy / divisor, sz / divisor
    for k in range(n):
        points[0, k], points[1, k], points[2, k] = points[0, k] - cx, points[1, k] - cy, points[2, k] - cz


@numba.njit(cache=True, nogil=True, inline="always")
def _term(a: np.ndarray, k: int, mean: float, square: bool) -> float:
    if square:
        d = a[k] - mean
        return d * d
    return a[k]


@numba.njit(cache=True, nogil=True)
def _leaf_sum(a: np.ndarray, lo: int, n: int, mean: float, square: bool) -> float:
    """numpy's pairwise_sum for n <= 128 (a plain loop under 8, else 8 accumulators combined as a tree) of a[k], or
    of (a[k] - mean)^2 when ``square``: the same values np.var sums, without storing them."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += _term(a, lo + i, mean, square)
        return res
    r0, r1 = _term(a, lo, mean, square), _term(a, lo + 1, mean, square)
    r2, r3 = _term(a, lo + 2, mean, square), _term(a, lo + 3, mean, square)
    r4, r5 = _term(a, lo + 4, mean, square), _term(a, lo + 5, mean, square)
    r6, r7 = _term(a, lo + 6, mean, square), _term(a, lo + 7, mean, square)
    end = n - (n % 8)
    for b in range(lo + 8, lo + end, 8):
        r0, r1 = r0 + _term(a, b, mean, square), r1 + _term(a, b + 1, mean, square)
        r2, r3 = r2 + _term(a, b + 2, mean, square), r3 + _term(a, b + 3, mean, square)
        r4, r5 = r4 + _term(a, b + 4, mean, square), r5 + _term(a, b + 5, mean, square)
        r6, r7 = r6 + _term(a, b + 6, mean, square), r7 + _term(a, b + 7, mean, square)
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for k in range(lo + end, lo + n):
        res += _term(a, k, mean, square)
    return res


@numba.njit(cache=True, nogil=True)
def pairwise_sum(a: np.ndarray, lo: int, n: int, mean: float = 0.0, square: bool = False) -> float:
    """numpy's float64 pairwise summation of a[lo:lo + n] (or of its squared deviations from ``mean``): above 128
    elements the sum of the two halves split at n // 2 rounded down to a multiple of 8. Iterative (numba's cache
    mishandles self-recursion): a stack of ranges, and one of partial sums combined left + right."""
    spans = np.empty((96, 2), np.int64)  # (lo, n) to sum, or (-1, -1): add the last two sums; 3 a level at most
    sums = np.empty(32)
    spans[0, 0], spans[0, 1] = lo, n
    top, ns = 1, 0
    while top > 0:
        top -= 1
        s_lo, s_n = spans[top, 0], spans[top, 1]
        if s_n < 0:
            ns -= 1
            sums[ns - 1] = sums[ns - 1] + sums[ns]
        elif s_n <= _PW_BLOCK:
            sums[ns] = _leaf_sum(a, s_lo, s_n, mean, square)
            ns += 1
        else:  # the left half is summed first, then the right, then the two are added
            half = s_n // 2 - (s_n // 2) % 8
            spans[top, 0], spans[top, 1] = -1, -1
            spans[top + 1, 0], spans[top + 1, 1] = s_lo + half, s_n - half
            spans[top + 2, 0], spans[top + 2, 1] = s_lo, half
            top += 3
    return sums[0]


@numba.njit(cache=True, nogil=True)
def _reduce_sum(a: np.ndarray, n: int, buffer: int, mean: float, square: bool) -> float:
    """np.add.reduce of a[:n] (or of its squared deviations) as numpy 1.22 runs it: 0.0 plus the pairwise sum of
    each ``buffer`` elements, the buffers added left to right (``buffer`` 0: the whole row at once, as numpy 2)."""
    if buffer <= 0:
        buffer = max(n, 1)
    acc = 0.0
    for start in range(0, n, buffer):
        acc += pairwise_sum(a, start, min(buffer, n - start), mean, square)
    return acc


@numba.njit(cache=True, nogil=True)
def variance(row: np.ndarray, n: int, buffer: int = VAR_BUFFER) -> float:
    """np.var(row[:n]) of a contiguous float64 row, bit for bit: mean = sum / n, then sum((x - mean)^2) / n, the sums
    with numpy's reduction ``buffer`` (VAR_BUFFER: numpy 1.22, the release's pin; 0: numpy 2)."""
    mean = _reduce_sum(row, n, buffer, 0.0, False) / n
    return _reduce_sum(row, n, buffer, mean, True) / n


@numba.njit(cache=True, nogil=True)
def accepted(points: np.ndarray, n: int, threshold: float) -> bool:
    """The released test of a normalised cloud (3, >= n): no NaN in y, and var(x), var(y), var(z) each above the
    threshold (a NaN variance fails). Stops at the first row that fails."""
    for k in range(n):
        if points[1, k] != points[1, k]:
            return False
    for r in range(3):
        if not variance(points[r], n) > threshold:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def first_accepted(counts: np.ndarray, params: np.ndarray, uniforms: np.ndarray, threshold: float, divisor: float,
                   points: np.ndarray) -> int:
    """The first candidate of a batch the released category search accepts, or -1. One whose chaos game leaves the
    finite numbers is refused unnormalised: an infinity or NaN anywhere puts NaN in its row (or in every row) after
    the joint min-max, and a NaN variance fails the test.

    Args:
        counts: (B,) int64 maps per candidate, in 2..7.
        params: (B, >= 7, 12) float64; candidate t uses rows 0..counts[t] - 1.
        uniforms: (B, n) float64 in [0, 1): each candidate's chaos-game draws.
        threshold: the variance threshold.
        divisor: the released point_num (n + 1), the centroid's divisor.
        points: (3, >= n) float64 work space.
    """
    n = uniforms.shape[1]
    limits = np.empty(2)
    for t in range(counts.shape[0]):
        maps = params[t, :counts[t]]
        if not chaos_game(maps, map_probabilities(maps), uniforms[t], points, limits, True):
            continue
        normalise(points, n, divisor, limits)
        if accepted(points, n, threshold):
            return t
    return -1


@numba.njit(cache=True, nogil=True)
def cloud(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray, divisor: float) -> np.ndarray:
    """A category's instance, as instance.py makes it: chaos game, min-max, centroid. -> (3, n) float64 (NaN and
    infinities kept, as the released code keeps them)."""
    n = uniforms.shape[0]
    out = np.empty((3, n))
    limits = np.empty(2)
    if not chaos_game(maps, probs, uniforms, out, limits):  # numpy's min and max (NaN propagates) of what is there
        limits[0], limits[1] = out.min(), out.max()
    normalise(out, n, divisor, limits)
    return out


# ----------------------------------------------------------------------------- matrices: PyGLM (GLM 0.9.9), float32


@numba.njit(cache=True, nogil=True)
def rotate_y(m: np.ndarray, angle: float) -> np.ndarray:
    """glm::rotate(m, angle, vec3(0, 1, 0)) in float32: (4, 4) float32 -> a new (4, 4) float32.

    With axis (0, 1, 0) GLM's rotation reduces to R00 = R22 = c, R20 = s, R02 = -s and R11 = c + (1 - c) (not
    always exactly 1 in float32); GLM's other terms add zeros, which change no bit.
    """
    a = np.float32(angle)
    c = math.cos(a)  # float32 argument: glibc's cosf, as GLM's std::cos(float)
    s = math.sin(a)
    r11 = c + (F32(1.0) - c)
    out = np.empty((4, 4), np.float32)
    for k in range(4):
        out[0, k] = m[0, k] * c + m[2, k] * (-s)
        out[1, k] = m[1, k] * r11
        out[2, k] = m[0, k] * s + m[2, k] * c
        out[3, k] = m[3, k]
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _normalize3(v0, v1, v2):
    # GLM normalize: v * (1 / sqrt(dot(v, v))), dot = (x x + y y) + z z
    inv = F32(1.0) / math.sqrt((v0 * v0 + v1 * v1) + v2 * v2)
    return v0 * inv, v1 * inv, v2 * inv


@numba.njit(cache=True, nogil=True)
def look_at(e0, e1, e2, u0, u1, u2) -> np.ndarray:
    """glm::lookAt (right-handed) from eye e towards the origin with up u, float32 scalars -> (4, 4) float32."""
    zero = F32(0.0)
    f0, f1, f2 = _normalize3(zero - e0, zero - e1, zero - e2)
    s0, s1, s2 = _normalize3(f1 * u2 - u1 * f2, f2 * u0 - u2 * f0, f0 * u1 - u0 * f1)  # normalize(cross(f, up))
    v0, v1, v2 = s1 * f2 - f1 * s2, s2 * f0 - f2 * s0, s0 * f1 - f0 * s1  # cross(s, f)
    m = np.zeros((4, 4), np.float32)
    m[0, 0], m[1, 0], m[2, 0] = s0, s1, s2
    m[0, 1], m[1, 1], m[2, 1] = v0, v1, v2
    m[0, 2], m[1, 2], m[2, 2] = -f0, -f1, -f2
    m[3, 0] = -((s0 * e0 + s1 * e1) + s2 * e2)
    m[3, 1] = -((v0 * e0 + v1 * e1) + v2 * e2)
    m[3, 2] = (f0 * e0 + f1 * e1) + f2 * e2
    m[3, 3] = F32(1.0)
    return m


@numba.njit(cache=True, nogil=True)
def view_matrix(view: int, views: int, jitter_deg: float) -> np.ndarray:
    """render1view.py's camera for view ``view`` of ``views``: the rotation by theta = view / views * pi * 2, then
    radians(30), then radians(jitter_deg) (each a double rounded to float32 by PyGLM), the eye at -4 x its
    column 0, up = its column 1, looking at the origin. -> (4, 4) float32."""
    rot = np.eye(4, dtype=np.float32)
    rot = rotate_y(rot, view / views * math.pi * 2.0)
    rot = rotate_y(rot, BASE_DEG * DEG)
    rot = rotate_y(rot, jitter_deg * DEG)
    dist = F32(CAM_DIST)
    zero = F32(0.0)
    return look_at(zero - rot[0, 0] * dist, zero - rot[0, 1] * dist, zero - rot[0, 2] * dist,
                   rot[1, 0], rot[1, 1], rot[1, 2])


@numba.njit(cache=True, nogil=True)
def perspective() -> np.ndarray:
    """glm::perspective(radians(45), 1, 1, 100) (right-handed, clip z in [-1, 1]) in float32 -> (4, 4) float32.
    The released aspect is img_size / img_size = 1 at every size."""
    fovy = np.float32(FOVY_DEG * DEG)
    near, far = F32(Z_NEAR), F32(Z_FAR)
    t = math.tan(fovy / F32(2.0))
    m = np.zeros((4, 4), np.float32)
    m[0, 0] = F32(1.0) / (F32(1.0) * t)
    m[1, 1] = F32(1.0) / t
    m[2, 2] = -(far + near) / (far - near)
    m[2, 3] = F32(-1.0)
    m[3, 2] = -(F32(2.0) * far * near) / (far - near)
    return m


# ----------------------------------------------------------- rasterisation: Mesa llvmpipe, legacy size-1 points


@numba.njit(cache=True, nogil=True)
def fma_f32(a, b, c):
    """float32 fma(a, b, c) rounded once, as llvm.fmuladd on a CPU with FMA (llvmpipe's viewport). a * b is exact in
    float64; rounding a * b + c to float64 then float32 is one rounding unless the float64 sum falls exactly halfway
    between two float32 values and the exact sum does not: then the sign of its error (TwoSum) decides."""
    p = np.float64(a) * np.float64(b)
    c64 = np.float64(c)
    s = p + c64
    r = np.float32(s)
    d = s - np.float64(r)
    if d == 0.0:
        return r
    other = np.float32(s + d)  # the float32 on the other side of s
    if np.float64(r) + np.float64(other) != s + s:
        return r  # s is not a tie: rounding it is rounding the exact sum
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    if err == 0.0:
        return r  # an exact tie: round half to even, as the float32 conversion did
    return max(r, other) if err > 0.0 else min(r, other)


@numba.njit(cache=True, nogil=True)
def _snap(f):
    """util_iround on x86-64 (Mesa u_math.h): (int)(f + 0.5f) or (int)(f - 0.5f), a float32 add, C's truncation."""
    if f >= F32(0.0):
        return int(f + F32(0.5))
    return int(f - F32(0.5))


@numba.njit(cache=True, nogil=True, inline="always")
def _row(m, x, y, z, w, r):
    """Row r of GLSL ``m * vec4`` as Mesa's GLSL lowering emits it: ((c0 x + c1 y) + c2 z) + c3 w, float32."""
    return ((m[0, r] * x + m[1, r] * y) + m[2, r] * z) + m[3, r] * w


@numba.njit(cache=True, nogil=True)
def render_view(points: np.ndarray, view: np.ndarray, proj: np.ndarray, image: np.ndarray, value: int) -> None:
    """Draw one view: every point that survives the clip test lights one pixel (every fragment has the same colour,
    so the depth test cannot change the image and is left out).

    Args:
        points: (n, 3) float32 (the PLY's doubles rounded to float32, as render1view.py's np.array(..., float32)).
        view, proj: (4, 4) float32 [column, row] from ``view_matrix`` and ``perspective``.
        image: (size, size) uint8, cleared here; row 0 is the bottom row of the window (the released PNGs' rows
            are glReadPixels' rows, not flipped).
        value: the lit value (255: white points).
    """
    size = image.shape[0]
    image[:] = 0
    half = F32(0.5) * F32(size)
    one = F32(1.0)
    zero = F32(0.0)
    for i in range(points.shape[0]):
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        # M = identity leaves p unchanged bit for bit, so gl_Position = P * (V * p)
        ex, ey = _row(view, x, y, z, one, 0), _row(view, x, y, z, one, 1)
        ez, ew = _row(view, x, y, z, one, 2), _row(view, x, y, z, one, 3)
        cx, cy = _row(proj, ex, ey, ez, ew, 0), _row(proj, ex, ey, ez, ew, 1)
        cz, cw = _row(proj, ex, ey, ez, ew, 2), _row(proj, ex, ey, ez, ew, 3)
        # draw_llvm's clip mask: x, y, z planes, unordered compares (NaN is clipped); no guard band with depth
        if not (cx <= cw and cx + cw >= zero and cy <= cw and cy + cw >= zero and cz + cw >= zero and cz <= cw):
            continue
        inv_w = one / cw
        xw = fma_f32(cx * inv_w, half, half)
        yw = fma_f32(cy * inv_w, half, half)
        col = _snap(xw * F32(256.0)) >> 8
        row = _snap(yw * F32(256.0)) >> 8
        if 0 <= col < size and 0 <= row < size:
            image[row, col] = value
