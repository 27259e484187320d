"""Aggregation stack: notification, queues, functions, schedule and IAM scoping."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match

from fedcore.layout import UPDATES_PREFIX
from infra.aggregation_stack import SQS_HANDLER, SWEEP_HANDLER
from infra.bundling import LAMBDA_RUNTIME
from infra.storage_stack import StorageExports

pytestmark = pytest.mark.infra


def _exports(synthesized):
    return StorageExports.for_settings(synthesized.settings)


def _one(template, resource_type, **props):
    found = template.find_resources(
        resource_type, {"Properties": props} if props else None
    )
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.items()))


def _functions(template):
    return {
        f["Properties"]["Handler"]: f
        for f in template.find_resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler", "").startswith("lambdas.")
    }


def _policy_statements(template):
    _, policy = _one(
        template,
        "AWS::IAM::Policy",
        Roles=[{"Ref": Match.string_like_regexp("^AggregatorRole")}],
    )
    return policy["Properties"]["PolicyDocument"]["Statement"]


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_notification_only_on_updates_bucket(synthesized):
    template = synthesized.template("aggregation")
    notifications = template.find_resources("Custom::S3BucketNotifications")
    assert len(notifications) == 1
    (config,) = notifications.values()
    assert config["Properties"]["BucketName"] == {
        "Fn::ImportValue": _exports(synthesized).updates_bucket_name
    }


def test_notification_filter_and_target(synthesized):
    template = synthesized.template("aggregation")
    queue_id, _ = _one(
        template, "AWS::SQS::Queue", QueueName=synthesized.settings.local_queue_name
    )
    _, config = _one(template, "Custom::S3BucketNotifications")
    queues = config["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert queues == [
        {
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {
                "Key": {"FilterRules": [{"Name": "prefix", "Value": "updates/"}]}
            },
            "QueueArn": {"Fn::GetAtt": [queue_id, "Arn"]},
        }
    ]
    assert UPDATES_PREFIX == "updates/"


@pytest.mark.parametrize(
    "concern", ["storage", "registry", "monitoring", "device_access"]
)
def test_no_other_notifications(synthesized, concern):
    template = synthesized.template(concern)
    assert template.find_resources("Custom::S3BucketNotifications") == {}
    for bucket in template.find_resources("AWS::S3::Bucket").values():
        assert "NotificationConfiguration" not in bucket["Properties"]


def test_aggregator_cannot_trigger_itself(synthesized):
    """Every bucket the aggregator may write to has no notification."""
    exports = _exports(synthesized)
    template = synthesized.template("aggregation")
    written = set()
    for statement in _policy_statements(template):
        actions = _as_list(statement["Action"])
        if any(action.startswith("s3:Put") for action in actions):
            written.update(str(r) for r in _as_list(statement["Resource"]))
    notified = {
        str(n["Properties"]["BucketName"])
        for n in template.find_resources("Custom::S3BucketNotifications").values()
    }
    assert written, "the aggregator should write to the models bucket"
    assert all(exports.models_bucket_arn in resource for resource in written)
    assert notified == {str({"Fn::ImportValue": exports.updates_bucket_name})}


def test_queue_policy_lets_s3_send(synthesized):
    template = synthesized.template("aggregation")
    template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": Match.array_with(["sqs:SendMessage"]),
                                "Condition": {
                                    "ArnLike": {
                                        "aws:SourceArn": {
                                            "Fn::ImportValue": _exports(
                                                synthesized
                                            ).updates_bucket_arn
                                        }
                                    }
                                },
                                "Principal": {"Service": "s3.amazonaws.com"},
                            }
                        )
                    ]
                )
            }
        },
    )


def test_queue_key_lets_s3_encrypt(synthesized):
    template = synthesized.template("aggregation")
    template.has_resource_properties(
        "AWS::KMS::Key",
        {
            "EnableKeyRotation": True,
            "KeyPolicy": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": Match.array_with(["kms:GenerateDataKey*"]),
                                "Principal": {"Service": "s3.amazonaws.com"},
                            }
                        )
                    ]
                )
            },
        },
    )


@pytest.mark.parametrize("queue_attr", ["local_queue_name", "local_dlq_name"])
def test_queue_kms_encrypted(synthesized, queue_attr):
    template = synthesized.template("aggregation")
    key_id, _ = _one(template, "AWS::KMS::Key")
    _, queue = _one(
        template,
        "AWS::SQS::Queue",
        QueueName=getattr(synthesized.settings, queue_attr),
    )
    assert queue["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}


@pytest.mark.parametrize("queue_attr", ["local_queue_name", "local_dlq_name"])
def test_queue_enforces_ssl(synthesized, queue_attr):
    template = synthesized.template("aggregation")
    queue_id, _ = _one(
        template,
        "AWS::SQS::Queue",
        QueueName=getattr(synthesized.settings, queue_attr),
    )
    template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "Queues": [{"Ref": queue_id}],
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
            },
        },
    )


def test_queue_redrive_and_visibility(synthesized):
    settings = synthesized.settings
    template = synthesized.template("aggregation")
    dlq_id, _ = _one(template, "AWS::SQS::Queue", QueueName=settings.local_dlq_name)
    _, queue = _one(template, "AWS::SQS::Queue", QueueName=settings.local_queue_name)
    props = queue["Properties"]
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
        "maxReceiveCount": settings.aggregator.max_receive_count,
    }
    assert props["VisibilityTimeout"] == 6 * settings.aggregator.timeout_seconds


@pytest.mark.parametrize(
    ("handler", "concurrency"),
    [(SQS_HANDLER, "reserved_concurrency"), (SWEEP_HANDLER, None)],
)
def test_function_sizing(synthesized, handler, concurrency):
    sizing = synthesized.settings.aggregator
    props = _functions(synthesized.template("aggregation"))[handler]["Properties"]
    assert props["Runtime"] == LAMBDA_RUNTIME.name
    assert props["MemorySize"] == sizing.memory_mb
    assert props["Timeout"] == sizing.timeout_seconds
    assert props["EphemeralStorage"] == {"Size": sizing.ephemeral_storage_mb}
    expected = getattr(sizing, concurrency) if concurrency else 1
    assert props["ReservedConcurrentExecutions"] == expected


def test_runtime_is_312_or_newer():
    version = LAMBDA_RUNTIME.name.removeprefix("python")
    assert tuple(int(part) for part in version.split(".")) >= (3, 12)


def test_functions_share_one_asset(synthesized):
    functions = _functions(synthesized.template("aggregation"))
    assert set(functions) == {SQS_HANDLER, SWEEP_HANDLER}
    keys = {str(f["Properties"]["Code"]["S3Key"]) for f in functions.values()}
    assert len(keys) == 1


def test_event_source_mapping(synthesized):
    sizing = synthesized.settings.aggregator
    template = synthesized.template("aggregation")
    _, mapping = _one(template, "AWS::Lambda::EventSourceMapping")
    props = mapping["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BatchSize"] == sizing.batch_size
    assert props["MaximumBatchingWindowInSeconds"] == sizing.batching_window_seconds


def test_event_source_override(synth_with):
    result = synth_with(
        {"fl:aggregator": {"batch_size": 25, "batching_window_seconds": 9}}
    )
    _, mapping = _one(result.template("aggregation"), "AWS::Lambda::EventSourceMapping")
    assert mapping["Properties"]["BatchSize"] == 25
    assert mapping["Properties"]["MaximumBatchingWindowInSeconds"] == 9


def test_sweep_schedule(synthesized):
    template = synthesized.template("aggregation")
    functions = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"Handler": SWEEP_HANDLER}}
    )
    sweep_id = next(iter(functions))
    _, rule = _one(template, "AWS::Events::Rule")
    minutes = synthesized.settings.aggregator.sweep_minutes
    assert rule["Properties"]["ScheduleExpression"] == f"rate({minutes} minutes)"
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [sweep_id, "Arn"]}


def test_registry_statement_scoped_to_group(synthesized):
    group = synthesized.settings.model_package_group_name
    statements = _policy_statements(synthesized.template("aggregation"))
    registry = [s for s in statements if "sagemaker:CreateModelPackage" in s["Action"]]
    assert len(registry) == 1
    resources = str(registry[0]["Resource"])
    assert f"model-package-group/{group}" in resources
    assert f"model-package/{group}/*" in resources
    assert len(registry[0]["Resource"]) == 2


def test_registry_actions(synthesized):
    statements = _policy_statements(synthesized.template("aggregation"))
    actions = {
        action
        for s in statements
        for action in _as_list(s["Action"])
        if action.startswith("sagemaker:")
    }
    assert actions == {
        "sagemaker:CreateModelPackage",
        "sagemaker:DescribeModelPackage",
        "sagemaker:ListModelPackages",
        "sagemaker:UpdateModelPackage",
    }


def test_only_list_is_unscoped(synthesized):
    statements = _policy_statements(synthesized.template("aggregation"))
    unscoped = [s for s in statements if s["Resource"] == "*"]
    assert [s["Action"] for s in unscoped] == ["sagemaker:ListModelPackages"]


def test_updates_read_only(synthesized):
    exports = _exports(synthesized)
    statements = _policy_statements(synthesized.template("aggregation"))
    for statement in statements:
        if exports.updates_bucket_arn in str(statement["Resource"]):
            for action in _as_list(statement["Action"]):
                assert action.startswith(("s3:Get", "s3:List")), action


def test_no_object_deletes(synthesized):
    statements = _policy_statements(synthesized.template("aggregation"))
    actions = [a for s in statements for a in _as_list(s["Action"])]
    assert not [a for a in actions if a.startswith("s3:Delete")]
