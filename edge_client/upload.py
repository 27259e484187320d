"""Upload of an update as a conditional write, with retries after network errors.

:func:`upload_update` stores the bytes with ``If-None-Match: *`` so that no upload
ever overwrites an object. After a connection error or timeout it sends the same
bytes to the same key again. A 412 response then means an earlier attempt stored
the object, which is confirmed by comparing the stored SHA-256 checksum with the
checksum of the bytes sent. :class:`UploadResult` describes one finished upload.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from edge_client.errors import NetworkError, StorageError, UploadConflictError
from edge_client.s3_access import NETWORK_ERRORS, get_object, object_location, read_body

logger = logging.getLogger(__name__)

_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
# S3 returns 409 ConditionalRequestConflict while another conditional write to the
# same key is in flight; the write may be retried.
_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "409"})


@dataclass(frozen=True)
class UploadResult:
    """Outcome of one device's upload for one round."""

    bucket: str
    key: str
    round: int
    update_id: str
    size_bytes: int
    sha256: str
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    already_stored: bool = False


def upload_update(
    s3: Any,
    bucket: str,
    key: str,
    body: bytes,
    *,
    device_id: str,
    attempts: int,
    retry_delay: float,
) -> bool:
    """Store ``body`` at ``key`` in ``bucket`` without overwriting.

    A connection error or timeout after botocore's retries leads to the same
    request again, up to ``attempts`` times in all.

    Parameters
    ----------
    s3
        A boto3 S3 client.
    bucket, key
        Where the update is stored.
    body
        Bytes of the update.
    device_id
        Device named in messages.
    attempts
        Maximum number of times the same request is sent.
    retry_delay
        Seconds before the second attempt, doubled for each further one.

    Returns
    -------
    bool
        ``False`` when this call stored the object, ``True`` when an earlier
        attempt had already stored these exact bytes (412 with an equal
        SHA-256 checksum).

    Raises
    ------
    UploadConflictError
        If the key contains different bytes, which are left as they are.
    NetworkError
        If every attempt failed with a connection error or timeout. The update
        may or may not be stored.
    StorageError
        If S3 rejects the upload, for example with AccessDenied.
    """
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    where = object_location(bucket, key, device_id)
    for attempt in range(1, attempts + 1):
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                ContentType="application/octet-stream",
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _PRECONDITION_CODES:
                _confirm_stored(
                    s3,
                    bucket,
                    key,
                    checksum=checksum,
                    body=body,
                    cause=exc,
                    device_id=device_id,
                )
                logger.info("%s was stored by an earlier attempt", where)
                return True
            if code not in _CONFLICT_CODES or attempt == attempts:
                raise StorageError(f"upload to {where} failed: {code}") from exc
            _log_retry(where, attempt, attempts, exc)
        except NETWORK_ERRORS as exc:
            if attempt == attempts:
                raise NetworkError(
                    f"upload to {where} failed {attempt} times: {exc}. The "
                    "update may or may not be stored; run again to retrain and "
                    "upload under a new update id"
                ) from exc
            _log_retry(where, attempt, attempts, exc)
        except BotoCoreError as exc:
            raise StorageError(f"upload to {where} failed: {exc}") from exc
        else:
            return False
        time.sleep(retry_delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _log_retry(where: str, attempt: int, attempts: int, exc: Exception) -> None:
    logger.warning(
        "upload to %s failed (attempt %d of %d): %s; sending the same bytes again",
        where,
        attempt,
        attempts,
        exc,
    )


def _confirm_stored(
    s3: Any,
    bucket: str,
    key: str,
    *,
    checksum: str,
    body: bytes,
    cause: ClientError,
    device_id: str,
) -> None:
    """Raise unless the object at ``key`` contains exactly ``body``."""
    where = object_location(bucket, key, device_id)
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(
            f"upload to {where} returned 412, and reading the stored object "
            f"failed: {exc}"
        ) from exc
    stored = head.get("ChecksumSHA256")
    if stored is None:
        # Objects stored without a SHA-256 checksum are compared byte for byte.
        response = get_object(s3, bucket, key, device_id=device_id)
        same = read_body(response, bucket, key, device_id=device_id) == body
    else:
        same = stored == checksum
    if not same:
        raise UploadConflictError(
            f"{where} already contains a different object (SHA-256 {stored}, ours "
            f"{checksum}); it was not overwritten. Upload under a new update id"
        ) from cause
