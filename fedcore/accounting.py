"""Privacy accounting for DP-FedAvg: Renyi DP of the Poisson subsampled Gaussian.

Each round of DP-FedAvg is one run of the sampled Gaussian mechanism. Every device of
a population of ``N`` takes part independently with probability ``q`` (Poisson
sampling). The sum of the participants' clipped updates gets Gaussian noise of
standard deviation ``z * C``, for clip norm ``C`` and noise multiplier ``z``. Under the
add-or-remove-one-device relation, its Renyi DP (RDP) at order ``alpha`` is
``log(A_alpha) / (alpha - 1)`` (Mironov, Talwar and Zhang, "Renyi Differential
Privacy of the Sampled Gaussian Mechanism", 2019). For an integer ``alpha``,

``A_alpha = sum_{i=0..alpha} binom(alpha, i) (1 - q)^(alpha - i) q^i
exp((i^2 - i) / (2 z^2))``,

and for a fractional ``alpha`` the series of their section 3.3, which needs
``log(erfc)``. RDP adds up over rounds, and the total converts to ``(epsilon,
delta)`` with the bound of Canonne, Kamath and Steinke (2020, Proposition 12):
``epsilon = min over alpha of rdp + log1p(-1 / alpha) - log(delta * alpha) /
(alpha - 1)``.

The code is numpy- and stdlib-only, so the aggregator Lambda can run it without
scipy. It follows ``dp_accounting.rdp.RdpAccountant`` of the ``dp-accounting``
package (version 0.6.0): the same default orders, the same series, the same stopping
rule for fractional orders and the same conversion, and the tests compare both.

The guarantee holds only if the deployment really samples as assumed: every round,
each device is selected independently with probability ``q`` by a coin nobody can
bias (devices do not choose to take part), updates from devices not selected are
rejected, the round does not close early on a fixed count of updates, and each
person is one device of the population of ``N``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcore.errors import FedCoreError

logger = logging.getLogger(__name__)

# The default orders of dp_accounting.rdp.RdpAccountant (dp-accounting 0.6.0).
DEFAULT_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(order) for order in range(11, 64)),
    128.0,
    256.0,
    512.0,
    1024.0,
)
# A fractional order whose series has not converged after this many terms is left
# out (its RDP is infinite), as in dp-accounting.
MAX_SERIES_TERMS = 1000
# math.erfc keeps full relative precision until its result turns subnormal near
# x = 26.5. From x = 26 on, log(erfc(x)) uses its asymptotic series instead, whose
# first omitted term (order x^-10) is about 1e-13 there, an estimate.
_ERFC_SERIES_FROM = 26.0

Float64Array = npt.NDArray[np.float64]


class AccountingError(FedCoreError, ValueError):
    """Invalid accounting settings or a persisted accountant that cannot be read."""


class BudgetExceededError(FedCoreError):
    """Publishing the next round would spend more epsilon than the budget allows."""


@dataclass(frozen=True)
class RoundEvent:
    """Privacy parameters of one round of DP-FedAvg.

    Parameters
    ----------
    sampling_rate
        Probability ``q`` that a device takes part, ``expected participants /
        population``, in ``[0, 1]``.
    noise_multiplier
        Ratio ``z`` of the noise standard deviation to the clip norm, ``>= 0``. With
        adaptive clipping this is the combined value of
        :func:`fedcore.privacy.combined_noise_multiplier`.
    """

    sampling_rate: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling_rate <= 1.0:
            raise AccountingError(
                f"sampling_rate is {self.sampling_rate!r}: expected a number in [0, 1]"
            )
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0:
            raise AccountingError(
                f"noise_multiplier is {self.noise_multiplier!r}: "
                "expected a finite number >= 0"
            )


def _log_add(log_x: float, log_y: float) -> float:
    low, high = min(log_x, log_y), max(log_x, log_y)
    if low == -math.inf:
        return high
    return math.log1p(math.exp(low - high)) + high


def _log_comb(n: float, k: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_erfc(x: float) -> float:
    """Return ``log(erfc(x))``, accurate in the far tail where erfc underflows."""
    if x < _ERFC_SERIES_FROM:
        return math.log(math.erfc(x))
    # Asymptotic series of log(erfc(x)) + log(x) + log(pi) / 2 + x^2 at infinity.
    return (
        -math.log(math.pi) / 2
        - math.log(x)
        - x**2
        - 0.5 * x**-2
        + 0.625 * x**-4
        - 37.0 / 24.0 * x**-6
        + 353.0 / 64.0 * x**-8
    )


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    log_1mq = math.log1p(-q)
    for i in range(alpha + 1):
        log_coef = _log_comb(alpha, i) + i * math.log(q) + (alpha - i) * log_1mq
        log_a = _log_add(log_a, log_coef + (i * i - i) / (2 * sigma**2))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    # The integral defining A_alpha split at z0 into two series (Mironov, Talwar
    # and Zhang 2019, section 3.3), each summed until its terms decrease and fall
    # below exp(-30) of the total.
    log_a0 = log_a1 = -math.inf
    last_s0 = last_s1 = -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_1mq = math.log1p(-q)
    for i in range(MAX_SERIES_TERMS):
        log_coef = _log_comb(alpha, i)
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * log_1mq
        log_t1 = log_coef + j * math.log(q) + i * log_1mq
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        log_a0 = _log_add(log_a0, log_s0)
        log_a1 = _log_add(log_a1, log_s1)
        total = _log_add(log_a0, log_a1)
        if log_s0 < last_s0 and log_s1 < last_s1 and max(log_s0, log_s1) < total - 30:
            return total
        last_s0, last_s1 = log_s0, log_s1
    return math.inf


def rdp_poisson_gaussian(
    sampling_rate: float,
    noise_multiplier: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> Float64Array:
    """Compute the RDP of one run of the Poisson subsampled Gaussian mechanism.

    Parameters
    ----------
    sampling_rate
        Poisson sampling probability ``q`` in ``[0, 1]``.
    noise_multiplier
        Noise standard deviation divided by the L2 sensitivity, ``>= 0``.
    orders
        Renyi orders, each ``> 1``.

    Returns
    -------
    numpy.ndarray
        RDP at every order: 0 when ``q == 0`` and infinite when the noise
        multiplier is 0 (no privacy).

    Raises
    ------
    AccountingError
        If a parameter is outside its range.
    """
    event = RoundEvent(sampling_rate, noise_multiplier)
    q, sigma = event.sampling_rate, event.noise_multiplier
    checked = _check_orders(orders)
    values = []
    for order in checked:
        if q == 0:
            values.append(0.0)
        elif sigma == 0 or math.isinf(order):
            values.append(math.inf)
        elif q == 1:
            values.append(order / (2 * sigma**2))
        elif float(order).is_integer():
            values.append(_log_a_int(q, sigma, int(order)) / (order - 1))
        else:
            values.append(_log_a_frac(q, sigma, order) / (order - 1))
    skipped = [
        order
        for order, value in zip(checked, values, strict=True)
        if math.isinf(value) and sigma > 0 and q > 0
    ]
    if skipped:
        # Routine for low fractional orders when q is large, and dp-accounting
        # drops the same orders. Leaving orders out can only raise epsilon, so the
        # result stays a valid bound.
        logger.debug(
            "RDP series did not converge in %d terms for sampling rate %s and noise "
            "multiplier %s at orders %s; leaving those orders out",
            MAX_SERIES_TERMS,
            q,
            sigma,
            skipped,
        )
    return np.asarray(values, dtype=np.float64)


def epsilon_from_rdp(
    orders: Sequence[float], rdp: Sequence[float], delta: float
) -> tuple[float, float]:
    """Convert RDP at several orders into the smallest ``epsilon`` at ``delta``.

    Uses ``epsilon = rdp + log1p(-1 / alpha) - log(delta * alpha) / (alpha - 1)``
    (Canonne, Kamath and Steinke 2020, Proposition 12), as dp-accounting 0.6.0
    does, including its special cases: an order with ``delta^2 + expm1(-rdp) > 0``
    gives 0, and orders up to 1.01 are numerically unstable and give infinity.

    Returns
    -------
    tuple of float
        ``epsilon`` (at least 0, infinite without noise) and the order reaching it.

    Raises
    ------
    AccountingError
        If ``delta`` is not in ``(0, 1)`` or the sequences differ in length.
    """
    if not 0.0 < delta < 1.0:
        raise AccountingError(f"delta is {delta!r}: expected a number in (0, 1)")
    if len(orders) != len(rdp):
        raise AccountingError(
            f"{len(orders)} orders but {len(rdp)} RDP values: expected one per order"
        )
    best_epsilon, best_order = math.inf, float(orders[0])
    for order, value in zip(_check_orders(orders), rdp, strict=True):
        if value < 0 or delta**2 + math.expm1(-value) > 0:
            # A negative RDP is numerical error; a tiny one meets delta through the
            # KL bound delta <= sqrt(1 - exp(-rdp)).
            epsilon = 0.0
        elif order > 1.01:
            epsilon = (
                value + math.log1p(-1 / order) - math.log(delta * order) / (order - 1)
            )
        else:
            epsilon = math.inf
        if epsilon < best_epsilon:
            best_epsilon, best_order = epsilon, float(order)
    return max(0.0, best_epsilon), best_order


def _check_orders(orders: Sequence[float]) -> list[float]:
    checked = [float(order) for order in orders]
    if not checked:
        raise AccountingError("orders is empty: expected at least one Renyi order")
    bad = [order for order in checked if not order > 1]
    if bad:
        raise AccountingError(f"orders {bad[:5]} are not > 1: Renyi orders must be")
    return checked


class RdpAccountant:
    """Running RDP total of the rounds published so far.

    The state is the list of ``(sampling_rate, noise_multiplier, count)`` events,
    which :meth:`to_dict` turns into a small JSON-ready dict, so the aggregator can
    store it beside the model and rebuild the accountant in a later invocation.

    Parameters
    ----------
    orders
        Renyi orders to track; the default matches dp-accounting's RdpAccountant.
    """

    def __init__(self, orders: Sequence[float] = DEFAULT_ORDERS) -> None:
        self.orders = tuple(_check_orders(orders))
        self._rdp = np.zeros(len(self.orders), dtype=np.float64)
        self._events: list[tuple[RoundEvent, int]] = []
        self._cache: dict[RoundEvent, Float64Array] = {}

    @property
    def rounds(self) -> int:
        """Number of rounds composed so far."""
        return sum(count for _, count in self._events)

    @property
    def events(self) -> list[tuple[RoundEvent, int]]:
        """Composed events with their repeat counts, in order."""
        return list(self._events)

    def _rdp_of(self, event: RoundEvent) -> Float64Array:
        if event not in self._cache:
            self._cache[event] = rdp_poisson_gaussian(
                event.sampling_rate, event.noise_multiplier, self.orders
            )
        return self._cache[event]

    def rdp_after(self, event: RoundEvent, count: int = 1) -> Float64Array:
        """Return the RDP total that composing ``count`` more ``event`` would give."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise AccountingError(f"count is {count!r}: expected an integer >= 0")
        if count == 0:
            return self._rdp.copy()
        return self._rdp + count * self._rdp_of(event)

    def compose(self, event: RoundEvent, count: int = 1) -> None:
        """Add ``count`` rounds of ``event`` to the total."""
        self._rdp = self.rdp_after(event, count)
        if count == 0:
            return
        if self._events and self._events[-1][0] == event:
            self._events[-1] = (event, self._events[-1][1] + count)
        else:
            self._events.append((event, count))

    def epsilon(self, delta: float) -> float:
        """Return the ``epsilon`` spent so far at ``delta``; 0 before any round."""
        return epsilon_from_rdp(self.orders, list(self._rdp), delta)[0]

    def epsilon_after(self, event: RoundEvent, delta: float, count: int = 1) -> float:
        """Return the ``epsilon`` at ``delta`` after ``count`` more ``event``."""
        return epsilon_from_rdp(self.orders, list(self.rdp_after(event, count)), delta)[
            0
        ]

    def to_dict(self) -> dict[str, Any]:
        """Serialize as a JSON-ready dict of the orders and the composed events."""
        return {
            "orders": list(self.orders),
            "events": [
                [event.sampling_rate, event.noise_multiplier, count]
                for event, count in self._events
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RdpAccountant:
        """Rebuild an accountant from :meth:`to_dict` output.

        Raises
        ------
        AccountingError
            If ``data`` is not in the format of :meth:`to_dict`.
        """
        try:
            accountant = cls(tuple(float(order) for order in data["orders"]))
            for sampling_rate, noise_multiplier, count in data["events"]:
                accountant.compose(
                    RoundEvent(float(sampling_rate), float(noise_multiplier)),
                    count,
                )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AccountingError):
                raise
            raise AccountingError(
                f"accountant state is not in the format of to_dict "
                f"(orders, events of [q, z, count]): {exc!r}"
            ) from exc
        return accountant


class PrivacyBudget:
    """An ``(epsilon, delta)`` budget that stops publication before it is exceeded.

    The aggregator asks :meth:`would_exceed` before it publishes a round, and
    calls :meth:`spend` once the round is published.

    Parameters
    ----------
    epsilon_budget
        Largest total ``epsilon`` allowed, a finite number > 0.
    delta
        The ``delta`` at which ``epsilon`` is computed, in ``(0, 1)``; it should be
        well below ``1 / population``.
    accountant
        Accountant of the rounds already published; a fresh one by default.
    """

    def __init__(
        self,
        epsilon_budget: float,
        delta: float,
        *,
        accountant: RdpAccountant | None = None,
    ) -> None:
        if not math.isfinite(epsilon_budget) or epsilon_budget <= 0:
            raise AccountingError(
                f"epsilon_budget is {epsilon_budget!r}: expected a finite number > 0"
            )
        if not 0.0 < delta < 1.0:
            raise AccountingError(f"delta is {delta!r}: expected a number in (0, 1)")
        self.epsilon_budget = float(epsilon_budget)
        self.delta = float(delta)
        self.accountant = accountant if accountant is not None else RdpAccountant()

    @property
    def epsilon(self) -> float:
        """The ``epsilon`` spent by the rounds published so far."""
        return self.accountant.epsilon(self.delta)

    def would_exceed(self, next_round: RoundEvent) -> bool:
        """Tell whether publishing ``next_round`` would take epsilon over budget."""
        return (
            self.accountant.epsilon_after(next_round, self.delta) > self.epsilon_budget
        )

    def spend(self, next_round: RoundEvent) -> float:
        """Record a published round and return the new total ``epsilon``.

        Raises
        ------
        BudgetExceededError
            If the round would take epsilon over budget; nothing is recorded.
        """
        after = self.accountant.epsilon_after(next_round, self.delta)
        if after > self.epsilon_budget:
            raise BudgetExceededError(
                f"publishing round {self.accountant.rounds + 1} with sampling rate "
                f"{next_round.sampling_rate} and noise multiplier "
                f"{next_round.noise_multiplier} would raise epsilon to {after:.4g} "
                f"at delta {self.delta:g}, over the budget of "
                f"{self.epsilon_budget:g}: stop training or raise the budget"
            )
        self.accountant.compose(next_round)
        return after

    def rounds_left(self, next_round: RoundEvent, limit: int = 100_000) -> int:
        """Count how many more rounds like ``next_round`` fit in the budget.

        Searches up to ``limit`` rounds, which is returned when all of them fit.
        """
        if not self.would_exceed_after(next_round, 1):
            low, high = 1, limit
            if not self.would_exceed_after(next_round, high):
                return high
            # Epsilon grows with the number of rounds: binary search for the last
            # count that fits.
            while high - low > 1:
                middle = (low + high) // 2
                if self.would_exceed_after(next_round, middle):
                    high = middle
                else:
                    low = middle
            return low
        return 0

    def would_exceed_after(self, next_round: RoundEvent, count: int) -> bool:
        """Tell whether ``count`` more rounds like ``next_round`` exceed the budget."""
        epsilon = self.accountant.epsilon_after(next_round, self.delta, count)
        return epsilon > self.epsilon_budget

    def to_dict(self) -> dict[str, Any]:
        """Serialize the budget and its accountant as a JSON-ready dict."""
        return {
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "accountant": self.accountant.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyBudget:
        """Rebuild a budget from :meth:`to_dict` output.

        Raises
        ------
        AccountingError
            If ``data`` is not in the format of :meth:`to_dict`.
        """
        try:
            epsilon_budget = float(data["epsilon_budget"])
            delta = float(data["delta"])
            accountant_data = data["accountant"]
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountingError(
                "budget state is not in the format of to_dict "
                f"(epsilon_budget, delta, accountant): {exc!r}"
            ) from exc
        return cls(
            epsilon_budget,
            delta,
            accountant=RdpAccountant.from_dict(accountant_data),
        )
