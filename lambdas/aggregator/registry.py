"""Registration of published global models in the SageMaker Model Registry.

Registration is idempotent per round: a marker object records the version created
for a round, and before creating a version the group is searched for one that
already carries the round in its CustomerMetadataProperties.

A ``dp_fedavg`` version also carries ``dp_epsilon``, ``dp_delta``,
``dp_noise_multiplier`` and ``dp_clip_norm`` in its CustomerMetadataProperties.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from fedcore import layout
from lambdas.aggregator import store
from lambdas.aggregator.clients import client
from lambdas.aggregator.config import AggregatorConfig

logger = logging.getLogger(__name__)

_SEARCH_DEPTH = 20
# Privacy fields of a private model's metadata that the registry and the evaluation
# document repeat.
PRIVACY_FIELDS = ("dp_epsilon", "dp_delta", "dp_noise_multiplier", "dp_clip_norm")


class RegistryError(RuntimeError):
    """A call to the SageMaker Model Registry failed."""


def privacy_properties(metadata: dict[str, str]) -> dict[str, str]:
    """Return the ``dp_*`` registry properties of a model's metadata; {} if none."""
    return {name: metadata[name] for name in PRIVACY_FIELDS if name in metadata}


def privacy_figures(metadata: dict[str, str]) -> dict[str, float]:
    """Return the ``dp_*`` fields of a model's metadata as numbers."""
    return {name: float(value) for name, value in privacy_properties(metadata).items()}


def find_version(group: str, round_number: int) -> str | None:
    """Return the ARN of the newest version registered for ``round_number``, if any."""
    sagemaker = client("sagemaker")
    try:
        listing = sagemaker.list_model_packages(
            ModelPackageGroupName=group,
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=_SEARCH_DEPTH,
        )
        for summary in listing.get("ModelPackageSummaryList", []):
            arn = summary["ModelPackageArn"]
            described = sagemaker.describe_model_package(ModelPackageName=arn)
            properties = described.get("CustomerMetadataProperties", {})
            if properties.get("round") == str(round_number):
                return str(arn)
    except ClientError as exc:
        raise RegistryError(
            f"searching model package group {group!r} for round {round_number} "
            f"failed: {exc}"
        ) from exc
    return None


def register_round(
    config: AggregatorConfig,
    *,
    round_number: int,
    properties: dict[str, str],
    evaluation_uri: str,
    archive_uri: str,
) -> str:
    """Register the model published by ``round_number`` once; return its version ARN."""
    marker_key = layout.registration_key(round_number)
    marker = store.read_json(config.models_bucket, marker_key)
    if marker is not None and marker.body.get("model_package_arn"):
        return str(marker.body["model_package_arn"])
    arn = find_version(config.model_package_group, round_number)
    if arn is None:
        arn = _create_version(
            config,
            round_number=round_number,
            properties=properties,
            evaluation_uri=evaluation_uri,
            archive_uri=archive_uri,
        )
        logger.info("registered round %s as %s", round_number, arn)
    else:
        logger.info("round %s was already registered as %s", round_number, arn)
    try:
        store.write_json(
            config.models_bucket,
            marker_key,
            {"round": round_number, "model_package_arn": arn},
        )
    except store.PreconditionFailed:
        logger.info(
            "registration marker of round %s was written by another closer",
            round_number,
        )
    return arn


def _create_version(
    config: AggregatorConfig,
    *,
    round_number: int,
    properties: dict[str, str],
    evaluation_uri: str,
    archive_uri: str,
) -> str:
    request: dict[str, Any] = {
        "ModelPackageGroupName": config.model_package_group,
        "ModelPackageDescription": f"Global model published by round {round_number}",
        "ModelApprovalStatus": "PendingManualApproval",
        "CustomerMetadataProperties": properties,
        "ModelMetrics": {
            "ModelQuality": {
                "Statistics": {
                    "ContentType": "application/json",
                    "S3Uri": evaluation_uri,
                }
            }
        },
        "ClientToken": f"{config.federation}-round-{round_number}",
    }
    if config.inference_image:
        request["InferenceSpecification"] = {
            "Containers": [
                {"Image": config.inference_image, "ModelDataUrl": archive_uri}
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        }
    try:
        response = client("sagemaker").create_model_package(**request)
    except ClientError as exc:
        raise RegistryError(
            f"registering round {round_number} in group {config.model_package_group!r} "
            f"failed: {exc}"
        ) from exc
    return str(response["ModelPackageArn"])
