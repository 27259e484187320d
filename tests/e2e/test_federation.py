"""End to end on moto's server: real edge clients, real handler, real digits."""

from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from edge_client.client import EdgeClient
from edge_client.trainers import NumpyTrainer
from fedcore import layout, models
from infra.config import load_settings
from lambdas.aggregator import constants as names
from local_aws import report
from local_aws.dataset import federated_digits
from local_aws.federation import run_federation, with_round_settings

DEVICES = 4
ROUNDS = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run():
    data = federated_digits(devices=DEVICES, alpha=0.5, seed=1)
    settings = with_round_settings(
        load_settings(), target_updates=DEVICES, min_updates=2
    )
    initial = models.init_model(
        "mlp", input_dim=64, hidden_units=32, classes=10, seed=1
    )
    with run_federation(settings, workers=2) as federation:
        federation.initialize(
            initial, architecture="mlp", holdout=(data.holdout_x, data.holdout_y)
        )
        devices = [
            EdgeClient(
                device_id=f"device-{index}",
                updates_bucket=federation.resources.updates_bucket,
                models_bucket=federation.resources.models_bucket,
                trainer=NumpyTrainer(epochs=2, seed=index),
                s3_client=federation.s3(),
            )
            for index in range(DEVICES)
        ]
        uploads = []
        with ThreadPoolExecutor(max_workers=DEVICES) as pool:
            for round_number in range(1, ROUNDS + 1):
                uploads.append(
                    list(
                        pool.map(
                            lambda index: devices[index].train_round(
                                *data.device_data(index)
                            ),
                            range(DEVICES),
                        )
                    )
                )
                federation.wait_for_round(round_number + 1, timeout=60)
        rows = [report.round_row(federation, number) for number in range(1, 4)]
        versions = report._model_package_versions(federation)
        metrics = report._cloudwatch_metrics(
            federation, report.datetime.now(report.UTC) - report.timedelta(hours=1)
        )
        pointer = json.loads(
            federation.s3()
            .get_object(
                Bucket=federation.resources.models_bucket, Key=layout.POINTER_KEY
            )["Body"]
            .read()
        )
        archive = (
            federation.s3()
            .get_object(
                Bucket=federation.resources.models_bucket,
                Key=layout.model_archive_key(4),
            )["Body"]
            .read()
        )
        yield {
            "rows": rows,
            "versions": versions,
            "metrics": metrics,
            "pointer": pointer,
            "uploads": uploads,
            "archive": archive,
        }


def test_rounds_all_published(finished_run):
    assert [row["status"] for row in finished_run["rows"]] == ["published"] * ROUNDS


def test_rounds_count_every_device(finished_run):
    assert [row["accepted"] for row in finished_run["rows"]] == [DEVICES] * ROUNDS


def test_pointer_at_next_round(finished_run):
    assert finished_run["pointer"]["round"] == ROUNDS + 1


def test_pointer_names_latest_model(finished_run):
    assert finished_run["pointer"]["model_key"] == layout.model_key(ROUNDS + 1)


def test_accuracy_improves(finished_run):
    accuracies = [row["holdout_accuracy"] for row in finished_run["rows"]]
    assert accuracies[-1] > accuracies[0]


def test_registry_one_version_per_round(finished_run):
    rounds = sorted(int(item["round"]) for item in finished_run["versions"])
    assert rounds == [1, 2, 3]


def test_registry_pending_approval(finished_run):
    statuses = {item["status"] for item in finished_run["versions"]}
    assert statuses == {"PendingManualApproval"}


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (names.METRIC_UPDATES_ACCEPTED, DEVICES * ROUNDS),
        (names.METRIC_ROUNDS_PUBLISHED, ROUNDS),
        (names.METRIC_ROUND_PARTICIPANTS, DEVICES * ROUNDS),
    ],
)
def test_cloudwatch_sums(finished_run, metric, expected):
    assert finished_run["metrics"][metric] == expected


def test_cloudwatch_accuracy_matches_state(finished_run):
    best = max(row["holdout_accuracy"] for row in finished_run["rows"])
    assert finished_run["metrics"][names.METRIC_GLOBAL_ACCURACY] == pytest.approx(best)


def test_cloudwatch_no_rejections(finished_run):
    assert finished_run["metrics"][names.METRIC_UPDATES_REJECTED] == 0


def test_archive_holds_model_and_metadata(finished_run):
    with tarfile.open(fileobj=io.BytesIO(finished_run["archive"])) as archive:
        assert sorted(archive.getnames()) == ["metadata.json", "model.safetensors"]
