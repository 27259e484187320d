"""``sfl demo --serve`` and the sandbox store their round settings."""

from __future__ import annotations

import json

import pytest

from fedcore import layout
from fedcore.round_config import parse_round_config

pytestmark = pytest.mark.slow


def test_serve_stores_round_settings(sfl, federation):
    federation.store_round_settings(
        target_updates=4, min_updates=2, deadline_seconds=77
    )
    stored = parse_round_config(
        json.loads(
            federation.s3()
            .get_object(
                Bucket=federation.resources.models_bucket, Key=layout.ROUND_CONFIG_KEY
            )["Body"]
            .read()
        )
    )
    printed = json.loads(sfl("configure").out)
    assert (stored.target_updates, stored.min_updates) == (4, 2)
    assert stored.deadline_seconds == 77
    assert (printed["target_updates"], printed["min_updates"]) == (4, 2)
