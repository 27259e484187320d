"""Aggregation: the update-event queue, the aggregator Lambdas and their schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from fedcore.layout import UPDATES_PREFIX
from infra.bundling import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME, aggregator_code
from infra.config import DeploymentSettings, aggregator_environment
from infra.storage_stack import ImportedStorage, import_storage

SQS_HANDLER = "lambdas.aggregator.handler.handle_sqs"
SWEEP_HANDLER = "lambdas.aggregator.handler.handle_sweep"
# One sweep at a time is enough: it only closes or abandons rounds past their deadline.
SWEEP_CONCURRENCY = 1
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
QUEUE_RETENTION = cdk.Duration.days(4)
DLQ_RETENTION = cdk.Duration.days(14)
# Construct id of the singleton Lambda aws-cdk-lib adds for bucket notifications.
NOTIFICATION_HANDLER_ID = "BucketNotificationsHandler050a0587b7544547bf325f094a3db834"


def function_name(settings: DeploymentSettings, role: str) -> str:
    """Return the name of the aggregator function for ``role``, "aggregator" or "sweep".

    The monitoring stack builds its alarms from these names, so it needs no
    cross-stack reference to this stack.
    """
    return f"{settings.federation}-{role}"


class AggregationStack(cdk.Stack):
    """Update-event queue with its DLQ, the aggregator functions and the sweep rule.

    The S3 notification sits on the updates bucket only. The aggregator writes only to
    the models bucket, which has no notification, so nothing it writes can invoke it.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        source_root: Path,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        sizing = settings.aggregator
        storage = import_storage(self, settings)
        updates_bucket = storage.updates_bucket
        models_bucket = storage.models_bucket

        # The queues get their own key: S3 must be allowed to use it for the bucket's
        # notifications, and that key policy would otherwise tie the data key to the
        # updates bucket that the key encrypts, a circular dependency.
        self.queue_key = kms.Key(
            self,
            "QueueKey",
            alias=f"alias/{settings.federation}-update-events",
            description=f"Encrypts the update-event queues of {settings.federation}",
            enable_key_rotation=True,
        )
        self.dead_letter_queue = sqs.Queue(
            self,
            "UpdateEventsDlq",
            queue_name=settings.local_dlq_name,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.queue_key,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        self.queue = sqs.Queue(
            self,
            "UpdateEvents",
            queue_name=settings.local_queue_name,
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.queue_key,
            enforce_ssl=True,
            visibility_timeout=cdk.Duration.seconds(sizing.visibility_timeout_seconds),
            retention_period=QUEUE_RETENTION,
            dead_letter_queue=sqs.DeadLetterQueue(
                max_receive_count=sizing.max_receive_count,
                queue=self.dead_letter_queue,
            ),
        )

        # On an imported bucket, CDK puts the notification's custom resource in this
        # stack, next to the queue, so the storage stack never depends on this one.
        updates_bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.SqsDestination(self.queue),
            s3.NotificationKeyFilter(prefix=UPDATES_PREFIX),
        )

        self.role = iam.Role(
            self,
            "AggregatorRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Aggregator of federation {settings.federation}",
        )
        updates_bucket.grant_read(self.role, f"{UPDATES_PREFIX}*")
        # Read includes s3:ListBucket, without which a missing key reads as
        # AccessDenied instead of NoSuchKey.
        models_bucket.grant_read(self.role)
        models_bucket.grant_put(self.role)
        self._grant_registry(settings)
        self._acknowledge_role_findings(settings, storage)
        self._acknowledge_notification_handler()

        code = aggregator_code(source_root)
        environment = aggregator_environment(
            settings,
            updates_bucket=updates_bucket.bucket_name,
            models_bucket=models_bucket.bucket_name,
        )
        self.function = self._function(
            "Aggregator",
            settings,
            code=code,
            handler=SQS_HANDLER,
            environment=environment,
            reserved_concurrency=sizing.reserved_concurrency,
            description=f"Aggregates model updates of {settings.federation}",
        )
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=sizing.batch_size,
                max_batching_window=cdk.Duration.seconds(
                    sizing.batching_window_seconds
                ),
                report_batch_item_failures=True,
                # Polling no faster than the reserved concurrency avoids throttles that
                # would count as receives and push messages to the DLQ. NOTE: SQS
                # mappings allow no fewer than 2, so a reserved concurrency of 1 can
                # still be throttled.
                max_concurrency=max(2, sizing.reserved_concurrency),
            )
        )

        self.sweep_function = self._function(
            "Sweep",
            settings,
            code=code,
            handler=SWEEP_HANDLER,
            environment=environment,
            reserved_concurrency=SWEEP_CONCURRENCY,
            description=f"Closes rounds of {settings.federation} at deadline",
        )
        self.sweep_rule = events.Rule(
            self,
            "SweepSchedule",
            description=f"Deadline sweep of federation {settings.federation}",
            schedule=events.Schedule.rate(cdk.Duration.minutes(sizing.sweep_minutes)),
            targets=[
                targets.LambdaFunction(
                    self.sweep_function,
                    retry_attempts=2,
                    max_event_age=cdk.Duration.minutes(sizing.sweep_minutes),
                )
            ],
        )

    def _grant_registry(self, settings: DeploymentSettings) -> None:
        """Allow registering versions into the federation's model package group only."""
        group = settings.model_package_group_name
        group_arn = self.format_arn(
            service="sagemaker", resource="model-package-group", resource_name=group
        )
        packages_arn = self.format_arn(
            service="sagemaker", resource="model-package", resource_name=f"{group}/*"
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateModelPackage",
                    "sagemaker:DescribeModelPackage",
                    "sagemaker:UpdateModelPackage",
                ],
                resources=[group_arn, packages_arn],
            )
        )
        # ListModelPackages defines no resource type in the Service Authorization
        # Reference, so it can only be allowed on "*". It returns summaries, no data.
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:ListModelPackages"], resources=["*"]
            )
        )

    def _acknowledge_role_findings(
        self, settings: DeploymentSettings, storage: ImportedStorage
    ) -> None:
        """Acknowledge each wildcard of the aggregator's grants with its reason."""
        group = settings.model_package_group_name
        region_account = "<AWS::Region>:<AWS::AccountId>"
        reasons = {
            "Action::s3:GetObject*": "grant_read: GetObject and GetObjectVersion, "
            "the aggregator reads updates and models by version.",
            "Action::s3:GetBucket*": "grant_read: bucket metadata reads that come "
            "with object reads; no bucket configuration is written.",
            "Action::s3:List*": "grant_read: ListBucket turns a read of a missing "
            "round-state key into NoSuchKey instead of AccessDenied.",
            "Action::s3:Abort*": "grant_put: aborting its own failed multipart uploads "
            "of large models.",
            "Action::kms:ReEncrypt*": "grant_put on the SSE-KMS models bucket; the key "
            "is the federation's data key only.",
            "Action::kms:GenerateDataKey*": "grant_put on the SSE-KMS models bucket; "
            "the key is the federation's data key only.",
            f"Resource::{storage.exports.updates_bucket_arn}/{UPDATES_PREFIX}*": (
                "The aggregator reads every device's uploads under updates/."
            ),
            f"Resource::{storage.exports.models_bucket_arn}/*": (
                "The models bucket is written only by the aggregator; it owns all of "
                "the pointer, rounds, models, holdout and config prefixes."
            ),
            f"Resource::arn:<AWS::Partition>:sagemaker:{region_account}:"
            f"model-package/{group}/*": (
                "Versions of the federation's one model package group; their ARNs "
                "end in a version number unknown until registration."
            ),
            "Resource::*": (
                "sagemaker:ListModelPackages supports no resource-level permission; "
                "it returns summaries of model packages, no model data."
            ),
        }
        for finding, reason in reasons.items():
            cdk.Validations.of(self.role).acknowledge(
                cdk.Acknowledgment(id=f"AwsSolutions-IAM5[{finding}]", reason=reason)
            )

    def _acknowledge_notification_handler(self) -> None:
        """Acknowledge the managed policy of CDK's bucket notification handler."""
        handler = self.node.try_find_child(NOTIFICATION_HANDLER_ID)
        if handler is None:
            raise RuntimeError(
                f"construct {NOTIFICATION_HANDLER_ID} not found in {self.node.path}: "
                "aws-cdk-lib renamed its bucket notification handler; update "
                "NOTIFICATION_HANDLER_ID"
            )
        cdk.Validations.of(handler).acknowledge(
            cdk.Acknowledgment(
                id=(
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
                    "service-role/AWSLambdaBasicExecutionRole]"
                ),
                reason=(
                    "CDK's own handler that writes the bucket notification at deploy "
                    "time; it only needs to write its logs."
                ),
            )
        )

    def _function(
        self,
        construct_id: str,
        settings: DeploymentSettings,
        *,
        code: lambda_.Code,
        handler: str,
        environment: dict[str, str],
        reserved_concurrency: int,
        description: str,
    ) -> lambda_.Function:
        sizing = settings.aggregator
        name = function_name(settings, construct_id.lower())
        log_group = logs.LogGroup(
            self,
            f"{construct_id}Logs",
            log_group_name=f"/aws/lambda/{name}",
            retention=LOG_RETENTION,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        # The group's ARN attribute ends in ":*", so the grant needs no wildcard here.
        log_group.grant_write(self.role)
        return lambda_.Function(
            self,
            construct_id,
            function_name=name,
            description=description,
            runtime=LAMBDA_RUNTIME,
            architecture=LAMBDA_ARCHITECTURE,
            code=code,
            handler=handler,
            role=self.role,
            memory_size=sizing.memory_mb,
            timeout=cdk.Duration.seconds(sizing.timeout_seconds),
            ephemeral_storage_size=cdk.Size.mebibytes(sizing.ephemeral_storage_mb),
            reserved_concurrent_executions=reserved_concurrency,
            environment=environment,
            log_group=log_group,
        )
