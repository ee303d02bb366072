"""The 3D-OFDB rules in plain Python and NumPy, written from the released scripts' operations (not from the numba
kernels) so that ``tests/test_ofdb3d.py`` can hold ``fracgen.kernels.points3d`` to them.

- the search and instance (``category_search.py``, ``instance.py``, ``IteratedFunctionSystem.py``): the chaos game
  as the released Python loop, ``min_max`` and ``centoroid`` as released, and numpy 1.22's np.var, whose sums are
  np.add.reduce over 8,192-element buffers added left to right (this numpy's add.reduce of a buffer is the same
  pairwise sum); |det| by OpenBLAS getf2's left-looking LU (numpy 1.22's det) in Python floats;
- the render (``render1view.py`` on Mesa llvmpipe): GLM's float32 matrices with the C library's cosf/sinf/tanf
  through ctypes (NumPy's own float32 cos and sin round differently in a few percent of arguments), the vertex
  shader in float32 without FMA, the clip test, 1 / w, the viewport as an exactly rounded float32 fma (Fractions),
  the 1/256 snap and >> 8, rows bottom-up. Slow (a Fraction per coordinate): use few points.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from fractions import Fraction

import numpy as np

f32 = np.float32
DEG = 0.01745329251994329576923690768489  # glm.radians of a Python float, in double
_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _name in ("cosf", "sinf", "tanf"):
    getattr(_libm, _name).restype = ctypes.c_float
    getattr(_libm, _name).argtypes = [ctypes.c_float]


# ------------------------------------------------------------------------------------------- search and instance


def abs_det(m: np.ndarray) -> float:
    """|det| of the 3 x 3 matrix a..i of a map (12,), as numpy 1.22 computes it (LAPACK getrf = OpenBLAS getf2)."""
    rows = [[float(v) for v in m[3 * i:3 * i + 3]] for i in range(3)]
    for j in range(3):
        for i in range(3):  # left-looking: column j minus the dot of L(i, :i or :j) and U(., j), left to right
            dot = 0.0
            for k in range(min(i, j)):
                dot = rows[i][k] * rows[k][j] if k == 0 else dot + rows[i][k] * rows[k][j]
            if min(i, j) > 0:
                rows[i][j] = rows[i][j] - dot
        pivot = max(range(j, 3), key=lambda i: (abs(rows[i][j]), -i))  # the first largest
        if rows[pivot][j] == 0.0:
            return 0.0
        rows[j], rows[pivot] = rows[pivot], rows[j]
        inverse = 1.0 / rows[j][j]
        for i in range(j + 1, 3):
            rows[i][j] = rows[i][j] * inverse
    return math.exp(0.0 + math.log(abs(rows[0][0])) + math.log(abs(rows[1][1])) + math.log(abs(rows[2][2])))


def probabilities(maps: np.ndarray) -> np.ndarray:
    """category_search.py: prob = |det|, sum_proba += prob, then prob /= sum_proba. (N,) float64."""
    probs = [abs_det(m) for m in maps]
    total = 0.0
    for p in probs:
        total += p
    return np.array([p / total for p in probs])


def chaos_game(maps: np.ndarray, probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """ifs_function.set_param + calculate, fed ``uniforms`` (the loop's rand[i]): (3, len(uniforms)) float64."""
    select, acc = [], 0.0
    for p in probs:
        acc += float(p)
        select.append(acc)
    functions = [[float(v) for v in row] for row in maps]
    xs, ys, zs = [], [], []
    prev_x = prev_y = prev_z = 0.0
    next_x = next_y = next_z = 0.0
    for r in uniforms:
        for j in range(len(select)):
            if r <= select[j]:
                a, b, c, d, e, f, g, h, i, jj, k, ll = functions[j]
                next_x = prev_x * a + prev_y * b + prev_z * c + jj
                next_y = prev_x * d + prev_y * e + prev_z * f + k
                next_z = prev_x * g + prev_y * h + prev_z * i + ll
                break
        xs.append(next_x), ys.append(next_y), zs.append(next_z)
        prev_x, prev_y, prev_z = next_x, next_y, next_z
    return np.array((xs, ys, zs), dtype=float)


def normalise(points: np.ndarray, point_num: int) -> np.ndarray:
    """min_max(axis=None) then centoroid, as the released scripts (a left-to-right sum over point_num)."""
    with np.errstate(all="ignore"):
        lo = points.min(axis=None, keepdims=True)
        hi = points.max(axis=None, keepdims=True)
        scaled = ((points - lo) / (hi - lo)) * (1.0 - (-1.0)) - 1.0
    centre = []
    for row in scaled:
        acc = 0
        for v in row:
            acc = acc + v
        centre.append(acc / point_num)
    return np.array([(scaled[r] - centre[r]).tolist() for r in range(3)])


def var_numpy122(row: np.ndarray) -> float:
    """np.var(row) as numpy 1.22 computes it: every sum is 0.0 plus np.add.reduce of each 8,192-element buffer."""
    def total(values):
        acc = 0.0
        for start in range(0, len(values), 8192):
            acc += np.add.reduce(values[start:start + 8192])
        return acc

    mean = total(row) / len(row)
    deviation = row - mean
    return float(total(deviation * deviation) / len(row))


def accepted(points: np.ndarray, threshold: float) -> bool:
    """The released test after centoroid: no NaN in y, then var(x), var(y), var(z) each above the threshold."""
    with np.errstate(all="ignore"):
        return (not np.isnan(points[1]).any()) and all(var_numpy122(points[r]) > threshold for r in range(3))


# ------------------------------------------------------------------------------------------------------ render


def _cosf(a):
    return f32(_libm.cosf(float(f32(a))))


def _sinf(a):
    return f32(_libm.sinf(float(f32(a))))


def rotate_y(m: np.ndarray, angle) -> np.ndarray:
    """glm::rotate(m, angle, (0, 1, 0)) in float32, m[column, row]."""
    c, s = _cosf(angle), _sinf(angle)
    out = m.copy()
    out[0] = m[0] * c + m[2] * (-s)
    out[1] = m[1] * (c + (f32(1) - c))
    out[2] = m[0] * s + m[2] * c
    return out


def _normalize(v):
    return v * (f32(1) / np.sqrt((v[0] * v[0] + v[1] * v[1]) + v[2] * v[2]))


def _cross(a, b):
    return np.array([a[1] * b[2] - b[1] * a[2], a[2] * b[0] - b[2] * a[0], a[0] * b[1] - b[0] * a[1]], f32)


def view_matrix(view: int, views: int, jitter_deg: float) -> np.ndarray:
    """render1view.py's mat_view: rotations by view / views * pi * 2, radians(30), radians(jitter), lookAt."""
    rot = np.eye(4, dtype=f32)
    for angle in (view / views * math.pi * 2.0, 30.0 * DEG, jitter_deg * DEG):
        rot = rotate_y(rot, f32(angle))
    eye = f32(0) - rot[0, :3] * f32(4.0)
    up = rot[1, :3].copy()
    f = _normalize(f32(0) - eye)
    s = _normalize(_cross(f, up))
    u = _cross(s, f)
    m = np.eye(4, dtype=f32)
    m[:3, 0], m[:3, 1], m[:3, 2] = s, u, -f
    m[3, 0] = -((s[0] * eye[0] + s[1] * eye[1]) + s[2] * eye[2])
    m[3, 1] = -((u[0] * eye[0] + u[1] * eye[1]) + u[2] * eye[2])
    m[3, 2] = (f[0] * eye[0] + f[1] * eye[1]) + f[2] * eye[2]
    return m


def perspective() -> np.ndarray:
    """glm.perspective(glm.radians(45.0), 1, 1.0, 100.0) in float32."""
    t = f32(_libm.tanf(float(f32(f32(45.0 * DEG) / f32(2)))))
    near, far = f32(1.0), f32(100.0)
    m = np.zeros((4, 4), f32)
    m[0, 0] = f32(1) / (f32(1) * t)
    m[1, 1] = f32(1) / t
    m[2, 2] = -(far + near) / (far - near)
    m[2, 3] = f32(-1)
    m[3, 2] = -(f32(2) * far * near) / (far - near)
    return m


def round_f32(q: Fraction) -> np.float32:
    """The float32 nearest to q, ties to even (normal range)."""
    if q == 0:
        return f32(0.0)
    sign, q = (-1 if q < 0 else 1), abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    ulp = Fraction(2) ** (e - 23)
    n, rest = divmod(q, ulp)
    if rest > ulp / 2 or (rest == ulp / 2 and n % 2):
        n += 1
    return f32(float(sign * n * ulp))


def fma32(a, b, c) -> np.float32:
    """float32 a * b + c rounded once."""
    return round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def render(points: np.ndarray, view: np.ndarray, proj: np.ndarray, size: int) -> np.ndarray:
    """points (n, 3) float32 -> (size, size) uint8: 255 where a point lands, row 0 the window's bottom row."""
    p = points.astype(f32)
    eye = [((view[0, r] * p[:, 0] + view[1, r] * p[:, 1]) + view[2, r] * p[:, 2]) + view[3, r] * f32(1)
           for r in range(4)]
    cx, cy, cz, cw = (((proj[0, r] * eye[0] + proj[1, r] * eye[1]) + proj[2, r] * eye[2]) + proj[3, r] * eye[3]
                      for r in range(4))
    with np.errstate(invalid="ignore"):
        keep = (cx <= cw) & (cx + cw >= 0) & (cy <= cw) & (cy + cw >= 0) & (cz + cw >= 0) & (cz <= cw)
    cx, cy, cw = cx[keep], cy[keep], cw[keep]
    inverse_w = f32(1) / cw
    half = f32(0.5) * f32(size)
    image = np.zeros((size, size), np.uint8)
    for xn, yn in zip(cx * inverse_w, cy * inverse_w, strict=True):
        xw, yw = fma32(xn, half, half) * f32(256), fma32(yn, half, half) * f32(256)
        col = int(xw + f32(0.5)) if xw >= 0 else int(xw - f32(0.5))  # float32 add, C truncation
        row = int(yw + f32(0.5)) if yw >= 0 else int(yw - f32(0.5))
        col, row = col >> 8, row >> 8
        if 0 <= col < size and 0 <= row < size:
            image[row, col] = 255
    return image
