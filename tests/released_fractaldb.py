"""The released FractalDB chain, ``__rescale`` and patch drawing restated in plain numpy and Python floats, for the
tests to hold fracgen's FractalDB renders against (the divergent chains above all).

Written from hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch ``fractal_renderer/ifs_function.py``
(``calculate``, ``__rescale``, ``draw_patch``, ``make_patch3_3``). Only the random sources are handed in: the
map-choice uniforms and the patch masks, so both sides can be fed the same draws.
"""

from __future__ import annotations

import numpy as np


def released_chain(maps: np.ndarray, cumprob, rand: np.ndarray, iteration: int):
    """``ifs_function.calculate`` (54-69): Python floats, every point kept, inf and nan included.

    maps: (N, 6) rows (a, b, c, d, e, f) already multiplied by the weight row (``set_param`` 36-47).
    cumprob: the running sums of the probabilities (``set_param`` 51-52), Python floats.
    rand: at least iteration - 1 uniforms; map j is the first with ``rand[i] <= cumprob[j]``. If none is
    (``rand[i]`` above the last running sum), ``next_x, next_y`` keep their previous values: the point repeats
    (at i = 0 the released code would raise NameError).

    Returns:
        xs, ys: float64 arrays of ``iteration`` points, the first (0, 0); ``stale``: how many steps chose no map.
    """
    fs = [tuple(float(v) for v in row) for row in np.asarray(maps)]
    cum = [float(c) for c in cumprob]
    r = np.asarray(rand, dtype=np.float64).tolist()
    xs, ys = [0.0], [0.0]
    prev_x = prev_y = 0.0
    next_x = next_y = None
    stale = 0
    for i in range(iteration - 1):
        chosen = False
        for j in range(len(cum)):
            if r[i] <= cum[j]:
                a, b, c, d, e, f = fs[j]
                next_x = prev_x * a + prev_y * b + e
                next_y = prev_x * c + prev_y * d + f
                chosen = True
                break
        if not chosen:
            stale += 1
            if next_x is None:
                raise NameError("next_x")  # what the released code raises
        xs.append(next_x)
        ys.append(next_y)
        prev_x, prev_y = next_x, next_y
    return np.array(xs), np.array(ys), stale


def released_rescale(xs: np.ndarray, ys: np.ndarray, image_x: int, image_y: int, pad_x: int, pad_y: int):
    """``ifs_function.__rescale`` (72-99), line for line (the prints left out).

    Raises ValueError (numpy's "zero-size array to reduction operation minimum") when the cut leaves no point,
    as the released code does: when the first nan of x (or, x having none, of y) is at index < 101.

    Returns:
        (px, py) uint16 arrays (the released ``self.xs``, ``self.ys``) and the float coordinates before the cast.
    """
    xs = np.array(xs, dtype=np.float64)
    ys = np.array(ys, dtype=np.float64)
    if np.any(np.isnan(xs)):
        nan_index = np.where(np.isnan(xs))
        extend = np.array(range(nan_index[0][0] - 100, nan_index[0][0]))
        delete_row = np.append(extend, nan_index)
        xs = np.delete(xs, delete_row, axis=0)
        ys = np.delete(ys, delete_row, axis=0)
    if np.any(np.isnan(ys)):
        nan_index = np.where(np.isnan(ys))
        extend = np.array(range(nan_index[0][0] - 100, nan_index[0][0]))
        delete_row = np.append(extend, nan_index)
        xs = np.delete(xs, delete_row, axis=0)
        ys = np.delete(ys, delete_row, axis=0)
    with np.errstate(all="ignore"):
        if np.min(xs) < 0.0:
            xs -= np.min(xs)
        if np.min(ys) < 0.0:
            ys -= np.min(ys)
        xmax, xmin, ymax, ymin = np.max(xs), np.min(xs), np.max(ys), np.min(ys)
        fx = xs / (xmax - xmin) * float(image_x - 2 * pad_x) + float(pad_x)
        fy = ys / (ymax - ymin) * float(image_y - 2 * pad_y) + float(pad_y)
        return np.uint16(fx), np.uint16(fy), fx, fy


def paste_patches(px: np.ndarray, py: np.ndarray, masks: np.ndarray, size: int) -> np.ndarray:
    """``draw_patch`` (130-149) for the grey look, in numpy: point i pastes its 3 x 3 patch (``make_patch3_3``:
    cell (r, c) = bit 8 - (3 r + c) of the mask, 127 or 0) at (x + 1, y + 1), later points over earlier ones,
    pixels off the canvas clipped (Pillow's paste); then FLIP_TOP_BOTTOM. Returns (size, size) uint8 (one channel:
    the released RGB has three equal ones)."""
    px = px.astype(np.int64)
    py = py.astype(np.int64)
    t = np.arange(len(px))
    rows, cols, vals, order = [], [], [], []
    for r in range(3):
        for c in range(3):
            rows.append(py + 1 + r)
            cols.append(px + 1 + c)
            vals.append(((masks.astype(np.int64) >> (8 - (3 * r + c))) & 1) * 127)
            order.append(t)
    rows, cols, vals, order = (np.concatenate(a) for a in (rows, cols, vals, order))
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    pix = (rows * size + cols)[ok]
    vals, order = vals[ok], order[ok]
    sel = np.lexsort((order, pix))  # by pixel, then by point: the last of each pixel wins
    pix, vals = pix[sel], vals[sel]
    last = np.r_[pix[1:] != pix[:-1], True]
    image = np.zeros(size * size, np.uint8)
    image[pix[last]] = vals[last]
    return image.reshape(size, size)[::-1].copy()


def released_image(maps, probs, rand, masks, size: int, points: int, pad: int = 6):
    """One released FractalDB render (before the four saved flips), or a reason it has none.

    Returns:
        dict with "kept" (points kept by the cut, or the whole chain), "status":
        "ok" (finite coordinates: a defined image, in "image"), "empty" (the released code raises ValueError),
        "nonfinite" (inf or nan reach the uint16 cast: numpy's cast of them is undefined; "image" holds what this
        machine's cast gives) and "stale" (steps that chose no map).
    """
    xs, ys, stale = released_chain(maps, np.cumsum(probs), rand, points)
    try:
        with np.errstate(all="ignore"):
            ux, uy, fx, fy = released_rescale(xs, ys, size, size, pad, pad)
    except ValueError:
        return {"status": "empty", "kept": 0, "stale": stale, "xs": xs, "ys": ys}
    status = "ok" if np.isfinite(fx).all() and np.isfinite(fy).all() else "nonfinite"
    image = paste_patches(ux, uy, masks[:len(ux)], size)
    return {"status": status, "kept": len(ux), "stale": stale, "image": image, "xs": xs, "ys": ys,
            "fx": fx, "fy": fy}
