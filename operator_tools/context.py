"""Endpoint, region and resource names of the federation a command acts on.

Resource names default to the ones :mod:`infra.config` gives the embedded AWS. Against
AWS, CloudFormation names the buckets, so the operator passes the stack outputs with
``--models-bucket`` and ``--updates-bucket``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from fedcore import jsontext
from infra.config import DeploymentSettings, SettingsError, load_settings
from operator_tools.errors import (
    AwsCallError,
    InvalidInputError,
    NotFoundError,
    StoredDocumentError,
)

# Region of the embedded AWS, used when an endpoint is given and nothing else is set.
LOCAL_REGION = "us-east-1"
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})
# Longest AWS error message quoted in a one-line error.
MAX_MESSAGE_CHARS = 300
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def default_settings() -> DeploymentSettings:
    """Load the deployment settings of ``cdk.json``.

    Raises
    ------
    InvalidInputError
        If ``cdk.json`` cannot be read or contains invalid settings.
    """
    try:
        return load_settings()
    except SettingsError as exc:
        raise InvalidInputError(f"invalid deployment settings: {exc}") from exc


def add_aws_arguments(
    parser: argparse.ArgumentParser, settings: DeploymentSettings
) -> None:
    """Add the endpoint, region and resource name options every command shares."""
    group = parser.add_argument_group("federation")
    group.add_argument(
        "--endpoint-url",
        help="AWS endpoint, e.g. http://127.0.0.1:5000 for the embedded AWS "
        "(default: AWS_ENDPOINT_URL, else AWS itself)",
    )
    group.add_argument(
        "--region", help="AWS region (default: AWS_REGION or the AWS profile)"
    )
    group.add_argument(
        "--models-bucket",
        default=settings.local_models_bucket,
        help="bucket with the pointer, round states and models (default: %(default)s)",
    )
    group.add_argument(
        "--updates-bucket",
        default=settings.local_updates_bucket,
        help="bucket the devices upload to (default: %(default)s)",
    )
    group.add_argument(
        "--model-package-group",
        default=settings.model_package_group_name,
        help="SageMaker model package group (default: %(default)s)",
    )
    group.add_argument(
        "--federation",
        default=settings.federation,
        help="federation name: metric dimension and alarm name prefix "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--metric-namespace",
        default=settings.metric_namespace,
        help="CloudWatch namespace of the aggregator (default: %(default)s)",
    )


@dataclass(frozen=True)
class StoredJson:
    """A JSON object read from S3, with the ETag to condition a rewrite on."""

    body: dict[str, Any]
    etag: str


@dataclass(frozen=True)
class OperatorContext:
    """Endpoint, region and resource names of the federation a command acts on."""

    endpoint_url: str | None
    region: str | None
    models_bucket: str
    updates_bucket: str
    model_package_group: str
    federation: str
    metric_namespace: str

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> OperatorContext:
        """Build a context from the options of :func:`add_aws_arguments`."""
        # boto3 reads AWS_DEFAULT_REGION and the profile, not AWS_REGION.
        # An empty variable counts as unset, as it does for the AWS CLI.
        region = (
            args.region
            or os.environ.get("AWS_REGION")
            or boto3.session.Session().region_name
            or None
        )
        if region is None and (args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")):
            region = LOCAL_REGION
        return cls(
            endpoint_url=args.endpoint_url,
            region=region,
            models_bucket=args.models_bucket,
            updates_bucket=args.updates_bucket,
            model_package_group=args.model_package_group,
            federation=args.federation,
            metric_namespace=args.metric_namespace,
        )

    def client(self, service: str) -> Any:
        """Return a boto3 client for ``service`` at this endpoint and region.

        Raises
        ------
        InvalidInputError
            If no region is set anywhere.
        """
        try:
            return boto3.session.Session().client(
                service,
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=_CLIENT_CONFIG,
            )
        except NoRegionError as exc:
            raise InvalidInputError(
                "no AWS region is set: pass --region, or set AWS_REGION or "
                "AWS_DEFAULT_REGION"
            ) from exc

    def read_json(self, key: str, *, s3: Any | None = None) -> StoredJson | None:
        """Read a JSON object from the models bucket, or None if it does not exist.

        Raises
        ------
        StoredDocumentError
            If the object is not a JSON object.
        AwsCallError
            If S3 fails.
        """
        client = s3 or self.client("s3")
        try:
            response = client.get_object(Bucket=self.models_bucket, Key=key)
            payload = response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise aws_error(f"reading s3://{self.models_bucket}/{key}", exc) from exc
        except BotoCoreError as exc:
            raise aws_error(f"reading s3://{self.models_bucket}/{key}", exc) from exc
        etag = str(response.get("ETag", ""))
        try:
            body = jsontext.loads(payload)
        except ValueError as exc:
            raise StoredDocumentError(
                f"s3://{self.models_bucket}/{key} is not valid JSON: {exc}", etag
            ) from exc
        if not isinstance(body, dict):
            raise StoredDocumentError(
                f"s3://{self.models_bucket}/{key} is not a JSON object", etag
            )
        return StoredJson(body=body, etag=etag)

    def list_keys(self, prefix: str, *, s3: Any | None = None) -> list[str]:
        """List every key under ``prefix`` in the models bucket.

        Raises
        ------
        NotFoundError
            If the bucket does not exist.
        AwsCallError
            If S3 fails otherwise.
        """
        client = s3 or self.client("s3")
        keys: list[str] = []
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.models_bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise NotFoundError(
                    f"bucket {self.models_bucket!r} does not exist: pass the models "
                    "bucket of the stack with --models-bucket"
                ) from exc
            raise aws_error(f"listing s3://{self.models_bucket}/{prefix}", exc) from exc
        except BotoCoreError as exc:
            raise aws_error(f"listing s3://{self.models_bucket}/{prefix}", exc) from exc
        return keys


def aws_error(action: str, exc: Exception) -> AwsCallError:
    """Wrap a botocore error in an :class:`AwsCallError` naming the action."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        message = str(error.get("Message", exc))
        if message.lstrip().startswith("<"):
            # moto's server returns an HTML page for a call it does not implement.
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = (
                f"HTTP {status} with an HTML page instead of an AWS error; an "
                "embedded AWS answers this way for a call it does not implement, "
                "such as UpdateEndpoint"
            )
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "..."
        detail = f"{error.get('Code', 'error')}: {message}"
    else:
        detail = str(exc)
    return AwsCallError(f"{action} failed: {detail}")
