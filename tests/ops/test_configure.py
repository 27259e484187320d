"""``sfl configure``: validation and the conditional write of config/round.json."""

from __future__ import annotations

import json

import pytest

from fedcore import layout
from fedcore.round_config import parse_round_config
from operator_tools.configure import setting_warnings

pytestmark = pytest.mark.slow


def _stored(federation):
    body = federation.s3().get_object(
        Bucket=federation.resources.models_bucket, Key=layout.ROUND_CONFIG_KEY
    )["Body"]
    return json.loads(body.read())


def test_configure_writes_valid_config(sfl, federation):
    result = sfl(
        "configure",
        "--target-updates",
        "8",
        "--min-updates",
        "4",
        "--deadline-seconds",
        "300",
        "--on-deadline",
        "extend",
    )
    assert result.status == 0
    stored = parse_round_config(_stored(federation))
    assert (stored.target_updates, stored.min_updates) == (8, 4)
    assert (stored.deadline_seconds, stored.on_deadline) == (300, "extend")


def test_configure_warns_min_below_rule(sfl):
    result = sfl(
        "configure",
        "--target-updates",
        "8",
        "--min-updates",
        "2",
        "--strategy",
        "krum",
        "--strategy-param",
        "f=1",
    )
    assert result.status == 0
    assert "warning: krum needs 5 updates per round" in result.err
    assert "raise --min-updates to 5" in result.err


def test_configure_no_warning_when_safe(sfl):
    result = sfl(
        "configure",
        "--target-updates",
        "8",
        "--min-updates",
        "4",
        "--strategy",
        "fedavg",
    )
    assert result.status == 0
    assert result.err == ""


def test_configure_keeps_other_fields(sfl, federation):
    sfl("configure", "--target-updates", "8", "--min-updates", "4")
    assert sfl("configure", "--deadline-seconds", "120").status == 0
    stored = _stored(federation)
    assert stored["target_updates"] == 8
    assert stored["deadline_seconds"] == 120


def test_configure_without_options_prints(sfl):
    sfl("configure", "--target-updates", "9", "--min-updates", "2")
    result = sfl("configure")
    assert result.status == 0
    assert json.loads(result.out)["target_updates"] == 9


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--target-updates", "2", "--min-updates", "5"], "min_updates"),
        (["--deadline-seconds", "0"], "deadline_seconds"),
        (["--deadline-seconds", "99999999999999999999"], "deadline_seconds"),
        (["--target-updates", "99999999999999999999999"], "target_updates"),
        (["--strategy", "scaffold"], "strategy"),
        (["--strategy", "average"], "strategy"),
        (["--on-deadline", "extnd"], "on_deadline"),
        (["--strategy-param", "mu=0.1"], "strategy_params"),
        (["--strategy", "krum", "--strategy-param", "f=100"], "target_updates"),
    ],
)
def test_configure_rejects_invalid(sfl, federation, args, field):
    before = _stored_or_none(federation)
    result = sfl("configure", *args)
    assert result.status == 2
    assert field in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert _stored_or_none(federation) == before


def test_configure_rejects_non_integer(sfl):
    result = sfl("configure", "--target-updates", "many")
    assert result.status == 2
    assert "--target-updates" in result.err


def _store_nested(federation):
    federation.s3().put_object(
        Bucket=federation.resources.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=b"[" * 100_000 + b"]" * 100_000,
    )


def test_configure_nested_json_reported(sfl, federation):
    _store_nested(federation)
    result = sfl("configure")
    # The other tests share this federation, so the document goes again.
    federation.s3().delete_object(
        Bucket=federation.resources.models_bucket, Key=layout.ROUND_CONFIG_KEY
    )
    assert result.status == 2
    assert "is not valid JSON" in result.err
    assert "Traceback" not in result.err


def test_configure_nested_json_replaced(sfl, federation):
    _store_nested(federation)
    result = sfl("configure", "--target-updates", "6", "--min-updates", "3")
    assert result.status == 0
    stored = parse_round_config(_stored(federation))
    assert (stored.target_updates, stored.min_updates) == (6, 3)


def test_configure_stale_etag_conflicts(federation):
    # The command reads the ETag, then writes with If-Match: a write in between
    # must make it fail. This pins the S3 behaviour the command relies on.
    s3 = federation.s3()
    bucket = federation.resources.models_bucket
    s3.put_object(Bucket=bucket, Key=layout.ROUND_CONFIG_KEY, Body=b"{}")
    etag = s3.head_object(Bucket=bucket, Key=layout.ROUND_CONFIG_KEY)["ETag"]
    s3.put_object(Bucket=bucket, Key=layout.ROUND_CONFIG_KEY, Body=b"{ }")
    with pytest.raises(s3.exceptions.ClientError) as caught:
        s3.put_object(
            Bucket=bucket, Key=layout.ROUND_CONFIG_KEY, Body=b"{}", IfMatch=etag
        )
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"


def _stored_or_none(federation):
    try:
        return _stored(federation)
    except federation.s3().exceptions.NoSuchKey:
        return None


@pytest.mark.parametrize(
    ("previous", "strategy", "warned"),
    [("dp_fedavg", "fedavg", True), ("fedavg", "fedavg", False)],
)
def test_warning_leaving_dp(previous, strategy, warned):
    config = parse_round_config(
        {
            "target_updates": 8,
            "min_updates": 4,
            "deadline_seconds": 300,
            "strategy": strategy,
        }
    )
    warnings = setting_warnings(config, previous=previous)
    assert any("without differential privacy" in text for text in warnings) is warned
