"""Device access: the role devices assume through the AWS IoT credentials provider.

A device authenticates with its X.509 certificate at the account's credentials
provider endpoint, names the role alias and its thing name, and receives temporary
credentials of :attr:`DeviceAccessStack.role`. The credentials provider sets the policy
variable ``${credentials-iot:ThingName}``, which confines each device's uploads to
``updates/<thing name>/``. Devices read the pointer, the published models and their
own uploads; they cannot list, delete or read anything else.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from constructs import Construct

from fedcore.layout import POINTER_KEY, UPDATES_PREFIX
from infra.config import DeploymentSettings
from infra.storage_stack import import_storage

THING_NAME = "${credentials-iot:ThingName}"
MODELS_PREFIX = "models/"
CREDENTIAL_SECONDS = 3600


class DeviceAccessStack(cdk.Stack):
    """Device role, its IoT role alias and the IoT policy that allows the alias."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        storage = import_storage(self, settings)
        key = storage.key
        updates_bucket = storage.updates_bucket
        models_bucket = storage.models_bucket
        federation = settings.federation
        self.role = iam.Role(
            self,
            "DeviceRole",
            assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"),
            description=f"Devices of federation {federation}, via the IoT role alias",
            max_session_duration=cdk.Duration.seconds(CREDENTIAL_SECONDS),
        )
        policy = iam.Policy(
            self,
            "DevicePolicy",
            statements=[
                iam.PolicyStatement(
                    sid="ReadPointerAndModels",
                    actions=["s3:GetObject"],
                    resources=[
                        models_bucket.arn_for_objects(POINTER_KEY),
                        models_bucket.arn_for_objects(f"{MODELS_PREFIX}*"),
                    ],
                ),
                # The aggregator must be able to read every upload. An archive
                # storage class or a customer-provided key would make each read
                # fail, so both are excluded here.
                iam.PolicyStatement(
                    sid="UploadOwnUpdates",
                    actions=["s3:PutObject"],
                    resources=[
                        updates_bucket.arn_for_objects(
                            f"{UPDATES_PREFIX}{THING_NAME}/*"
                        )
                    ],
                    conditions={
                        "StringEqualsIfExists": {"s3:x-amz-storage-class": "STANDARD"},
                        "Null": {
                            "s3:x-amz-server-side-encryption-customer-algorithm": (
                                "true"
                            )
                        },
                    },
                ),
                # After an upload answered 412 (a retry whose first attempt was
                # stored), the edge client reads its own object back to compare it.
                iam.PolicyStatement(
                    sid="ReadOwnUpdates",
                    actions=["s3:GetObject"],
                    resources=[
                        updates_bucket.arn_for_objects(
                            f"{UPDATES_PREFIX}{THING_NAME}/*"
                        )
                    ],
                ),
                iam.PolicyStatement(
                    sid="UseDataKeyThroughS3",
                    actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                    resources=[key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"s3.{self.region}.amazonaws.com"
                        }
                    },
                ),
            ],
        )
        policy.attach_to_role(self.role)
        exports = storage.exports
        cdk.Validations.of(policy).acknowledge(
            cdk.Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{exports.models_bucket_arn}/"
                f"{MODELS_PREFIX}*]",
                reason=(
                    "Devices read every published model; only the aggregator writes "
                    "under models/."
                ),
            ),
            cdk.Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::{exports.updates_bucket_arn}/"
                f"{UPDATES_PREFIX}<credentials-iot:ThingName>/*]",
                reason=(
                    "Each device may upload and read back only under its own thing "
                    "name, which the IoT credentials provider sets from the device "
                    "certificate."
                ),
            ),
        )
        self.role_alias = iot.CfnRoleAlias(
            self,
            "DeviceRoleAlias",
            role_alias=f"{federation}-device",
            role_arn=self.role.role_arn,
            credential_duration_seconds=CREDENTIAL_SECONDS,
        )
        self.iot_policy = iot.CfnPolicy(
            self,
            "DeviceCredentialsPolicy",
            policy_name=f"{federation}-device-credentials",
            policy_document={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "iot:AssumeRoleWithCertificate",
                        "Resource": self.role_alias.attr_role_alias_arn,
                    }
                ],
            },
        )
        cdk.CfnOutput(
            self,
            "RoleAliasName",
            value=self.role_alias.ref,
            description="IoT role alias devices name to get temporary credentials",
        )
        cdk.CfnOutput(
            self,
            "IotPolicyName",
            value=self.iot_policy.ref,
            description="IoT policy to attach to each device certificate",
        )
