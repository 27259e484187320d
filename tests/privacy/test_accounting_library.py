"""Comparisons of the accountant with dp-accounting itself, when it is installed.

dp-accounting 0.6.0 pins attrs<24, which conflicts with the CDK's packages, so it
lives in the separate environment of `make privacy`; elsewhere this module is
skipped and test_accounting.py checks values recorded from it.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.local_dp import local_epsilon
from fedcore.accounting import (
    DEFAULT_ORDERS,
    RdpAccountant,
    RoundEvent,
    rdp_poisson_gaussian,
)
from fedcore.privacy import sum_noise_multiplier

dp_accounting = pytest.importorskip("dp_accounting")
reference_rdp = pytest.importorskip("dp_accounting.rdp.rdp_privacy_accountant")

LIVE = [
    (q, z, steps, delta)
    for q in (0.001, 0.05, 0.2, 0.9, 1.0)
    for z in (0.4, 1.0, 3.0, 15.0)
    for steps in (1, 30, 2000)
    for delta in (1e-5, 1e-9)
]


def our_epsilon(q: float, z: float, steps: int, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(RoundEvent(q, z), steps)
    return accountant.epsilon(delta)


def library_epsilon(event: object, steps: int, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("q", "z", "steps", "delta"), LIVE)
def test_epsilon_matches_library(q: float, z: float, steps: int, delta: float) -> None:
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    expected = library_epsilon(event, steps, delta)
    assert our_epsilon(q, z, steps, delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("q", [0.003, 0.2, 0.7])
@pytest.mark.parametrize("z", [0.6, 1.3, 8.0])
def test_rdp_matches_library(q: float, z: float) -> None:
    expected = reference_rdp._compute_rdp_poisson_subsampled_gaussian(
        q, z, DEFAULT_ORDERS
    )
    ours = rdp_poisson_gaussian(q, z)
    finite = np.isfinite(expected)
    assert np.array_equal(finite, np.isfinite(ours))
    np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-9)


@pytest.mark.parametrize("count_stddev", [0.6, 1.0, 5.0])
@pytest.mark.parametrize("z", [0.5, 1.0])
def test_adaptive_multiplier_matches_library(z: float, count_stddev: float) -> None:
    z_sum = sum_noise_multiplier(z, count_stddev)
    # The sum and the +-1/2 count queries released together in one round.
    composed = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.GaussianDpEvent(z_sum),
            dp_accounting.GaussianDpEvent(2 * count_stddev),
        ]
    )
    event = dp_accounting.PoissonSampledDpEvent(0.2, composed)
    expected = library_epsilon(event, 50, 1e-5)
    assert our_epsilon(0.2, z, 50, 1e-5) == pytest.approx(expected, rel=1e-9)


def test_local_epsilon_matches_library() -> None:
    expected = library_epsilon(dp_accounting.GaussianDpEvent(3.0 / 2), 10, 1e-5)
    assert local_epsilon(3.0, 10, 1e-5) == pytest.approx(expected, rel=1e-9)
