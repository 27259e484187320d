"""Many devices through the real handler code, on moto in process.

Run one size in a fresh process::

    python -m benchmarks.scale DEVICES [HIDDEN [ACCUMULATOR]]

Every device uploads one float32 update of a 1000-HIDDEN-10 MLP (1,011,010 values
with the default HIDDEN of 1000) to the updates bucket, and the handler receives the
S3 notifications in SQS batches of 10, as the event source mapping delivers them.
The round closes at DEVICES updates, so the last batch also aggregates every update
and publishes the model. Reported: wall time of intake (all batches but the last)
and of the last batch (intake plus close), and the peak RSS above the RSS just
before each phase. moto keeps every object in this process's memory, so total RSS
grows with the device count; the peaks above the phase baselines are the
aggregator's own.

The fold (``lambdas.aggregator.aggregate.aggregate``) reads every update, sums
them and takes the server step, before the model is encoded and published. It
reuses memory that the intake freed, so its RSS barely moves. Its own peak is
therefore taken with tracemalloc, which runs during the fold only. ACCUMULATOR is
``fl:aggregator.accumulator``, ``float64`` by default.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
import uuid
from typing import Any

import boto3
import numpy as np
from moto import mock_aws

from benchmarks.measure import peak_rss, reset_peak_rss
from fedcore import layout, models, safetensors_io
from fedcore.aggregation import FLOAT64
from fedcore.update import UpdateMetadata
from infra.config import (
    AggregatorSettings,
    DeploymentSettings,
    RoundSettings,
    ValidationSettings,
    aggregator_environment,
)
from lambdas.aggregator import aggregate, clients, config, handler, modelcache
from local_aws.bootstrap import initialize_federation
from local_aws.server import FAKE_CREDENTIALS, REGION

BATCH = 10


def _event(bucket: str, key: str, size: int, etag: str, version: str | None) -> str:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "eTag": etag, "versionId": version},
        },
    }
    return json.dumps({"Records": [record]})


def _sqs(bodies: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {"messageId": uuid.uuid4().hex, "body": body, "eventSource": "aws:sqs"}
            for body in bodies
        ]
    }


class FoldPeak:
    """Wrapper of the aggregator's fold that takes the peak of its allocations."""

    def __init__(self) -> None:
        self.fold = aggregate.aggregate
        self.traced_peak = 0

    def __call__(self, *args: Any) -> Any:
        tracemalloc.start()
        try:
            return self.fold(*args)
        finally:
            self.traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


def run(devices: int, hidden: int, accumulator: str) -> dict[str, object]:
    os.environ.update(FAKE_CREDENTIALS)
    os.environ.update({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    settings = DeploymentSettings(
        prefix="scale",
        round=RoundSettings(
            target_updates=devices, min_updates=1, deadline_seconds=86400
        ),
        validation=ValidationSettings(max_update_bytes=64 * 1024 * 1024),
        aggregator=AggregatorSettings(accumulator=accumulator),
    )
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (settings.local_updates_bucket, settings.local_models_bucket):
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            )
        boto3.client("sagemaker", region_name=REGION).create_model_package_group(
            ModelPackageGroupName=settings.model_package_group_name
        )
        os.environ.update(
            aggregator_environment(
                settings,
                updates_bucket=settings.local_updates_bucket,
                models_bucket=settings.local_models_bucket,
            )
        )
        clients.reset()
        config.load_config.cache_clear()
        modelcache.clear()
        base = models.init_model(
            "mlp", input_dim=1000, hidden_units=hidden, classes=10, seed=0
        )
        digest = initialize_federation(
            s3, settings.local_models_bucket, base, architecture="mlp", holdout=None
        )
        rng = np.random.default_rng(1)
        bodies = []
        for index in range(devices):
            device = f"d{index:05d}"
            update_id = uuid.uuid4().hex
            tensors = {
                name: (rng.standard_normal(array.shape, dtype=np.float32) * 1e-3)
                for name, array in base.items()
            }
            metadata = UpdateMetadata(
                round=1,
                device_id=device,
                update_id=update_id,
                num_examples=int(rng.integers(1, 100)),
                base_model_sha256=digest,
            ).to_strings()
            data = safetensors_io.encode(tensors, metadata)
            key = layout.update_key(device, 1, update_id)
            response = s3.put_object(
                Bucket=settings.local_updates_bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="SHA256",
            )
            bodies.append(
                _event(
                    settings.local_updates_bucket,
                    key,
                    len(data),
                    response["ETag"].strip('"'),
                    response.get("VersionId"),
                )
            )
        batches = [bodies[start : start + BATCH] for start in range(0, devices, BATCH)]
        baseline = reset_peak_rss()
        started = time.perf_counter()
        for batch in batches[:-1]:
            handler.handle_sqs(_sqs(batch), None)
        intake_seconds = time.perf_counter() - started
        intake_peak = peak_rss() - baseline
        fold = FoldPeak()
        aggregate.aggregate = fold
        baseline = reset_peak_rss()
        started = time.perf_counter()
        try:
            handler.handle_sqs(_sqs(batches[-1]), None)
        finally:
            aggregate.aggregate = fold.fold
        close_seconds = time.perf_counter() - started
        close_peak = peak_rss() - baseline
        pointer = json.loads(
            s3.get_object(Bucket=settings.local_models_bucket, Key=layout.POINTER_KEY)[
                "Body"
            ].read()
        )
    parameters = sum(array.size for array in base.values())
    return {
        "devices": devices,
        "parameters": parameters,
        "accumulator": accumulator,
        "model_bytes": parameters * 4,
        "published_round": pointer["round"] - 1,
        "intake_seconds": intake_seconds,
        "last_batch_seconds": close_seconds,
        "intake_peak_rss_bytes": intake_peak,
        "last_batch_peak_rss_bytes": close_peak,
        "fold_peak_traced_bytes": fold.traced_peak,
    }


def main(argv: list[str]) -> int:
    devices = int(argv[0])
    hidden = int(argv[1]) if len(argv) > 1 else 1000
    accumulator = argv[2] if len(argv) > 2 else FLOAT64
    print(json.dumps(run(devices, hidden, accumulator)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
