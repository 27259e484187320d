"""Round lifecycle: close at target, deadline close, abandon, extend, late updates."""

from __future__ import annotations

import dataclasses
import threading
import time

from edge_client.client import EdgeClient
from edge_client.trainers import NumpyTrainer
from fedcore import layout
from lambdas.aggregator import constants as names

from .conftest import HarnessFactory
from .harness import Harness, expected_model
from .invariants import check_all


def past_deadline(harness: Harness) -> float:
    return time.time() + harness.config.deadline_seconds + 1


def test_close_at_target(harness: Harness) -> None:
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    harness.deliver(uploads[0])
    harness.deliver(uploads[1])
    assert harness.state(1)["status"] == "open"
    harness.deliver(uploads[2])
    assert harness.state(1)["status"] == "published"
    assert harness.pointer()["round"] == 2
    check_all(harness, uploads, [upload.key for upload in uploads])


def test_sweep_before_deadline_open(harness: Harness) -> None:
    harness.deliver(harness.upload("dev-0"), harness.upload("dev-1"))
    assert harness.sweep(time.time()) == "open"
    assert harness.pointer()["round"] == 1


def test_deadline_at_min_closes(harness: Harness) -> None:
    uploads = [harness.upload("dev-0", num_examples=2), harness.upload("dev-1")]
    harness.deliver(*uploads)
    assert harness.sweep(past_deadline(harness)) == "closed"
    assert harness.state(1)["closing"]["members"] == ["dev-0", "dev-1"]
    stored = harness.model(2)
    for name, array in expected_model(harness.base, uploads).items():
        assert abs(stored[name] - array).max() <= 1e-6
    check_all(harness, uploads, [upload.key for upload in uploads])


def test_below_min_abandons(harness: Harness) -> None:
    lonely = harness.upload("dev-0")
    harness.deliver(lonely)
    before = harness.pointer()
    assert harness.sweep(past_deadline(harness)) == "abandoned"
    after = harness.pointer()
    assert harness.state(1)["status"] == "abandoned"
    assert after["round"] == 2
    assert after["model_key"] == before["model_key"]
    assert after["model_sha256"] == before["model_sha256"]
    assert harness.total(names.METRIC_ROUNDS_ABANDONED) == 1
    (record,) = harness.metrics(names.METRIC_ROUNDS_ABANDONED)
    assert record["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Federation"]]
    assert harness.registry() == []
    next_round = [harness.upload(f"dev-{index}") for index in range(3)]
    harness.deliver(*next_round)
    assert harness.state(2)["base_model_key"] == before["model_key"]
    stored = harness.model(3)
    for name, array in expected_model(harness.base, next_round).items():
        assert abs(stored[name] - array).max() <= 1e-6
    check_all(harness, [lonely, *next_round], [u.key for u in [lonely, *next_round]])


def test_device_trains_after_abandon(harness: Harness) -> None:
    # The pointer moves to round 2 and keeps the model that started round 1, so the
    # edge client must accept a model whose metadata names an earlier round.
    harness.deliver(harness.upload("dev-0"))
    assert harness.sweep(past_deadline(harness)) == "abandoned"
    device = EdgeClient(
        device_id="dev-9",
        updates_bucket=harness.updates_bucket,
        models_bucket=harness.models_bucket,
        trainer=NumpyTrainer(epochs=1, batch_size=8, seed=0),
        s3_client=harness.s3,
        retry_delay=0.0,
    )
    model = device.fetch_global_model()
    assert model.round == 2
    assert model.sha256 == harness.pointer()["model_sha256"]


def test_abandon_late_update_stale(harness: Harness) -> None:
    harness.sweep(time.time())
    harness.sweep(past_deadline(harness))
    late = harness.upload("dev-0", round_number=1)
    harness.deliver(late)
    assert harness.rejection(1, late.key)["reason"] == "stale_round"


def test_below_min_extends(make_harness: HarnessFactory) -> None:
    harness = make_harness(on_deadline="extend")
    harness.deliver(harness.upload("dev-0"))
    deadline = harness.state(1)["deadline"]
    now = past_deadline(harness)
    assert harness.sweep(now) == "extended"
    body = harness.state(1)
    assert body["status"] == "open"
    assert body["deadline"] == now + harness.config.deadline_seconds
    assert body["deadline"] > deadline
    assert body["extensions"] == 1
    assert harness.pointer()["round"] == 1
    assert harness.sweep(now + 1) == "open"
    assert harness.total(names.METRIC_ROUNDS_ABANDONED) == 0


def test_late_update_closed_round(harness: Harness) -> None:
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    harness.deliver(*uploads)
    etag = harness.state_etag(1)
    late = harness.upload("dev-9", round_number=1)
    harness.deliver(late)
    assert harness.rejection(1, late.key)["reason"] == "stale_round"
    assert harness.state_etag(1) == etag
    check_all(harness, [*uploads, late], [upload.key for upload in uploads])


def test_concurrent_deadline_sweeps(harness: Harness) -> None:
    uploads = [harness.upload("dev-0"), harness.upload("dev-1")]
    harness.deliver(*uploads)
    now = past_deadline(harness)
    start = threading.Barrier(3)
    outcomes: list[str] = []

    def run() -> None:
        start.wait()
        outcomes.append(harness.sweep(now))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The sweeps run 900 s ahead of the clock, past the 1 s lease, so a loser may
    # also take the close over: only the published result is deterministic.
    assert "closed" in outcomes
    check_all(harness, uploads, [upload.key for upload in uploads])


def test_overwrite_after_accept_harmless(harness: Harness) -> None:
    # Events without a versionId (moto sends none) still pin the version read.
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    unversioned = [dataclasses.replace(upload, version_id=None) for upload in uploads]
    harness.deliver(*unversioned[:2])
    harness.s3.put_object(
        Bucket=harness.updates_bucket,
        Key=uploads[0].key,
        Body=harness.upload("dev-9", round_number=1).data,
    )
    harness.deliver(unversioned[2])
    assert harness.state(1)["accepted"]["dev-0"]["version_id"] == uploads[0].version_id
    assert harness.state(1)["status"] == "published"
    stored = harness.model(2)
    for name, array in expected_model(harness.base, uploads).items():
        assert abs(stored[name] - array).max() <= 1e-6


def test_deleted_member_abandons_round(harness: Harness) -> None:
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    harness.deliver(*uploads[:2])
    harness.s3.delete_object(
        Bucket=harness.updates_bucket,
        Key=uploads[0].key,
        VersionId=uploads[0].version_id,
    )
    harness.deliver(uploads[2])
    body = harness.state(1)
    assert body["status"] == "abandoned"
    assert f"accepted update {uploads[0].key} is gone" in body["abandoned"]["reason"]
    assert harness.pointer()["round"] == 2
    assert harness.pointer()["model_key"] == layout.model_key(1)
