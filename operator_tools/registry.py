"""``sfl approve`` and ``sfl reject``: decide on registered global model versions.

The aggregator registers every published model as ``PendingManualApproval``. An
operator approves a version before it may be deployed, or rejects it with a reason
that is stored as the version's ``ApprovalDescription``.

Every update passes the version's current ``CustomerMetadataProperties`` again.
The UpdateModelPackage API removes properties only through
``CustomerMetadataPropertiesToRemove``, but moto 5.2.5 drops every stored property
when an update leaves them out. Passing them again is correct in both, and the
properties (round, participants, holdout accuracy, model key) tie a version to its
round.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from operator_tools.context import OperatorContext, aws_error
from operator_tools.errors import ConflictError, InvalidInputError, NotFoundError

APPROVED = "Approved"
REJECTED = "Rejected"
PENDING = "PendingManualApproval"
_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:(?P<region>[a-z0-9-]+):[0-9]{12}:model-package/"
    r"(?P<group>[^/]+)/(?P<version>[0-9]+)\Z"
)


def resolve_version(context: OperatorContext, version: str) -> dict[str, Any]:
    """Describe the model package named by a version number or an ARN.

    Raises
    ------
    InvalidInputError
        If ``version`` is neither a positive integer nor a model package ARN, or an
        ARN of another group or region.
    NotFoundError
        If the group contains no such version.
    """
    sagemaker = context.client("sagemaker")
    match = _ARN.match(version)
    if match:
        if match["group"] != context.model_package_group:
            raise InvalidInputError(
                f"{version} belongs to group {match['group']!r}, not "
                f"{context.model_package_group!r}: pass --model-package-group"
            )
        if context.region and match["region"] != context.region:
            raise InvalidInputError(
                f"{version} is in region {match['region']}, but the command runs in "
                f"{context.region}: pass --region {match['region']}"
            )
        return _describe(sagemaker, version, context.model_package_group)
    if not version.isdigit() or int(version) < 1:
        raise InvalidInputError(
            f"model version {version!r} is invalid: expected a version number such "
            "as 3 or a model package ARN"
        )
    number = int(version)
    try:
        paginator = sagemaker.get_paginator("list_model_packages")
        for page in paginator.paginate(
            ModelPackageGroupName=context.model_package_group
        ):
            for summary in page.get("ModelPackageSummaryList", []):
                if int(summary.get("ModelPackageVersion", 0)) == number:
                    return _describe(
                        sagemaker,
                        summary["ModelPackageArn"],
                        context.model_package_group,
                    )
    except ClientError as exc:
        if _is_missing(exc):
            raise NotFoundError(
                f"model package group {context.model_package_group!r} does not "
                "exist: pass the group of the stack with --model-package-group"
            ) from exc
        raise aws_error(
            f"listing versions of group {context.model_package_group!r}", exc
        ) from exc
    except BotoCoreError as exc:
        raise aws_error(
            f"listing versions of group {context.model_package_group!r}", exc
        ) from exc
    raise NotFoundError(
        f"model version {number} does not exist in group "
        f"{context.model_package_group!r}: list versions with sfl rounds"
    )


def _describe(sagemaker: Any, arn: str, group: str) -> dict[str, Any]:
    try:
        return dict(sagemaker.describe_model_package(ModelPackageName=arn))
    except ClientError as exc:
        if _is_missing(exc):
            raise NotFoundError(
                f"model package {arn} does not exist in group {group!r}"
            ) from exc
        raise aws_error(f"describing model package {arn}", exc) from exc
    except BotoCoreError as exc:
        raise aws_error(f"describing model package {arn}", exc) from exc


def _is_missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    message = str(error.get("Message", "")).lower()
    # SageMaker reports a missing package as ValidationException "... not found".
    return code == "ResourceNotFound" or (
        code == "ValidationException"
        and ("not found" in message or "does not exist" in message)
    )


def set_approval(
    context: OperatorContext,
    version: str,
    status: str,
    description: str,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Set a version's approval status, keeping its metadata properties.

    Returns
    -------
    dict
        The version as described after the update.

    Raises
    ------
    ConflictError
        If the version already has ``status``, or if approving a rejected version
        without ``force``.
    NotFoundError, InvalidInputError
        From :func:`resolve_version`.
    """
    package = resolve_version(context, version)
    arn = package["ModelPackageArn"]
    label = f"model version {package.get('ModelPackageVersion')} ({arn})"
    current = package.get("ModelApprovalStatus")
    if current == status:
        raise ConflictError(f"{label} is already {status}: nothing to change")
    if status == APPROVED and current == REJECTED and not force:
        reason = package.get("ApprovalDescription") or "no reason recorded"
        raise ConflictError(
            f"{label} was rejected ({reason!r}): pass --force to approve it anyway"
        )
    request: dict[str, Any] = {
        "ModelPackageArn": arn,
        "ModelApprovalStatus": status,
        "ApprovalDescription": description,
    }
    properties = package.get("CustomerMetadataProperties")
    if properties:
        request["CustomerMetadataProperties"] = properties
    sagemaker = context.client("sagemaker")
    try:
        sagemaker.update_model_package(**request)
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(f"setting {label} to {status}", exc) from exc
    return _describe(sagemaker, arn, context.model_package_group)


def run_approve(
    context: OperatorContext, version: str, description: str, *, force: bool = False
) -> str:
    """Approve a version; return the line ``sfl approve`` prints.

    A rejected version is approved only with ``force``.
    """
    package = set_approval(context, version, APPROVED, description, force=force)
    return _summary(package)


def run_reject(context: OperatorContext, version: str, reason: str) -> str:
    """Reject a version with a reason; return the line ``sfl reject`` prints."""
    if not reason.strip():
        raise InvalidInputError("--reason is empty: say why the version is rejected")
    package = set_approval(context, version, REJECTED, reason)
    return _summary(package)


def _summary(package: dict[str, Any]) -> str:
    properties = package.get("CustomerMetadataProperties") or {}
    round_number = properties.get("round", "?")
    accuracy = properties.get("holdout_accuracy", "-")
    return (
        f"model version {package.get('ModelPackageVersion')} of round {round_number} "
        f"(holdout accuracy {accuracy}) is now {package.get('ModelApprovalStatus')}: "
        f"{package['ModelPackageArn']}"
    )
