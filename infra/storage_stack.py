"""Storage: the KMS key, the updates and models buckets and their access-log bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fedcore.layout import UPDATES_PREFIX
from infra.config import DeploymentSettings

# Server access logs are audit records, kept longer than the raw updates they describe.
ACCESS_LOG_RETENTION_DAYS = 365
S3_LOGS_USE_BUCKET_POLICY = "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy"
# Uploads that never complete are charged for their parts until they are aborted.
ABORT_INCOMPLETE_UPLOAD_DAYS = 1


@dataclass(frozen=True)
class StorageExports:
    """CloudFormation export names of the storage stack, derived from the settings.

    Consumer stacks import these names instead of CDK's generated ones, so that the
    cdk-nag acknowledgments that quote a bucket ARN stay the same across changes.
    """

    key_arn: str
    updates_bucket_arn: str
    updates_bucket_name: str
    models_bucket_arn: str
    models_bucket_name: str

    @classmethod
    def for_settings(cls, settings: DeploymentSettings) -> StorageExports:
        """Return the export names of ``settings.federation``."""
        stem = settings.federation
        return cls(
            key_arn=f"{stem}-data-key-arn",
            updates_bucket_arn=f"{stem}-updates-bucket-arn",
            updates_bucket_name=f"{stem}-updates-bucket-name",
            models_bucket_arn=f"{stem}-models-bucket-arn",
            models_bucket_name=f"{stem}-models-bucket-name",
        )


@dataclass(frozen=True)
class ImportedStorage:
    """The storage stack's key and buckets as seen from a consumer stack."""

    exports: StorageExports
    key: kms.IKey
    updates_bucket: s3.IBucket
    models_bucket: s3.IBucket


def import_storage(scope: Construct, settings: DeploymentSettings) -> ImportedStorage:
    """Import the key and the data buckets into ``scope`` by their export names.

    The caller's stack must depend on the storage stack
    (``add_stack_dependency``), because an imported value does not add that
    dependency by itself.
    """
    exports = StorageExports.for_settings(settings)
    key = kms.Key.from_key_arn(scope, "DataKey", cdk.Fn.import_value(exports.key_arn))

    def bucket(construct_id: str, arn_export: str, name_export: str) -> s3.IBucket:
        return s3.Bucket.from_bucket_attributes(
            scope,
            construct_id,
            bucket_arn=cdk.Fn.import_value(arn_export),
            bucket_name=cdk.Fn.import_value(name_export),
            encryption_key=key,
        )

    return ImportedStorage(
        exports=exports,
        key=key,
        updates_bucket=bucket(
            "UpdatesBucket", exports.updates_bucket_arn, exports.updates_bucket_name
        ),
        models_bucket=bucket(
            "ModelsBucket", exports.models_bucket_arn, exports.models_bucket_name
        ),
    )


class StorageStack(cdk.Stack):
    """KMS key, updates bucket, models bucket and server access-log bucket.

    Devices upload to the updates bucket under ``updates/``; the aggregator writes only
    to the models bucket. The data buckets and the key are retained when the stack is
    deleted, because they hold the federation's models and its audit trail.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # Let S3 log delivery write through a bucket policy instead of the legacy
        # LogDeliveryWrite ACL, so the log bucket can disable ACLs like the others.
        self.node.set_context(S3_LOGS_USE_BUCKET_POLICY, True)
        self.key = kms.Key(
            self,
            "DataKey",
            alias=f"alias/{settings.federation}-data",
            description=(
                f"Encrypts the updates, models and update-event queues of federation "
                f"{settings.federation}"
            ),
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            # S3 server access logging delivers only to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            versioned=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=cdk.Duration.days(ACCESS_LOG_RETENTION_DAYS),
                    noncurrent_version_expiration=cdk.Duration.days(1),
                )
            ],
        )
        cdk.Validations.of(self.access_log_bucket).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-S1",
                reason=(
                    "This bucket is the server access log target of the data buckets; "
                    "logging it to itself or to another bucket would only log the logs."
                ),
            )
        )
        retention = cdk.Duration.days(settings.retention_days)
        self.updates_bucket = self._data_bucket(
            "UpdatesBucket",
            log_prefix="updates-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireRawUpdates",
                    prefix=UPDATES_PREFIX,
                    expiration=retention,
                    noncurrent_version_expiration=retention,
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(
                        ABORT_INCOMPLETE_UPLOAD_DAYS
                    ),
                )
            ],
        )
        self.models_bucket = self._data_bucket(
            "ModelsBucket",
            log_prefix="models-bucket/",
            lifecycle_rules=[
                # The pointer and the round state are rewritten many times a round;
                # their old versions are only needed for a short recovery window.
                s3.LifecycleRule(
                    id="ExpireOldVersions",
                    noncurrent_version_expiration=retention,
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(
                        ABORT_INCOMPLETE_UPLOAD_DAYS
                    ),
                )
            ],
        )
        exports = StorageExports.for_settings(settings)
        outputs = (
            ("DataKeyArn", exports.key_arn, self.key.key_arn, "Data key ARN"),
            (
                "UpdatesBucketArn",
                exports.updates_bucket_arn,
                self.updates_bucket.bucket_arn,
                "Updates bucket ARN",
            ),
            (
                "UpdatesBucketName",
                exports.updates_bucket_name,
                self.updates_bucket.bucket_name,
                "Bucket devices upload their updates to, under updates/<thing name>/",
            ),
            (
                "ModelsBucketArn",
                exports.models_bucket_arn,
                self.models_bucket.bucket_arn,
                "Models bucket ARN",
            ),
            (
                "ModelsBucketName",
                exports.models_bucket_name,
                self.models_bucket.bucket_name,
                "Bucket devices read global/pointer.json and models/ from",
            ),
        )
        for output_id, export_name, value, description in outputs:
            cdk.CfnOutput(
                self,
                output_id,
                value=value,
                export_name=export_name,
                description=description,
            )

    def _data_bucket(
        self,
        construct_id: str,
        *,
        log_prefix: str,
        lifecycle_rules: list[s3.LifecycleRule],
    ) -> s3.Bucket:
        return s3.Bucket(
            self,
            construct_id,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix=log_prefix,
            lifecycle_rules=lifecycle_rules,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
