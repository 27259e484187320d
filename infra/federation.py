"""Assemble the federation's stacks into a CDK app, with cdk-nag checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.aggregation_stack import AggregationStack
from infra.config import DeploymentSettings
from infra.device_access_stack import DeviceAccessStack
from infra.monitoring_stack import MonitoringStack
from infra.registry_stack import RegistryStack
from infra.storage_stack import StorageStack


@dataclass(frozen=True)
class FederationStacks:
    """The stacks of one federation, by concern."""

    storage: StorageStack
    registry: RegistryStack
    aggregation: AggregationStack
    monitoring: MonitoringStack
    device_access: DeviceAccessStack

    def all(self) -> tuple[cdk.Stack, ...]:
        """Return every stack, in deployment order."""
        return (
            self.storage,
            self.registry,
            self.aggregation,
            self.monitoring,
            self.device_access,
        )


def build_federation(
    app: cdk.App,
    settings: DeploymentSettings,
    *,
    source_root: Path,
    env: cdk.Environment | None = None,
) -> FederationStacks:
    """Add the stacks of ``settings.federation`` to ``app``.

    Parameters
    ----------
    app
        App (or stage) that receives the stacks.
    settings
        Names, sizing and thresholds, from :func:`infra.config.load_settings`.
    source_root
        Repository root: the aggregator asset is bundled from its ``fedcore/`` and
        ``lambdas/`` packages and its ``requirements-lambda.txt``.
    env
        Target account and region; environment-agnostic stacks when omitted.
    """
    federation = settings.federation

    def stack_props(concern: str) -> dict[str, object]:
        return {
            "stack_name": f"{federation}-{concern}",
            "description": f"Serverless federated learning {federation}: {concern}",
            "env": env,
        }

    storage = StorageStack(
        app, f"{federation}-storage", settings=settings, **stack_props("storage")
    )
    registry = RegistryStack(
        app, f"{federation}-registry", settings=settings, **stack_props("registry")
    )
    aggregation = AggregationStack(
        app,
        f"{federation}-aggregation",
        settings=settings,
        source_root=source_root,
        **stack_props("aggregation"),
    )
    aggregation.add_stack_dependency(storage)
    # The role may register versions only once the group exists.
    aggregation.add_stack_dependency(registry)
    monitoring = MonitoringStack(
        app,
        f"{federation}-monitoring",
        settings=settings,
        **stack_props("monitoring"),
    )
    monitoring.add_stack_dependency(aggregation)
    device_access = DeviceAccessStack(
        app,
        f"{federation}-device-access",
        settings=settings,
        **stack_props("device-access"),
    )
    device_access.add_stack_dependency(storage)
    stacks = FederationStacks(storage, registry, aggregation, monitoring, device_access)
    for stack in stacks.all():
        cdk.Tags.of(stack).add("federation", federation)
    return stacks


def add_nag_checks(app: cdk.App) -> None:
    """Run the AWS Solutions rules of cdk-nag at synthesis.

    Synthesis then fails with ``ValidationFailed`` while any finding lacks an
    acknowledgment; each acknowledgment sits on the one resource it concerns.
    """
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
