"""Deflate of grey images with many levels (RCDB, VisualAtom): greedy LZ77 over a few fixed distances.

See ``fracgen/encode.py`` for which images take it and the figures; the Huffman helpers are in ``deflate.py``.
"""

from __future__ import annotations

import struct
import sys
import threading
from functools import lru_cache

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from fracgen.kernels.deflate import (
    _CL_ORDER,
    _LEN_EXTRA,
    _LOW7,
    _MAX_BITS,
    LEN_EXTRA,
    LEN_SYMBOL,
    _code_lengths,
    _reversed_codes,
)

# Greedy LZ77 over a few fixed candidate distances: 1 (a run of the byte before) and the row stride and its
# neighbours (the pixels above). Contour images (RCDB, VisualAtom) are mostly runs of the background with
# one-pixel lines of many greys: these distances find the long copies (background, lines repeated from the row
# above) without a hash table, at 1.2-1.5x zlib level 6's bytes in about a tenth of its time; zlib's further
# copies (the same stroke pattern anywhere in the window) are what is given up. Matches are extended 8 bytes at
# a time by unaligned 64-bit loads. One pass writes tokens and counts symbols, a
# second writes one dynamic-Huffman block; Adler-32 is a third, vectorised pass.
# Where an RCDB image's 0.38 ms go (perf, 2-core EPYC VM): the token pass about 60%, the Huffman pass 15-20%,
# Adler-32 5%. Tried on the token pass and slower or no faster, same bytes (A/B in one process, 40 images):
# choosing a copy shorter than 8 (or 16) bytes without a branch per candidate (+3%); 16-byte windows shared by
# the literal run and the copy after it (+4%); counting symbols in a pass of their own (+5%) or in 6
# per-lane histograms (0%). On the Huffman pass: two tokens per 64-bit write (0%). The candidates' branches
# are well predicted here; what counts is instructions per position. Dropping the stride +-1 candidates
# costs 10-22% more bytes (RCDB).

MAX_DISTANCE = 32768  # deflate's window: row strides beyond it only use distance 1
_DIST_BASE = np.array([1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
                       2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577])
_SYMBOL_EXTRA = np.zeros(286, np.int64)  # extra bits of each literal/length symbol
_SYMBOL_EXTRA[257:] = _LEN_EXTRA
_ADLER_BLOCK = 4096  # bytes summed per block: 255 * 4096 * 4097 / 2 < 2 ** 31
# The candidate distances beside 1, as offsets from the row stride (the kernel has 4 slots). Adding -2 and +2
# (6 slots) gave 12% (RCDB) and 4% (VisualAtom) fewer bytes for 6-8% more time.
ABOVE = (-1, 0, 1)
_SIX = np.uint64(0x808080808080)  # bit 7 of bytes 0..5: the positions whose 3 bytes one load covers
_THREE = np.uint64(0xFFFFFF)  # the first 3 bytes of a load: a copy needs at least 3


@intrinsic
def _load64(typingctx, data, index):
    """The 8 bytes of ``data`` from ``index`` as one uint64 (native order), at any alignment."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = builder.bitcast(builder.gep(array.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(pointer, align=1)

    return types.uint64(data, index), codegen


@numba.njit(cache=True, nogil=True)
def _match(data, pos, back, limit):  # pragma: no cover - compiled
    """How many bytes from ``pos`` equal those ``back`` bytes before them, up to ``limit``."""
    n = 8  # the first 8 are known equal
    while n < limit:
        x = _load64(data, pos + n) ^ _load64(data, pos + n - back)
        if x:
            return min(n + (np.int64(trailing_zeros(x)) >> 3), limit)
        n += 8
    return limit


@numba.njit(cache=True, nogil=True)
def _differs(data, p, back):  # pragma: no cover - compiled
    """Zero bytes where the 8 bytes from ``data[p]`` equal those ``back`` before."""
    return _load64(data, p) ^ _load64(data, p - back)


@numba.njit(cache=True, nogil=True)
def _fence(data, front, size, backs):  # pragma: no cover - compiled
    """Fill the bytes before the scanlines so that no candidate matches its first byte where it would reach
    before them: each such byte gets a value (0..4) that differs from the <= 4 scanline bytes it is compared
    with. A copy then never starts there, and the scan needs no mask per load (1-3% faster; a copy that the
    mask hid near the end of the first row may now be found)."""
    for j in range(1, backs.max() + 1):
        v = 0
        clash = True
        while clash:
            clash = False
            for k in range(backs.size):
                q = backs[k] - j
                if 0 <= q < size and data[front + q] == v:
                    clash = True
            v += clash
        data[front - j] = v


@numba.njit(cache=True, nogil=True)
def _busy(x):  # pragma: no cover - compiled
    """Bit 7 of byte j set where any of bytes j, j + 1 and j + 2 of ``x`` is non-zero (exact, no carries between
    bytes; the other bits are anything). A copy of 3 can start where some candidate's ``_busy`` bit is clear:
    ANDing the candidates' and complementing once took fewer instructions than a zero-byte test of each."""
    nonzero = ((x & _LOW7) + _LOW7) | x
    return nonzero | (nonzero >> np.uint64(8)) | (nonzero >> np.uint64(16))


