"""Validation of uploaded updates and their admission into the open round.

Each update is checked before it can count: its key, its size from the event, its
round, its bytes and checksum, and its tensors against the round's global model.
Admission is one compare-and-swap on the round state per round and batch, so an
update is counted once however often its event is delivered.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fedcore import layout
from fedcore.errors import LayoutError, RejectReason, UpdateRejected
from fedcore.update import validate_update
from lambdas.aggregator import constants as names
from lambdas.aggregator import faults, state, store, telemetry
from lambdas.aggregator.clients import client
from lambdas.aggregator.config import AggregatorConfig
from lambdas.aggregator.events import ObjectCreated
from lambdas.aggregator.modelcache import load_model

logger = logging.getLogger(__name__)

# Storage failures that a later delivery of the same message may not meet.
RETRYABLE = (store.StoreError, state.StateError, ClientError, BotoCoreError)
# GetObject errors that no retry can fix, besides a missing object or version.
# InvalidObjectState: an archived storage class. InvalidRequest: an object
# encrypted with a customer-provided key, which S3 serves only with that key.
# MethodNotAllowed: a version that is a delete marker.
# NOTE: moto answers a delete-marker version with NoSuchVersion, so the
# MethodNotAllowed case runs only on AWS and no test reaches it.
UNREADABLE_CODES = frozenset(
    {"InvalidObjectState", "InvalidRequest", "MethodNotAllowed"}
)


@dataclass
class Outcome:
    """Result of one update event: accepted, duplicate or rejected."""

    key: str
    status: str
    reason: str = ""
    round: int | None = None


@dataclass
class _Candidate:
    event: ObjectCreated
    device_id: str
    round: int
    entry: dict[str, Any]


@dataclass
class BatchResult:
    """Outcomes of a batch, and rounds whose close this invocation claimed.

    ``failed`` lists the keys whose storage calls failed in a way a retry may
    fix. Only their messages are delivered again, so one object that S3 cannot
    serve holds up no other update of its batch.
    """

    outcomes: list[Outcome] = field(default_factory=list)
    claimed: list[tuple[int, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def reject(
    config: AggregatorConfig,
    event: ObjectCreated,
    round_number: int | None,
    reason: RejectReason,
    detail: str,
) -> Outcome:
    """Record a rejection once per object, log it and count it by reason."""
    record = {
        "key": event.key,
        "bucket": event.bucket,
        "version_id": event.version_id,
        "size": event.size,
        "etag": event.etag,
        "round": round_number,
        "reason": reason.value,
        "detail": detail,
        "rejected_at": state.iso_now(time.time()),
    }
    try:
        store.write_json(
            config.models_bucket, layout.rejection_key(round_number, event.key), record
        )
    except store.PreconditionFailed:
        logger.info(
            "rejection of %s was already recorded (%s)", event.key, reason.value
        )
        return Outcome(event.key, "rejected", reason.value, round_number)
    logger.warning(
        "rejected %s: %s: %s", layout.clipped(event.key), reason.value, detail
    )
    telemetry.emit_rejection(
        config.metric_namespace, config.federation, reason.value, round_number
    )
    return Outcome(event.key, "rejected", reason.value, round_number)


def _download(
    config: AggregatorConfig, event: ObjectCreated
) -> tuple[bytes, str | None]:
    """Read an update and check its length and S3 SHA-256 checksum.

    Returns the bytes and the version that was read. An event without a
    ``versionId`` reads the newest version, so the round records the version S3
    returned, and the close reads those same bytes even if the key is
    overwritten later.
    """
    extra = {"VersionId": event.version_id} if event.version_id else {}
    try:
        response = client("s3").get_object(
            Bucket=event.bucket, Key=event.key, ChecksumMode="ENABLED", **extra
        )
    except ClientError as exc:
        if store.is_missing(exc) or store.error_code(exc) in UNREADABLE_CODES:
            # Every retry would fail the same way, so the update is rejected
            # instead of failing its message until the DLQ.
            raise UpdateRejected(
                RejectReason.UNREADABLE,
                f"GetObject failed with {store.error_code(exc)}: {exc}",
            ) from exc
        raise store.StoreError(
            f"reading update s3://{event.bucket}/{event.key} failed: {exc}"
        ) from exc
    length = int(response.get("ContentLength", 0))
    if length > config.max_update_bytes:
        raise UpdateRejected(
            RejectReason.TOO_LARGE,
            f"object has {length} bytes, more than the bound of "
            f"{config.max_update_bytes}",
        )
    data = bytes(response["Body"].read(config.max_update_bytes + 1))
    if len(data) > config.max_update_bytes:
        raise UpdateRejected(
            RejectReason.TOO_LARGE,
            f"object has more than the bound of {config.max_update_bytes} bytes",
        )
    stored = response.get("ChecksumSHA256")
    if stored and "-" not in stored:
        actual = base64.b64encode(bytes.fromhex(store.sha256_hex(data))).decode()
        if actual != stored:
            raise UpdateRejected(
                RejectReason.CHECKSUM_MISMATCH,
                f"SHA-256 of the bytes read is {actual}, S3 recorded {stored}",
            )
    version = response.get("VersionId")
    if not isinstance(version, str) or not version or version == "null":
        # An unversioned bucket reports the version "null" or none at all.
        return data, event.version_id
    return data, version


def _prepare(
    config: AggregatorConfig,
    event: ObjectCreated,
    pointer: state.Pointer,
    now: float,
) -> _Candidate | Outcome:
    """Run every check that needs no lock; return a candidate or a final outcome."""
    try:
        parsed = layout.parse_update_key(event.key)
    except LayoutError as exc:
        return reject(config, event, None, RejectReason.INVALID_KEY, str(exc))
    telemetry.bind(round=parsed.round, device=parsed.device_id, update=parsed.update_id)
    if event.size > config.max_update_bytes:
        return reject(
            config,
            event,
            parsed.round,
            RejectReason.TOO_LARGE,
            f"event reports {event.size} bytes, more than the bound of "
            f"{config.max_update_bytes}",
        )
    if parsed.round > pointer.round:
        return reject(
            config,
            event,
            parsed.round,
            RejectReason.FUTURE_ROUND,
            f"update is for round {parsed.round} but round {pointer.round} is open",
        )
    if parsed.round == pointer.round:
        document: store.Document | None = state.open_round(config, pointer, now)
    else:
        document = state.read_round(config, parsed.round)
    if document is None:
        return reject(
            config,
            event,
            parsed.round,
            RejectReason.STALE_ROUND,
            f"round {parsed.round} has no state and round {pointer.round} is open",
        )
    body = document.body
    early = _membership(config, event, parsed.device_id, body)
    if early is not None:
        return early
    try:
        data, version_id = _download(config, event)
        faults.check("after_read_update")
        base = load_model(config, body["base_model_key"], body["base_model_sha256"])
        update = validate_update(
            data,
            key=parsed,
            reference=base.specs,
            open_round=parsed.round,
            base_model_sha256=body["base_model_sha256"],
            limits=config.limits,
        )
    except UpdateRejected as exc:
        return reject(config, event, parsed.round, exc.reason, exc.detail)
    entry = {
        "key": event.key,
        "version_id": version_id,
        "update_id": parsed.update_id,
        "num_examples": update.metadata.num_examples,
        "sha256": store.sha256_hex(data),
        "bytes": len(data),
        "norm": update.norm,
        "client_metrics": update.metadata.client_metrics,
        "accepted_at": now,
    }
    return _Candidate(event, parsed.device_id, parsed.round, entry)


def _membership(
    config: AggregatorConfig, event: ObjectCreated, device_id: str, body: dict[str, Any]
) -> Outcome | None:
    """Settle duplicates and closed rounds from a state snapshot, if possible."""
    existing = body["accepted"].get(device_id)
    round_number = int(body["round"])
    if existing is not None and existing["key"] == event.key:
        logger.info("duplicate delivery of %s, already counted", event.key)
        return Outcome(event.key, "duplicate", round=round_number)
    if existing is not None:
        return reject(
            config,
            event,
            round_number,
            RejectReason.DUPLICATE_DEVICE,
            f"device {device_id} already has update {existing['key']} in round "
            f"{round_number}; the first accepted update of a device counts",
        )
    if body["status"] != state.OPEN:
        return reject(
            config,
            event,
            round_number,
            RejectReason.STALE_ROUND,
            f"round {round_number} is {body['status']}, no longer open",
        )
    return None


def admit(
    config: AggregatorConfig, events: list[ObjectCreated], now: float
) -> BatchResult:
    """Validate a batch of update events and admit the valid ones.

    A storage failure while checking one update puts its key in
    ``BatchResult.failed`` and the others go on. A failure while admitting into a
    round puts every key of that round there.

    Raises
    ------
    store.StoreError, state.StateError
        If the pointer cannot be read. Every update needs it, so the caller
        reports the batch's messages as failed.
    """
    result = BatchResult()
    pointer = state.read_pointer(config)
    by_round: dict[int, list[_Candidate]] = defaultdict(list)
    seen: set[tuple[str, str | None]] = set()
    for event in events:
        # S3 may send one notification twice, and both can land in one batch. The
        # compare-and-swap below decides per key, so a repeat must not reach it.
        identity = (event.key, event.version_id)
        if identity in seen:
            logger.info("duplicate delivery of %s within one batch", event.key)
            result.outcomes.append(Outcome(event.key, "duplicate"))
            continue
        seen.add(identity)
        telemetry.clear()
        try:
            prepared = _prepare(config, event, pointer, now)
        except RETRYABLE as exc:
            logger.error("checking update %s failed, retrying it: %s", event.key, exc)
            result.failed.append(event.key)
            continue
        if isinstance(prepared, Outcome):
            result.outcomes.append(prepared)
        else:
            by_round[prepared.round].append(prepared)
    telemetry.clear()
    for round_number, candidates in sorted(by_round.items()):
        try:
            _admit_round(config, round_number, candidates, now, result)
        except RETRYABLE as exc:
            # NOTE: no test reaches this branch, because moto offers no way to fail
            # one round's compare-and-swap after its updates passed their checks.
            logger.error(
                "admitting %s updates into round %s failed, retrying them: %s",
                len(candidates),
                round_number,
                exc,
            )
            result.failed.extend(candidate.event.key for candidate in candidates)
    return result


def _admit_round(
    config: AggregatorConfig,
    round_number: int,
    candidates: list[_Candidate],
    now: float,
    result: BatchResult,
) -> None:
    decided: dict[str, tuple[str, RejectReason | None, str]] = {}
    claim: dict[str, Any] = {}

    def change(body: dict[str, Any]) -> bool:
        decided.clear()
        claim.clear()
        added = False
        for candidate in sorted(candidates, key=lambda item: item.event.key):
            key = candidate.event.key
            existing = body["accepted"].get(candidate.device_id)
            if existing is not None and existing["key"] == key:
                decided[key] = ("duplicate", None, "")
            elif existing is not None:
                decided[key] = (
                    "rejected",
                    RejectReason.DUPLICATE_DEVICE,
                    f"device {candidate.device_id} already has update "
                    f"{existing['key']} in round {round_number}; the first "
                    "accepted update of a device counts",
                )
            elif body["status"] != state.OPEN:
                decided[key] = (
                    "rejected",
                    RejectReason.STALE_ROUND,
                    f"round {round_number} became {body['status']} before the "
                    "update was admitted",
                )
            else:
                body["accepted"][candidate.device_id] = candidate.entry
                decided[key] = ("accepted", None, "")
                added = True
        if added and len(body["accepted"]) >= int(body["target_updates"]):
            body["status"] = state.CLOSING
            body["closing"] = state.closing_claim(config, body, now)
            claim.update(body["closing"])
        return added

    state.update_round(config, round_number, change)
    faults.check("after_accept")
    accepted = 0
    by_key = {candidate.event.key: candidate for candidate in candidates}
    for key, (status, reason, detail) in decided.items():
        if status == "rejected" and reason is not None:
            result.outcomes.append(
                reject(config, by_key[key].event, round_number, reason, detail)
            )
            continue
        result.outcomes.append(Outcome(key, status, round=round_number))
        if status == "accepted":
            accepted += 1
            logger.info("accepted %s into round %s", key, round_number)
    if accepted:
        telemetry.emit(
            config.metric_namespace,
            [[names.DIMENSION_FEDERATION]],
            {names.DIMENSION_FEDERATION: config.federation},
            {names.METRIC_UPDATES_ACCEPTED: (float(accepted), "Count")},
            {"round": round_number},
        )
    if claim:
        result.claimed.append((round_number, str(claim["owner"])))
