"""Lambda entry points of the aggregator.

``handle_sqs`` receives S3 ``ObjectCreated`` notifications through SQS and reports
partial batch failures, so only the messages that hit a storage error are delivered
again (and reach the DLQ after the queue's maximum receive count).
``handle_sweep`` runs on a schedule and closes or abandons rounds past their deadline.

Most invocations only admit updates, so the code that closes a round (aggregation,
evaluation, registration) is imported on the first close, not at cold start.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from lambdas.aggregator import constants as env
from lambdas.aggregator import intake, state, telemetry
from lambdas.aggregator.config import load_config
from lambdas.aggregator.events import (
    Ignored,
    MalformedEvent,
    ObjectCreated,
    parse_record_body,
)
from lambdas.aggregator.registry import RegistryError
from lambdas.aggregator.sweep import resume_close, sweep

logger = logging.getLogger(__name__)

# The intake's storage failures, and a registry failure while closing a round.
RETRYABLE = (*intake.RETRYABLE, RegistryError)

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    telemetry.configure_lambda_logging(os.environ.get(env.LOG_LEVEL, "INFO"))


def handle_sqs(
    event: dict[str, Any], context: Any = None
) -> dict[str, list[dict[str, str]]]:
    """Process a batch of SQS messages carrying S3 event notifications.

    Returns
    -------
    dict
        ``{"batchItemFailures": [{"itemIdentifier": message_id}, ...]}`` for the
        messages to deliver again.
    """
    config = load_config()
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        logger.error("event has no Records list; nothing to process: %.200r", event)
        return {"batchItemFailures": []}
    failures: list[str] = []
    owners: dict[str, str] = {}
    updates: list[ObjectCreated] = []
    for record in records:
        message_id = (
            str(record.get("messageId", "")) if isinstance(record, dict) else ""
        )
        try:
            for item in parse_record_body(
                record.get("body", ""), updates_bucket=config.updates_bucket
            ):
                if isinstance(item, Ignored):
                    logger.info("ignored message %s: %s", message_id, item.reason)
                else:
                    updates.append(item)
                    owners[item.key] = message_id
        except (MalformedEvent, AttributeError) as exc:
            # Kept for the DLQ rather than dropped: an operator can inspect it there.
            logger.error(
                "malformed message %s, leaving it for the DLQ: %s", message_id, exc
            )
            # Every receive fails the same way, so the first one alone is counted.
            if _receive_count(record) <= 1:
                telemetry.emit_rejection(
                    config.metric_namespace, config.federation, "malformed_event", None
                )
            failures.append(message_id)
    if updates:
        failures.extend(_process(config, updates, owners))
    unique = sorted(set(failures))
    return {
        "batchItemFailures": [{"itemIdentifier": message_id} for message_id in unique]
    }


def _receive_count(record: Any) -> int:
    """Return the SQS ``ApproximateReceiveCount`` of a record, 1 when unknown."""
    attributes = record.get("attributes") if isinstance(record, dict) else None
    if not isinstance(attributes, dict):
        return 1
    raw = attributes.get("ApproximateReceiveCount")
    return int(raw) if isinstance(raw, str) and raw.isdigit() else 1


def _process(
    config: Any, updates: list[ObjectCreated], owners: dict[str, str]
) -> list[str]:
    now = time.time()
    try:
        result = intake.admit(config, updates, now)
    except RETRYABLE as exc:
        logger.error("batch of %s updates failed, retrying them: %s", len(updates), exc)
        return [owners[item.key] for item in updates]
    finally:
        telemetry.clear()
    for outcome in result.outcomes:
        logger.info("update %s: %s %s", outcome.key, outcome.status, outcome.reason)
    failures = [owners[key] for key in result.failed]
    if result.claimed:
        from lambdas.aggregator import closer  # noqa: PLC0415
    for round_number, owner in result.claimed:
        try:
            closer.close_round(config, round_number, owner)
        except RETRYABLE as exc:
            # The updates are safely admitted; the expired lease lets a redelivery
            # or the sweep finish this close.
            logger.error(
                "closing round %s failed, left for takeover: %s", round_number, exc
            )
    _resume_stale_closes(config, {outcome.round for outcome in result.outcomes}, now)
    return failures


def _resume_stale_closes(config: Any, rounds: set[int | None], now: float) -> None:
    """Finish closes whose closer died, when a redelivered event touches the round."""
    for round_number in sorted(number for number in rounds if number is not None):
        document = state.read_round(config, round_number)
        if document is None or not state.lease_expired(document.body, now):
            continue
        try:
            resume_close(config, round_number, now)
        except RETRYABLE as exc:
            logger.error("resuming the close of round %s failed: %s", round_number, exc)


def handle_sweep(
    event: dict[str, Any] | None = None, context: Any = None
) -> dict[str, str]:
    """Close, abandon or extend the open round if its deadline passed."""
    config = load_config()
    outcome = sweep(config, time.time())
    logger.info("deadline sweep: %s", outcome)
    return {"outcome": outcome}
