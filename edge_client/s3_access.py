"""S3 access of the edge client: the boto3 client and object downloads.

:func:`make_s3_client` creates the client with standard-mode retries and explicit
timeouts. :func:`get_object` and :func:`read_body` download an object and turn
botocore's errors into the exceptions of :mod:`edge_client.errors`, with messages
that name the bucket, key and device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from edge_client.errors import (
    ModelIntegrityError,
    NetworkError,
    PointerNotFoundError,
    StorageError,
)
from fedcore import layout

NETWORK_ERRORS = (BotoConnectionError, HTTPClientError)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_retries: int = 4,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Any:
    """Create an S3 client with standard-mode retries and explicit timeouts.

    Parameters
    ----------
    endpoint_url
        S3 endpoint, for example a local S3 on ``http://127.0.0.1:<port>``; ``None``
        uses AWS.
    region
        AWS region; ``None`` uses ``AWS_REGION``/``AWS_DEFAULT_REGION`` or the profile.
    max_retries
        Retries after the first attempt of each request. botocore's retry setting
        ``max_attempts`` counts retries only, so a request is sent at most
        ``max_retries + 1`` times.
    connect_timeout, read_timeout
        Seconds before a connection attempt or a read counts as failed and is retried.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": max_retries},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = boto3.session.Session()
    return session.client(
        "s3", region_name=region, endpoint_url=endpoint_url, config=config
    )


def object_location(bucket: str, key: str, device_id: str) -> str:
    """Return ``s3://<bucket>/<key> (device <device_id>)`` for messages."""
    return f"s3://{bucket}/{key} (device {device_id})"


def get_object(
    s3: Any, bucket: str, key: str, *, device_id: str, **kwargs: Any
) -> dict[str, Any]:
    """Send a GetObject request with ``kwargs`` as extra request parameters.

    Raises
    ------
    PointerNotFoundError
        If ``key`` is the pointer key and the object does not exist.
    NetworkError
        If the request failed with a connection error after botocore's retries.
    StorageError
        If S3 rejects the request or botocore fails otherwise.
    """
    where = object_location(bucket, key, device_id)
    try:
        response: dict[str, Any] = s3.get_object(Bucket=bucket, Key=key, **kwargs)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES and key == layout.POINTER_KEY:
            raise PointerNotFoundError(
                f"no global model is published: {where} "
                "not found; start the federation or check the models bucket name"
            ) from exc
        raise StorageError(f"download of {where} failed: {code or exc}") from exc
    except NETWORK_ERRORS as exc:
        raise NetworkError(f"download of {where} failed after retries: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"download of {where} failed: {exc}") from exc
    return response


def read_body(
    response: Mapping[str, Any], bucket: str, key: str, *, device_id: str
) -> bytes:
    """Read the body of a GetObject response.

    Raises
    ------
    NetworkError
        If the connection breaks or the body arrives incomplete.
    ModelIntegrityError
        If the body fails the S3 checksum check.
    StorageError
        If botocore fails otherwise.
    """
    where = object_location(bucket, key, device_id)
    try:
        body: bytes = response["Body"].read()
    except (*NETWORK_ERRORS, IncompleteReadError) as exc:
        raise NetworkError(f"download of {where} was cut off: {exc}") from exc
    except FlexibleChecksumError as exc:
        raise ModelIntegrityError(
            f"download of {where} failed the S3 checksum check: {exc}"
        ) from exc
    except BotoCoreError as exc:
        raise StorageError(f"download of {where} failed: {exc}") from exc
    return body
