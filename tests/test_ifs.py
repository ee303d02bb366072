"""IFS maps (fracgen/ifs.py): singular values that meet the sigma-factor target within their bounds, sampled
systems of the drawn sigma-factor, and map probabilities from the determinants."""

import numpy as np
import pytest

from fracgen import ifs


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("frac", [0.05, 0.3, 0.6, 0.95])
def test_singular_values_meet_the_target_and_the_bounds(n, frac):
    rng = np.random.default_rng(n)
    sigma = frac * 3 * n
    for _ in range(50):
        s = ifs.sample_singular_values(n, sigma, rng)
        assert s.shape == (n, 2)
        assert np.all(s >= -1e-12) and np.all(s <= 1 + 1e-12)
        assert np.all(s[:, 0] >= s[:, 1] - 1e-12)
        assert np.sum(s[:, 0] + 2 * s[:, 1]) == pytest.approx(sigma)


@pytest.mark.parametrize("n", [2, 100, 1000])
def test_the_largest_sigma_each_count_of_maps_allows_is_drawn(n):
    """sigma = 3n, the bound --sigma accepts: targets just under it leave each map's range a rounding error wide,
    which may fall either way."""
    for seed in range(20):
        maps, drawn = ifs.sample_system(n, 3.0 * n, np.random.default_rng(seed))
        assert ifs.sigma_factor(maps) == pytest.approx(drawn)


def test_sampled_system_has_the_drawn_sigma_factor():
    rng = np.random.default_rng(0)
    for sigma in (1.0, 3.5, 5.5):
        maps, drawn = ifs.sample_system(2, sigma, rng)
        assert maps.shape == (2, 6)
        assert sigma - 0.1 <= drawn <= sigma + 0.1
        assert ifs.sigma_factor(maps) == pytest.approx(drawn)
        assert np.all(np.abs(maps[:, 4:]) <= 1)


def test_sigma_target_is_clipped_to_what_n_maps_reach():
    maps, drawn = ifs.sample_system(2, 6.0, np.random.default_rng(1))
    assert drawn <= 6.0
    assert ifs.sigma_factor(maps) == pytest.approx(drawn)


def test_probabilities_are_normalised_determinants():
    maps = np.array([[2.0, 0, 0, 1, 0, 0], [1.0, 0, 0, -1, 0, 0]])
    np.testing.assert_allclose(ifs.probabilities(maps), [2 / 3, 1 / 3])
    np.testing.assert_allclose(ifs.probabilities(np.zeros((4, 6))), [0.25] * 4)
