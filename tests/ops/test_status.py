"""``sfl status``, ``sfl rounds`` and ``sfl plot`` on a federation after 2 rounds."""

from __future__ import annotations

import json

import pytest

from local_aws import cli
from operator_tools import history
from tests.ops.conftest import DEVICES, ROUNDS

pytestmark = pytest.mark.slow


def test_status_shows_open_round(sfl):
    result = sfl("status")
    assert result.status == 0
    assert f"open round {ROUNDS + 1}" in result.out


def test_status_shows_recent_rounds(sfl):
    result = sfl("status", "--last", "1")
    assert "last 1 rounds:" in result.out
    assert f"{ROUNDS:>6}  published" in result.out


def test_status_json_fields(sfl):
    status = json.loads(sfl("status", "--json").out)
    assert status["open_round"]["round"] == ROUNDS + 1
    assert [row["round"] for row in status["recent_rounds"]] == [1, 2]
    assert status["rejections_total"] == {}
    assert status["alarms"] == []


def test_status_lists_alarm_in_alarm(sfl, federation):
    cloudwatch = federation.aws.client("cloudwatch")
    name = f"{federation.settings.federation}-update-events-dlq"
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        Namespace="AWS/SQS",
        MetricName="ApproximateNumberOfMessagesVisible",
        Statistic="Maximum",
        Period=300,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.set_alarm_state(
        AlarmName=name, StateValue="ALARM", StateReason="1 message in the DLQ"
    )
    try:
        result = sfl("status")
    finally:
        cloudwatch.delete_alarms(AlarmNames=[name])
    assert f"{name}: 1 message in the DLQ" in result.out


def test_status_counts_rejections(sfl, federation):
    s3 = federation.s3()
    bucket = federation.resources.models_bucket
    open_round = ROUNDS + 1
    keys = [
        f"rejections/round-{open_round:06d}/a.json",
        f"rejections/round-{open_round:06d}/b.json",
        "rejections/round-000001/c.json",
    ]
    reasons = ["non_finite", "non_finite", "stale_round"]
    for key, reason in zip(keys, reasons, strict=True):
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"reason": reason}))
    try:
        status = json.loads(sfl("status", "--json").out)
    finally:
        for key in keys:
            s3.delete_object(Bucket=bucket, Key=key)
    assert status["rejections_open_round"] == {"non_finite": 2}
    assert status["rejections_total"] == {"non_finite": 2, "stale_round": 1}


def test_status_unknown_bucket_fails(sfl):
    result = sfl("status", "--models-bucket", "no-such-bucket")
    assert result.status == 1
    assert "no-such-bucket" in result.err
    assert "Traceback" not in result.err


def test_rounds_wrong_bucket_fails(sfl, federation):
    result = sfl("rounds", "--models-bucket", federation.resources.updates_bucket)
    assert result.status != 0
    assert "does not exist" in result.err
    assert "--models-bucket names another bucket" in result.err


def test_rounds_lists_published(sfl):
    rows = json.loads(sfl("rounds", "--json").out)
    published = [row["round"] for row in rows if row["status"] == "published"]
    assert published == list(range(1, ROUNDS + 1))


def test_rounds_open_round_last(sfl):
    rows = json.loads(sfl("rounds", "--json").out)
    assert (rows[-1]["round"], rows[-1]["status"]) == (ROUNDS + 1, "open")


def test_rounds_count_participants(sfl):
    rows = json.loads(sfl("rounds", "--json").out)[:ROUNDS]
    assert [row["participants"] for row in rows] == [DEVICES] * ROUNDS


def test_rounds_name_model_versions(sfl):
    rows = json.loads(sfl("rounds", "--json").out)
    assert [row["model_version"] for row in rows] == [1, 2, None]


def test_rounds_table_has_header(sfl):
    result = sfl("rounds")
    assert result.out.splitlines()[0].split()[:3] == ["round", "status", "participants"]


def test_plot_writes_png(sfl, tmp_path):
    path = tmp_path / "plot.png"
    result = sfl("plot", "--output", str(path))
    assert result.status == 0
    assert result.out.strip() == str(path.resolve())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_rejects_non_png(sfl, tmp_path):
    result = sfl("plot", "--output", str(tmp_path / "plot.txt"))
    assert result.status == 2
    assert "must end in .png" in result.err


def test_plot_unwritable_path(sfl, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = sfl("plot", "--output", str(blocker / "plot.png"))
    assert result.status == 2
    assert "cannot write the plot" in result.err


def test_status_negative_last(sfl):
    result = sfl("status", "--last", "-1")
    assert result.status == 2
    assert "negative" in result.err


def test_region_from_aws_region(sfl, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    result = sfl("status")
    assert result.status == 0


def test_region_default_with_endpoint_variable(federation, monkeypatch, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", federation.aws.endpoint)
    assert cli.main(["status"]) == 0
    assert "open round 3" in capsys.readouterr().out


def test_empty_region_variables_unset(sfl, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")
    monkeypatch.setenv("AWS_REGION", "")
    result = sfl("approve", "2")
    # Earlier tests may have approved version 2 already, which exits 1.
    assert result.status == 0 or "already Approved" in result.err


def test_wait_timeout_names_rejections(federation):
    s3 = federation.s3()
    bucket = federation.resources.models_bucket
    key = f"rejections/round-{ROUNDS + 1:06d}/x.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"reason": "norm_exceeded"}))
    try:
        with pytest.raises(TimeoutError) as caught:
            federation.wait_for_round(ROUNDS + 2, timeout=0.1)
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    assert "rejected 1 update (norm_exceeded 1)" in str(caught.value)


def test_wait_timeout_without_rejections(federation):
    with pytest.raises(TimeoutError, match="no update of round 3 was rejected"):
        federation.wait_for_round(ROUNDS + 2, timeout=0.1)


def test_iso_time_out_of_range():
    assert history.iso_time(1e20) == "1e+20"


def test_abandoned_reason_shown():
    body = {
        "round": 9,
        "status": "abandoned",
        "accepted": {"d": {"num_examples": 5}},
        "abandoned": {"reason": "krum with f=1 needs more than 2f + 2 = 4 updates"},
    }
    row = history.summarize(body)
    lines = history.format_history_row(row).splitlines()
    assert row["abandoned_reason"].startswith("krum with f=1")
    assert lines[1].strip() == (
        "reason: krum with f=1 needs more than 2f + 2 = 4 updates"
    )


def test_published_row_one_line(sfl):
    rows = json.loads(sfl("rounds", "--json").out)
    assert rows[0]["abandoned_reason"] is None
    assert len(history.format_history_row(rows[0]).splitlines()) == 1
