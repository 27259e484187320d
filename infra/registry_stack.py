"""Registry: the SageMaker model package group that versions the global models."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.config import DeploymentSettings


class RegistryStack(cdk.Stack):
    """Model package group into which the aggregator registers each published model.

    Every version starts as ``PendingManualApproval``; an operator approves it with
    ``UpdateModelPackage``. The group is retained with the stack, because deleting it
    would fail while it still contains versions.
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
        self.model_package_group = sagemaker.CfnModelPackageGroup(
            self,
            "GlobalModelGroup",
            model_package_group_name=settings.model_package_group_name,
            model_package_group_description=(
                f"Global models published by federation {settings.federation}"
            ),
        )
        self.model_package_group.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
