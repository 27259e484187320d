"""Round settings an operator may change while a federation runs.

The document lives at ``config/round.json`` in the models bucket. The aggregator reads
it when it opens a round, so a change applies from the next round on. The round that
is open keeps the settings it was opened with. Parsing is pure: this module reads no
files and calls no AWS service.

Fields of the document:

``target_updates``
    Accepted updates that close a round at once, an integer from ``min_updates``
    to :data:`MAX_TARGET_UPDATES`.
``min_updates``
    The least a round may close with at its deadline, an integer >= 1.
``deadline_seconds``
    Seconds from the opening of a round to its deadline, an integer from 1 to
    :data:`MAX_DEADLINE_SECONDS`.
``on_deadline``
    ``abandon`` or ``extend``: what happens at the deadline below the minimum.
``strategy``
    The server aggregation strategy, one of :data:`fedcore.strategies.PARAMETERS`:
    ``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``,
    ``median``, ``trimmed_mean``, ``krum``, ``multikrum`` or ``dp_fedavg``.
``strategy_params``
    An object of numeric parameters of the strategy; omitted ones take the defaults
    listed in :mod:`fedcore.strategies`. ``fedprox``'s ``proximal_mu`` is a device
    setting: the aggregator records it in the metadata of every model it publishes.
    ``dp_fedavg`` needs ``population`` and ``sampling_rate``. Its epsilon holds only
    if ``target_updates`` and ``min_updates`` both equal the number of devices drawn
    for the round, so that the round never closes early on a fixed count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcore.errors import FedCoreError
from fedcore.strategies import PARAMETERS, StrategyError, least_updates, resolve

FORMAT_VERSION = "1"
ON_DEADLINE_ACTIONS = ("abandon", "extend")
# The round state keeps one entry of about 400 bytes per accepted update and every
# admission rewrites it whole, so 10,000 members make a 4 MB document (an estimate).
MAX_TARGET_UPDATES = 10_000
# 366 days: longer than any round needs, and far below the deadlines that overflow
# date formatting (1e20 s did).
MAX_DEADLINE_SECONDS = 366 * 24 * 3600

# Names of the numeric parameters each implemented strategy accepts.
IMPLEMENTED_STRATEGIES: dict[str, tuple[str, ...]] = {
    name: tuple(sorted(params)) for name, params in PARAMETERS.items()
}
# Strategies of the literature that the aggregator does not implement yet. Naming
# them makes the error read "not implemented" instead of "unknown".
PLANNED_STRATEGIES = ("bulyan", "fednova", "scaffold")

_FIELDS = (
    "format_version",
    "target_updates",
    "min_updates",
    "deadline_seconds",
    "on_deadline",
    "strategy",
    "strategy_params",
)


class RoundConfigError(FedCoreError, ValueError):
    """A round configuration field with a missing, mistyped or out-of-range value.

    Parameters
    ----------
    field_name
        The offending field, for example ``min_updates``.
    message
        A sentence naming the value and the expected range.
    """

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Validated round settings; build one with :func:`parse_round_config`."""

    target_updates: int
    min_updates: int
    deadline_seconds: int
    on_deadline: str = "abandon"
    strategy: str = "fedavg"
    strategy_params: Mapping[str, float] = field(default_factory=dict)

    def to_document(self) -> dict[str, Any]:
        """Return the JSON document stored at ``config/round.json``."""
        return {
            "format_version": FORMAT_VERSION,
            "target_updates": self.target_updates,
            "min_updates": self.min_updates,
            "deadline_seconds": self.deadline_seconds,
            "on_deadline": self.on_deadline,
            "strategy": self.strategy,
            "strategy_params": dict(sorted(self.strategy_params.items())),
        }


