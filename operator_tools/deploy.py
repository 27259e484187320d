"""``sfl deploy``: serve an approved global model version from a serverless endpoint.

The command creates a SageMaker model from the version, an endpoint configuration
with a ``ServerlessConfig``, and then creates the endpoint or points an existing one
at the new configuration. Model and configuration names are derived from their
contents, so running the command twice reuses what the first run created.

A version registered without an inference image has no ``InferenceSpecification``.
Such a version is deployed with ``--image``: the container is that image, with the
version's ``model.tar.gz`` from the models bucket as its model data.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from operator_tools.context import OperatorContext, aws_error
from operator_tools.errors import ConflictError, InvalidInputError, NotFoundError
from operator_tools.registry import APPROVED, resolve_version

# Serverless inference limits of SageMaker: memory in 1 GB steps up to 6 GB.
MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_CONCURRENCY_LIMIT = 200
VARIANT_NAME = "AllTraffic"


@dataclass(frozen=True, kw_only=True)
class DeployRequest:
    """Options of one ``sfl deploy`` run."""

    version: str
    role_arn: str
    endpoint_name: str
    image: str | None = None
    memory_mb: int = 2048
    max_concurrency: int = 5


def archive_uri(package: dict[str, Any], models_bucket: str) -> str:
    """Find the ``model.tar.gz`` of a version.

    The evaluation report registered as ModelMetrics sits beside the archive, and
    the ``model_key`` metadata property names the safetensors file beside it too.

    Raises
    ------
    NotFoundError
        If the version records neither.
    """
    statistics = (
        package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
    )
    evaluation = statistics.get("S3Uri", "")
    if evaluation.startswith("s3://"):
        return posixpath.join(posixpath.dirname(evaluation), "model.tar.gz")
    model_key = (package.get("CustomerMetadataProperties") or {}).get("model_key")
    if model_key:
        folder = posixpath.dirname(model_key)
        return f"s3://{models_bucket}/{folder}/model.tar.gz"
    raise NotFoundError(
        f"{package['ModelPackageArn']} records no model location (no ModelMetrics "
        "and no model_key property): it was not registered by the aggregator"
    )


def _short_digest(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:8]


def _container(
    context: OperatorContext, package: dict[str, Any], image: str | None
) -> dict[str, Any]:
    if image:
        uri = archive_uri(package, context.models_bucket)
        _check_archive(context, uri)
        return {"Image": image, "ModelDataUrl": uri}
    if package.get("InferenceSpecification"):
        return {"ModelPackageName": package["ModelPackageArn"]}
    raise InvalidInputError(
        f"model version {package.get('ModelPackageVersion')} has no "
        "InferenceSpecification because no inference image was configured "
        "(fl:registry.inference_image): pass --image with an ECR image URI"
    )


def _check_archive(context: OperatorContext, uri: str) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        context.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise NotFoundError(f"model archive {uri} does not exist") from exc
        raise aws_error(f"reading {uri}", exc) from exc
    except BotoCoreError as exc:
        raise aws_error(f"reading {uri}", exc) from exc


def _exists(call: Any, **kwargs: Any) -> bool:
    """Tell whether a SageMaker describe call finds its resource."""
    try:
        call(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        message = str(error.get("Message", "")).lower()
        if error.get("Code") == "ValidationException" and (
            "could not find" in message or "not found" in message
        ):
            return False
        raise
    return True


def deploy(context: OperatorContext, request: DeployRequest) -> dict[str, str]:
    """Deploy an approved version; return the names of what it used or created.

    Raises
    ------
    ConflictError
        If the version is not Approved.
    InvalidInputError
        If the version needs ``--image`` and none was given, or a size is invalid.
    NotFoundError
        If the version or its model archive does not exist.
    """
    if request.memory_mb not in MEMORY_SIZES_MB:
        raise InvalidInputError(
            f"--memory-mb {request.memory_mb} is invalid: expected one of "
            f"{list(MEMORY_SIZES_MB)}"
        )
    if not 1 <= request.max_concurrency <= MAX_CONCURRENCY_LIMIT:
        raise InvalidInputError(
            f"--max-concurrency {request.max_concurrency} is invalid: expected "
            f"1 to {MAX_CONCURRENCY_LIMIT}"
        )
    package = resolve_version(context, request.version)
    number = package.get("ModelPackageVersion")
    status = package.get("ModelApprovalStatus")
    if status != APPROVED:
        raise ConflictError(
            f"model version {number} is {status}, not {APPROVED}: approve it first "
            f"with sfl approve {number}"
        )
    container = _container(context, package, request.image)
    stem = f"{context.federation}-v{number}"
    model_name = f"{stem}-{_short_digest([container, request.role_arn])}"
    serverless = {
        "MemorySizeInMB": request.memory_mb,
        "MaxConcurrency": request.max_concurrency,
    }
    config_name = f"{stem}-{_short_digest([model_name, serverless])}"
    sagemaker = context.client("sagemaker")
    action = "creating model"
    try:
        if not _exists(sagemaker.describe_model, ModelName=model_name):
            sagemaker.create_model(
                ModelName=model_name,
                ExecutionRoleArn=request.role_arn,
                Containers=[container],
            )
        action = "creating endpoint configuration"
        if not _exists(
            sagemaker.describe_endpoint_config, EndpointConfigName=config_name
        ):
            sagemaker.create_endpoint_config(
                EndpointConfigName=config_name,
                ProductionVariants=[
                    {
                        "VariantName": VARIANT_NAME,
                        "ModelName": model_name,
                        "ServerlessConfig": serverless,
                    }
                ],
            )
        action = "deploying endpoint"
        if _exists(sagemaker.describe_endpoint, EndpointName=request.endpoint_name):
            # NOTE: moto 5.2.5 does not implement UpdateEndpoint, so this branch
            # runs only against AWS.
            sagemaker.update_endpoint(
                EndpointName=request.endpoint_name, EndpointConfigName=config_name
            )
            outcome = "updated"
        else:
            sagemaker.create_endpoint(
                EndpointName=request.endpoint_name, EndpointConfigName=config_name
            )
            outcome = "created"
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(
            f"{action} for model version {number} (endpoint {request.endpoint_name!r})",
            exc,
        ) from exc
    return {
        "endpoint": request.endpoint_name,
        "outcome": outcome,
        "model": model_name,
        "endpoint_config": config_name,
        "model_package_arn": str(package["ModelPackageArn"]),
    }


def run_deploy(context: OperatorContext, request: DeployRequest) -> str:
    """Deploy and return the lines ``sfl deploy`` prints, the endpoint name first."""
    result = deploy(context, request)
    return "\n".join(
        [
            result["endpoint"],
            f"endpoint {result['endpoint']} {result['outcome']} from "
            f"{result['model_package_arn']}",
            f"model {result['model']}, endpoint config {result['endpoint_config']}",
        ]
    )
