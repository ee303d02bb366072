"""A reseeded generator: the stream of ``seeds.generator(seed, *path)`` without building a new one.

``np.random.default_rng(np.random.SeedSequence([seed, *path]))`` costs about 12 us (SeedSequence's mixing and
``generate_state`` in Cython, then a new PCG64), as much as drawing an RCDB image's parameters; the contour
presets derive two per image. ``reused_generator`` computes the same PCG64 state (SeedSequence's hash in numba,
PCG64's two seeding steps on Python integers) and sets it on one Generator kept per thread: about 4 us, and the
same numbers (``tests/test_reseed.py`` compares the states and the draws with numpy's own).

The algorithms are numpy's (``numpy/random/bit_generator.pyx``: SeedSequence, pool size 4, no spawn key;
``_pcg64.pyx`` and ``pcg64.h``: ``pcg_setseq_128_srandom_r``), both fixed by NumPy's stream-compatibility policy
for SeedSequence and PCG64.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

_MASK32 = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341
_MASK128 = (1 << 128) - 1
_KEPT = threading.local()


@numba.njit(cache=True, nogil=True, inline="always")
def _hashmix(value, h):  # pragma: no cover - compiled
    m32 = np.uint64(_MASK32)
    value = (value ^ h) & m32
    h = (h * np.uint64(_MULT_A)) & m32
    value = (value * h) & m32
    return value ^ (value >> np.uint64(16)), h


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(x, y):  # pragma: no cover - compiled
    r = (np.uint64(_MIX_L) * x - np.uint64(_MIX_R) * y) & np.uint64(_MASK32)
    return r ^ (r >> np.uint64(16))


@numba.njit(cache=True, nogil=True)
def _state_words(entropy):  # pragma: no cover - compiled
    """``SeedSequence(entropy words).generate_state(8, np.uint32)``: (8,) uint64 holding 32-bit words.

    Args:
        entropy: (n,) uint64, the entropy as SeedSequence's 32-bit words (each < 2 ** 32).
    """
    pool = np.zeros(4, np.uint64)
    h = np.uint64(_INIT_A)
    for i in range(4):
        pool[i], h = _hashmix(entropy[i] if i < entropy.size else np.uint64(0), h)
    for src in range(4):
        for dst in range(4):
            if src != dst:
                mixed, h = _hashmix(pool[src], h)
                pool[dst] = _mix(pool[dst], mixed)
    for src in range(4, entropy.size):
        for dst in range(4):
            mixed, h = _hashmix(entropy[src], h)
            pool[dst] = _mix(pool[dst], mixed)
    out = np.empty(8, np.uint64)
    h = np.uint64(_INIT_B)
    for i in range(8):
        value = (pool[i % 4] ^ h) & np.uint64(_MASK32)
        h = (h * np.uint64(_MULT_B)) & np.uint64(_MASK32)
        value = (value * h) & np.uint64(_MASK32)
        out[i] = value ^ (value >> np.uint64(16))
    return out


def _entropy_words(path: tuple[int, ...]) -> np.ndarray:
    """SeedSequence's reading of a list of non-negative integers: each as its 32-bit words, low first (0 as one)."""
    words = []
    for n in path:
        n = int(n)
        if n < 0:
            raise ValueError(f"seed path entries must be >= 0, got {n}")
        words.append(n & _MASK32)
        n >>= 32
        while n:
            words.append(n & _MASK32)
            n >>= 32
    return np.array(words, np.uint64)


def pcg64_state(seed: int, *path: int) -> tuple[int, int]:
    """PCG64's (state, inc) after ``PCG64(SeedSequence([seed, *path]))``."""
    w = [int(x) for x in _state_words(_entropy_words((seed, *path)))]
    initstate = (w[0] | w[1] << 32) << 64 | (w[2] | w[3] << 32)
    inc = (((w[4] | w[5] << 32) << 64 | (w[6] | w[7] << 32)) << 1 | 1) & _MASK128
    state = (inc + initstate) & _MASK128  # srandom_r: state 0, one step (0 * mult + inc), add, one step
    return (state * _PCG_MULT + inc) & _MASK128, inc


def reused_generator(seed: int, *path: int) -> np.random.Generator:
    """The stream of ``seeds.generator(seed, *path)`` from this thread's one Generator, reseeded.

    Valid until the next call on the same thread: use it at once (draw, then drop it), never keep two.
    """
    held = getattr(_KEPT, "pair", None)
    if held is None:
        bits = np.random.PCG64(0)
        held = _KEPT.pair = (bits, np.random.Generator(bits))
    state, inc = pcg64_state(seed, *path)
    held[0].state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0,
                     "uinteger": 0}
    return held[1]
