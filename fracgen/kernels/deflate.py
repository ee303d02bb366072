"""Deflate streams (RFC 1950/1951) of PNG scanlines, written by numba kernels for the image kinds fracgen stores.

See ``fracgen/encode.py`` for why and for the figures.
"""

from __future__ import annotations

import struct
import sys

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

# Deflate's length symbols (RFC 1951, 3.2.5): for a copy of length 3..258, its symbol, extra bits and value.
_LEN_BASE = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
                      131, 163, 195, 227, 258])
_LEN_EXTRA = np.array([0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [0])
_LENGTHS = np.arange(259)
_LEN_INDEX = np.clip(np.searchsorted(_LEN_BASE, _LENGTHS, side="right") - 1, 0, 28)
LEN_SYMBOL = (257 + _LEN_INDEX).astype(np.uint16)
# extra value << 4 | extra bit count
LEN_EXTRA = (((_LENGTHS - _LEN_BASE[_LEN_INDEX]).clip(0) << 4) | _LEN_EXTRA[_LEN_INDEX]).astype(np.uint16)
_MAX_BITS = 15  # the longest Huffman code deflate allows
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)


# ------------------------------------------------------------------------------- two-level deflate
#
# The scanlines of a two-level image (bytes 0 and v, filter bytes included) are read as 8-byte words. A word
# equal to the one before it extends a copy at distance 8; any other word is 8 literals, written from a table
# of the per-image Huffman codes. Two passes: count the symbols, then write one dynamic block (RFC 1951).

_WORD = 8
_CL_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], np.int64)  # RFC 1951
_POSITIONS = np.array([sum(j for j in range(8) if m >> j & 1) for m in range(256)], np.int64)  # of set bits


@numba.njit(cache=True, nogil=True)
def _code_lengths(freq, order, a, lengths, max_bits):  # pragma: no cover - compiled
    """Huffman code lengths of the used symbols (at least 2) into ``lengths`` (zeros), by Moffat and
    Katajainen's in-place method on the frequencies sorted ascending; False when a code would be longer than
    ``max_bits``. ``order`` and ``a`` are scratch arrays as long as ``freq``."""
    # the used symbols by ascending frequency (an insertion sort: numba compiles np.argsort for seconds)
    n = 0
    for s in range(freq.size):
        if freq[s]:
            j = n
            while j > 0 and freq[order[j - 1]] > freq[s]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = s
            n += 1
    for i in range(n):
        a[i] = freq[order[i]]
    a[0] += a[1]
    root = 0
    leaf = 2
    for nxt in range(1, n - 1):
        if leaf >= n or a[root] < a[leaf]:
            a[nxt] = a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] = a[leaf]
            leaf += 1
        if leaf >= n or (root < nxt and a[root] < a[leaf]):
            a[nxt] += a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] += a[leaf]
            leaf += 1
    a[n - 2] = 0
    for nxt in range(n - 3, -1, -1):
        a[nxt] = a[a[nxt]] + 1
    avail = 1
    depth = 0
    root = n - 2
    nxt = n - 1
    while avail > 0:
        count = 0
        while root >= 0 and a[root] == depth:
            count += 1
            root -= 1
        while avail > count:
            a[nxt] = depth
            nxt -= 1
            avail -= 1
        avail = 2 * count
        depth += 1
    if a[0] > max_bits:
        return False
    for i in range(n):
        lengths[order[i]] = a[i]
    return True


@numba.njit(cache=True, nogil=True)
def _reversed_codes(lengths, count, following, codes, max_bits):  # pragma: no cover - compiled
    """Deflate's canonical codes (RFC 1951, 3.2.2), bit-reversed for LSB-first writing, into ``codes``;
    ``count`` and ``following`` are zeroed scratch arrays of at least ``max_bits`` + 2."""
    for n in lengths:
        count[n] += 1
    count[0] = 0
    code = 0
    for bits in range(1, max_bits + 1):
        code = (code + count[bits - 1]) << 1
        following[bits] = code
    for s in range(lengths.size):
        n = lengths[s]
        if n:
            c = following[n]
            following[n] += 1
            r = 0
            for _ in range(n):
                r = (r << 1) | (c & 1)
                c >>= 1
            codes[s] = r


