"""``sfl status`` and ``sfl rounds``: the federation now and its history."""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fedcore import layout
from operator_tools import history
from operator_tools.context import OperatorContext, aws_error


def alarms_in_alarm(context: OperatorContext) -> list[dict[str, str]]:
    """List the federation's alarms in state ALARM, metric and composite alike.

    The stacks name every alarm ``<federation>-...``, so the prefix selects them.
    """
    cloudwatch = context.client("cloudwatch")
    alarms: list[dict[str, str]] = []
    try:
        paginator = cloudwatch.get_paginator("describe_alarms")
        for page in paginator.paginate(
            StateValue="ALARM", AlarmNamePrefix=f"{context.federation}-"
        ):
            for alarm in page.get("MetricAlarms", []) + page.get("CompositeAlarms", []):
                alarms.append(
                    {
                        "name": alarm["AlarmName"],
                        "reason": alarm.get("StateReason", ""),
                    }
                )
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(
            f"listing alarms with prefix {context.federation}-", exc
        ) from exc
    return alarms


def collect_status(
    context: OperatorContext, *, last: int, now: float | None = None
) -> dict[str, Any]:
    """Gather the open round, recent rounds, rejections and alarms in one document."""
    now = time.time() if now is None else now
    s3 = context.client("s3")
    pointer = history.read_pointer(context, s3=s3)
    open_number = int(pointer["round"])
    body = history.read_round(context, open_number, s3=s3)
    if body is None:
        # The aggregator creates a round's state when the first update arrives.
        config = context.read_json(layout.ROUND_CONFIG_KEY, s3=s3)
        settings = {} if config is None else config.body
        current: dict[str, Any] = {
            "round": open_number,
            "status": "waiting",
            "accepted": 0,
            "target_updates": settings.get("target_updates"),
            "min_updates": settings.get("min_updates"),
            "deadline": None,
            "seconds_left": None,
        }
    else:
        row = history.summarize(body)
        deadline = body.get("deadline")
        current = {
            "round": open_number,
            "status": row["status"],
            "accepted": row["accepted"],
            "target_updates": row["target_updates"],
            "min_updates": row["min_updates"],
            "deadline": row["deadline"],
            "seconds_left": None
            if deadline is None
            else max(0.0, float(deadline) - now),
        }
    current["model_key"] = pointer.get("model_key")
    earlier = [
        row for row in history.history(context, s3=s3) if row["round"] < open_number
    ]
    return {
        "federation": context.federation,
        "open_round": current,
        "recent_rounds": earlier[-last:] if last > 0 else [],
        "rejections_open_round": history.rejections_by_reason(
            context, open_number, s3=s3
        ),
        "rejections_total": history.rejections_by_reason(context, s3=s3),
        "alarms": alarms_in_alarm(context),
    }


def render_status(status: dict[str, Any]) -> str:
    """Render :func:`collect_status` as text for a terminal."""
    current = status["open_round"]
    lines = [f"federation {status['federation']}"]
    heading = f"open round {current['round']} ({current['status']}): "
    if current["target_updates"] is None:
        heading += f"{current['accepted']} updates"
    else:
        heading += (
            f"{current['accepted']}/{current['target_updates']} updates, "
            f"minimum {current['min_updates']}"
        )
    lines.append(heading)
    if current["deadline"] is None:
        lines.append("deadline: set when the round opens (first update or sweep)")
    else:
        lines.append(
            f"deadline {current['deadline']}, {current['seconds_left']:.0f} s left"
        )
    lines.append(f"training from {current['model_key']}")

    lines.append("")
    lines.append(f"last {len(status['recent_rounds'])} rounds:")
    lines.append(history.HISTORY_HEADER)
    lines.extend(history.format_history_row(row) for row in status["recent_rounds"])
    lines.append("")
    lines.append(
        "rejections in the open round: "
        + _format_counts(status["rejections_open_round"])
    )
    lines.append("rejections in total: " + _format_counts(status["rejections_total"]))

    if status["alarms"]:
        lines.append(f"alarms in ALARM ({len(status['alarms'])}):")
        lines.extend(
            f"  {alarm['name']}: {alarm['reason']}" for alarm in status["alarms"]
        )
    else:
        lines.append("alarms in ALARM: none")
    return "\n".join(lines)


def _format_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    total = sum(counts.values())
    detail = ", ".join(f"{reason} {count}" for reason, count in counts.items())
    return f"{total} ({detail})"


def run_status(context: OperatorContext, *, last: int, as_json: bool) -> str:
    """Return the output of ``sfl status``."""
    status = collect_status(context, last=last)
    if as_json:
        return json.dumps(status, indent=2, sort_keys=True)
    return render_status(status)


def run_rounds(context: OperatorContext, *, as_json: bool) -> str:
    """Return the output of ``sfl rounds``: one row per round, oldest first."""
    rows = history.history(context)
    if not rows:
        # No round state: tell an uninitialized federation or a wrong bucket
        # apart from one that has not started yet.
        history.read_pointer(context)
    if as_json:
        return json.dumps(rows, indent=2, sort_keys=True)
    if not rows:
        return "no round has received an update yet"
    lines = [history.HISTORY_HEADER]
    lines.extend(history.format_history_row(row) for row in rows)
    return "\n".join(lines)
