"""A federation on moto in-process, driven by hand-built SQS events.

Tests call the real handler entry points with events shaped like S3 notifications
carried by SQS, so they decide exactly which events arrive, in which order, how
often and on how many threads.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import numpy as np

from fedcore import layout, safetensors_io
from fedcore.models import init_model
from fedcore.update import UpdateMetadata
from infra.config import DeploymentSettings
from lambdas.aggregator import handler, state, sweep
from lambdas.aggregator.config import AggregatorConfig, load_config

HOLDOUT_ROWS = 24


@dataclass(frozen=True)
class Upload:
    """One object written to the updates bucket, as its notification describes it."""

    key: str
    device: str
    round: int
    data: bytes
    size: int
    etag: str
    version_id: str | None
    num_examples: int = 0
    tensors: Mapping[str, np.ndarray] | None = None


@dataclass
class Harness:
    """Handles on one federation: clients, configuration and captured EMF records."""

    settings: DeploymentSettings
    s3: Any
    sagemaker: Any
    records: list[dict[str, Any]]
    base: dict[str, np.ndarray]
    base_sha256: str
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    @property
    def config(self) -> AggregatorConfig:
        return load_config()

    @property
    def updates_bucket(self) -> str:
        return self.settings.local_updates_bucket

    @property
    def models_bucket(self) -> str:
        return self.settings.local_models_bucket

    # -- building updates ------------------------------------------------------

    def delta(self, scale: float = 0.01) -> dict[str, np.ndarray]:
        return {
            name: (self.rng.normal(size=array.shape) * scale).astype(array.dtype)
            for name, array in self.base.items()
        }

    def metadata(
        self,
        device: str,
        round_number: int,
        update_id: str,
        num_examples: int,
        overrides: Mapping[str, str | None] | None = None,
    ) -> dict[str, str]:
        values = UpdateMetadata(
            round=round_number,
            device_id=device,
            update_id=update_id,
            num_examples=num_examples,
            base_model_sha256=self.pointer()["model_sha256"],
        ).to_strings()
        for name, value in (overrides or {}).items():
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
        return values

    def put(
        self,
        key: str,
        data: bytes,
        *,
        device: str = "",
        round_number: int = 0,
        num_examples: int = 0,
        tensors: Mapping[str, np.ndarray] | None = None,
        storage_class: str = "STANDARD",
    ) -> Upload:
        response = self.s3.put_object(
            Bucket=self.updates_bucket,
            Key=key,
            Body=data,
            IfNoneMatch="*",
            ChecksumAlgorithm="SHA256",
            StorageClass=storage_class,
        )
        return Upload(
            key=key,
            device=device,
            round=round_number,
            data=data,
            size=len(data),
            etag=response["ETag"].strip('"'),
            version_id=response.get("VersionId"),
            num_examples=num_examples,
            tensors=tensors,
        )

    def upload(
        self,
        device: str,
        *,
        round_number: int | None = None,
        num_examples: int = 10,
        tensors: Mapping[str, np.ndarray] | None = None,
        metadata: Mapping[str, str | None] | None = None,
        data: bytes | None = None,
        storage_class: str = "STANDARD",
    ) -> Upload:
        """Upload an update; by default a valid one for the open round."""
        round_number = self.pointer()["round"] if round_number is None else round_number
        update_id = uuid.uuid4().hex
        tensors = self.delta() if tensors is None else tensors
        if data is None:
            data = safetensors_io.encode(
                tensors,
                self.metadata(device, round_number, update_id, num_examples, metadata),
            )
        key = layout.update_key(device, round_number, update_id)
        return self.put(
            key,
            data,
            device=device,
            round_number=round_number,
            num_examples=num_examples,
            tensors=tensors,
            storage_class=storage_class,
        )

    # -- events ----------------------------------------------------------------

    def body(
        self,
        upload: Upload,
        *,
        event_name: str = "ObjectCreated:Put",
        size: int | None = None,
        raw_key: str | None = None,
        bucket: str | None = None,
    ) -> str:
        """Render the S3 notification of ``upload`` as SQS carries it."""
        record = {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": "us-east-1",
            "eventName": event_name,
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket or self.updates_bucket},
                "object": {
                    "key": quote_plus(upload.key) if raw_key is None else raw_key,
                    "size": upload.size if size is None else size,
                    "eTag": upload.etag,
                    "versionId": upload.version_id,
                    "sequencer": "0055AED6DCD90281E5",
                },
            },
        }
        return json.dumps({"Records": [record]})

    @staticmethod
    def sqs_event(bodies: Iterable[str]) -> dict[str, Any]:
        return {
            "Records": [
                {
                    "messageId": str(uuid.uuid4()),
                    "receiptHandle": uuid.uuid4().hex,
                    "body": body,
                    "eventSource": "aws:sqs",
                    "awsRegion": "us-east-1",
                }
                for body in bodies
            ]
        }

    def deliver(self, *uploads: Upload) -> list[str]:
        """Deliver one batch; return the bodies of the messages reported failed."""
        return self.deliver_bodies([self.body(upload) for upload in uploads])

    def deliver_bodies(self, bodies: Sequence[str]) -> list[str]:
        event = self.sqs_event(bodies)
        response = handler.handle_sqs(event, None)
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        return [
            record["body"]
            for record in event["Records"]
            if record["messageId"] in failed
        ]

    def sweep(self, now: float) -> str:
        return sweep.sweep(self.config, now)

    # -- reading what the aggregator stored --------------------------------------

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            response = self.s3.get_object(Bucket=self.models_bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None
        document: dict[str, Any] = json.loads(response["Body"].read())
        return document

    def pointer(self) -> dict[str, Any]:
        document = self.read_json(layout.POINTER_KEY)
        assert document is not None
        return document

    def state(self, round_number: int) -> dict[str, Any] | None:
        return self.read_json(layout.round_state_key(round_number))

    def state_etag(self, round_number: int) -> str:
        key = layout.round_state_key(round_number)
        return str(self.s3.head_object(Bucket=self.models_bucket, Key=key)["ETag"])

    def rounds(self) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for key in self.keys("rounds/"):
            if key.endswith("/state.json"):
                body = self.read_json(key)
                assert body is not None
                found[int(body["round"])] = body
        return found

    def keys(self, prefix: str, bucket: str | None = None) -> list[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(
            Bucket=bucket or self.models_bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def versions(self, key: str) -> list[dict[str, Any]]:
        """Versions of one models-bucket key, newest first as S3 lists them."""
        response = self.s3.list_object_versions(Bucket=self.models_bucket, Prefix=key)
        return [item for item in response.get("Versions", []) if item["Key"] == key]

    def all_versions(self) -> list[tuple[str, str]]:
        paginator = self.s3.get_paginator("list_object_versions")
        found: list[tuple[str, str]] = []
        for page in paginator.paginate(Bucket=self.models_bucket):
            found.extend(
                (item["Key"], item["VersionId"]) for item in page.get("Versions", [])
            )
        return sorted(found)

    def pointer_history(self) -> list[int]:
        """Rounds named by every version of the pointer, oldest first."""
        rounds: list[int] = []
        for version in reversed(self.versions(layout.POINTER_KEY)):
            body = self.s3.get_object(
                Bucket=self.models_bucket,
                Key=layout.POINTER_KEY,
                VersionId=version["VersionId"],
            )["Body"].read()
            rounds.append(int(json.loads(body)["round"]))
        return rounds

    def rejection(self, round_number: int | None, key: str) -> dict[str, Any] | None:
        return self.read_json(layout.rejection_key(round_number, key))

    def registry(self) -> list[dict[str, Any]]:
        """Every version in the model package group, described, oldest first."""
        summaries = self.sagemaker.list_model_packages(
            ModelPackageGroupName=self.settings.model_package_group_name,
            MaxResults=100,
        )["ModelPackageSummaryList"]
        described = [
            self.sagemaker.describe_model_package(
                ModelPackageName=item["ModelPackageArn"]
            )
            for item in summaries
        ]
        return sorted(described, key=lambda item: item["CreationTime"])

    def model(self, round_number: int) -> dict[str, np.ndarray]:
        data = self.s3.get_object(
            Bucket=self.models_bucket, Key=layout.model_key(round_number)
        )["Body"].read()
        tensors, _ = safetensors_io.decode(data)
        return tensors

    def metrics(self, name: str) -> list[dict[str, Any]]:
        return [record for record in self.records if name in record]

    def total(self, name: str) -> float:
        return sum(float(record[name]) for record in self.metrics(name))

    def rejected_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.metrics("UpdatesRejected"):
            counts[record["Reason"]] = counts.get(record["Reason"], 0) + 1
        return counts

    def accepted_entries(self) -> list[tuple[int, str, dict[str, Any]]]:
        return [
            (round_number, device, entry)
            for round_number, body in sorted(self.rounds().items())
            for device, entry in sorted(body["accepted"].items())
        ]


def expected_model(
    base: Mapping[str, np.ndarray], uploads: Sequence[Upload]
) -> dict[str, np.ndarray]:
    """Compute base + weighted mean of the deltas with ``np.average``, independently."""
    weights = [upload.num_examples for upload in uploads]
    result: dict[str, np.ndarray] = {}
    for name, array in base.items():
        stacked = np.stack(
            [np.asarray(upload.tensors[name], dtype=np.float64) for upload in uploads]
        )
        mean = np.average(stacked, axis=0, weights=weights)
        result[name] = (array.astype(np.float64) + mean).astype(array.dtype)
    return result


def craft(header: Mapping[str, Any], payload: bytes) -> bytes:
    """Assemble safetensors bytes from an arbitrary header, for malformed files."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def small_model() -> dict[str, np.ndarray]:
    return init_model("mlp", input_dim=8, hidden_units=4, classes=3, seed=0)


def holdout() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    features = rng.random((HOLDOUT_ROWS, 8)).astype(np.float32)
    labels = rng.integers(0, 3, HOLDOUT_ROWS)
    return features, labels


def is_settled(harness: Harness, round_number: int) -> bool:
    body = harness.state(round_number)
    return body is not None and body["status"] in (state.PUBLISHED, state.ABANDONED)
