"""One round of central DP-FedAvg: settings, budget check, noisy sum and ledger.

The maths lives in :mod:`fedcore.privacy` (clipping, the noisy sum, the adaptive clip
norm) and :mod:`fedcore.accounting` (the RDP accountant and the budget). This module
strings them together for the strategy ``dp_fedavg`` and keeps the accountant in the
:class:`~fedcore.server_state.ServerState`, so the aggregator stores it beside the
model it publishes and a fresh invocation continues from there. It reads no files
and calls no AWS service.

A round goes as follows. :func:`check_budget` runs first and raises
:class:`PrivacyBudgetExhausted` if publishing the round would take epsilon over the
budget, so nothing is aggregated and no noise is drawn. :class:`DpRound` clips each
update's weight tensors to the clip norm ``C`` and sums them with equal weights.
:func:`finish_round` adds Gaussian noise once, divides by the expected number of
participants ``q N``, records the round in the accountant and moves an adaptive clip
norm.

Tensors that are not weights (integer counters, BatchNorm running statistics, see
:func:`fedcore.strategies.is_weight`) follow the rule of every strategy: the
example-weighted mean of the devices' values.

NOTE: those tensors reach the model with no noise, so their values are not covered
by the privacy guarantee. Models with such tensors should freeze them on devices or
leave them out of the update.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedcore.accounting import PrivacyBudget, RdpAccountant, RoundEvent
from fedcore.aggregation import WeightedMean
from fedcore.errors import AggregationError, FedCoreError
from fedcore.privacy import (
    AdaptiveClip,
    ClipResult,
    DpSum,
    sum_noise_multiplier,
)
from fedcore.server_state import ServerState
from fedcore.server_update import split_specs
from fedcore.strategies import DP, Strategy, StrategyError
from fedcore.update import TensorSpec

logger = logging.getLogger(__name__)


class PrivacyBudgetExhausted(FedCoreError):
    """Publishing the round would take epsilon over the budget.

    Attributes
    ----------
    epsilon_spent
        Epsilon of the rounds published so far.
    epsilon_after
        Epsilon after publishing this round too.
    epsilon_budget, delta
        The budget and the delta at which epsilon is computed.
    """

    def __init__(
        self,
        *,
        epsilon_spent: float,
        epsilon_after: float,
        epsilon_budget: float,
        delta: float,
    ) -> None:
        super().__init__(
            f"privacy budget exhausted: epsilon so far {epsilon_spent:.4g} at delta "
            f"{delta:g}, publishing this round would raise it to {epsilon_after:.4g}, "
            f"over the budget of {epsilon_budget:g}; the round is not published and "
            "the previous model stays current: stop the federation, or raise "
            "epsilon_budget only if the privacy policy allows it"
        )
        self.epsilon_spent = epsilon_spent
        self.epsilon_after = epsilon_after
        self.epsilon_budget = epsilon_budget
        self.delta = delta


@dataclass(frozen=True, kw_only=True)
class DpSettings:
    """The parameters of ``dp_fedavg``, typed (see :mod:`fedcore.strategies`).

    Attributes
    ----------
    noise_multiplier
        ``z`` of the whole round. With adaptive clipping the sum and the count of
        unclipped updates together have this multiplier, and the accountant
        records it.
    epsilon_budget
        None when the strategy's ``epsilon_budget`` is 0 (no budget).
    """

    clip_norm: float
    noise_multiplier: float
    population: int
    sampling_rate: float
    delta: float
    epsilon_budget: float | None
    adaptive: bool
    target_quantile: float
    clip_lr: float
    count_stddev: float

    @classmethod
    def from_strategy(cls, strategy: Strategy) -> DpSettings:
        """Read the settings of a resolved ``dp_fedavg`` strategy.

        Raises
        ------
        StrategyError
            If ``strategy`` is not of the DP family.
        """
        if strategy.family != DP:
            raise StrategyError(
                f"strategy {strategy.name!r} is not differentially private"
            )
        params = strategy.params
        budget = params["epsilon_budget"]
        return cls(
            clip_norm=params["clip_norm"],
            noise_multiplier=params["noise_multiplier"],
            population=int(params["population"]),
            sampling_rate=params["sampling_rate"],
            delta=params["delta"],
            epsilon_budget=budget if budget > 0 else None,
            adaptive=bool(params["adaptive"]),
            target_quantile=params["target_quantile"],
            clip_lr=params["clip_lr"],
            count_stddev=params["count_stddev"],
        )

    @property
    def expected_participants(self) -> float:
        """``q * N``, the fixed denominator of the noisy mean."""
        return self.sampling_rate * self.population

    @property
    def event(self) -> RoundEvent:
        """The round as the accountant records it."""
        return RoundEvent(self.sampling_rate, self.noise_multiplier)

    @property
    def sum_multiplier(self) -> float:
        """Noise multiplier of the sum: ``z``, or less with adaptive clipping."""
        if not self.adaptive:
            return self.noise_multiplier
        return sum_noise_multiplier(self.noise_multiplier, self.count_stddev)


@dataclass(frozen=True)
class DpReport:
    """Privacy figures that a published ``dp_fedavg`` round reports."""

    epsilon: float
    delta: float
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    population: int
    rounds: int

    def to_metadata(self) -> dict[str, str]:
        """Return the ``dp_*`` fields of the model metadata, as strings."""
        return {
            "dp_epsilon": repr(self.epsilon),
            "dp_delta": repr(self.delta),
            "dp_noise_multiplier": repr(self.noise_multiplier),
            "dp_clip_norm": repr(self.clip_norm),
            "dp_sampling_rate": repr(self.sampling_rate),
            "dp_population": str(self.population),
            "dp_rounds": str(self.rounds),
        }


def accountant_of(state: ServerState) -> RdpAccountant:
    """Rebuild the accountant stored in a server state; a fresh one if none."""
    if state.privacy is None:
        return RdpAccountant()
    return RdpAccountant.from_dict(state.privacy["accountant"])


def check_budget(settings: DpSettings, state: ServerState) -> None:
    """Raise :class:`PrivacyBudgetExhausted` if the round may not be published.

    The outcome depends only on the stored accountant and the settings, so a closer
    that repeats the close of a round reaches the same decision.
    """
    if settings.epsilon_budget is None:
        return
    budget = PrivacyBudget(
        settings.epsilon_budget, settings.delta, accountant=accountant_of(state)
    )
    if budget.would_exceed(settings.event):
        raise PrivacyBudgetExhausted(
            epsilon_spent=budget.epsilon,
            epsilon_after=budget.accountant.epsilon_after(
                settings.event, settings.delta
            ),
            epsilon_budget=settings.epsilon_budget,
            delta=settings.delta,
        )


class DpRound:
    """Streaming clipped sum of one round's deltas, O(model) memory.

    Parameters
    ----------
    settings
        The round's DP settings.
    specs
        Names, shapes and dtypes of the global model.
    clip_norm
        The clip norm of this round: the fixed one, or the adaptive one carried in
        the server state.
    """

    def __init__(
        self,
        settings: DpSettings,
        specs: Mapping[str, TensorSpec],
        clip_norm: float,
    ) -> None:
        self.settings = settings
        self.weight_specs, self.other_specs = split_specs(specs)
        self.sum = DpSum(self.weight_specs, clip_norm)
        self._others = WeightedMean(self.other_specs)
        if self.other_specs:
            logger.warning(
                "tensors %s are not weights: they are averaged without noise and "
                "are not covered by differential privacy",
                sorted(self.other_specs),
            )

    def add(self, tensors: Mapping[str, np.ndarray], num_examples: int) -> ClipResult:
        """Clip one delta's weights to the clip norm and add them with weight 1.

        Raises
        ------
        AggregationError
            If the update's tensors differ from the model's.
        fedcore.privacy.PrivacyError
            If a weight tensor is not finite.
        """
        expected = set(self.weight_specs) | set(self.other_specs)
        if set(tensors) != expected:
            raise AggregationError(
                f"update tensors {sorted(tensors)} differ from the model's "
                f"{sorted(expected)}"
            )
        result = self.sum.add({name: tensors[name] for name in self.weight_specs})
        self._others.add(
            {name: tensors[name] for name in self.other_specs}, float(num_examples)
        )
        return result

    def others_mean(self) -> dict[str, np.ndarray]:
        """Return the example-weighted mean delta of the tensors that are not weights.

        Returns an empty dict when the model has no such tensors.
        """
        return self._others.result() if self.other_specs else {}


def finish_round(
    settings: DpSettings,
    state: ServerState,
    dp_round: DpRound,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], DpReport]:
    """Noise the sum once, record the round, and return the mean deltas.

    ``state`` is updated in place: its ledger gains this round and an adaptive
    clip norm moves. Noise is drawn from ``rng`` in a fixed order, the sum's
    tensors by sorted name and then the count of unclipped updates, so a test seed
    reproduces it.

    Parameters
    ----------
    rng
        :func:`fedcore.privacy.secure_rng` with no seed in production.

    Returns
    -------
    tuple
        The noisy mean delta of the weights ``(sum + noise) / (q N)``, the
        example-weighted mean delta of the other tensors, and the round's
        :class:`DpReport`.

    Raises
    ------
    fedcore.accounting.BudgetExceededError
        If the round exceeds the budget; :func:`check_budget` is meant to stop it
        before.
    """
    used_clip = dp_round.sum.clip_norm
    weights = dp_round.sum.finalize(
        expected_weight=settings.expected_participants,
        noise_multiplier=settings.sum_multiplier,
        rng=rng,
    )
    others = dp_round.others_mean()
    accountant = accountant_of(state)
    if settings.epsilon_budget is None:
        accountant.compose(settings.event)
    else:
        PrivacyBudget(
            settings.epsilon_budget, settings.delta, accountant=accountant
        ).spend(settings.event)
    state.privacy = {"accountant": accountant.to_dict()}
    if settings.adaptive:
        clip = AdaptiveClip(
            clip_norm=used_clip,
            target_quantile=settings.target_quantile,
            learning_rate=settings.clip_lr,
            count_stddev=settings.count_stddev,
        ).next(
            unclipped_count=dp_round.sum.unclipped_count,
            count=dp_round.sum.count,
            expected_participants=settings.expected_participants,
            rng=rng,
        )
        state.clip_norm = clip.clip_norm
    # RdpAccountant.epsilon returns a numpy float64; repr() needs a plain float.
    epsilon = float(accountant.epsilon(settings.delta))
    if not math.isfinite(epsilon):
        raise StrategyError(f"epsilon after the round is {epsilon!r}: expected finite")
    report = DpReport(
        epsilon=epsilon,
        delta=settings.delta,
        noise_multiplier=settings.noise_multiplier,
        clip_norm=used_clip,
        sampling_rate=settings.sampling_rate,
        population=settings.population,
        rounds=accountant.rounds,
    )
    logger.info(
        "DP round: %d updates (%d unclipped) at clip norm %.4g, epsilon %.4g at "
        "delta %g after %d rounds",
        dp_round.sum.count,
        dp_round.sum.unclipped_count,
        used_clip,
        epsilon,
        settings.delta,
        accountant.rounds,
    )
    return weights, others, report
