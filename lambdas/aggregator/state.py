"""The pointer and round state documents, and the compare-and-swap loops on them.

``global/pointer.json`` names the open round and the global model it trains from.
``rounds/round-NNNNNN/state.json`` is the single record of a round: its status
(open, closing, published, abandoned), its accepted updates keyed by device id, and
the claim of the invocation that closes it. Every change is a read followed by a
write conditioned on the ETag that was read, retried when another invocation won.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fedcore import jsontext, layout
from fedcore.round_config import RoundConfigError, parse_round_config
from fedcore.strategies import resolve
from lambdas.aggregator import store
from lambdas.aggregator.config import AggregatorConfig

logger = logging.getLogger(__name__)

MAX_CAS_ATTEMPTS = 64
OPEN = "open"
CLOSING = "closing"
PUBLISHED = "published"
ABANDONED = "abandoned"


class StateError(RuntimeError):
    """The stored state is missing or inconsistent and needs an operator."""


class Contention(StateError):
    """A compare-and-swap kept losing; the message is retried later."""


@dataclass(frozen=True)
class Pointer:
    """The open round and the global model devices train from."""

    round: int
    model_key: str
    model_sha256: str
    etag: str


def iso_now(now: float) -> str:
    """Format a Unix time as ISO 8601 in UTC."""
    return datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds")


def pointer_body(
    round_number: int, model_key: str, model_sha256: str, now: float
) -> dict[str, Any]:
    """Build the pointer document for ``round_number``."""
    return {
        "format_version": "1",
        "round": round_number,
        "model_key": model_key,
        "model_sha256": model_sha256,
        "published_at": iso_now(now),
    }


def read_pointer(config: AggregatorConfig) -> Pointer:
    """Read the pointer; a missing one means the federation was never initialized."""
    document = store.read_json(config.models_bucket, layout.POINTER_KEY)
    if document is None:
        raise StateError(
            f"s3://{config.models_bucket}/{layout.POINTER_KEY} does not exist: "
            "publish an initial model first (sfl init, or the demo does it)"
        )
    body = document.body
    try:
        return Pointer(
            round=int(body["round"]),
            model_key=str(body["model_key"]),
            model_sha256=str(body["model_sha256"]),
            etag=document.etag,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"pointer document is invalid: {body!r}") from exc


def move_pointer(
    config: AggregatorConfig,
    *,
    from_round: int,
    to_round: int,
    model_key: str,
    model_sha256: str,
    now: float,
) -> bool:
    """Advance the pointer from ``from_round``; never move it backwards.

    Returns
    -------
    bool
        True if this call moved it, False if it had already moved.
    """
    for _ in range(MAX_CAS_ATTEMPTS):
        pointer = read_pointer(config)
        if pointer.round >= to_round:
            return False
        if pointer.round != from_round:
            raise StateError(
                f"pointer is at round {pointer.round}, expected {from_round} "
                f"before moving it to {to_round}"
            )
        try:
            store.write_json(
                config.models_bucket,
                layout.POINTER_KEY,
                pointer_body(to_round, model_key, model_sha256, now),
                if_match=pointer.etag,
            )
        except store.PreconditionFailed:
            _backoff()
            continue
        logger.info("pointer moved from round %s to %s", from_round, to_round)
        return True
    raise Contention(f"moving the pointer from round {from_round} kept losing races")


def round_settings(config: AggregatorConfig) -> dict[str, Any]:
    """Return the settings a new round opens with.

    ``config/round.json`` in the models bucket (written by ``sfl configure``) wins
    over the environment. An invalid document is logged and the environment's
    values are used, so a bad configuration never stops the federation. The
    strategy's parameters are recorded with every default filled in, so the round
    is closed with the values it was opened with.
    """
    settings: dict[str, Any] = {
        "target_updates": config.target_updates,
        "min_updates": config.min_updates,
        "deadline_seconds": config.deadline_seconds,
        "on_deadline": config.on_deadline,
        "strategy": config.strategy.name,
        "strategy_params": dict(sorted(config.strategy.params.items())),
        "settings_source": "environment",
    }
    raw = store.read_optional_bytes(config.models_bucket, layout.ROUND_CONFIG_KEY)
    if raw is None:
        return settings
    try:
        document = jsontext.loads(raw)
        if not isinstance(document, dict):
            raise RoundConfigError("document", "is not a JSON object")
        parsed = parse_round_config(document)
        strategy = resolve(parsed.strategy, parsed.strategy_params)
    except (ValueError, RoundConfigError) as exc:
        logger.error(
            "s3://%s/%s is invalid, opening the round with the environment's "
            "settings: %s",
            config.models_bucket,
            layout.ROUND_CONFIG_KEY,
            exc,
        )
        return settings
    settings.update(
        {
            "target_updates": parsed.target_updates,
            "min_updates": parsed.min_updates,
            "deadline_seconds": parsed.deadline_seconds,
            "on_deadline": parsed.on_deadline,
            "strategy": strategy.name,
            "strategy_params": dict(sorted(strategy.params.items())),
            "settings_source": layout.ROUND_CONFIG_KEY,
        }
    )
    return settings


def new_round_body(
    config: AggregatorConfig, round_number: int, pointer: Pointer, now: float
) -> dict[str, Any]:
    """Build the state document of a freshly opened round."""
    settings = round_settings(config)
    return {
        "format_version": "1",
        "round": round_number,
        "status": OPEN,
        "base_model_key": pointer.model_key,
        "base_model_sha256": pointer.model_sha256,
        "opened_at": now,
        "deadline": now + settings["deadline_seconds"],
        **settings,
        "accepted": {},
        "closing": None,
        "published": None,
    }


def read_round(config: AggregatorConfig, round_number: int) -> store.Document | None:
    """Read a round's state, or None if it was never opened."""
    return store.read_json(config.models_bucket, layout.round_state_key(round_number))


