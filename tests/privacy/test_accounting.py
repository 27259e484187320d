"""Tests of the RDP accountant against dp-accounting, and of the privacy budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedcore.accounting import (
    AccountingError,
    BudgetExceededError,
    PrivacyBudget,
    RdpAccountant,
    RoundEvent,
    epsilon_from_rdp,
    rdp_poisson_gaussian,
)
from fedcore.privacy import combined_noise_multiplier, sum_noise_multiplier

# epsilon of dp_accounting.rdp.RdpAccountant() (dp-accounting 0.6.0, default orders)
# after composing SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)),
# steps), recorded so the table is checked without the package installed.
RECORDED = [
    (0.2, 0.5, 100, 1e-5, 79.83702160811595),
    (0.2, 1.0, 100, 1e-5, 16.081655440721068),
    (0.2, 2.0, 100, 1e-5, 5.498763681471653),
    (0.01, 1.1, 1000, 1e-5, 1.7117701662429012),
    (0.001, 4.0, 10000, 1e-8, 0.14061921494219),
    (0.5, 0.8, 10, 1e-6, 17.938933857180288),
    (1.0, 3.0, 50, 1e-5, 13.131759087881733),
    (0.05, 20.0, 1, 1e-5, 0.007172056065260346),
    (0.2, 1.0, 1, 1e-5, 2.8309180720864413),
]


def our_epsilon(q: float, z: float, steps: int, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(RoundEvent(q, z), steps)
    return accountant.epsilon(delta)


@pytest.mark.parametrize(("q", "z", "steps", "delta", "expected"), RECORDED)
def test_epsilon_matches_recorded(
    q: float, z: float, steps: int, delta: float, expected: float
) -> None:
    assert our_epsilon(q, z, steps, delta) == pytest.approx(expected, rel=1e-9)


def test_adaptive_multiplier_round_trip() -> None:
    z_sum = sum_noise_multiplier(1.0, 1.0)
    assert z_sum == pytest.approx((1.0 - 0.25) ** -0.5)
    assert combined_noise_multiplier(z_sum, 1.0) == pytest.approx(1.0)


def test_epsilon_grows_with_rounds() -> None:
    epsilons = [our_epsilon(0.2, 1.0, steps, 1e-5) for steps in (1, 10, 100, 1000)]
    assert epsilons == sorted(epsilons)
    assert epsilons[0] < epsilons[-1]


def test_epsilon_without_noise_is_infinite() -> None:
    assert our_epsilon(0.2, 0.0, 1, 1e-5) == math.inf


def test_epsilon_without_sampling_is_zero() -> None:
    assert our_epsilon(0.0, 1.0, 100, 1e-5) == 0.0


def test_epsilon_before_rounds_is_zero() -> None:
    assert RdpAccountant().epsilon(1e-5) == 0.0


def test_gaussian_rdp_closed_form() -> None:
    orders = [2.0, 3.5, 64.0]
    np.testing.assert_allclose(
        rdp_poisson_gaussian(1.0, 2.0, orders), [order / 8.0 for order in orders]
    )


def test_epsilon_from_rdp_classic_bound() -> None:
    # A single order: the improved conversion is the classic rdp - log(delta)/(a-1)
    # plus log1p(-1/a) - log(a)/(a-1), both terms negative.
    epsilon, order = epsilon_from_rdp([10.0], [1.0], 1e-5)
    classic = 1.0 + math.log(1e5) / 9.0
    assert order == 10.0
    assert epsilon == pytest.approx(
        classic + math.log1p(-0.1) - math.log(10.0) / 9.0, rel=1e-12
    )


@pytest.mark.parametrize(
    ("q", "z"), [(-0.1, 1.0), (1.1, 1.0), (0.5, -1.0), (0.5, math.inf), (0.5, math.nan)]
)
def test_event_rejects_bad_values(q: float, z: float) -> None:
    with pytest.raises(AccountingError):
        RoundEvent(q, z)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan])
def test_epsilon_rejects_bad_delta(delta: float) -> None:
    with pytest.raises(AccountingError, match="delta"):
        RdpAccountant().epsilon(delta)


@pytest.mark.parametrize("orders", [[], [1.0], [0.5, 2.0]])
def test_accountant_rejects_bad_orders(orders: list[float]) -> None:
    with pytest.raises(AccountingError, match="order"):
        RdpAccountant(orders)


def test_accountant_round_trip() -> None:
    accountant = RdpAccountant()
    accountant.compose(RoundEvent(0.2, 1.0), 3)
    accountant.compose(RoundEvent(0.2, 1.0))
    accountant.compose(RoundEvent(0.1, 2.0), 2)
    restored = RdpAccountant.from_dict(json.loads(json.dumps(accountant.to_dict())))
    assert restored.rounds == 6
    assert restored.events == [(RoundEvent(0.2, 1.0), 4), (RoundEvent(0.1, 2.0), 2)]
    assert restored.epsilon(1e-5) == accountant.epsilon(1e-5)


@pytest.mark.parametrize(
    "data",
    [{}, {"orders": [2.0]}, {"orders": [2.0], "events": [[0.2, 1.0]]}, {"orders": 3}],
)
def test_accountant_rejects_bad_state(data: dict[str, object]) -> None:
    with pytest.raises(AccountingError):
        RdpAccountant.from_dict(data)


def budget_between(rounds: int, event: RoundEvent, delta: float) -> float:
    """Return a budget that ``rounds`` rounds fit in and ``rounds + 1`` do not."""
    low = our_epsilon(event.sampling_rate, event.noise_multiplier, rounds, delta)
    high = our_epsilon(event.sampling_rate, event.noise_multiplier, rounds + 1, delta)
    return (low + high) / 2


@pytest.mark.parametrize("allowed", [1, 7, 40])
def test_budget_stops_at_round(allowed: int) -> None:
    event = RoundEvent(0.2, 1.0)
    budget = PrivacyBudget(budget_between(allowed, event, 1e-5), 1e-5)
    for round_number in range(1, allowed + 1):
        assert not budget.would_exceed(event), round_number
        budget.spend(event)
    assert budget.would_exceed(event)
    with pytest.raises(BudgetExceededError, match=f"round {allowed + 1}"):
        budget.spend(event)
    assert budget.accountant.rounds == allowed
    assert budget.epsilon <= budget.epsilon_budget


def test_budget_exact_fit_allowed() -> None:
    event = RoundEvent(0.2, 1.0)
    budget = PrivacyBudget(our_epsilon(0.2, 1.0, 3, 1e-5), 1e-5)
    for _ in range(3):
        budget.spend(event)
    assert budget.would_exceed(event)


@pytest.mark.parametrize("allowed", [0, 1, 13, 250])
def test_budget_rounds_left(allowed: int) -> None:
    event = RoundEvent(0.05, 1.5)
    epsilon_budget = budget_between(allowed, event, 1e-6) if allowed else 1e-9
    assert PrivacyBudget(epsilon_budget, 1e-6).rounds_left(event) == allowed


def test_budget_round_trip() -> None:
    budget = PrivacyBudget(8.0, 1e-5)
    budget.spend(RoundEvent(0.2, 1.0))
    restored = PrivacyBudget.from_dict(json.loads(json.dumps(budget.to_dict())))
    assert restored.epsilon == budget.epsilon
    assert restored.epsilon_budget == 8.0
    assert restored.delta == 1e-5


@pytest.mark.parametrize(
    ("epsilon_budget", "delta"),
    [(0.0, 1e-5), (math.inf, 1e-5), (1.0, 0.0), (1.0, 1.0)],
)
def test_budget_rejects_bad_settings(epsilon_budget: float, delta: float) -> None:
    with pytest.raises(AccountingError):
        PrivacyBudget(epsilon_budget, delta)
