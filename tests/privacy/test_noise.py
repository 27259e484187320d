"""Statistical tests of the Gaussian noise and of the noise generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcore.privacy import DpSum, secure_rng
from fedcore.update import TensorSpec

COORDINATES = 200_000


def noise_only(
    noise_multiplier: float, clip_norm: float, expected_weight: float
) -> np.ndarray:
    """Finalize an empty round, whose result is the noise divided by the weight."""
    dp_sum = DpSum(
        {"w": TensorSpec((400, 250), "F32"), "b": TensorSpec((100_000,), "F32")},
        clip_norm=clip_norm,
    )
    mean = dp_sum.finalize(
        expected_weight=expected_weight,
        noise_multiplier=noise_multiplier,
        rng=secure_rng(2024),
    )
    return np.concatenate([mean["w"].ravel(), mean["b"].ravel()])


@pytest.mark.parametrize(
    ("noise_multiplier", "clip_norm", "expected_weight"),
    [(1.0, 1.0, 1.0), (0.5, 2.0, 20.0), (2.0, 0.1, 7.5)],
)
def test_noise_stddev_matches(
    noise_multiplier: float, clip_norm: float, expected_weight: float
) -> None:
    samples = noise_only(noise_multiplier, clip_norm, expected_weight)
    assert samples.size == COORDINATES
    sigma = noise_multiplier * clip_norm / expected_weight
    # (n - 1) s^2 / sigma^2 is chi-square with n - 1 degrees of freedom: for large
    # n its standardized value is close to N(0, 1), so |score| < 5 fails by chance
    # with probability below 1e-6.
    n = samples.size
    variance_ratio = float(np.var(samples, ddof=1)) / sigma**2
    score = (variance_ratio - 1.0) / math.sqrt(2.0 / (n - 1))
    assert abs(score) < 5.0


@pytest.mark.parametrize("noise_multiplier", [0.5, 3.0])
def test_noise_mean_near_zero(noise_multiplier: float) -> None:
    samples = noise_only(noise_multiplier, 1.0, 10.0)
    sigma = noise_multiplier / 10.0
    assert abs(float(samples.mean())) < 5.0 * sigma / math.sqrt(samples.size)


def test_noise_coordinates_uncorrelated() -> None:
    samples = noise_only(1.0, 1.0, 1.0)
    lag_one = float(np.corrcoef(samples[:-1], samples[1:])[0, 1])
    assert abs(lag_one) < 5.0 / math.sqrt(samples.size)


def test_noise_zero_multiplier_is_exact() -> None:
    assert not noise_only(0.0, 1.0, 1.0).any()


def test_secure_rng_unseeded_differs() -> None:
    first = secure_rng().normal(size=8)
    second = secure_rng().normal(size=8)
    assert not np.array_equal(first, second)


def test_secure_rng_seeded_repeats() -> None:
    assert np.array_equal(secure_rng(5).normal(size=8), secure_rng(5).normal(size=8))
