"""reseed.reused_generator gives numpy's own SeedSequence + PCG64 stream."""

import numpy as np
import pytest

from fracgen import reseed
from fracgen.seeds import generator

PATHS = [(0, 21, 5, 0), (0, 20, 3), (2**40 + 7, 21, 0, 1), (0,), (123456789, 20, 999), (5, 1, 2, 3, 4, 5, 6),
         (2**64 - 1, 2**32, 0)]


@pytest.mark.parametrize("path", PATHS)
def test_state_and_draws_match_numpy(path):
    state = np.random.PCG64(np.random.SeedSequence(list(path))).state["state"]
    assert reseed.pcg64_state(*path) == (state["state"], state["inc"])
    expected = generator(*path)
    got = reseed.reused_generator(*path)
    assert np.array_equal(got.random(50), expected.random(50))
    assert np.array_equal(got.integers(0, 257, 20), expected.integers(0, 257, 20))
    assert got.exponential(100.0) == expected.exponential(100.0)


def test_reseeding_restarts_the_stream():
    first = reseed.reused_generator(3, 21, 1, 0).random(10)
    reseed.reused_generator(3, 21, 2, 0).random(7)  # another path in between, a half-used uint32 left behind
    reseed.reused_generator(3, 21, 2, 0).integers(0, 2, dtype=np.uint32)
    assert np.array_equal(reseed.reused_generator(3, 21, 1, 0).random(10), first)


def test_negative_entry_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        reseed.pcg64_state(0, -1)
