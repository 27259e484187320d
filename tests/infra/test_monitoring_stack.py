"""Monitoring stack: alarm topic, alarms and dashboard agree with what is emitted."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match

from infra.aggregation_stack import function_name
from infra.config import SettingsError
from infra.monitoring_stack import alarm_period
from lambdas.aggregator import constants as names

pytestmark = pytest.mark.infra


def _alarm(synthesized, suffix):
    name = f"{synthesized.settings.federation}-{suffix}"
    alarms = synthesized.template("monitoring").find_resources(
        "AWS::CloudWatch::Alarm", {"Properties": {"AlarmName": name}}
    )
    assert len(alarms) == 1, f"expected one alarm named {name}"
    return next(iter(alarms.values()))["Properties"]


def _federation_dimension(synthesized):
    return [
        {"Name": names.DIMENSION_FEDERATION, "Value": synthesized.settings.federation}
    ]


def test_topic_kms_encrypted(synthesized):
    template = synthesized.template("monitoring")
    key_id = next(iter(template.find_resources("AWS::KMS::Key")))
    template.has_resource_properties(
        "AWS::SNS::Topic", {"KmsMasterKeyId": {"Fn::GetAtt": [key_id, "Arn"]}}
    )


def test_topic_key_rotation(synthesized):
    template = synthesized.template("monitoring")
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_topic_key_allows_cloudwatch(synthesized):
    template = synthesized.template("monitoring")
    template.has_resource_properties(
        "AWS::KMS::Key",
        {
            "KeyPolicy": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {"Principal": {"Service": "cloudwatch.amazonaws.com"}}
                        )
                    ]
                )
            }
        },
    )


def test_topic_enforces_ssl(synthesized):
    template = synthesized.template("monitoring")
    template.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                "Effect": "Deny",
                            }
                        )
                    ]
                )
            }
        },
    )


def test_no_subscription_without_email(synthesized):
    assert synthesized.settings.monitoring.alarm_email == ""
    template = synthesized.template("monitoring")
    template.resource_count_is("AWS::SNS::Subscription", 0)


def test_email_subscription(synth_with):
    result = synth_with({"fl:monitoring": {"alarm_email": "ops@example.com"}})
    template = result.template("monitoring")
    template.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"}
    )


@pytest.mark.parametrize(
    ("suffix", "role", "metric"),
    [
        ("aggregator-errors", "aggregator", "Errors"),
        ("sweep-errors", "sweep", "Errors"),
        ("aggregator-throttles", "aggregator", "Throttles"),
    ],
)
def test_function_alarms(synthesized, suffix, role, metric):
    alarm = _alarm(synthesized, suffix)
    assert alarm["Namespace"] == "AWS/Lambda"
    assert alarm["MetricName"] == metric
    assert alarm["Dimensions"] == [
        {"Name": "FunctionName", "Value": function_name(synthesized.settings, role)}
    ]


def test_function_names_match_aggregation(synthesized):
    functions = synthesized.template("aggregation").find_resources(
        "AWS::Lambda::Function"
    )
    deployed = {f["Properties"].get("FunctionName") for f in functions.values()}
    for role in ("aggregator", "sweep"):
        assert function_name(synthesized.settings, role) in deployed


def test_dlq_alarm(synthesized):
    alarm = _alarm(synthesized, "update-events-dlq")
    assert alarm["Namespace"] == "AWS/SQS"
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": synthesized.settings.local_dlq_name}
    ]
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_rejected_ratio_alarm(synthesized):
    settings = synthesized.settings
    alarm = _alarm(synthesized, "rejected-ratio")
    assert alarm["Threshold"] == settings.monitoring.max_rejected_ratio
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    stats = {m["Id"]: m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert stats["accepted"]["Metric"] == {
        "Namespace": settings.metric_namespace,
        "MetricName": names.METRIC_UPDATES_ACCEPTED,
        "Dimensions": _federation_dimension(synthesized),
    }
    assert stats["rejected"]["Metric"] == {
        "Namespace": settings.metric_namespace,
        "MetricName": names.METRIC_UPDATES_REJECTED,
        "Dimensions": _federation_dimension(synthesized),
    }
    (expression,) = [m["Expression"] for m in alarm["Metrics"] if "Expression" in m]
    assert "rejected, 0) / (FILL(accepted, 0) + FILL(rejected, 0))" in expression


def test_no_publish_alarm(synthesized):
    settings = synthesized.settings
    alarm = _alarm(synthesized, "no-round-published")
    assert alarm["Namespace"] == settings.metric_namespace
    assert alarm["MetricName"] == names.METRIC_ROUNDS_PUBLISHED
    assert alarm["Dimensions"] == _federation_dimension(synthesized)
    assert alarm["Statistic"] == "Sum"
    assert alarm["Period"] == (
        settings.monitoring.no_publish_deadline_multiple
        * settings.round.deadline_seconds
    )
    assert alarm["TreatMissingData"] == "breaching"
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["Threshold"] == 1


def test_loss_anomaly_alarm(synthesized):
    settings = synthesized.settings
    alarm = _alarm(synthesized, "global-loss-rising")
    assert alarm["ComparisonOperator"] == "GreaterThanUpperThreshold"
    stats = [m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m]
    assert stats[0]["Metric"] == {
        "Namespace": settings.metric_namespace,
        "MetricName": names.METRIC_GLOBAL_LOSS,
        "Dimensions": _federation_dimension(synthesized),
    }
    expressions = [m["Expression"] for m in alarm["Metrics"] if "Expression" in m]
    assert expressions[0].startswith("ANOMALY_DETECTION_BAND(")


def test_privacy_budget_alarm(synthesized):
    settings = synthesized.settings
    alarm = _alarm(synthesized, "privacy-budget-exhausted")
    assert alarm["Namespace"] == settings.metric_namespace
    assert alarm["MetricName"] == names.METRIC_PRIVACY_BUDGET_EXHAUSTED
    assert alarm["Dimensions"] == _federation_dimension(synthesized)
    assert alarm["Statistic"] == "Sum"
    assert alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "notBreaching"


def test_every_alarm_notifies_topic(synthesized):
    template = synthesized.template("monitoring")
    topic_id = next(iter(template.find_resources("AWS::SNS::Topic")))
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == 8
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}]


def test_custom_metrics_use_emitted_dimensions(synthesized):
    """No alarm on the namespace uses a dimension set the aggregator does not emit."""
    settings = synthesized.settings
    template = synthesized.template("monitoring")
    for alarm in template.find_resources("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        metrics = [props] + [
            m["MetricStat"]["Metric"]
            for m in props.get("Metrics", [])
            if "MetricStat" in m
        ]
        for metric in metrics:
            if metric.get("Namespace") == settings.metric_namespace:
                assert metric["Dimensions"] == _federation_dimension(synthesized)


def _dashboard_body(synthesized):
    template = synthesized.template("monitoring")
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "REGION" for p in parts)


@pytest.mark.parametrize(
    "metric",
    [
        names.METRIC_UPDATES_ACCEPTED,
        names.METRIC_UPDATES_REJECTED,
        names.METRIC_ROUND_PARTICIPANTS,
        names.METRIC_GLOBAL_LOSS,
        names.METRIC_GLOBAL_ACCURACY,
        names.METRIC_ROUND_DURATION,
        names.METRIC_AGGREGATION_TIME,
    ],
)
def test_dashboard_graphs_metric(synthesized, metric):
    settings = synthesized.settings
    body = json.loads(_dashboard_body(synthesized))
    series = [
        line
        for widget in body["widgets"]
        for line in widget["properties"].get("metrics", [])
    ]
    assert [
        settings.metric_namespace,
        metric,
        names.DIMENSION_FEDERATION,
        settings.federation,
    ] in [line[:4] for line in series]


def test_dashboard_rejections_by_reason(synthesized):
    settings = synthesized.settings
    body = _dashboard_body(synthesized)
    expected = (
        f"{{{settings.metric_namespace},{names.DIMENSION_FEDERATION},"
        f"{names.DIMENSION_REASON}}}"
    )
    assert (
        expected
        in json.loads(body)["widgets"][1]["properties"]["metrics"][0][0]["expression"]
    )


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(1, 60), (60, 60), (61, 120), (900, 900), (86_400, 86_400)],
)
def test_alarm_period_rounds_up(seconds, expected):
    assert alarm_period(seconds, setting="x").to_seconds() == expected


def test_alarm_period_over_one_day():
    with pytest.raises(SettingsError, match=r"fl:round\.deadline_seconds"):
        alarm_period(86_401, setting="fl:round.deadline_seconds")
