"""Creates in the embedded AWS the resources the CDK stacks define.

Names and settings come from :class:`infra.config.DeploymentSettings`, as in the
stacks. The only difference is the SQS visibility timeout: the stacks use six
times the function timeout, which would make a local retry wait minutes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fedcore.layout import UPDATES_PREFIX
from infra.config import DeploymentSettings, aggregator_environment
from local_aws.server import ACCOUNT_ID, REGION, LocalAws

logger = logging.getLogger(__name__)

LOCAL_VISIBILITY_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class LocalResources:
    """Names and URLs of the resources created for one federation."""

    updates_bucket: str
    models_bucket: str
    queue_url: str
    dlq_url: str
    model_package_group: str

    def aggregator_environment(self, settings: DeploymentSettings) -> dict[str, str]:
        """Environment of the aggregator, as the stacks would set it."""
        return aggregator_environment(
            settings,
            updates_bucket=self.updates_bucket,
            models_bucket=self.models_bucket,
        )


def queue_arn(name: str) -> str:
    """ARN of a queue in the embedded AWS."""
    return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"


def create_resources(
    aws: LocalAws,
    settings: DeploymentSettings,
    *,
    visibility_timeout: int = LOCAL_VISIBILITY_TIMEOUT_SECONDS,
) -> LocalResources:
    """Create buckets, queues, the S3 notification and the model package group."""
    s3 = aws.client("s3")
    sqs = aws.client("sqs")
    for bucket in (settings.local_updates_bucket, settings.local_models_bucket):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    dlq_url = sqs.create_queue(
        QueueName=settings.local_dlq_name,
        Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)},
    )["QueueUrl"]
    redrive = {
        "deadLetterTargetArn": queue_arn(settings.local_dlq_name),
        "maxReceiveCount": settings.aggregator.max_receive_count,
    }
    queue_url = sqs.create_queue(
        QueueName=settings.local_queue_name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    # Only the updates bucket notifies, and only under updates/, as in the stacks:
    # nothing the aggregator writes to the models bucket can trigger it again.
    s3.put_bucket_notification_configuration(
        Bucket=settings.local_updates_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn(settings.local_queue_name),
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [{"Name": "prefix", "Value": UPDATES_PREFIX}]
                        }
                    },
                }
            ]
        },
    )
    aws.client("sagemaker").create_model_package_group(
        ModelPackageGroupName=settings.model_package_group_name,
        ModelPackageGroupDescription=(
            f"Global models of federation {settings.federation}"
        ),
    )
    logger.info(
        "created buckets %s and %s, queue %s, model package group %s",
        settings.local_updates_bucket,
        settings.local_models_bucket,
        settings.local_queue_name,
        settings.model_package_group_name,
    )
    return LocalResources(
        updates_bucket=settings.local_updates_bucket,
        models_bucket=settings.local_models_bucket,
        queue_url=queue_url,
        dlq_url=dlq_url,
        model_package_group=settings.model_package_group_name,
    )
