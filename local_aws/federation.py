"""A whole federation on the embedded AWS: resources, aggregator, schedule, metrics.

Used by the demo and by the integration tests, so both run the same wiring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcore import layout, models
from fedcore.round_config import parse_round_config
from infra.config import DeploymentSettings, round_document
from lambdas.aggregator import clients, config, handler, modelcache, telemetry
from local_aws.bootstrap import initialize_federation
from local_aws.dataset import FederatedDigits
from local_aws.lambda_runtime import EventSourceMapping, MetricForwarder, Schedule
from local_aws.resources import LocalResources, create_resources
from local_aws.server import LocalAws, local_aws

if TYPE_CHECKING:
    from edge_client.client import EdgeClient

logger = logging.getLogger(__name__)


@dataclass
class LocalFederation:
    """Handles on a running local federation."""

    aws: LocalAws
    settings: DeploymentSettings
    resources: LocalResources
    mapping: EventSourceMapping
    schedule: Schedule
    metrics: MetricForwarder

    def initialize(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        architecture: str,
        holdout: tuple[np.ndarray, np.ndarray] | None,
    ) -> str:
        """Publish the initial model, then start the aggregator and the sweep.

        Returns
        -------
        str
            SHA-256 of the initial global model.
        """
        digest = initialize_federation(
            self.s3(),
            self.resources.models_bucket,
            tensors,
            architecture=architecture,
            holdout=holdout,
        )
        self.mapping.start()
        self.schedule.start()
        return digest

    def s3(self) -> Any:
        """Return a new S3 client on the embedded AWS."""
        return self.aws.client("s3")

    def read_pointer_round(self, s3: Any | None = None) -> int:
        """Return the open round named by the pointer."""
        client = s3 or self.s3()
        body = client.get_object(
            Bucket=self.resources.models_bucket, Key=layout.POINTER_KEY
        )["Body"].read()
        return int(json.loads(body)["round"])

    def store_round_settings(self, **changes: Any) -> None:
        """Store this federation's round settings as ``config/round.json``.

        ``sfl configure`` prints the stored settings, else those of ``cdk.json``.
        The demo and the sandbox give their aggregator other ones (a target of one
        round's devices), so they are stored for the operator commands to see and
        change. ``changes`` replace round settings in the stored document only.
        """
        settings = with_round_settings(self.settings, **changes)
        document = parse_round_config(round_document(settings)).to_document()
        self.s3().put_object(
            Bucket=self.resources.models_bucket,
            Key=layout.ROUND_CONFIG_KEY,
            Body=json.dumps(document, indent=1, sort_keys=True).encode(),
            ContentType="application/json",
        )

    def wait_for_round(self, round_number: int, timeout: float = 60.0) -> None:
        """Block until the pointer reaches ``round_number``.

        Raises
        ------
        TimeoutError
            If it does not within ``timeout`` seconds.
        """
        s3 = self.s3()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.read_pointer_round(s3) >= round_number:
                return
            time.sleep(0.05)
        pointer = self.read_pointer_round(s3)
        raise TimeoutError(
            f"round {round_number} was not reached within {timeout} s "
            f"(pointer at {pointer}); {self._rejections_in(s3, pointer)}"
        )

    def _rejections_in(self, s3: Any, round_number: int) -> str:
        """Describe the rejections recorded in a round, by reason."""
        counts = rejections_by_reason(
            s3,
            self.resources.models_bucket,
            prefix=f"rejections/round-{round_number:06d}/",
        )
        if not counts:
            return f"no update of round {round_number} was rejected"
        found = ", ".join(f"{name} {count}" for name, count in counts.items())
        total = sum(counts.values())
        noun = "update" if total == 1 else "updates"
        return (
            f"round {round_number} rejected {total} {noun} "
            f"({found}); `sfl status` and the aggregator's log give the details"
        )


def rejections_by_reason(
    s3: Any, bucket: str, *, prefix: str = "rejections/"
) -> dict[str, int]:
    """Count the rejection records under ``prefix`` by reason, sorted by reason.

    A record that is not a JSON object with a ``reason`` counts as ``unknown``.
    """
    counts: dict[str, int] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            try:
                reason = str(json.loads(body).get("reason", "unknown"))
            except (ValueError, AttributeError):
                reason = "unknown"
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


@contextmanager
def run_federation(
    settings: DeploymentSettings,
    *,
    workers: int = 2,
    sweep_interval: float = 1.0,
    visibility_timeout: int = 5,
) -> Iterator[LocalFederation]:
    """Start the embedded AWS, create the resources and run the aggregator on it.

    Parameters
    ----------
    workers
        Concurrent handler invocations polling the queue.
    sweep_interval
        Seconds between deadline sweeps (the stacks run one every few minutes).
    visibility_timeout
        SQS visibility timeout, short so that local retries come quickly.
    """
    with local_aws() as aws:
        resources = create_resources(
            aws, settings, visibility_timeout=visibility_timeout
        )
        environment = resources.aggregator_environment(settings)
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)
        clients.reset()
        config.load_config.cache_clear()
        modelcache.clear()
        forwarder = MetricForwarder(aws.client("cloudwatch"))
        telemetry.set_sink(forwarder)
        mapping = EventSourceMapping(
            aws.client("sqs"),
            resources.queue_url,
            handler.handle_sqs,
            batch_size=settings.aggregator.batch_size,
            batching_window_seconds=1,
            workers=workers,
        )
        schedule = Schedule(lambda: handler.handle_sweep({}, None), sweep_interval)
        try:
            yield LocalFederation(
                aws, settings, resources, mapping, schedule, forwarder
            )
        finally:
            mapping.stop()
            schedule.stop()
            telemetry.set_sink(None)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            clients.reset()
            config.load_config.cache_clear()
            modelcache.clear()


def with_round_settings(
    settings: DeploymentSettings, **changes: Any
) -> DeploymentSettings:
    """Return settings with some round settings replaced."""
    return dataclasses.replace(
        settings, round=dataclasses.replace(settings.round, **changes)
    )


def initialize_with_digits(
    federation: LocalFederation, data: FederatedDigits, *, seed: int
) -> None:
    """Publish a fresh model of the settings' architecture and ``data``'s holdout."""
    spec = federation.settings.model
    initial = models.init_model(
        spec.architecture,
        input_dim=spec.input_dim,
        hidden_units=spec.hidden_units,
        classes=spec.classes,
        seed=seed,
    )
    federation.initialize(
        initial,
        architecture=spec.architecture,
        holdout=(data.holdout_x, data.holdout_y),
    )


def run_rounds(
    federation: LocalFederation,
    clients: Sequence[EdgeClient],
    data: FederatedDigits,
    rounds: int,
    *,
    timeout: float = 120.0,
) -> None:
    """Let every client train on its shard for ``rounds`` rounds, all concurrently.

    Client ``i`` trains on ``data.device_data(i)``; each round waits until the
    aggregator has published it.

    Raises
    ------
    TimeoutError
        If a round is not published within ``timeout`` seconds.
    """
    first = federation.read_pointer_round()
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        for round_number in range(first, first + rounds):
            list(
                pool.map(
                    lambda index: clients[index].train_round(*data.device_data(index)),
                    range(len(clients)),
                )
            )
            federation.wait_for_round(round_number + 1, timeout)


def serve_until_interrupted(federation: LocalFederation) -> None:
    """Keep the embedded AWS up for other shells until Ctrl-C."""
    print(
        f"embedded AWS on {federation.aws.endpoint}, round "
        f"{federation.read_pointer_round()} open"
    )
    print("in another shell:")
    for name, value in federation.aws.environment().items():
        if name != "AWS_EC2_METADATA_DISABLED":
            print(f"  export {name}={value}")
    print("  .venv/bin/sfl status")
    print("press Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping the embedded AWS")
