"""The aggregator opens each round with ``config/round.json`` when one is stored."""

from __future__ import annotations

import json

from fedcore import layout

from .harness import Harness


def _store_config(harness: Harness, document: object) -> None:
    harness.s3.put_object(
        Bucket=harness.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=json.dumps(document).encode(),
        ContentType="application/json",
    )


def test_round_config_sets_target(harness: Harness) -> None:
    _store_config(
        harness,
        {"target_updates": 2, "min_updates": 1, "deadline_seconds": 60},
    )
    harness.deliver(harness.upload("dev-0"), harness.upload("dev-1"))
    assert harness.state(1)["status"] == "published"


def test_round_config_recorded_in_state(harness: Harness) -> None:
    _store_config(
        harness,
        {
            "target_updates": 5,
            "min_updates": 2,
            "deadline_seconds": 60,
            "on_deadline": "extend",
        },
    )
    harness.deliver(harness.upload("dev-0"))
    state = harness.state(1)
    assert state["target_updates"] == 5
    assert state["on_deadline"] == "extend"
    assert state["settings_source"] == layout.ROUND_CONFIG_KEY
    assert state["deadline"] - state["opened_at"] == 60


def test_round_config_nested_json_ignored(harness: Harness) -> None:
    # json.loads raises RecursionError, not ValueError, on deep nesting.
    harness.s3.put_object(
        Bucket=harness.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=b"[" * 100_000 + b"]" * 100_000,
    )
    harness.deliver(harness.upload("dev-0"))
    state = harness.state(1)
    assert state["settings_source"] == "environment"
    assert state["accepted"]


def test_round_config_invalid_ignored(harness: Harness) -> None:
    _store_config(harness, {"target_updates": 1, "min_updates": 4})
    harness.deliver(harness.upload("dev-0"))
    state = harness.state(1)
    assert state["settings_source"] == "environment"
    assert state["target_updates"] == harness.config.target_updates
