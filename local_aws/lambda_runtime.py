"""Plays Lambda's SQS event source mapping, the sweep schedule and CloudWatch Logs.

:class:`EventSourceMapping` polls the queue with several workers, hands each batch
to the real handler in Lambda's event shape, deletes what succeeded, and leaves
reported failures to become visible again, so the queue's redrive policy moves
a message to the DLQ after its maximum receive count. :class:`MetricForwarder`
turns the handler's EMF records into ``PutMetricData`` calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lambdas.aggregator import constants as names

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class MappingStats:
    """Counters of the event source mapping."""

    invocations: int = 0
    messages: int = 0
    failed_messages: int = 0
    crashed_invocations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class EventSourceMapping:
    """Poll an SQS queue and invoke a handler with batches, like Lambda does.

    Parameters
    ----------
    batch_size
        Largest number of messages in one invocation (SQS allows at most 10 a receive).
    batching_window_seconds
        Maximum seconds a receive waits for messages (SQS long polling allows 20).
    workers
        Concurrent invocations, like the function's reserved concurrency.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Handler,
        *,
        batch_size: int = 10,
        batching_window_seconds: int = 1,
        workers: int = 2,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._handler = handler
        self._batch_size = max(1, min(batch_size, 10))
        self._wait_seconds = max(0, min(batching_window_seconds, 20))
        self._workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stats = MappingStats()

    def start(self) -> None:
        """Start the polling workers."""
        for index in range(self._workers):
            thread = threading.Thread(
                target=self._run, name=f"sqs-poller-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop polling and wait for in-flight invocations to finish."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._sqs.receive_message(
                    QueueUrl=self._queue_url,
                    MaxNumberOfMessages=self._batch_size,
                    WaitTimeSeconds=self._wait_seconds,
                    MessageSystemAttributeNames=["All"],
                )
            except Exception:
                logger.exception("receiving from %s failed, retrying", self._queue_url)
                self._stop.wait(1.0)
                continue
            messages = response.get("Messages", [])
            if messages:
                self.invoke(messages)

    def invoke(self, messages: list[dict[str, Any]]) -> None:
        """Run the handler on one batch and settle each message as Lambda would."""
        event = {"Records": [_lambda_record(message) for message in messages]}
        with self.stats.lock:
            self.stats.invocations += 1
            self.stats.messages += len(messages)
        try:
            response = self._handler(event, None) or {}
            failed = {
                item["itemIdentifier"] for item in response.get("batchItemFailures", [])
            }
        except Exception:
            # A crashed invocation fails the whole batch, as in Lambda.
            logger.exception("handler crashed on a batch of %s messages", len(messages))
            with self.stats.lock:
                self.stats.crashed_invocations += 1
            failed = {message["MessageId"] for message in messages}
        with self.stats.lock:
            self.stats.failed_messages += len(failed)
        done = [message for message in messages if message["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                    for index, message in enumerate(done)
                ],
            )


def _lambda_record(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "awsRegion": "us-east-1",
    }


class Schedule:
    """Call a function every ``interval`` seconds, like an EventBridge schedule."""

    def __init__(self, function: Callable[[], Any], interval: float) -> None:
        self._function = function
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="schedule", daemon=True)

    def start(self) -> None:
        """Start calling the function."""
        self._thread.start()

    def stop(self) -> None:
        """Stop calling the function; a schedule never started stops at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._function()
            except Exception:
                logger.exception("scheduled call failed")


class MetricForwarder:
    """Turn EMF records into CloudWatch metrics, as CloudWatch Logs does in AWS."""

    def __init__(self, cloudwatch: Any) -> None:
        self._cloudwatch = cloudwatch
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        """Forward one EMF record: one datum per metric and dimension set."""
        with self._lock:
            self.records.append(record)
        directives = record.get("_aws", {})
        timestamp = directives.get("Timestamp", int(time.time() * 1000)) / 1000.0
        for directive in directives.get("CloudWatchMetrics", []):
            data = []
            for dimension_set in directive.get("Dimensions", []):
                dimensions = [
                    {"Name": name, "Value": str(record[name])} for name in dimension_set
                ]
                for metric in directive.get("Metrics", []):
                    data.append(
                        {
                            "MetricName": metric["Name"],
                            "Dimensions": dimensions,
                            "Value": float(record[metric["Name"]]),
                            "Unit": metric.get("Unit", "None"),
                            "Timestamp": timestamp,
                        }
                    )
            if data:
                self._cloudwatch.put_metric_data(
                    Namespace=directive["Namespace"], MetricData=data
                )

    def total(self, metric: str) -> float:
        """Sum of a metric over every record forwarded, by the Federation set."""
        with self._lock:
            return sum(
                float(record[metric])
                for record in self.records
                if metric in record and names.DIMENSION_FEDERATION in record
            )
