"""The pure round configuration parser."""

from __future__ import annotations

import pytest

from fedcore.round_config import RoundConfigError, parse_round_config
from operator_tools.configure import setting_warnings

VALID = {
    "target_updates": 10,
    "min_updates": 5,
    "deadline_seconds": 600,
    "on_deadline": "extend",
    "strategy": "fedavg",
}


def test_parse_valid_document():
    config = parse_round_config(VALID)
    assert config.min_updates == 5
    assert config.on_deadline == "extend"


def test_parse_defaults_optional_fields():
    config = parse_round_config(
        {"target_updates": 3, "min_updates": 3, "deadline_seconds": 1}
    )
    assert config.strategy == "fedavg"
    assert config.on_deadline == "abandon"
    assert dict(config.strategy_params) == {}


def test_document_round_trips():
    config = parse_round_config(VALID)
    assert parse_round_config(config.to_document()) == config


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"min_updates": 11}, "min_updates", "min_updates <= target_updates"),
        ({"min_updates": 0}, "min_updates", ">= 1"),
        ({"target_updates": True}, "target_updates", "integer"),
        ({"deadline_seconds": 0}, "deadline_seconds", ">= 1"),
        ({"deadline_seconds": 10**20}, "deadline_seconds", "<= 31622400"),
        ({"target_updates": 10**23}, "target_updates", "<= 10000"),
        ({"deadline_seconds": 1.5}, "deadline_seconds", "integer"),
        ({"on_deadline": "abandonn"}, "on_deadline", "'abandon', 'extend'"),
        ({"strategy": "scaffold"}, "strategy", "not implemented"),
        (
            {"strategy": "average"},
            "strategy",
            "expected one of ['dp_fedavg', 'fedadagrad'",
        ),
        ({"strategy_params": {"mu": 0.1}}, "strategy_params", "not parameters of"),
        ({"strategy_params": []}, "strategy_params", "JSON object"),
        ({"format_version": "2"}, "format_version", "'1'"),
        ({"rounds": 3}, "rounds", "unknown fields"),
        (
            {"strategy": "krum", "strategy_params": {"f": 4}},
            "target_updates",
            "needs at least 11 updates per round, but target_updates is 10",
        ),
        (
            {"strategy": "median", "strategy_params": {"nnm_f": 1e300}},
            "target_updates",
            "but target_updates is 10",
        ),
        (
            {"strategy": "multikrum", "strategy_params": {"f": 1, "m": 11}},
            "target_updates",
            "needs at least 11 updates",
        ),
    ],
)
def test_parse_rejects_invalid(changes, field, words):
    with pytest.raises(RoundConfigError) as caught:
        parse_round_config({**VALID, **changes})
    assert caught.value.field_name == field
    assert words in str(caught.value)


def test_parse_params_error_not_repeated():
    with pytest.raises(RoundConfigError) as caught:
        parse_round_config(
            {**VALID, "strategy": "median", "strategy_params": {"nnm_f": -1}}
        )
    assert str(caught.value).count("strategy_params") == 0
    assert "nnm_f is -1" in str(caught.value)


def test_parse_accepts_enough_updates():
    config = parse_round_config(
        {**VALID, "strategy": "median", "strategy_params": {"nnm_f": 2}}
    )
    assert config.strategy_params == {"nnm_f": 2.0}


def test_parse_rejects_missing_field():
    document = dict(VALID)
    del document["deadline_seconds"]
    with pytest.raises(RoundConfigError, match="deadline_seconds is missing"):
        parse_round_config(document)


@pytest.mark.parametrize(
    ("minimum", "count"),
    [(3, 1), (5, 0)],
)
def test_dp_warning_when_minimum_differs(minimum, count):
    config = parse_round_config(
        {
            "target_updates": 5,
            "min_updates": minimum,
            "deadline_seconds": 60,
            "strategy": "dp_fedavg",
            "strategy_params": {"population": 10, "sampling_rate": 0.5},
        }
    )
    assert len(setting_warnings(config)) == count
