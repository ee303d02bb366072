"""fracgen.kernels.masks.draw_masks_fast: numpy's own values and generator state (seeds.draw_masks), whatever
came before."""

import numpy as np
import pytest

from fracgen.kernels.masks import draw_masks_fast
from fracgen.seeds import CLASS, draw_masks, generator

# Draws that leave the generator in the states a mask draw can start from: a 32-bit half kept or not.
BEFORE = {
    "fresh": lambda rng: None,
    "odd uint16 count": lambda rng: rng.integers(0, 7, 3, dtype=np.uint16),  # keeps a high half
    "doubles": lambda rng: rng.random(3),  # 64-bit draws: the kept half, if any, stays
    "one uint32": lambda rng: rng.integers(0, 2**32, 1, dtype=np.uint32),
}


@pytest.mark.parametrize("before", sorted(BEFORE))
@pytest.mark.parametrize("points", [1, 2, 3, 4, 5, 31, 32, 33, 64, 1001, 100_000])
def test_same_values_and_state_as_numpy(before, points):
    for seed in range(6):
        ours, theirs = generator(seed, CLASS, 0, points), generator(seed, CLASS, 0, points)
        BEFORE[before](ours), BEFORE[before](theirs)
        for _ in range(3):  # consecutive calls: each starts where the last left the generator
            expected = draw_masks(theirs, points)
            got = draw_masks_fast(ours, points)
            assert got.dtype == expected.dtype == np.uint16
            np.testing.assert_array_equal(got, expected)
            assert ours.bit_generator.state == theirs.bit_generator.state
        # what a class draws next (a redraw's perturbation) is unchanged
        np.testing.assert_array_equal(ours.uniform(-1, 1, (2, 6)), theirs.uniform(-1, 1, (2, 6)))
        np.testing.assert_array_equal(ours.integers(0, 9, 5, dtype=np.uint16), theirs.integers(0, 9, 5, dtype=np.uint16))


def test_many_seeds_and_sizes_agree():
    rng = np.random.default_rng(1)
    for seed in range(200):
        points = int(rng.integers(1, 3000))
        ours, theirs = generator(seed, CLASS, 1, seed), generator(seed, CLASS, 1, seed)
        np.testing.assert_array_equal(draw_masks_fast(ours, points), draw_masks(theirs, points))
        assert ours.bit_generator.state == theirs.bit_generator.state


def test_other_bit_generators_take_numpys_call():
    ours, theirs = np.random.Generator(np.random.MT19937(3)), np.random.Generator(np.random.MT19937(3))
    np.testing.assert_array_equal(draw_masks_fast(ours, 500), draw_masks(theirs, 500))
    assert draw_masks_fast(np.random.default_rng(0), 0).shape == (0,)
