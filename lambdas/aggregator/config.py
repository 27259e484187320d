"""Aggregator configuration read from the environment once per cold start."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from fedcore import jsontext
from fedcore.aggregation import ACCUMULATORS, FLOAT64
from fedcore.round_config import MAX_DEADLINE_SECONDS, MAX_TARGET_UPDATES
from fedcore.strategies import Strategy, StrategyError, resolve
from fedcore.update import ValidationLimits
from lambdas.aggregator import constants as env


class ConfigurationError(RuntimeError):
    """A required environment variable is missing or has an invalid value."""


@dataclass(frozen=True, kw_only=True)
class AggregatorConfig:
    """Settings of one deployed federation, as read from the environment."""

    updates_bucket: str
    models_bucket: str
    model_package_group: str
    metric_namespace: str
    federation: str
    target_updates: int
    min_updates: int
    deadline_seconds: int
    on_deadline: str
    lease_seconds: int
    max_update_bytes: int
    limits: ValidationLimits
    inference_image: str
    strategy: Strategy = field(default_factory=lambda: resolve("fedavg"))
    block_bytes: int = 4 * 1024 * 1024
    accumulator: str = FLOAT64

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None
    ) -> AggregatorConfig:
        """Parse and check every variable; raise one error naming all missing ones."""
        values = os.environ if environ is None else environ
        missing = [name for name in env.REQUIRED if not values.get(name)]
        if missing:
            raise ConfigurationError(
                f"missing environment variables {missing}: the stack sets them from "
                "infra.config.aggregator_environment"
            )
        target = _integer(
            values, env.ROUND_TARGET_UPDATES, 20, maximum=MAX_TARGET_UPDATES
        )
        minimum = _integer(values, env.ROUND_MIN_UPDATES, min(10, target))
        if minimum > target:
            raise ConfigurationError(
                f"{env.ROUND_MIN_UPDATES}={minimum} exceeds "
                f"{env.ROUND_TARGET_UPDATES}={target}"
            )
        on_deadline = values.get(env.ROUND_ON_DEADLINE, "abandon") or "abandon"
        if on_deadline not in ("abandon", "extend"):
            raise ConfigurationError(
                f"{env.ROUND_ON_DEADLINE}={on_deadline!r}, "
                "expected 'abandon' or 'extend'"
            )
        return cls(
            updates_bucket=values[env.UPDATES_BUCKET],
            models_bucket=values[env.MODELS_BUCKET],
            model_package_group=values[env.MODEL_PACKAGE_GROUP],
            metric_namespace=values[env.METRIC_NAMESPACE],
            federation=values[env.FEDERATION],
            target_updates=target,
            min_updates=minimum,
            deadline_seconds=_integer(
                values, env.ROUND_DEADLINE_SECONDS, 900, maximum=MAX_DEADLINE_SECONDS
            ),
            on_deadline=on_deadline,
            lease_seconds=_integer(values, env.LEASE_SECONDS, 120),
            max_update_bytes=_integer(values, env.MAX_UPDATE_BYTES, 16 * 1024 * 1024),
            limits=ValidationLimits(
                max_examples=_integer(values, env.MAX_EXAMPLES, 1_000_000),
                max_update_norm=_optional_float(values, env.MAX_UPDATE_NORM),
            ),
            inference_image=values.get(env.INFERENCE_IMAGE, ""),
            strategy=_strategy(values),
            block_bytes=_integer(values, env.AGGREGATION_BLOCK_BYTES, 4 * 1024 * 1024),
            accumulator=_accumulator(values),
        )


def _accumulator(values: Mapping[str, str]) -> str:
    raw = values.get(env.AGGREGATION_ACCUMULATOR, "") or FLOAT64
    if raw not in ACCUMULATORS:
        raise ConfigurationError(
            f"{env.AGGREGATION_ACCUMULATOR}={raw!r}, expected one of "
            f"{list(ACCUMULATORS)}"
        )
    return raw


def _integer(
    values: Mapping[str, str], name: str, default: int, *, maximum: int | None = None
) -> int:
    raw = values.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"{name}={raw!r} is not a positive integer")
    if maximum is not None and int(raw) > maximum:
        raise ConfigurationError(f"{name}={raw!r} exceeds the maximum {maximum}")
    return int(raw)


def _strategy(values: Mapping[str, str]) -> Strategy:
    name = values.get(env.STRATEGY, "") or "fedavg"
    raw = values.get(env.STRATEGY_PARAMS, "") or "{}"
    try:
        params = jsontext.loads(raw)
    except ValueError:
        raise ConfigurationError(
            f"{env.STRATEGY_PARAMS}={raw!r} is not JSON: expected an object such as "
            '{"eta": 0.1}'
        ) from None
    if not isinstance(params, dict):
        raise ConfigurationError(
            f"{env.STRATEGY_PARAMS}={raw!r} is not a JSON object of numbers"
        )
    try:
        return resolve(name, params)
    except StrategyError as exc:
        raise ConfigurationError(f"{env.STRATEGY}={name!r}: {exc}") from exc


def _optional_float(values: Mapping[str, str], name: str) -> float | None:
    raw = values.get(name, "")
    if raw == "":
        return None
    try:
        number = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name}={raw!r} is not a positive finite number")
    return number


@lru_cache(maxsize=1)
def load_config() -> AggregatorConfig:
    """Return the configuration of this process, parsed on first use."""
    return AggregatorConfig.from_environment()
