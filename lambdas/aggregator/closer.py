"""Closing a round: aggregate, publish, register, advance the pointer.

Only the invocation named in the round's closing claim runs these steps, and every
step is idempotent, so an invocation that takes over an expired claim can repeat
them all: the server state and the model are written with If-None-Match (a second
writer adopts the first file), the registry is searched before a version is
created, and the pointer only moves forward from the round being closed.

A round that its strategy cannot aggregate (for example Krum with too few updates)
is abandoned like a round below its minimum: the previous model stays current. So
is a ``dp_fedavg`` round that would take epsilon over the privacy budget.

Privacy budget and takeovers: a ``dp_fedavg`` close spends budget by composing the
round into the accountant read from beside the base model, and the result exists
only in the server state written beside the next model. That file is written once
with If-None-Match, like the model, so a closer that takes over after a crash
either writes the only copy or adopts the stored one: the ledger of round R + 1 is
always the ledger of round R plus one round, however often the close is repeated.
The takeover draws new noise, but only one noisy model is ever stored, because the
model is adopted too, and the evaluation is then recomputed on the adopted model.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from typing import Any

from fedcore import layout, safetensors_io
from lambdas.aggregator import aggregate, faults, registry, state, store, telemetry
from lambdas.aggregator import constants as names
from lambdas.aggregator.config import AggregatorConfig
from lambdas.aggregator.modelcache import load_holdout

logger = logging.getLogger(__name__)


def _aggregate(config: AggregatorConfig, body: dict[str, Any]) -> aggregate.Aggregate:
    """Aggregate the frozen members with the round's strategy (see aggregate.py)."""
    return aggregate.aggregate(config, body)


def _write_once(
    config: AggregatorConfig, key: str, data: bytes, content_type: str
) -> bytes:
    """Write an object unless it exists; return the bytes that are stored."""
    try:
        store.put_bytes(config.models_bucket, key, data, content_type=content_type)
    except store.PreconditionFailed:
        logger.info("s3://%s/%s already exists, adopting it", config.models_bucket, key)
        return store.read_bytes(config.models_bucket, key)
    return data