def open_round(
    config: AggregatorConfig, pointer: Pointer, now: float
) -> store.Document:
    """Return the open round's state, creating it on first use."""
    key = layout.round_state_key(pointer.round)
    document = store.read_json(config.models_bucket, key)
    if document is not None:
        return document
    body = new_round_body(config, pointer.round, pointer, now)
    try:
        etag = store.write_json(config.models_bucket, key, body)
    except store.PreconditionFailed:
        document = store.read_json(config.models_bucket, key)
        if document is None:
            raise StateError(
                f"state of round {pointer.round} vanished after creation"
            ) from None
        return document
    logger.info("opened round %s from %s", pointer.round, pointer.model_key)
    return store.Document(body=body, etag=etag)


def update_round(
    config: AggregatorConfig,
    round_number: int,
    change: Callable[[dict[str, Any]], bool],
) -> store.Document:
    """Apply ``change`` to a round's state with compare-and-swap.

    ``change`` edits the body in place and returns False when no write is needed.
    It is called again on a fresh copy whenever another writer wins.
    """
    key = layout.round_state_key(round_number)
    for _ in range(MAX_CAS_ATTEMPTS):
        document = store.read_json(config.models_bucket, key)
        if document is None:
            raise StateError(f"state of round {round_number} does not exist")
        body = document.body
        if not change(body):
            return document
        try:
            etag = store.write_json(
                config.models_bucket, key, body, if_match=document.etag
            )
        except store.PreconditionFailed:
            _backoff()
            continue
        return store.Document(body=body, etag=etag)
    raise Contention(f"updating the state of round {round_number} kept losing races")


def closing_claim(
    config: AggregatorConfig, body: dict[str, Any], now: float
) -> dict[str, Any]:
    """Freeze the accepted set and claim the close for this invocation."""
    return {
        "owner": uuid.uuid4().hex,
        "claimed_at": now,
        "lease_expires": now + config.lease_seconds,
        "members": sorted(body["accepted"]),
        "takeovers": 0,
    }


def lease_expired(body: dict[str, Any], now: float) -> bool:
    """Tell whether the closer of a closing round may be presumed dead."""
    claim = body.get("closing") or {}
    return body.get("status") == CLOSING and now >= float(claim.get("lease_expires", 0))


def _backoff() -> None:
    time.sleep(random.uniform(0.005, 0.05))
