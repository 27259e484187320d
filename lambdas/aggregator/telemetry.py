"""Structured JSON logs and CloudWatch embedded metric format (EMF) records.

In Lambda, each EMF record is one JSON line on stdout, and CloudWatch Logs turns it
into metrics. The local runtime replaces :data:`sink` with a forwarder that calls
``PutMetricData`` on the embedded CloudWatch, as CloudWatch Logs would.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lambdas.aggregator import constants as names

_context = threading.local()


def _write_stdout(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


sink: Callable[[dict[str, Any]], None] = _write_stdout


def set_sink(function: Callable[[dict[str, Any]], None] | None) -> None:
    """Send EMF records to ``function``; None restores stdout."""
    global sink  # noqa: PLW0603 - one sink per process, as in Lambda
    sink = function or _write_stdout


def emit(
    namespace: str,
    dimension_sets: Sequence[Sequence[str]],
    dimensions: Mapping[str, str],
    metrics: Mapping[str, tuple[float, str]],
    properties: Mapping[str, Any] | None = None,
) -> None:
    """Emit one EMF record.

    Parameters
    ----------
    dimension_sets
        Lists of dimension names; CloudWatch records each metric once per set.
    dimensions
        Values of every dimension named in ``dimension_sets``.
    metrics
        Metric name to ``(value, unit)``.
    properties
        Extra searchable fields that are not dimensions (round, update id, ...).
    """
    record: dict[str, Any] = dict(properties or {})
    record.update(dimensions)
    record["_aws"] = {
        "Timestamp": int(time.time() * 1000),
        "CloudWatchMetrics": [
            {
                "Namespace": namespace,
                "Dimensions": [list(item) for item in dimension_sets],
                "Metrics": [
                    {"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()
                ],
            }
        ],
    }
    for name, (value, _) in metrics.items():
        record[name] = value
    sink(record)


def emit_rejection(
    namespace: str, federation: str, reason: str, round_number: int | None
) -> None:
    """Count one rejected update, in total and by reason."""
    emit(
        namespace,
        [
            [names.DIMENSION_FEDERATION],
            [names.DIMENSION_FEDERATION, names.DIMENSION_REASON],
        ],
        {names.DIMENSION_FEDERATION: federation, names.DIMENSION_REASON: reason},
        {names.METRIC_UPDATES_REJECTED: (1.0, "Count")},
        {"round": round_number},
    )


def bind(**fields: Any) -> None:
    """Attach ids (round, device, update) to every log line of this thread."""
    current = dict(getattr(_context, "fields", {}))
    current.update({key: value for key, value in fields.items() if value is not None})
    _context.fields = current


def clear() -> None:
    """Remove the ids attached by :func:`bind`."""
    _context.fields = {}


class JsonFormatter(logging.Formatter):
    """Format log records as one JSON object per line, with bound ids."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` and the bound ids as one JSON line."""
        entry: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "timestamp": round(record.created, 3),
        }
        entry.update(getattr(_context, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_lambda_logging(level: str = "INFO") -> None:
    """Switch the root logger to JSON lines, once per cold start."""
    root = logging.getLogger()
    formatter = JsonFormatter()
    if root.handlers:
        for handler in root.handlers:
            handler.setFormatter(formatter)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