@numba.njit(cache=True, nogil=True)
def _two_level(words, tail, v, len_symbol, len_extra, positions, cl_order, max_bits, out, bounds,
               masks, tables, units, wide):  # pragma: no cover - compiled
    """One final dynamic-Huffman deflate block of the stream ``words`` then ``tail`` (bytes 0 and ``v`` only)
    into ``out`` (uint32, little-endian); returns its size in bytes (-1 when a code is too long for this
    writer) and the stream's Adler-32. The rest are scratch arrays from the caller (numba spends half a second
    compiling its first np.zeros): ``bounds`` (n + 2), ``masks`` (n), ``tables`` (8, 286) of zeros,
    ``units`` (2, 3 n + 400) for n words.

    One function with one bit-writing loop: numba's compile time (paid by the first build on a machine)
    grows with every helper and every inlined call site."""
    n = words.size
    # Segments alternate: literal words (even segments, the first included), then words equal to the word
    # before them (copies). This pass records them without a branch per word: a mispredicted branch per word
    # cost more than the rest of the encoder. It also sums what Adler-32 needs: with bytes b_j in {0, v},
    # s1 = 1 + sum b_j and s2 = size + sum (size - j) b_j (zlib.adler32 over the bytes cost a third).
    bounds[0] = 0
    segments = 1
    ones = 0
    set_bytes = 0
    weighted = 0
    size = 8 * n + tail.size
    one = np.uint64(0x0101010101010101)
    for k in range(n):  # vectorised: arithmetic only (table lookups here kept it scalar, at twice the time)
        x = words[k]
        t = x | (x >> np.uint64(4))  # byte j not 0 -> bit 0 of byte j
        t |= t >> np.uint64(2)
        t |= t >> np.uint64(1)
        t &= one
        m = np.int64((t * np.uint64(0x0102040810204080)) >> np.uint64(56))  # bit j: byte j is not 0
        count = np.int64((t * one) >> np.uint64(56))  # bytes not 0
        at = np.int64((t * np.uint64(0x0001020304050607)) >> np.uint64(56))  # sum of their positions j
        copy = np.int64(k > 0) & np.int64(x == words[max(k - 1, 0)])
        masks[k] = m | (copy << 8)  # the copy flag for the segment pass below
        ones += count * (1 - copy)
        set_bytes += count
        weighted += count * (size - 8 * k) - at
    previous = False
    for k in range(n):
        copy = masks[k] > 255
        bounds[segments] = k
        segments += copy != previous
        previous = copy
    bounds[segments] = n
    for j in range(tail.size):
        set_bytes += tail[j] != 0
        weighted += (tail[j] != 0) * (tail.size - j)
    adler = (((size + v * weighted) % 65521) << 16) | ((1 + v * set_bytes) % 65521)

    # Symbol counts. A copy of r bytes at distance 8 is cut into pieces of 3..258 bytes.
    freq = tables[0]
    literal_words = 0
    pieces = 0
    for i in range(segments):
        run = 8 * (bounds[i + 1] - bounds[i])
        if i % 2 == 0:
            literal_words += bounds[i + 1] - bounds[i]
            continue
        while run > 0:
            take = run if run <= 258 else (258 if run - 258 >= 3 else run - 3)
            run -= take
            freq[len_symbol[take]] += 1
            pieces += 1
    freq[v] += ones
    freq[0] += 8 * literal_words - ones
    for b in tail:
        freq[b] += 1
    freq[256] += 1

    lengths, codes = tables[1], tables[2]
    # 4 literals must fit in one 28-bit unit
    if not _code_lengths(freq, tables[3], tables[4], lengths, max_bits) or lengths[0] > 7 or lengths[v] > 7:
        return -1, 0
    _reversed_codes(lengths, tables[5], tables[6], codes, max_bits)
    # a literal word as one unit when its 8 literals take at most ``wide`` (3) bits each, so 24 in all (the
    # usual case: 0 and v are the commonest symbols), else as two units of 4; bit j of the index: byte j is v
    group = 8 if lengths[0] <= wide and lengths[v] <= wide else 4
    group_bits, group_len = units[0], units[1]  # the first 256 entries, zeroed by the caller
    for m in range(1 << group):
        for j in range(group):
            b = v if (m >> j) & 1 else 0
            group_bits[m] |= codes[b] << group_len[m]
            group_len[m] += lengths[b]

    # The block as units of at most 28 bits, in order, then packed by one loop.
    value, nbits = units[0, 256:], units[1, 256:]
    # BFINAL=1, BTYPE=2; HLIT = 286 - 257, HDIST = 6 - 1, HCLEN = 19 - 4; the code-length code gives lengths
    # 0..15 four bits each (code = the length, reversed) and 16..18 none; then the 286 literal/length code
    # lengths, and distance codes 0..5 of which only 5 (distances 7-8) is used.
    value[0] = 1 | (2 << 1) | (29 << 3) | (5 << 8) | (15 << 13)
    nbits[0] = 17
    u = 1
    for s in cl_order:
        value[u] = 0 if s >= 16 else 4
        nbits[u] = 3
        u += 1
    for s in range(292):
        c = lengths[s] if s < 286 else (1 if s == 291 else 0)
        value[u] = ((c & 1) << 3) | ((c & 2) << 1) | ((c & 4) >> 1) | ((c & 8) >> 3)
        nbits[u] = 4
        u += 1
    for i in range(segments):
        if i % 2 == 0:
            for k in range(bounds[i], bounds[i + 1]):
                m = masks[k] & 255
                if group == 8:
                    value[u] = group_bits[m]
                    nbits[u] = group_len[m]
                    u += 1
                else:
                    value[u] = group_bits[m & 15]
                    nbits[u] = group_len[m & 15]
                    value[u + 1] = group_bits[m >> 4]
                    nbits[u + 1] = group_len[m >> 4]
                    u += 2
            continue
        run = 8 * (bounds[i + 1] - bounds[i])
        while run > 0:
            take = run if run <= 258 else (258 if run - 258 >= 3 else run - 3)
            run -= take
            s = len_symbol[take]
            e = len_extra[take]
            c = lengths[s]
            extra = e & 15
            # the length code, its extra bits, distance code 5 ("0", 1 bit) and its extra bit (1: distance 8)
            value[u] = codes[s] | ((e >> 4) << c) | (1 << (c + extra + 1))
            nbits[u] = c + extra + 2
            u += 1
    for b in tail:
        value[u] = codes[b]
        nbits[u] = lengths[b]
        u += 1
    value[u] = codes[256]
    nbits[u] = lengths[256]
    u += 1
    # Pack LSB first: the low 32 bits are stored every time and the position moves when they are full (no
    # branch: a mispredicted one per unit cost more than the rest).
    acc = 0
    held = 0
    pos = 0
    for t in range(u):
        acc |= value[t] << held
        held += nbits[t]
        out[pos] = acc & 0xFFFFFFFF
        full = held >> 5
        acc >>= full << 5
        held -= full << 5
        pos += full
    out[pos] = acc
    return 4 * pos + (held + 7) // 8, adler


