"""The released RCDB and VisualAtom drawing restated plainly, for the tests to hold the numba kernels against.

Written from the spec (``make_rcdb.py:84-116``, ``render_VisualAtom.py:85-117``, ``noise/_perlin.c:16-38``): Python
lists and ``math``, a plain-Python float32 ``pnoise1``, and Pillow's own ``ImageDraw.line`` on an RGB canvas, one
call per segment as released. Only the random source differs: the draws are handed in, so the fast path and this
one can be fed the same numbers.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
from PIL import Image, ImageDraw

PERM = [
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
]
_F = struct.Struct("f")


def f32(v: float) -> float:
    """Round to the nearest float32. One rounding of an exact double result equals the float32 operation."""
    return _F.unpack(_F.pack(v))[0]


def _grad1(h: int, t: float) -> float:
    g = -1.0 if h & 8 else float((h & 7) + 1)
    return f32(g * t)


def pnoise1(u: float) -> float:
    """noise 1.2.2 ``pnoise1(u)`` (octaves 1, repeat 1024, base 0): C float in, float32 arithmetic."""
    x = f32(u)
    fl = math.floor(x)
    i = fl % 1024  # C's % differs for negatives, but not modulo 256, which is all the table sees
    ii = (i + 1) % 1024
    t = x - fl  # exact: t keeps x's bits below the integer point
    fx = f32(f32(f32(t * t) * t) * f32(f32(t * f32(f32(t * 6.0) - 15.0)) + 10.0))
    a = _grad1(PERM[i & 255], t)
    b = _grad1(PERM[ii & 255], f32(t - 1.0))
    return f32(f32(a + f32(fx * f32(b - a))) * f32(0.4))


def uniform(r: float, a: float = 0.0, b: float = 10000.0) -> float:
    """CPython's ``random.uniform(a, b)`` for the ``random()`` value r."""
    return a + (b - a) * float(r)


def draw_released(
    kind: str, params: dict, greys, uniforms, size: int = 512, scale=None, perlin=pnoise1
) -> np.ndarray:
    """One image the released way, from handed-in draws.

    Args:
        kind: "rcdb" or "visualatom".
        params: the merged category + instance parameters (``fracgen.contour_params`` keys).
        greys: K ints; uniforms: (K, 2, V) floats in [0, 1), the ``random()`` values behind the released
            ``uniform(0, 10000)`` Perlin arguments (per ring, x then y).
        scale: V radius multipliers (the LPCE classes) or None for the released start polygon.
        perlin: the pnoise1 to use (this module's, or ``noise.pnoise1``).

    Returns:
        (size, size, 3) uint8, the RGB image as Pillow holds it.
    """
    nv, nk = params["vertices"], params["rings"]
    c, lw, rad = params["perlin"], params["line_width"], params["radius"]
    ox, oy = params["oval_x"], params["oval_y"]
    w, h = params["centre_x"], params["centre_y"]
    scale = [1.0] * nv if scale is None else [float(s) for s in scale]
    rcdb = kind == "rcdb"
    im = Image.new("RGB", (size, size), (255, 255, 255) if rcdb else (0, 0, 0))
    draw = ImageDraw.Draw(im)
    angle = (math.pi * 2) / nv
    vertex_x, vertex_y = [], []
    for vertex in range(nv):
        if rcdb:  # make_rcdb.py:88-90
            vertex_x.append(math.cos(angle * vertex) * rad * ox * scale[vertex])
            vertex_y.append(math.sin(angle * vertex) * rad * oy * scale[vertex])
        else:  # render_VisualAtom.py:89-91
            vertex_x.append(math.cos(angle * vertex) * rad * ox * scale[vertex] + w)
            vertex_y.append(math.sin(angle * vertex) * rad * oy * scale[vertex] + h)
    vertex_x.append(vertex_x[0])
    vertex_y.append(vertex_y[0])
    for k in range(nk):
        g = int(greys[k])
        if rcdb:  # make_rcdb.py:100-106
            noise_x = [perlin(uniform(uniforms[k][0][v])) * c * 2 - c for v in range(nv)]
            noise_y = [perlin(uniform(uniforms[k][1][v])) * c * 2 - c for v in range(nv)]
        else:  # render_VisualAtom.py:101-107
            n1, n2 = params["wave1"], params["wave2"]
            noise_x = [perlin(uniform(uniforms[k][0][v])) * c - c - 0.5 * math.sin(angle * v * n1)
                       - 0.5 * math.sin(angle * v * n2) for v in range(nv)]
            noise_y = [perlin(uniform(uniforms[k][1][v])) * c - c - 0.5 * math.sin(angle * v * n1)
                       - 0.5 * math.sin(angle * v * n2) for v in range(nv)]
        for vertex in range(nv):
            vertex_x[vertex] -= math.cos(angle * vertex) * (noise_x[vertex] - lw)
            vertex_y[vertex] -= math.sin(angle * vertex) * (noise_y[vertex] - lw)
        vertex_x[nv] = vertex_x[0]
        vertex_y[nv] = vertex_y[0]
        dx, dy = (w, h) if rcdb else (0, 0)
        for i in range(nv):
            if rcdb:  # make_rcdb.py:116
                xy = (vertex_x[i] + dx, vertex_y[i] + dy, vertex_x[i + 1] + dx, vertex_y[i + 1] + dy)
            else:  # render_VisualAtom.py:117
                xy = (vertex_x[i], vertex_y[i], vertex_x[i + 1], vertex_y[i + 1])
            draw.line(xy, fill=(g, g, g), width=1)
    return np.asarray(im)