def _archive(model_bytes: bytes, metadata: dict[str, str]) -> bytes:
    """Pack ``model.tar.gz`` with the safetensors file and its metadata."""
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT
    ) as archive:
        for name, payload in (
            ("model.safetensors", model_bytes),
            ("metadata.json", json.dumps(metadata, sort_keys=True, indent=1).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def close_round(config: AggregatorConfig, round_number: int, owner: str) -> bool:
    """Publish the next global model from a round this invocation has claimed.

    Returns
    -------
    bool
        True if this call marked the round published, False if another did.
    """
    document = state.read_round(config, round_number)
    if document is None:
        raise state.StateError(f"state of round {round_number} does not exist")
    body = document.body
    if body["status"] == state.PUBLISHED:
        return False
    if body["status"] != state.CLOSING or body["closing"]["owner"] != owner:
        logger.info(
            "round %s is no longer claimed by %s, leaving it", round_number, owner
        )
        return False
    faults.check("after_claim_close")
    started = time.perf_counter()
    try:
        result = _aggregate(config, body)
    except aggregate.BudgetExhausted as exc:
        _abandon_unaggregatable(
            config, round_number, owner, str(exc), budget_exhausted=True
        )
        return False
    except aggregate.AggregationFailed as exc:
        _abandon_unaggregatable(config, round_number, owner, str(exc))
        return False
    model, metadata, examples = result.model, result.metadata, result.examples
    aggregation_seconds = time.perf_counter() - started
    evaluation = _evaluate(config, body, model, metadata)
    next_round = round_number + 1
    model_key = layout.model_key(next_round)
    # The server state goes first, so a published model always has its state
    # beside it. A takeover recomputes the same bytes, or adopts the stored file.
    _write_once(
        config,
        layout.server_state_key(next_round),
        result.state_bytes,
        "application/octet-stream",
    )
    encoded = safetensors_io.encode(model, metadata)
    model_bytes = _write_once(config, model_key, encoded, "application/octet-stream")
    if model_bytes != encoded:
        # A dp_fedavg takeover: this close drew other noise than the stored model,
        # which wins. Its metadata already contains its holdout figures.
        model, metadata = safetensors_io.decode(model_bytes)
        evaluation = _evaluate(config, body, model, dict(metadata))
    model_sha = store.sha256_hex(model_bytes)
    faults.check("after_write_model")
    evaluation_bytes = json.dumps({"model_quality": evaluation}, indent=1).encode()
    _write_once(
        config, layout.evaluation_key(next_round), evaluation_bytes, "application/json"
    )
    _write_once(
        config,
        layout.model_archive_key(next_round),
        _archive(model_bytes, metadata),
        "application/gzip",
    )
    if not _holds_claim(config, round_number, owner):
        # A closer that outlived its lease and was taken over stops before the
        # registry. This narrows, but cannot close, the window in which two closers
        # both find no version and both create one (see docs/reliability.md).
        logger.warning(
            "closer %s of round %s lost its claim before registering, stopping",
            owner,
            round_number,
        )
        return False
    bucket_uri = f"s3://{config.models_bucket}/"
    properties = {
        "round": str(round_number),
        "federation": config.federation,
        "model_sha256": model_sha,
        "model_key": model_key,
    }
    if not result.private:
        properties["participants"] = str(len(body["closing"]["members"]))
        properties["examples"] = str(examples)
    properties.update(registry.privacy_properties(metadata))
    for name in ("loss", "accuracy"):
        if name in evaluation:
            properties[f"holdout_{name}"] = f"{evaluation[name]:.6f}"
    arn = registry.register_round(
        config,
        round_number=round_number,
        properties=properties,
        evaluation_uri=bucket_uri + layout.evaluation_key(next_round),
        archive_uri=bucket_uri + layout.model_archive_key(next_round),
    )
    faults.check("after_register")
    now = time.time()
    state.move_pointer(
        config,
        from_round=round_number,
        to_round=next_round,
        model_key=model_key,
        model_sha256=model_sha,
        now=now,
    )
    faults.check("after_move_pointer")
    faults.check("before_mark_published")
    published = {
        "model_key": model_key,
        "model_sha256": model_sha,
        "model_package_arn": arn,
        "published_at": now,
        "evaluation": evaluation,
    }
    marked = _mark(config, round_number, state.PUBLISHED, published)
    if marked:
        _emit_published(config, body, evaluation, aggregation_seconds, now)
    return marked


def _evaluate(
    config: AggregatorConfig,
    body: dict[str, Any],
    model: dict[str, Any],
    metadata: dict[str, str],
) -> dict[str, Any]:
    """Evaluate the model on the server holdout and record the figures.

    The holdout loss and accuracy are added to ``metadata`` in place. The returned
    evaluation document carries the ``dp_*`` fields of a private model, and the
    participant count only for a model that is not private.
    """
    evaluation: dict[str, Any] = {"round": body["round"]}
    if "dp_epsilon" in metadata:
        evaluation.update(registry.privacy_figures(metadata))
    else:
        evaluation["participants"] = len(body["closing"]["members"])
    holdout = load_holdout(config)
    if holdout is not None:
        from fedcore.models import evaluate  # noqa: PLC0415

        loss, accuracy = evaluate(model, holdout[0], holdout[1])
        evaluation.update(
            {
                "loss": float(loss),
                "accuracy": float(accuracy),
                "holdout_examples": len(holdout[1]),
            }
        )
        metadata.update(
            {
                "holdout_loss": repr(float(loss)),
                "holdout_accuracy": repr(float(accuracy)),
            }
        )
    return evaluation


def _abandon_unaggregatable(
    config: AggregatorConfig,
    round_number: int,
    owner: str,
    reason: str,
    *,
    budget_exhausted: bool = False,
) -> None:
    """Abandon a claimed round that its strategy cannot or may not publish."""
    now = time.time()
    flipped: list[bool] = []

    def change(body: dict[str, Any]) -> bool:
        flipped.clear()
        if body["status"] != state.CLOSING or body["closing"]["owner"] != owner:
            return False
        body["status"] = state.ABANDONED
        body["abandoned"] = {
            "abandoned_at": now,
            "accepted": len(body["accepted"]),
            "reason": reason,
        }
        if budget_exhausted:
            body["abandoned"]["privacy_budget_exhausted"] = True
        flipped.append(True)
        return True

    document = state.update_round(config, round_number, change)
    if document.body["status"] != state.ABANDONED:
        return
    if flipped:
        logger.error("abandoned round %s: %s", round_number, reason)
        metrics = {names.METRIC_ROUNDS_ABANDONED: (1.0, "Count")}
        if budget_exhausted:
            metrics[names.METRIC_PRIVACY_BUDGET_EXHAUSTED] = (1.0, "Count")
        telemetry.emit(
            config.metric_namespace,
            [[names.DIMENSION_FEDERATION]],
            {names.DIMENSION_FEDERATION: config.federation},
            metrics,
            {"round": round_number},
        )
    state.move_pointer(
        config,
        from_round=round_number,
        to_round=round_number + 1,
        model_key=document.body["base_model_key"],
        model_sha256=document.body["base_model_sha256"],
        now=now,
    )


def _holds_claim(config: AggregatorConfig, round_number: int, owner: str) -> bool:
    """Tell whether the round is still closing under the claim of ``owner``."""
    document = state.read_round(config, round_number)
    if document is None:
        return False
    body = document.body
    return bool(body["status"] == state.CLOSING and body["closing"]["owner"] == owner)


def _mark(
    config: AggregatorConfig, round_number: int, status: str, details: dict[str, Any]
) -> bool:
    flipped: list[bool] = []

    def change(body: dict[str, Any]) -> bool:
        flipped.clear()
        if body["status"] in (state.PUBLISHED, state.ABANDONED):
            return False
        body["status"] = status
        body[status] = details
        flipped.append(True)
        return True

    state.update_round(config, round_number, change)
    return bool(flipped)


def _emit_published(
    config: AggregatorConfig,
    body: dict[str, Any],
    evaluation: dict[str, Any],
    aggregation_seconds: float,
    now: float,
) -> None:
    metrics: dict[str, tuple[float, str]] = {
        names.METRIC_ROUNDS_PUBLISHED: (1.0, "Count"),
        names.METRIC_ROUND_PARTICIPANTS: (
            float(len(body["closing"]["members"])),
            "Count",
        ),
        names.METRIC_ROUND_DURATION: (
            max(0.0, now - float(body["opened_at"])),
            "Seconds",
        ),
        names.METRIC_AGGREGATION_TIME: (aggregation_seconds, "Seconds"),
    }
    if "loss" in evaluation:
        metrics[names.METRIC_GLOBAL_LOSS] = (evaluation["loss"], "None")
        metrics[names.METRIC_GLOBAL_ACCURACY] = (evaluation["accuracy"], "None")
    if "dp_epsilon" in evaluation:
        metrics[names.METRIC_PRIVACY_EPSILON] = (evaluation["dp_epsilon"], "None")
    telemetry.emit(
        config.metric_namespace,
        [[names.DIMENSION_FEDERATION]],
        {names.DIMENSION_FEDERATION: config.federation},
        metrics,
        {"round": body["round"]},
    )
    logger.info(
        "published round %s: %s participants, holdout accuracy %s",
        body["round"],
        len(body["closing"]["members"]),
        evaluation.get("accuracy"),
    )


def take_over(config: AggregatorConfig, round_number: int, now: float) -> str | None:
    """Claim a closing round whose lease expired; return the new owner or None."""
    owner: list[str] = []

    def change(body: dict[str, Any]) -> bool:
        owner.clear()
        if not state.lease_expired(body, now):
            return False
        claim = body["closing"]
        previous = claim["owner"]
        claim["owner"] = state.closing_claim(config, body, now)["owner"]
        claim["lease_expires"] = now + config.lease_seconds
        claim["takeovers"] = int(claim.get("takeovers", 0)) + 1
        logger.warning("taking over round %s from closer %s", round_number, previous)
        owner.append(claim["owner"])
        return True

    state.update_round(config, round_number, change)
    return owner[0] if owner else None