def deflate_two_level(raw: np.ndarray, v: int, wide: int = 3) -> bytes | None:
    """A zlib stream of scanlines holding only bytes 0 and ``v``; None if the Huffman code is too deep or the
    machine big-endian (the kernel reads bytes as little-endian words).

    ``wide``: literal code lengths up to which a word's 8 literals are written as one unit (tests pass 0 to
    exercise the 4-literal path)."""
    if sys.byteorder != "little":
        return None
    flat = raw.reshape(-1)
    whole = flat.size // _WORD * _WORD
    words = flat[:whole].view(np.uint64)
    out = np.empty(flat.size // 4 + 256, np.uint32)  # a byte costs at most 7 bits as a literal; + the header
    n = words.size
    units = np.empty((2, 3 * n + 1024), np.int64)  # 256 table entries, 312 of header, <= 2 n words + copies
    units[:, :256] = 0
    size, adler = _two_level(words, flat[whole:], v, LEN_SYMBOL, LEN_EXTRA, _POSITIONS, _CL_ORDER,
                             _MAX_BITS, out, np.empty(n + 2, np.int64), np.empty(n, np.int64),
                             np.zeros((8, 286), np.int64), units, wide)
    if size < 0:
        return None
    return b"\x78\x01" + out.view(np.uint8)[:size].tobytes() + struct.pack(">I", adler)


@numba.njit(cache=True, nogil=True)
def _zero_bytes(x):  # pragma: no cover - compiled
    """Bit 7 of each byte of ``x`` that is zero (exact: no carries between bytes)."""
    return ~(((x & _LOW7) + _LOW7) | x | _LOW7)


@numba.njit(cache=True, nogil=True)
def _two_level_value(words, tail):  # pragma: no cover - compiled
    """v when every byte of ``words`` (uint64) then ``tail`` (uint8) is 0 or v (0 when all are 0); else -1.

    Both scans start at the middle word and wrap (the answer does not depend on the order): a drawing's third
    value is usually near the centre, not in the blank rows at the top (5.5 to 4 us an RCDB image)."""
    mid = words.size // 2
    v = np.uint64(0)
    for half in (words[mid:], words[:mid]):
        for x in half:  # a byte that is not 0
            if x:
                v = (x >> np.uint64(trailing_zeros(x) & 56)) & np.uint64(255)
                break
        if v:
            break
    for b in tail:
        if v == 0 and b != 0:
            v = np.uint64(b)
    high = np.uint64(0x8080808080808080)
    every = v * np.uint64(0x0101010101010101)
    for half in (words[mid:], words[:mid]):
        for x in half:  # a word passes when each byte is 0 or v (one predictable branch per word)
            if _zero_bytes(x) | _zero_bytes(x ^ every) != high:
                return -1
    for b in tail:
        if b != 0 and b != v:
            return -1
    return np.int64(v)


def two_level_value(image: np.ndarray) -> int | None:
    """v when the image holds only 0 and v (0: all zero), else None: the PNG's filter bytes (0) and the image
    have at most two values. A numba scan that stops at the third value (np.bincount took as long as the
    many-level deflate)."""
    flat = np.ascontiguousarray(image).reshape(-1)
    whole = flat.size // _WORD * _WORD
    v = _two_level_value(flat[:whole].view(np.uint64), flat[whole:])
    return None if v < 0 else int(v)
