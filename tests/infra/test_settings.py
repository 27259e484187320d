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


def test_context_accumulator_unknown():
    with pytest.raises(SettingsError, match=r"fl:aggregator\.accumulator is 'float16'"):
        load_settings(lookup={"fl:aggregator": {"accumulator": "float16"}}.get)


@pytest.mark.parametrize("value", ["float64", "float32"])
def test_accumulator_reaches_aggregator(value):
    settings = load_settings(lookup={"fl:aggregator": {"accumulator": value}}.get)
    environment = aggregator_environment(
        settings, updates_bucket="u", models_bucket="m"
    )
    assert AggregatorConfig.from_environment(environment).accumulator == value


def test_environment_accumulator_unknown():
    environment = aggregator_environment(
        load_settings(), updates_bucket="u", models_bucket="m"
    )
    with pytest.raises(ConfigurationError, match="AGGREGATION_ACCUMULATOR='f32'"):
        AggregatorConfig.from_environment(
            {**environment, env.AGGREGATION_ACCUMULATOR: "f32"}
        )


def test_environment_accumulator_default():
    environment = aggregator_environment(
        load_settings(), updates_bucket="u", models_bucket="m"
    )
    del environment[env.AGGREGATION_ACCUMULATOR]
    assert AggregatorConfig.from_environment(environment).accumulator == "float64"
