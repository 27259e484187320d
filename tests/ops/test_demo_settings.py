"""``sfl demo --serve`` stores its round settings for the operator commands."""

from __future__ import annotations

import json

import pytest

from fedcore import layout
from fedcore.round_config import parse_round_config
from infra.config import load_settings
from local_aws import demo
from local_aws.federation import with_round_settings

pytestmark = pytest.mark.slow


def test_serve_stores_round_settings(sfl, federation):
    settings = with_round_settings(load_settings(), target_updates=4, min_updates=2)
    demo._store_round_settings(federation, settings)
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
    assert (printed["target_updates"], printed["min_updates"]) == (4, 2)
