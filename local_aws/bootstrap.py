"""Publishes the initial global model, the server holdout and the first pointer.

Works against AWS or the embedded AWS alike: it only needs an S3 client.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from fedcore import layout, safetensors_io
from fedcore.update import FORMAT_VERSION
from lambdas.aggregator.state import pointer_body
from lambdas.aggregator.store import sha256_hex

logger = logging.getLogger(__name__)

FIRST_ROUND = 1


class AlreadyInitializedError(RuntimeError):
    """The federation already has a pointer; initializing again would reset it."""


def initialize_federation(
    s3: Any,
    models_bucket: str,
    tensors: Mapping[str, np.ndarray],
    *,
    architecture: str,
    holdout: tuple[np.ndarray, np.ndarray] | None = None,
) -> str:
    """Write the first global model and pointer; return the model's SHA-256.

    Raises
    ------
    AlreadyInitializedError
        If ``global/pointer.json`` exists: the pointer is never overwritten.
    """
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": "model",
        "architecture": architecture,
        "round": str(FIRST_ROUND),
        "produced_by_round": "0",
    }
    model_bytes = safetensors_io.encode(tensors, metadata)
    model_key = layout.model_key(FIRST_ROUND)
    _put_once(s3, models_bucket, model_key, model_bytes)
    if holdout is not None:
        holdout_bytes = safetensors_io.encode(
            {"x": holdout[0].astype(np.float32), "y": holdout[1].astype(np.int64)},
            {"format_version": FORMAT_VERSION, "kind": "holdout"},
        )
        _put_once(s3, models_bucket, layout.HOLDOUT_KEY, holdout_bytes)
    digest = sha256_hex(model_bytes)
    pointer = pointer_body(FIRST_ROUND, model_key, digest, time.time())
    try:
        s3.put_object(
            Bucket=models_bucket,
            Key=layout.POINTER_KEY,
            Body=json.dumps(pointer, sort_keys=True, indent=1).encode(),
            ContentType="application/json",
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise AlreadyInitializedError(
                f"s3://{models_bucket}/{layout.POINTER_KEY} exists: the federation is "
                "already initialized"
            ) from exc
        raise
    logger.info("initialized federation in %s with %s", models_bucket, model_key)
    return digest


def _put_once(s3: Any, bucket: str, key: str, data: bytes) -> None:
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType="application/octet-stream",
            ChecksumAlgorithm="SHA256",
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "PreconditionFailed",
            "412",
        ):
            raise
        existing = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if existing != data:
            raise AlreadyInitializedError(
                f"s3://{bucket}/{key} exists with other content"
            ) from exc