@numba.njit(cache=True, nogil=True)
def _write(out, at, acc, held, value, bits):  # pragma: no cover - compiled
    """Add ``bits`` (<= 32) bits to the accumulator (< 32 held), storing its low 32 bits every time and moving
    on when they are full (no branch: a mispredicted one per token cost more than the rest)."""
    acc |= value << held
    held += bits
    out[np.uint64(at)] = acc & 0xFFFFFFFF
    full = held >> 5
    return at + full, acc >> (full << 5), held - (full << 5)


@numba.njit(cache=True, nogil=True)
def _many_level(data, front, size, backs, len_symbol, len_extra, symbol_extra, cl_order, max_bits, tokens, tables,
                out):  # pragma: no cover - compiled
    """One final dynamic-Huffman deflate block of ``data[:size]`` into ``out`` (uint32, little-endian); returns
    its size in bytes and the Adler-32 of the bytes.

    Args:
        data: uint8: ``front`` bytes (overwritten), the scanlines, then at least 8 bytes of anything (read,
            never matched).
        front: at least the largest distance + 8.
        size: the scanlines' length.
        backs: (4,) int64, the candidate distances (1 first, each <= 32768, repeats allowed); a longer match
            wins, an equal one goes to the earlier distance.
        len_symbol, len_extra, symbol_extra, cl_order, max_bits: the module's tables.
        tokens: int32 scratch, at least ``size`` + 6.
        tables: int64 scratch of zeros, (12, 320).
        out: uint32 scratch, at least ``size`` + 160.
    """
    freq, lengths, codes = tables[0], tables[1], tables[2]
    # Tokens: a literal is its byte; a copy is its length symbol | extra value << 9 | k << 14 with backs[k - 1]
    # its distance. ``data`` starts with ``front`` bytes before the scanlines, so that every candidate can be
    # loaded at every position; ``_fence`` keeps a candidate from matching before the scanlines.
    _fence(data, front, size, backs)
    uses = tables[8]
    count = 0
    pos = 0
    while pos < size:
        p = front + pos
        x0 = _differs(data, p, backs[0])
        x1 = _differs(data, p, backs[1])
        x2 = _differs(data, p, backs[2])
        x3 = _differs(data, p, backs[3])
        if size - pos >= 8:
            # Literals up to the first of the next 6 positions where some candidate copies 3 bytes: one branch
            # per run of up to 6 literals rather than one per byte.
            starts = ~(_busy(x0) & _busy(x1) & _busy(x2) & _busy(x3)) & _SIX
            run = min(np.int64(trailing_zeros(starts)) >> 3, 6)
            for i in range(6):  # all 6 written, only the literals counted: no branch on ``run`` (3%); unsigned
                b = data[np.uint64(p + i)]  # indices here and below: numba skips its negative-index fix-up (6-10%)
                tokens[np.uint64(count + i)] = b
                freq[b] += i < run
            pos += run
            count += run
            if run == 6:
                continue
            p = front + pos
            x0 = _differs(data, p, backs[0])
            x1 = _differs(data, p, backs[1])
            x2 = _differs(data, p, backs[2])
            x3 = _differs(data, p, backs[3])
        elif (x0 & _THREE != 0) & (x1 & _THREE != 0) & (x2 & _THREE != 0) & (x3 & _THREE != 0) | (size - pos < 3):
            b = data[p]
            tokens[count] = b
            freq[b] += 1
            pos += 1
            count += 1
            continue
        limit = min(258, size - pos)
        best = 0
        kind = 0
        for k, x in enumerate((x0, x1, x2, x3)):
            if best == limit:  # nothing can be longer, and a tie goes to the earlier distance (the same bytes)
                break
            if x:
                n = min(np.int64(trailing_zeros(x)) >> 3, limit)
            elif best < 8 or _load64(data, p + best - 7) == _load64(data, p + best - 7 - backs[k]):
                n = _match(data, p, backs[k], limit)
            else:  # it differs within the best copy so far, so it is not longer: no need to extend it
                n = 0
            if n > best:
                best = n
                kind = k + 1
        s = len_symbol[np.uint64(best)]
        tokens[np.uint64(count)] = s | ((len_extra[np.uint64(best)] >> 4) << 9) | (kind << 14)
        freq[s] += 1
        uses[np.uint64(kind)] += 1
        pos += best
        count += 1
    freq[256] += 1

    # Code lengths of at most max_bits: halve the counts until they fit (rarely needed, close to optimal).
    weights = tables[3]
    weights[:] = freq
    while not _code_lengths(weights, tables[4], tables[5], lengths, max_bits):
        for s in range(286):
            weights[s] = (weights[s] + 1) >> 1
    tables[4, :] = 0
    tables[5, :] = 0
    _reversed_codes(lengths[:286], tables[4], tables[5], codes, max_bits)
    # The distance code: each candidate's symbol, with symbols 0 and 1 kept so that at least two are coded.
    d_freq, d_lengths, d_codes = tables[6, :30], tables[7, :30], tables[9, :30]
    d_freq[0] += 1
    d_freq[1] += 1
    last = 1
    for k in range(backs.size):
        symbol = np.searchsorted(_DIST_BASE, backs[k], side="right") - 1
        d_freq[symbol] += uses[k + 1]
        last = max(last, symbol)
    _code_lengths(d_freq, tables[4, :30], tables[5, :30], d_lengths, max_bits)  # <= 6 symbols: <= 5 deep
    tables[4, :] = 0
    tables[5, :] = 0
    _reversed_codes(d_lengths, tables[4], tables[5], d_codes, max_bits)
    unit_value, unit_bits = tables[10], tables[11]  # distance code and extra bits of each kind (0: none)
    for k in range(backs.size):
        symbol = np.searchsorted(_DIST_BASE, backs[k], side="right") - 1
        extra = max(symbol // 2 - 1, 0)
        unit_value[k + 1] = d_codes[symbol] | ((backs[k] - _DIST_BASE[symbol]) << d_lengths[symbol])
        unit_bits[k + 1] = d_lengths[symbol] + extra

    # Header: BFINAL=1, BTYPE=2; HLIT = 286 - 257; HDIST = last - 0; HCLEN = 19 - 4; a code-length code giving
    # lengths 0..15 four bits each (code = the length, reversed) and 16..18 none; then the code lengths.
    at, acc, held = _write(out, 0, 0, 0, 1 | (2 << 1) | (29 << 3) | (last << 8) | (15 << 13), 17)
    for s in cl_order:
        at, acc, held = _write(out, at, acc, held, 0 if s >= 16 else 4, 3)
    for s in range(287 + last):
        c = lengths[s] if s < 286 else d_lengths[s - 286]
        reversed_c = ((c & 1) << 3) | ((c & 2) << 1) | ((c & 4) >> 1) | ((c & 8) >> 3)
        at, acc, held = _write(out, at, acc, held, reversed_c, 4)
    widest = 0
    for s in range(286):
        widest = max(widest, (lengths[s] + symbol_extra[s]) * (lengths[s] > 0))
    if widest + unit_bits[:backs.size + 1].max() <= 32:  # a token as one unit: one dependent chain, not two
        for i in range(count):
            t = np.uint64(tokens[i])
            s = t & np.uint64(511)
            k = t >> np.uint64(14)
            c = lengths[s]
            e = c + symbol_extra[s]
            value = codes[s] | ((np.int64(t >> np.uint64(9)) & 31) << c) | (unit_value[k] << e)
            at, acc, held = _write(out, at, acc, held, value, e + unit_bits[k])
    else:
        for i in range(count):
            t = tokens[i]
            s = t & 511
            k = t >> 14
            c = lengths[s]
            at, acc, held = _write(out, at, acc, held, codes[s] | (((t >> 9) & 31) << c), c + symbol_extra[s])
            at, acc, held = _write(out, at, acc, held, unit_value[k], unit_bits[k])
    at, acc, held = _write(out, at, acc, held, codes[256], lengths[256])
    out[at] = acc

    # Adler-32 (RFC 1950) by blocks: s2 gains n s1 + sum (n - j) b_j, sums a vector unit takes (iterating a
    # slice: indexing by a signed integer kept numba from vectorising, at 8x the time).
    s1 = 1
    s2 = 0
    for start in range(front, front + size, _ADLER_BLOCK):
        n = min(_ADLER_BLOCK, front + size - start)
        plain = 0
        weighted = 0
        w = n
        for b in data[start:start + n]:
            plain += b
            weighted += w * b
            w -= 1
        s2 = (s2 + n * s1 + weighted) % 65521
        s1 = (s1 + plain) % 65521
    return 4 * at + (held + 7) // 8, (s2 << 16) | s1


_SCRATCH = threading.local()
KEEP_BYTES = 1 << 23  # images up to this many scanline bytes reuse their buffers (9 bytes kept per byte)


def _buffers(data_size: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's buffers, kept per thread from one image to the next when small enough: fresh ones cost more
    than the kernel (the system maps and zeroes a fresh page at every first touch)."""
    held = getattr(_SCRATCH, "buffers", None)
    if held is None or held[0].size < data_size or held[1].size < size + 8:
        held = (np.empty(data_size, np.uint8), np.empty(size + 8, np.int32), np.empty(size + 160, np.uint32))
        if size <= KEEP_BYTES:
            _SCRATCH.buffers = held
    data, tokens, out = held
    return data[:data_size], tokens, out


@lru_cache(maxsize=16)
def _candidates(stride: int, above: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """The kernel's 4 distances for a row stride (read-only) and the bytes it needs before the scanlines."""
    if len(above) > 3:
        raise ValueError(f"at most 3 offsets from the row stride, got {above}")
    backs = [1] + [stride + d for d in above if 1 < stride + d <= MAX_DISTANCE]
    backs = np.array((backs + [1] * 4)[:4], np.int64)
    backs.flags.writeable = False
    return backs, int(backs.max()) + 8


def deflate_grey_parts(image: np.ndarray, above: tuple[int, ...] = ABOVE) -> list | None:
    """``deflate_grey``'s stream as pieces to join: the 2-byte header, the deflate data (a view of this thread's
    scratch buffer, valid until the next call on the same thread) and the Adler-32. A PNG writer joins them once
    with its chunk framing instead of copying the stream for each layer (about 10 us a 35 KB image).

    Returns:
        [bytes, memoryview, bytes], or None on a big-endian machine.
    """
    rows = image.reshape(image.shape[0], -1)
    h, stride = rows.shape[0], rows.shape[1] + 1
    backs, front = _candidates(stride, tuple(above))
    if sys.byteorder != "little":  # the kernel reads 8 bytes as one little-endian word
        return None
    size = h * stride
    data, tokens, out = _buffers(front + size + 8, size)
    raw = data[front:front + size].reshape(h, stride)
    raw[:, 0] = 0
    raw[:, 1:] = rows
    nbytes, adler = _many_level(data, front, size, backs, LEN_SYMBOL, LEN_EXTRA, _SYMBOL_EXTRA, _CL_ORDER,
                                _MAX_BITS, tokens, np.zeros((12, 320), np.int64), out)
    return [b"\x78\x01", memoryview(out.view(np.uint8)[:nbytes]), struct.pack(">I", adler)]


def deflate_grey(image: np.ndarray, above: tuple[int, ...] = ABOVE) -> bytes | None:
    """A zlib stream of an image's PNG scanlines (filter 0) by the few-distance LZ77 kernel.

    Args:
        image: (h, w) or (h, w, c) uint8.
        above: the candidate distances beside 1, as offsets from the row stride: at most 3 (the kernel's
            slots; more raise ValueError), those outside 2..32768 dropped.

    Returns:
        The stream, or None on a big-endian machine.
    """
    parts = deflate_grey_parts(image, above)
    return None if parts is None else b"".join(parts)
