"""Patch masks drawn fast: the values and generator state of ``seeds.draw_masks`` in 60% of its time.

``seeds.draw_masks`` is ``rng.integers(1, 512, points, dtype=np.uint16)``: numpy's Lemire method on 16-bit
pieces of the bit generator's 32-bit outputs, a C loop with a call through the bit generator for each 32-bit
output and a branch per value (0.15-0.17 ms for 100,000 values, more than the PNG of an image, and every
redraw pays it). Here the same algorithm runs in a numba loop over the raw 64-bit outputs (``random_raw``,
the cheapest way numpy hands them out): 0.09 ms. The generator is left in the state numpy's call leaves it
in, so every later draw of the class is unchanged. The replay follows numpy's ``random_bounded_uint16_fill``
(numpy/random/src/distributions/distributions.c) and PCG64's ``next_uint32`` (numpy/random/src/pcg64/pcg64.h):

- each 64-bit output gives two 32-bit outputs, low half first; an unused high half is kept in the generator
  (``has_uint32``, ``uinteger``) for its next 32-bit draw, which a later call takes first;
- each 32-bit output gives two 16-bit pieces, low first; the call keeps the unused piece to itself, so a call
  that ends on a low piece discards the high one;
- a piece p is accepted when (p * 511) mod 2**16 >= (2**16 - 511) mod 511 = 128, and gives 1 + (p * 511 >> 16).

On a little-endian machine the raw outputs viewed as uint16 are those pieces in order. Other bit generators
and big-endian machines take numpy's own call. ``tests/test_kernels_masks.py`` checks values and state against
numpy's call over many seeds, sizes and starting states.
"""

from __future__ import annotations

import sys

import numba
import numpy as np

_LOW, _HIGH = 1, 512  # draw_masks' range: 9-bit masks, never empty
_RANGE = _HIGH - 1 - _LOW + 1  # values in the range (numpy's rng_excl)
_THRESHOLD = (0xFFFF - (_RANGE - 1)) % _RANGE  # numpy's rejection threshold for 16-bit Lemire


_BLOCK = 32  # pieces converted at once; 1 block in 16 holds a rejection and is redone one piece at a time


@numba.njit(inline="always")
def _value(piece: int) -> tuple[int, bool]:
    m = np.uint32(piece) * np.uint32(_RANGE)
    return np.uint16(_LOW + (m >> np.uint32(16))), (m & np.uint32(0xFFFF)) >= np.uint32(_THRESHOLD)


@numba.njit(cache=True, nogil=True)
def _lemire16(pieces: np.ndarray, start: int, out: np.ndarray, done: int) -> tuple[int, int]:
    """Fill ``out[done:]`` from the 16-bit ``pieces[start:]`` by numpy's rule (see the module docstring);
    returns (values now in ``out``, pieces used up to). Stops early when the pieces run out.

    A block of pieces is converted as if none were rejected (a vectorised loop) and kept when that holds:
    rejections are 1 in 512, and a loop that skips them one by one ran at numpy's own speed (5x slower)."""
    n = out.shape[0]
    end = pieces.shape[0]
    i = done
    j = start
    while n - i >= _BLOCK and end - j >= _BLOCK:
        src = pieces[j:j + _BLOCK]
        dst = out[i:i + _BLOCK]
        low = np.uint32(0)  # bit 31 set when a piece's low half is under the threshold (unsigned wrap-around)
        for k in range(_BLOCK):
            m = np.uint32(src[k]) * np.uint32(_RANGE)
            dst[k] = np.uint16(_LOW + (m >> np.uint32(16)))
            low |= np.uint32((m & np.uint32(0xFFFF)) - np.uint32(_THRESHOLD))
        if low >> np.uint32(31) == 0:
            i += _BLOCK
            j += _BLOCK
            continue
        for _ in range(_BLOCK):
            value, accepted = _value(pieces[j])
            j += 1
            if accepted:
                out[i] = value
                i += 1
    while i < n and j < end:
        value, accepted = _value(pieces[j])
        j += 1
        if accepted:
            out[i] = value
            i += 1
    return i, j


def draw_masks_fast(rng: np.random.Generator, points: int) -> np.ndarray:
    """``seeds.draw_masks(rng, points)``: the same (points,) uint16 values in [1, 511], and ``rng`` left in the
    same state, so the class's later draws are unchanged."""
    bits = rng.bit_generator
    if type(bits) is not np.random.PCG64 or sys.byteorder != "little" or points <= 0:
        return rng.integers(_LOW, _HIGH, points, dtype=np.uint16)
    out = np.empty(points, np.uint16)
    state = bits.state
    had = state["has_uint32"]
    # the call's 16-bit pieces in order: the kept high half first, if any, then 4 per 64-bit output
    pieces = np.array([state["uinteger"]], np.uint32).view(np.uint16) if had else np.empty(0, np.uint16)
    done = used = 0  # values made; pieces of ``pieces`` used
    consumed = 0  # pieces used before ``pieces`` (dropped when it was refilled)
    drawn = 0  # 64-bit outputs drawn
    while True:
        done, used = _lemire16(pieces, used, out, done)
        if done == points:
            break
        # every value takes at least one piece, so this never draws an output numpy's call would not use
        words = -(-(points - done - (pieces.size - used)) // 4)
        consumed += used
        more = bits.random_raw(words).view(np.uint16)
        pieces, used = (np.concatenate([pieces[used:], more]) if used < pieces.size else more), 0
        drawn += words
    # 32-bit outputs are taken whole (a call ending on a low piece drops the high one): those taken from the
    # drawn 64-bit outputs are all 2 * drawn halves, or all but the last high half, which the generator keeps
    # (numpy's next_uint32 stores every high half it splits off, used or not)
    halves = (consumed + used + 1) // 2 - (1 if had else 0)
    if had or drawn:
        state = bits.state
        state["has_uint32"] = int(drawn > 0 and halves == 2 * drawn - 1)
        if drawn:
            state["uinteger"] = int(pieces[-2:].view(np.uint32)[0])
        bits.state = state
    return out
