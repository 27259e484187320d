"""Parsing of SQS records that carry S3 event notifications.

Everything here is outside input. A record that is not an S3 object-created event
for the updates bucket is classified, never trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from fedcore import jsontext
from fedcore.layout import UPDATES_PREFIX

logger = logging.getLogger(__name__)


class MalformedEvent(ValueError):
    """An SQS record whose body is not an S3 event notification."""


@dataclass(frozen=True)
class ObjectCreated:
    """One ``s3:ObjectCreated:*`` notification for the updates bucket."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    event_name: str
    sequencer: str


@dataclass(frozen=True)
class Ignored:
    """A notification that needs no work, with the reason it is ignored."""

    reason: str


def parse_record_body(
    body: str, *, updates_bucket: str
) -> Iterator[ObjectCreated | Ignored]:
    """Yield the notifications carried by one SQS message body.

    Raises
    ------
    MalformedEvent
        If the body is not JSON or lacks the fields of an S3 event.
    """
    try:
        document = jsontext.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(f"message body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedEvent("message body is not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        yield Ignored("s3:TestEvent sent when the notification was configured")
        return
    records = document.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("message body has no 'Records' list")
    for record in records:
        yield _parse_s3_record(record, updates_bucket=updates_bucket)


def _parse_s3_record(record: Any, *, updates_bucket: str) -> ObjectCreated | Ignored:
    if not isinstance(record, Mapping):
        raise MalformedEvent("an S3 record is not an object")
    event_name = record.get("eventName")
    if not isinstance(event_name, str):
        raise MalformedEvent("an S3 record has no eventName")
    if record.get("eventSource") not in (None, "aws:s3"):
        return Ignored(f"event source {record.get('eventSource')!r} is not aws:s3")
    if not event_name.startswith("ObjectCreated:"):
        return Ignored(f"event {event_name} is not ObjectCreated")
    s3 = record.get("s3")
    if not isinstance(s3, Mapping):
        raise MalformedEvent(f"{event_name} record has no 's3' object")
    bucket = _mapping(s3, "bucket").get("name")
    obj = _mapping(s3, "object")
    raw_key = obj.get("key")
    if not isinstance(bucket, str) or not isinstance(raw_key, str):
        raise MalformedEvent(f"{event_name} record lacks bucket name or object key")
    if bucket != updates_bucket:
        return Ignored(
            f"bucket {bucket!r} is not the updates bucket {updates_bucket!r}"
        )
    # S3 encodes the key like a form value: a space arrives as '+', a '+' as '%2B'.
    key = unquote_plus(raw_key)
    if not key.startswith(UPDATES_PREFIX):
        return Ignored(f"key {key!r} is outside {UPDATES_PREFIX}")
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedEvent(f"{event_name} record for {key!r} has size {size!r}")
    version = obj.get("versionId")
    return ObjectCreated(
        bucket=bucket,
        key=key,
        size=size,
        etag=str(obj.get("eTag", "")),
        version_id=version if isinstance(version, str) and version else None,
        event_name=event_name,
        sequencer=str(obj.get("sequencer", "")),
    )


def _mapping(parent: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = parent.get(name)
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"S3 record has no {name!r} object")
    return value
