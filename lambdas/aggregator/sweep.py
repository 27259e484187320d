"""The deadline sweep: closes, abandons or extends the open round, and resumes closes.

A schedule runs it every few minutes. It is also the recovery path for a closer
that died holding its claim: once the lease expires, the sweep takes the claim
over and repeats the idempotent close.
"""

from __future__ import annotations

import logging
from typing import Any

from lambdas.aggregator import constants as names
from lambdas.aggregator import state, telemetry
from lambdas.aggregator.config import AggregatorConfig

logger = logging.getLogger(__name__)


def sweep(config: AggregatorConfig, now: float) -> str:
    """Advance the open round if its deadline passed; return what was done."""
    pointer = state.read_pointer(config)
    round_number = pointer.round
    _finish_previous_round(config, round_number - 1, now)
    document = state.open_round(config, pointer, now)
    body = document.body
    status = body["status"]
    if status == state.CLOSING:
        return resume_close(config, round_number, now)
    if status == state.ABANDONED:
        _advance_after_abandon(config, round_number, body, now)
        return "abandoned"
    if status == state.PUBLISHED:
        return "published"
    if now < float(body["deadline"]):
        return "open"
    accepted = len(body["accepted"])
    if accepted >= int(body["min_updates"]):
        owner = _claim_at_deadline(config, round_number, now)
        if owner is None:
            return "open"
        from lambdas.aggregator import closer  # noqa: PLC0415

        closer.close_round(config, round_number, owner)
        return "closed"
    if body.get("on_deadline", config.on_deadline) == "extend":
        _extend(config, round_number, now)
        return "extended"
    _abandon(config, round_number, now)
    return "abandoned"


def _finish_previous_round(
    config: AggregatorConfig, round_number: int, now: float
) -> None:
    """Mark a round published whose closer died after it moved the pointer.

    The closer moves the pointer before it marks the round published, so a crash
    between the two leaves the round behind the pointer in ``closing``. Nothing but
    a redelivered event of that round would look at it again.
    """
    if round_number < 1:
        return
    document = state.read_round(config, round_number)
    if document is None or not state.lease_expired(document.body, now):
        return
    logger.warning(
        "round %s is still closing behind the pointer, finishing its close",
        round_number,
    )
    resume_close(config, round_number, now)


def resume_close(config: AggregatorConfig, round_number: int, now: float) -> str:
    """Take over and finish a close whose lease expired."""
    from lambdas.aggregator import closer  # noqa: PLC0415

    owner = closer.take_over(config, round_number, now)
    if owner is None:
        return "closing"
    closer.close_round(config, round_number, owner)
    return "closed"


def _claim_at_deadline(
    config: AggregatorConfig, round_number: int, now: float
) -> str | None:
    owner: list[str] = []

    def change(body: dict[str, Any]) -> bool:
        owner.clear()
        if body["status"] != state.OPEN or now < float(body["deadline"]):
            return False
        if len(body["accepted"]) < int(body["min_updates"]):
            return False
        body["status"] = state.CLOSING
        body["closing"] = state.closing_claim(config, body, now)
        owner.append(body["closing"]["owner"])
        return True

    state.update_round(config, round_number, change)
    if owner:
        logger.info("round %s reached its deadline, closing it", round_number)
    return owner[0] if owner else None


def _extend(config: AggregatorConfig, round_number: int, now: float) -> None:
    def change(body: dict[str, Any]) -> bool:
        if body["status"] != state.OPEN or now < float(body["deadline"]):
            return False
        body["deadline"] = now + float(
            body.get("deadline_seconds", config.deadline_seconds)
        )
        body["extensions"] = int(body.get("extensions", 0)) + 1
        return True

    state.update_round(config, round_number, change)
    logger.warning(
        "round %s is below its minimum at the deadline, its deadline was extended",
        round_number,
    )


def _abandon(config: AggregatorConfig, round_number: int, now: float) -> None:
    flipped: list[bool] = []

    def change(body: dict[str, Any]) -> bool:
        flipped.clear()
        if body["status"] != state.OPEN or len(body["accepted"]) >= int(
            body["min_updates"]
        ):
            return False
        body["status"] = state.ABANDONED
        body["abandoned"] = {"abandoned_at": now, "accepted": len(body["accepted"])}
        flipped.append(True)
        return True

    document = state.update_round(config, round_number, change)
    if flipped:
        logger.warning(
            "abandoned round %s with %s of %s minimum updates; "
            "the previous model stays current",
            round_number,
            len(document.body["accepted"]),
            document.body["min_updates"],
        )
        telemetry.emit(
            config.metric_namespace,
            [[names.DIMENSION_FEDERATION]],
            {names.DIMENSION_FEDERATION: config.federation},
            {names.METRIC_ROUNDS_ABANDONED: (1.0, "Count")},
            {"round": round_number},
        )
    _advance_after_abandon(config, round_number, document.body, now)


def _advance_after_abandon(
    config: AggregatorConfig, round_number: int, body: dict[str, Any], now: float
) -> None:
    """Open the next round on the same global model."""
    state.move_pointer(
        config,
        from_round=round_number,
        to_round=round_number + 1,
        model_key=body["base_model_key"],
        model_sha256=body["base_model_sha256"],
        now=now,
    )
