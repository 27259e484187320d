"""S3 objects with compare-and-swap, the only coordination the aggregator uses.

Every shared document is written either with ``If-None-Match: *`` (create once) or
with ``If-Match: <etag>`` (replace only the version that was read). S3 rejects a
losing writer with 412 PreconditionFailed, so concurrent invocations never overwrite
each other's state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from fedcore import jsontext
from lambdas.aggregator.clients import client

logger = logging.getLogger(__name__)

_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING_CODES = {"NoSuchKey", "NoSuchVersion", "404", "NotFound"}


class StoreError(RuntimeError):
    """An S3 call failed for a reason other than a lost race."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object exists, or changed since it was read."""


class ObjectMissing(StoreError):
    """The object or the version that was read does not exist."""


@dataclass(frozen=True)
class Document:
    """A JSON object read from S3 with the ETag that guards its next write."""

    body: dict[str, Any]
    etag: str


def error_code(exc: ClientError) -> str:
    """Return the AWS error code of a botocore error."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_precondition_failure(exc: ClientError) -> bool:
    """Tell whether an S3 error means a conditional write lost a race."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in _PRECONDITION_CODES or status in (409, 412)


def is_missing(exc: ClientError) -> bool:
    """Tell whether an S3 error means the object does not exist."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in _MISSING_CODES or status == 404


def read_json(bucket: str, key: str) -> Document | None:
    """Read a JSON object, or return None when it does not exist."""
    try:
        response = client("s3").get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise StoreError(f"reading s3://{bucket}/{key} failed: {exc}") from exc
    raw = response["Body"].read()
    try:
        body = jsontext.loads(raw)
    except ValueError as exc:
        raise StoreError(f"s3://{bucket}/{key} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise StoreError(f"s3://{bucket}/{key} is not a JSON object")
    return Document(body=body, etag=response["ETag"])


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, indent=1).encode("utf-8")


def write_json(
    bucket: str, key: str, body: dict[str, Any], *, if_match: str | None = None
) -> str:
    """Create (``if_match`` None) or replace a JSON object; return its new ETag.

    Raises
    ------
    PreconditionFailed
        If the object already exists (create) or changed since it was read (replace).
    """
    return put_bytes(
        bucket, key, _encode(body), content_type="application/json", if_match=if_match
    )


def put_bytes(
    bucket: str,
    key: str,
    data: bytes,
    *,
    content_type: str = "application/octet-stream",
    if_match: str | None = None,
) -> str:
    """Write bytes with a SHA-256 checksum, never overwriting by accident."""
    condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    try:
        response = client("s3").put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            **condition,
        )
    except ClientError as exc:
        if is_precondition_failure(exc):
            raise PreconditionFailed(
                f"conditional write of s3://{bucket}/{key} lost ({error_code(exc)})"
            ) from exc
        raise StoreError(f"writing s3://{bucket}/{key} failed: {exc}") from exc
    return str(response["ETag"])


def read_bytes(bucket: str, key: str, *, version_id: str | None = None) -> bytes:
    """Read an object's bytes; a missing object or version raises ObjectMissing."""
    extra = {"VersionId": version_id} if version_id else {}
    try:
        response = client("s3").get_object(Bucket=bucket, Key=key, **extra)
    except ClientError as exc:
        missing = is_missing(exc)
        kind = ObjectMissing if missing else StoreError
        raise kind(f"reading s3://{bucket}/{key} failed: {exc}") from exc
    return bytes(response["Body"].read())


def read_optional_bytes(bucket: str, key: str) -> bytes | None:
    """Read an object's bytes, or return None when it does not exist."""
    try:
        response = client("s3").get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise StoreError(f"reading s3://{bucket}/{key} failed: {exc}") from exc
    return bytes(response["Body"].read())


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
