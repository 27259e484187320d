"""Fixtures: a fresh federation on moto in-process for each test."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.s3.responses import S3Response

from infra.config import (
    DeploymentSettings,
    RoundSettings,
    ValidationSettings,
    aggregator_environment,
)
from lambdas.aggregator import clients, config, faults, modelcache, telemetry
from local_aws.bootstrap import initialize_federation
from local_aws.server import FAKE_CREDENTIALS, REGION

from .harness import Harness, holdout, small_model

HarnessFactory = Callable[..., Harness]


_PUT_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def linearizable_s3_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's conditional PutObject atomic, as S3's is.

    moto 5.2.5 checks If-Match / If-None-Match and then stores the object in a
    separate step without a lock, so a thread switch between the two could let two
    racing writers win. The aggregator relies on S3 rejecting the loser, so the
    tests serialize moto's PutObject handler. This covers moto in process and
    ThreadedMotoServer alike, because both run in this process.
    """
    original = S3Response.put_object

    def put_object(self: S3Response) -> Any:
        with _PUT_LOCK:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a fixed region; no endpoint, profile or metadata lookup."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)


def _reset_aggregator() -> None:
    clients.reset()
    config.load_config.cache_clear()
    modelcache.clear()
    faults.disarm_all()
    telemetry.clear()


@pytest.fixture
def make_harness(
    aws_environment: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HarnessFactory]:
    """Return a factory that creates one federation with the given round settings.

    Keyword arguments are fields of ``RoundSettings`` and ``ValidationSettings``.
    Defaults: 3 updates close a round, 2 are enough at the deadline, 1 s lease.
    """
    records: list[dict[str, Any]] = []
    with mock_aws():
        _reset_aggregator()
        telemetry.set_sink(records.append)

        def factory(**changes: Any) -> Harness:
            round_fields = {"target_updates": 3, "min_updates": 2, "lease_seconds": 1}
            validation_fields: dict[str, Any] = {}
            for name, value in changes.items():
                if name in RoundSettings.__dataclass_fields__:
                    round_fields[name] = value
                elif name in ValidationSettings.__dataclass_fields__:
                    validation_fields[name] = value
                else:
                    raise TypeError(f"unknown setting {name!r}")
            settings = DeploymentSettings(
                prefix=f"t{uuid.uuid4().hex[:10]}",
                round=RoundSettings(**round_fields),
                validation=ValidationSettings(**validation_fields),
            )
            s3 = boto3.client("s3", region_name=REGION)
            sagemaker = boto3.client("sagemaker", region_name=REGION)
            for bucket in (settings.local_updates_bucket, settings.local_models_bucket):
                s3.create_bucket(Bucket=bucket)
                s3.put_bucket_versioning(
                    Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
                )
            sagemaker.create_model_package_group(
                ModelPackageGroupName=settings.model_package_group_name
            )
            environment = aggregator_environment(
                settings,
                updates_bucket=settings.local_updates_bucket,
                models_bucket=settings.local_models_bucket,
            )
            for name, value in environment.items():
                monkeypatch.setenv(name, value)
            _reset_aggregator()
            base = small_model()
            digest = initialize_federation(
                s3,
                settings.local_models_bucket,
                base,
                architecture="mlp",
                holdout=holdout(),
            )
            return Harness(
                settings=settings,
                s3=s3,
                sagemaker=sagemaker,
                records=records,
                base=base,
                base_sha256=digest,
            )

        try:
            yield factory
        finally:
            telemetry.set_sink(None)
            _reset_aggregator()


@pytest.fixture
def harness(make_harness: HarnessFactory) -> Harness:
    """A federation with the default settings of :func:`make_harness`."""
    return make_harness()