def released_stream(kind: str, categories: int, instances: int, seed: int = 1, size: int = 512):
    """The released scripts' own random draws, in their order: ``random.seed(seed)`` (thread_num + 1), then per
    category its parameters and per instance its strokes, re-drawing the per-instance geometry after each one
    (``make_rcdb.py:54-67, 95-106, 126-130``; ``render_VisualAtom.py:61-77, 96-107, 127-128``).

    Yields:
        (category, instance, params, greys, uniforms): fracgen's parameter keys; greys (K,) int; uniforms
        (K, 2, V) float64, the ``random()`` values behind each ``uniform(0, 10000)``. Reseeds the global ``random``.
    """
    rcdb = kind == "rcdb"
    spread = 400 if rcdb else 512
    random.seed(seed)
    for category in range(categories):
        if rcdb:
            while True:
                vertices = int(random.expovariate(1 / 100))
                if 2 < vertices <= 200:
                    break
        else:
            vertices = random.randint(200, 1000)
        params = dict(vertices=vertices, rings=random.randint(1, 200), perlin=random.uniform(0, 4),
                      line_width=random.uniform(0.0, 0.1))
        params["radius"] = random.randint(0, 100) if rcdb else random.randint(10, 60)
        if not rcdb:
            params["wave1"] = random.randint(0, 20)
            while True:
                params["wave2"] = random.randint(0, 20)
                if params["wave2"] != params["wave1"] or params["wave1"] == 0:
                    break
        params["oval_x"], params["oval_y"] = random.uniform(1, 2), random.uniform(1, 2)
        params["centre_y"] = (size + random.randint(-spread, spread)) / 2
        params["centre_x"] = (size + random.randint(-spread, spread)) / 2
        for instance in range(instances):
            greys = np.empty(params["rings"], np.int64)
            uniforms = np.empty((params["rings"], 2, vertices))
            for k in range(params["rings"]):
                greys[k] = random.randint(0, size // 2) if rcdb else random.randint(0, 255)
                for axis in range(2):
                    for v in range(vertices):
                        uniforms[k, axis, v] = random.random()  # uniform(0, 10000) = 0 + 10000 * random()
            yield category, instance, dict(params), greys, uniforms
            if rcdb:
                params["oval_x"], params["oval_y"] = random.uniform(1, 2), random.uniform(1, 2)
                params["radius"] = random.randint(0, 100)
            params["centre_y"] = (size + random.randint(-spread, spread)) / 2
            params["centre_x"] = (size + random.randint(-spread, spread)) / 2
