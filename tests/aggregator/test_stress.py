"""Many devices into one round through moto's server and the SQS poller."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedcore import layout, safetensors_io
from fedcore.update import UpdateMetadata
from infra.config import DeploymentSettings, RoundSettings
from lambdas.aggregator import constants as names
from local_aws.federation import run_federation

from .harness import holdout, small_model

DEVICES = 200


@pytest.mark.slow
def test_two_hundred_devices_one_round() -> None:
    settings = DeploymentSettings(
        prefix=f"s{uuid.uuid4().hex[:10]}",
        round=RoundSettings(target_updates=DEVICES, min_updates=DEVICES),
    )
    base = small_model()
    rng = np.random.default_rng(11)
    deltas = [
        {
            name: (rng.normal(size=a.shape) * 0.01).astype(a.dtype)
            for name, a in base.items()
        }
        for _ in range(DEVICES)
    ]
    examples = [int(count) for count in rng.integers(1, 100, DEVICES)]
    with run_federation(settings, workers=4, sweep_interval=0.5) as fed:
        digest = fed.initialize(base, architecture="mlp", holdout=holdout())
        bucket = fed.resources.updates_bucket

        def upload(index: int) -> None:
            s3 = uploaders[index % len(uploaders)]
            device = f"dev-{index:03d}"
            update_id = uuid.uuid4().hex
            metadata = UpdateMetadata(
                round=1,
                device_id=device,
                update_id=update_id,
                num_examples=examples[index],
                base_model_sha256=digest,
            )
            s3.put_object(
                Bucket=bucket,
                Key=layout.update_key(device, 1, update_id),
                Body=safetensors_io.encode(deltas[index], metadata.to_strings()),
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
            )

        uploaders = [fed.s3() for _ in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(upload, range(DEVICES)))
        fed.wait_for_round(2, timeout=60)
        s3 = fed.s3()
        models = fed.resources.models_bucket
        state = json.loads(
            s3.get_object(Bucket=models, Key=layout.round_state_key(1))["Body"].read()
        )
        model, _ = safetensors_io.decode(
            s3.get_object(Bucket=models, Key=layout.model_key(2))["Body"].read()
        )
        sagemaker = fed.aws.client("sagemaker")
        versions = sagemaker.list_model_packages(
            ModelPackageGroupName=settings.model_package_group_name
        )["ModelPackageSummaryList"]
        published = fed.metrics.total(names.METRIC_ROUNDS_PUBLISHED)
        accepted_metric = fed.metrics.total(names.METRIC_UPDATES_ACCEPTED)
        model_versions = s3.list_object_versions(
            Bucket=models, Prefix=layout.model_key(2)
        )["Versions"]
        stats = fed.mapping.stats
    assert len(state["accepted"]) == DEVICES
    assert state["status"] == "published"
    assert state["closing"]["members"] == sorted(state["accepted"])
    assert len(versions) == 1
    assert len(model_versions) == 1
    assert published == 1
    assert accepted_metric == DEVICES
    assert stats.invocations >= 2
    for name, array in base.items():
        stacked = np.stack([delta[name].astype(np.float64) for delta in deltas])
        expected = array + np.average(stacked, axis=0, weights=examples)
        np.testing.assert_allclose(model[name], expected.astype(np.float32), atol=1e-6)
