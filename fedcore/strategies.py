"""Server aggregation strategies: names, parameters, and the tensors they act on.

A strategy is chosen by name with a map of numeric parameters (from the CDK context
``fl:strategy``, the aggregator's environment, or ``config/round.json``). This module
validates them and fills in defaults. It reads no files and calls no AWS service.

Families:

``mean``: ``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``
    Average the client deltas, optionally after norm clipping, then take a server
    optimizer step (:mod:`fedcore.server_state`). The average streams: one update at a
    time, O(model) memory.
``robust``: ``median``, ``trimmed_mean``, ``krum``, ``multikrum``
    Order statistics or distance-based selection over all updates at once. The
    aggregator reads these in coordinate blocks (:mod:`fedcore.robust`).
``dp``: ``dp_fedavg``
    Central DP-FedAvg (McMahan et al., ICLR 2018): clipped deltas summed with equal
    weights, Gaussian noise added once, divided by the expected number of
    participants, then a server step with learning rate 1 (:mod:`fedcore.dp_fedavg`).

Tensors that are not weights (integer counters, BatchNorm running statistics) follow
one rule in every strategy: see :func:`is_weight`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fedcore.errors import FedCoreError

MEAN = "mean"
ROBUST = "robust"
DP = "dp"

# Suffixes of BatchNorm running statistics in PyTorch and Keras checkpoints.
STATISTIC_SUFFIXES = ("running_mean", "running_var", "moving_mean", "moving_variance")
VARIANCE_SUFFIXES = ("running_var", "moving_variance")

# Norm clipping, a pre-step of every mean-family strategy. ``clip_norm`` 0 turns it
# off. With ``clip_quantile`` > 0 the bound adapts each round towards that quantile
# of the update norms, starting from ``clip_norm`` (Andrew et al., "Differentially
# Private Learning with Adaptive Clipping", NeurIPS 2021, without the noise):
# C <- C * exp(-clip_lr * (fraction of updates with norm <= C - clip_quantile)).
_CLIP = {"clip_norm": 0.0, "clip_quantile": 0.0, "clip_lr": 0.2}
# ``weighted`` 1 weights each client delta by its example count, 0 weights all alike.
_WEIGHTED = {"weighted": 1.0}
# Server optimizers of Reddi et al., "Adaptive Federated Optimization", ICLR 2021
# (arXiv:2003.00295), Algorithm 2. The defaults beta1 0.9, beta2 0.99, tau 1e-3 and
# eta 0.01 are those of Flower's FedYogi, which implements that algorithm. The server
# learning rate eta needs tuning per task.
_ADAPTIVE = {"eta": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
# Nearest-neighbour mixing (Allouah et al., "Fixing by Mixing: A Recipe for Optimal
# Byzantine ML under Heterogeneity", AISTATS 2023), a step before median or trimmed
# mean: each update is replaced by the mean of the n - nnm_f updates nearest to it
# (itself included), so honest updates that differ because their data differ move
# towards each other before the coordinate-wise rule. ``nnm_f`` is the number of
# Byzantine updates assumed; 0 turns the step off.
_MIXING = {"nnm_f": 0.0}

# Parameters of each strategy with their defaults.
PARAMETERS: dict[str, dict[str, float]] = {
    "fedavg": {**_WEIGHTED, **_CLIP},
    # FedProx (Li et al., MLSys 2020) aggregates like FedAvg. ``proximal_mu`` is the
    # weight of the proximal term in the devices' local objective.
    "fedprox": {"proximal_mu": 0.01, **_WEIGHTED, **_CLIP},
    # FedAvgM (Hsu et al., 2019): v <- momentum * v + delta; x <- x + server_lr * v.
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9, **_WEIGHTED, **_CLIP},
    "fedadam": {**_ADAPTIVE, **_WEIGHTED, **_CLIP},
    "fedyogi": {**_ADAPTIVE, **_WEIGHTED, **_CLIP},
    "fedadagrad": {"eta": 0.01, "beta1": 0.9, "tau": 1e-3, **_WEIGHTED, **_CLIP},
    # Coordinate-wise median (Yin et al., ICML 2018), unweighted.
    "median": {**_MIXING},
    # Coordinate-wise trimmed mean (Yin et al., ICML 2018): floor(beta * n) values
    # are dropped from each end of every coordinate, then the rest is averaged.
    "trimmed_mean": {"beta": 0.2, **_MIXING},
    # Krum and Multi-Krum (Blanchard et al., NeurIPS 2017): ``f`` updates are assumed
    # Byzantine; Multi-Krum averages the ``m`` best-scored updates, 0 meaning n - f.
    "krum": {"f": 1.0},
    "multikrum": {"f": 1.0, "m": 0.0, "weighted": 0.0},
    # Central DP-FedAvg. ``clip_norm`` C (the starting bound when ``adaptive`` is
    # 1), ``noise_multiplier`` z of the whole round, ``population`` N of enrolled
    # devices and Poisson ``sampling_rate`` q, which the deployment must provide.
    # ``epsilon_budget`` 0 means no budget. With ``adaptive`` 1 the clip norm
    # follows the ``target_quantile`` of the update norms at rate ``clip_lr``, from
    # a count noised with standard deviation ``count_stddev`` (Andrew et al. 2021).
    "dp_fedavg": {
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
        "population": 0.0,
        "sampling_rate": 0.0,
        "delta": 1e-5,
        "epsilon_budget": 0.0,
        "adaptive": 0.0,
        "target_quantile": 0.5,
        "clip_lr": 0.2,
        "count_stddev": 0.0,
    },
}
FAMILIES = {
    name: ROBUST
    if name in ("median", "trimmed_mean", "krum", "multikrum")
    else DP
    if name == "dp_fedavg"
    else MEAN
    for name in PARAMETERS
}
_INTEGER_PARAMETERS = frozenset(
    {"f", "m", "weighted", "population", "adaptive", "nnm_f"}
)
_UNIT_INTERVAL = frozenset({"beta1", "beta2", "momentum", "clip_quantile"})


class StrategyError(FedCoreError, ValueError):
    """An unknown strategy, an invalid parameter, or too few updates for a rule."""


@dataclass(frozen=True)
class Strategy:
    """A validated strategy: its name and every parameter, defaults filled in."""

    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """``mean`` or ``robust``."""
        return FAMILIES[self.name]

    @property
    def weighted(self) -> bool:
        """Whether client deltas are weighted by their example counts."""
        return bool(self.params.get("weighted", 0.0))

    @property
    def mixing(self) -> int:
        """Byzantine updates assumed by nearest-neighbour mixing, 0 when it is off."""
        return int(self.params.get("nnm_f", 0.0))

    @property
    def clips(self) -> bool:
        """Whether updates are norm-clipped before averaging."""
        return self.params.get("clip_norm", 0.0) > 0

    @property
    def adaptive_clip(self) -> bool:
        """Whether the clip norm adapts to a quantile of the update norms."""
        if not self.clips:
            return False
        if self.family == DP:
            return bool(self.params.get("adaptive", 0.0))
        return self.params.get("clip_quantile", 0.0) > 0

    def parameter(self, name: str) -> float:
        """Return one parameter; raise StrategyError if the strategy has none such."""
        try:
            return self.params[name]
        except KeyError:
            raise StrategyError(
                f"strategy {self.name!r} has no parameter {name!r}"
            ) from None

    def to_document(self) -> dict[str, object]:
        """Return the JSON form recorded in the round state."""
        return {"name": self.name, "params": dict(sorted(self.params.items()))}


def resolve(name: str, params: Mapping[str, object] | None = None) -> Strategy:
    """Validate a strategy name and parameters and fill in the defaults.

    Raises
    ------
    StrategyError
        If the name is unknown, a parameter belongs to another strategy, or a value
        is not a finite number in its range.
    """
    if name not in PARAMETERS:
        raise StrategyError(
            f"strategy is {name!r}, expected one of {sorted(PARAMETERS)}"
        )
    accepted = PARAMETERS[name]
    given = dict(params or {})
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        expected = sorted(accepted) or "no parameters"
        owners = sorted(
            other
            for other, names in PARAMETERS.items()
            if other != name and set(unknown) <= set(names)
        )
        hint = f"; strategies that take them: {owners}" if owners else ""
        raise StrategyError(
            f"{unknown} are not parameters of strategy {name!r}: "
            f"expected {expected}{hint}"
        )
    values = dict(accepted)
    for key, raw in given.items():
        values[key] = _check_value(name, key, raw)
    if values.get("clip_quantile", 0.0) > 0 and values.get("clip_norm", 0.0) <= 0:
        raise StrategyError(
            f"strategy {name!r}: clip_quantile {values['clip_quantile']} needs a "
            "positive clip_norm as the starting bound"
        )
    if FAMILIES[name] == DP:
        _check_dp(name, values)
    return Strategy(name=name, params=values)


def _check_dp(name: str, values: Mapping[str, float]) -> None:
    """Check the settings of ``dp_fedavg`` that depend on each other."""
    where = f"strategy {name!r}"
    for key in ("clip_norm", "noise_multiplier", "population", "sampling_rate"):
        if values[key] <= 0:
            raise StrategyError(
                f"{where} parameter {key} is {values[key]!r}, expected a number > 0"
                + (
                    ": set it to the deployment's value"
                    if key in ("population", "sampling_rate")
                    else ""
                )
            )
    if values["sampling_rate"] > 1:
        raise StrategyError(
            f"{where} parameter sampling_rate is {values['sampling_rate']!r}, "
            "expected a probability in (0, 1]"
        )
    if not 0 < values["delta"] < 1:
        raise StrategyError(
            f"{where} parameter delta is {values['delta']!r}, expected a number in "
            "(0, 1), well below 1 / population"
        )
    if values["adaptive"] not in (0.0, 1.0):
        raise StrategyError(
            f"{where} parameter adaptive is {values['adaptive']!r}, expected 0 or 1"
        )
    if values["target_quantile"] > 1:
        raise StrategyError(
            f"{where} parameter target_quantile is {values['target_quantile']!r}, "
            "expected a fraction in [0, 1]"
        )
    if values["adaptive"] and 2 * values["count_stddev"] <= values["noise_multiplier"]:
        # The count of unclipped updates is a second Gaussian query of the round:
        # with count_stddev <= z / 2 it alone would spend the round's whole budget.
        expected = values["sampling_rate"] * values["population"]
        raise StrategyError(
            f"{where} with adaptive 1 needs count_stddev > noise_multiplier / 2 = "
            f"{values['noise_multiplier'] / 2:g}, got {values['count_stddev']!r}: "
            "Andrew et al. suggest expected participants / 20, here "
            f"{expected / 20:g}, where that is larger"
        )


def _check_value(strategy: str, key: str, raw: object) -> float:
    where = f"strategy {strategy!r} parameter {key}"
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise StrategyError(f"{where} is {raw!r}, expected a number")
    value = float(raw)
    # Messages show whole numbers without ".0", because a command line's -1
    # arrives here as the float -1.0.
    typed = str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(raw)
    if not math.isfinite(value) or value < 0:
        raise StrategyError(f"{where} is {typed}, expected a finite number >= 0")
    if key in _INTEGER_PARAMETERS and value != int(value):
        raise StrategyError(f"{where} is {typed}, expected an integer")
    if key == "weighted" and value not in (0.0, 1.0):
        raise StrategyError(f"{where} is {typed}, expected 0 or 1")
    if key in _UNIT_INTERVAL and value >= 1:
        raise StrategyError(f"{where} is {typed}, expected a number in [0, 1)")
    if key == "beta" and value >= 0.5:
        raise StrategyError(f"{where} is {typed}, expected a fraction in [0, 0.5)")
    if key in ("eta", "tau", "server_lr", "clip_lr") and value == 0:
        raise StrategyError(f"{where} is 0, expected a number > 0")
    return value


def is_weight(name: str, dtype_kind: str) -> bool:
    """Tell whether a tensor is a trainable weight that the strategy acts on.

    Integer and bool tensors (counters such as BatchNorm's ``num_batches_tracked``)
    and BatchNorm running statistics (names ending in ``running_mean``,
    ``running_var``, ``moving_mean`` or ``moving_variance``) are not weights. Every
    strategy gives them the example-weighted mean of the clients' values, rounded
    back to integer dtypes, with variances clipped to >= 0. They never pass through
    norm clipping, a server optimizer or a robust rule, and they do not count in an
    update's norm or in Krum's distances.
    """
    if dtype_kind in "iub":
        return False
    return not name.endswith(STATISTIC_SUFFIXES)


def is_variance(name: str) -> bool:
    """Tell whether a tensor is a running variance, which must stay >= 0."""
    return name.endswith(VARIANCE_SUFFIXES)


def required_updates(strategy: Strategy, count: int) -> None:
    """Check that ``count`` updates are enough for the strategy's rule.

    Raises
    ------
    StrategyError
        Naming the rule, the number of updates and the least it needs.
    """
    if count < 1:
        raise StrategyError(
            f"strategy {strategy.name!r} got no updates, so there is nothing to "
            "aggregate"
        )
    if strategy.name in ("krum", "multikrum"):
        byzantine = int(strategy.parameter("f"))
        if count <= 2 * byzantine + 2:
            raise StrategyError(
                f"{strategy.name} with f={byzantine} needs more than "
                f"2f + 2 = {2 * byzantine + 2} updates, got {count}: lower f or "
                "raise the round's min_updates"
            )
    if strategy.mixing and count <= 2 * strategy.mixing:
        raise StrategyError(
            f"{strategy.name} with nnm_f={strategy.mixing} needs more than "
            f"2 nnm_f = {2 * strategy.mixing} updates, so that honest updates are "
            f"the majority, got {count}: lower nnm_f or raise the round's min_updates"
        )
    if strategy.name == "multikrum":
        selected = selected_count(strategy, count)
        if selected > count:
            raise StrategyError(
                f"multikrum selects m={selected} updates but the round has {count}"
            )


def least_updates(strategy: Strategy) -> int:
    """Return the fewest updates a round can close with under ``strategy``.

    Krum and Multi-Krum need more than 2f + 2 updates, and Multi-Krum at least m.
    Nearest-neighbour mixing needs more than 2 nnm_f. Every other rule needs 1.
    :func:`required_updates` checks a round against the same bounds.
    """
    least = 1
    if strategy.name in ("krum", "multikrum"):
        least = 2 * int(strategy.parameter("f")) + 3
    if strategy.name == "multikrum":
        least = max(least, int(strategy.parameter("m")))
    if strategy.mixing:
        least = max(least, 2 * strategy.mixing + 1)
    return least


def trimmed_count(beta: float, count: int) -> int:
    """Return how many values trimmed_mean drops from each end of ``count``."""
    return math.floor(beta * count)


def selected_count(strategy: Strategy, count: int) -> int:
    """Return how many updates Krum (1) or Multi-Krum (m, or n - f) averages."""
    if strategy.name == "krum":
        return 1
    chosen = int(strategy.parameter("m"))
    return chosen if chosen > 0 else count - int(strategy.parameter("f"))
