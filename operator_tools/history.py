"""Reading the federation's history back from the models bucket.

The pointer names the open round. Each round that received an update has a state
document, and each rejected upload has a record under ``rejections/``. These are
the same documents the aggregator writes, so nothing here depends on CloudWatch.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fedcore import layout
from operator_tools.context import OperatorContext
from operator_tools.errors import NotFoundError

_STATE_KEY = re.compile(r"^rounds/round-(?P<round>[0-9]{6})/state\.json\Z")
_VERSION_SUFFIX = re.compile(r"/(?P<version>[0-9]+)\Z")


def read_pointer(context: OperatorContext, s3: Any | None = None) -> dict[str, Any]:
    """Read ``global/pointer.json``.

    Raises
    ------
    NotFoundError
        If the federation was never initialized.
    """
    stored = context.read_json(layout.POINTER_KEY, s3=s3)
    if stored is None:
        raise NotFoundError(
            f"s3://{context.models_bucket}/{layout.POINTER_KEY} does not exist: the "
            "federation is not initialized, or --models-bucket names another bucket"
        )
    return stored.body


def round_numbers(context: OperatorContext, s3: Any | None = None) -> list[int]:
    """Return the rounds that have a state document, in ascending order."""
    numbers = []
    for key in context.list_keys("rounds/", s3=s3):
        match = _STATE_KEY.match(key)
        if match:
            numbers.append(int(match["round"]))
    return sorted(numbers)


def read_round(
    context: OperatorContext, round_number: int, s3: Any | None = None
) -> dict[str, Any] | None:
    """Read the state document of a round, or None if it was never opened."""
    stored = context.read_json(layout.round_state_key(round_number), s3=s3)
    return None if stored is None else stored.body


def version_of(arn: str | None) -> int | None:
    """Return the version number at the end of a model package ARN."""
    if not arn:
        return None
    match = _VERSION_SUFFIX.search(arn)
    return int(match["version"]) if match else None


def iso_time(epoch: float | None) -> str | None:
    """Format Unix seconds as ISO 8601 in UTC, to the second."""
    if epoch is None:
        return None
    try:
        moment = datetime.fromtimestamp(float(epoch), tz=UTC)
    except (OverflowError, OSError, ValueError):
        # A stored time outside datetime's range is shown as it is stored.
        return str(epoch)
    return moment.isoformat(timespec="seconds")


def summarize(body: dict[str, Any]) -> dict[str, Any]:
    """Reduce a round state document to one row of the history.

    ``participants`` counts the updates aggregated into the published model, which
    is the frozen member list once the round started closing and the accepted
    updates before that.
    """
    accepted = body.get("accepted") or {}
    closing = body.get("closing") or {}
    published = body.get("published") or {}
    evaluation = published.get("evaluation") or {}
    members = closing.get("members")
    participants = len(members) if members is not None else len(accepted)
    arn = published.get("model_package_arn")
    return {
        "round": int(body["round"]),
        "status": body.get("status"),
        "accepted": len(accepted),
        "participants": participants,
        "examples": sum(int(item.get("num_examples", 0)) for item in accepted.values()),
        "target_updates": body.get("target_updates"),
        "min_updates": body.get("min_updates"),
        "opened_at": iso_time(body.get("opened_at")),
        "deadline": iso_time(body.get("deadline")),
        "published_at": iso_time(published.get("published_at")),
        "accuracy": evaluation.get("accuracy"),
        "loss": evaluation.get("loss"),
        "model_version": version_of(arn),
        "model_package_arn": arn,
        "abandoned_reason": (body.get("abandoned") or {}).get("reason"),
    }


def history(context: OperatorContext, s3: Any | None = None) -> list[dict[str, Any]]:
    """Summarize every round that has a state document, oldest first."""
    client = s3 or context.client("s3")
    rows = []
    for number in round_numbers(context, s3=client):
        body = read_round(context, number, s3=client)
        if body is not None:
            rows.append(summarize(body))
    return rows


def rejections_by_reason(
    context: OperatorContext, round_number: int | None = None, s3: Any | None = None
) -> dict[str, int]:
    """Count rejection records by reason, for one round or for all rounds.

    NOTE: this reads every record, one GET each. With many thousands of rejections,
    the ``UpdatesRejected`` metric by ``Reason`` on the dashboard is cheaper.
    """
    client = s3 or context.client("s3")
    prefix = (
        "rejections/"
        if round_number is None
        else f"rejections/round-{round_number:06d}/"
    )
    counts: dict[str, int] = {}
    for key in context.list_keys(prefix, s3=client):
        stored = context.read_json(key, s3=client)
        reason = "unknown" if stored is None else str(stored.body.get("reason"))
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def format_number(value: float | None, digits: int = 4) -> str:
    """Render an optional number with fixed decimals, or ``-``."""
    return "-" if value is None else f"{value:.{digits}f}"


# Tables cut an abandoned round's reason to this length. --json keeps all of it.
MAX_REASON_CHARS = 160
HISTORY_HEADER = (
    f"{'round':>6}  {'status':<9}  {'participants':>12}  {'examples':>8}  "
    f"{'accuracy':>8}  {'loss':>8}  {'version':>7}  published_at"
)


def format_history_row(row: dict[str, Any]) -> str:
    """Render one row under :data:`HISTORY_HEADER`.

    An abandoned round with a recorded reason gets a second, indented line with it.
    """
    version = row["model_version"]
    line = (
        f"{row['round']:>6}  {row['status']:<9}  {row['participants']:>12}  "
        f"{row['examples']:>8}  {format_number(row['accuracy']):>8}  "
        f"{format_number(row['loss']):>8}  "
        f"{'-' if version is None else version:>7}  {row['published_at'] or '-'}"
    )
    reason = row.get("abandoned_reason")
    if not reason:
        return line
    reason = " ".join(str(reason).split())
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + "..."
    return f"{line}\n{'':>8}reason: {reason}"