def parse_round_config(document: Mapping[str, Any]) -> RoundConfig:
    """Check a round configuration document and build a :class:`RoundConfig`.

    Parameters
    ----------
    document
        The decoded JSON object; ``format_version``, ``on_deadline``, ``strategy``
        and ``strategy_params`` may be omitted and take their defaults.

    Returns
    -------
    RoundConfig
        The validated settings.

    Raises
    ------
    RoundConfigError
        On the first invalid field, naming the field, its value and what is expected.
    """
    if not isinstance(document, Mapping):
        raise RoundConfigError(
            "document", f"round configuration is {document!r}, expected a JSON object"
        )
    unknown = sorted(set(document) - set(_FIELDS))
    if unknown:
        raise RoundConfigError(
            unknown[0],
            f"unknown fields {unknown} in the round configuration: "
            f"expected some of {list(_FIELDS)}",
        )
    version = document.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise RoundConfigError(
            "format_version",
            f"format_version is {version!r}, expected {FORMAT_VERSION!r}",
        )
    min_updates = _integer(document, "min_updates", minimum=1)
    target_updates = _integer(
        document, "target_updates", minimum=1, maximum=MAX_TARGET_UPDATES
    )
    if target_updates < min_updates:
        raise RoundConfigError(
            "min_updates",
            f"min_updates is {min_updates} but target_updates is {target_updates}: "
            "expected 1 <= min_updates <= target_updates",
        )
    deadline_seconds = _integer(
        document, "deadline_seconds", minimum=1, maximum=MAX_DEADLINE_SECONDS
    )
    on_deadline = document.get("on_deadline", "abandon")
    if on_deadline not in ON_DEADLINE_ACTIONS:
        raise RoundConfigError(
            "on_deadline",
            f"on_deadline is {on_deadline!r}, expected one of "
            f"{list(ON_DEADLINE_ACTIONS)}",
        )
    strategy = _strategy(document.get("strategy", "fedavg"))
    params = _strategy_params(strategy, document.get("strategy_params", {}))
    # A round that closes at its deadline with fewer than ``least`` updates is
    # abandoned, so a target below ``least`` would abandon every round.
    least = least_updates(resolve(strategy, params))
    if target_updates < least:
        raise RoundConfigError(
            "target_updates",
            f"strategy {strategy!r} with {params} needs at least {least} updates per "
            f"round, but target_updates is {target_updates}: raise target_updates "
            "or lower the strategy's f, m or nnm_f",
        )
    return RoundConfig(
        target_updates=target_updates,
        min_updates=min_updates,
        deadline_seconds=deadline_seconds,
        on_deadline=on_deadline,
        strategy=strategy,
        strategy_params=params,
    )


def _integer(
    document: Mapping[str, Any],
    name: str,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    if name not in document:
        raise RoundConfigError(name, f"{name} is missing, expected an integer")
    value = document[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RoundConfigError(
            name, f"{name} is {value!r}, expected an integer >= {minimum}"
        )
    if maximum is not None and value > maximum:
        raise RoundConfigError(
            name, f"{name} is {value}, expected an integer <= {maximum}"
        )
    return value


def _strategy(value: Any) -> str:
    if value in IMPLEMENTED_STRATEGIES:
        return str(value)
    implemented = sorted(IMPLEMENTED_STRATEGIES)
    if value in PLANNED_STRATEGIES:
        raise RoundConfigError(
            "strategy",
            f"strategy {value!r} is not implemented yet: "
            f"the aggregator implements only {implemented}",
        )
    raise RoundConfigError(
        "strategy", f"strategy is {value!r}, expected one of {implemented}"
    )


def _strategy_params(strategy: str, raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise RoundConfigError(
            "strategy_params", f"strategy_params is {raw!r}, expected a JSON object"
        )
    accepted = IMPLEMENTED_STRATEGIES[strategy]
    unknown = sorted(set(raw) - set(accepted))
    if unknown:
        expected = sorted(accepted) or "no parameters"
        raise RoundConfigError(
            "strategy_params",
            f"strategy_params {unknown} are not parameters of {strategy!r}: "
            f"expected {expected}",
        )
    params: dict[str, float] = {}
    for name, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise RoundConfigError(
                "strategy_params",
                f"strategy_params.{name} is {value!r}, expected a finite number",
            )
        params[name] = float(value)
    try:
        resolve(strategy, params)
    except StrategyError as exc:
        raise RoundConfigError("strategy_params", str(exc)) from exc
    return params
