"""Bounds that the CDK context and the aggregator's environment must respect."""

from __future__ import annotations

import pytest

from infra.config import SettingsError, aggregator_environment, load_settings
from lambdas.aggregator import constants as env
from lambdas.aggregator.config import AggregatorConfig, ConfigurationError


@pytest.mark.parametrize(
    ("round_settings", "words"),
    [
        ({"target_updates": 10_001}, "target_updates 10001 exceeds 10000"),
        ({"deadline_seconds": 10**20}, "deadline_seconds 100000000000000000000"),
    ],
)
def test_context_round_bounds(round_settings, words):
    with pytest.raises(SettingsError, match=words):
        load_settings(lookup={"fl:round": round_settings}.get)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (env.ROUND_TARGET_UPDATES, "99999999999999999999999"),
        (env.ROUND_DEADLINE_SECONDS, "100000000000000000000"),
    ],
)
def test_environment_round_bounds(name, value):
    environment = aggregator_environment(
        load_settings(), updates_bucket="u", models_bucket="m"
    )
    with pytest.raises(ConfigurationError, match="exceeds the maximum"):
        AggregatorConfig.from_environment({**environment, name: value})
