"""Strategies through the real handler on moto: results, ranged reads, server state."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pytest

from fedcore import layout, server_state
from fedcore.rounds import aggregate_round
from fedcore.server_state import ServerState
from fedcore.strategies import resolve
from lambdas.aggregator import clients, config, modelcache
from tests.aggregator.harness import Harness

DEVICES = 6


def configure(harness: Harness, name: str, params: dict[str, float]) -> None:
    document = {
        "target_updates": DEVICES,
        "min_updates": 2,
        "deadline_seconds": 900,
        "strategy": name,
        "strategy_params": params,
    }
    harness.s3.put_object(
        Bucket=harness.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=json.dumps(document).encode(),
    )


class GetRecorder:
    """Records the Range of every GetObject the aggregator's S3 client sends."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        clients.client("s3").meta.events.register(
            "before-call.s3.GetObject", self.record
        )

    def record(self, params: dict[str, Any], **_: Any) -> None:
        self.ranges.append(params.get("headers", {}).get("Range"))

    @property
    def ranged(self) -> list[str]:
        return [value for value in self.ranges if value]


def play_round(harness: Harness, count: int = DEVICES):
    uploads = [
        harness.upload(f"dev-{index}", num_examples=3 + 2 * index)
        for index in range(count)
    ]
    assert harness.deliver(*uploads) == []
    return uploads


def expected(name, params, base, uploads, state):
    strategy = resolve(name, params)
    ordered = sorted(uploads, key=lambda upload: upload.device)
    return aggregate_round(
        strategy,
        base,
        [upload.tensors for upload in ordered],
        [upload.num_examples for upload in ordered],
        state,
    )


def assert_same(stored, reference):
    assert sorted(stored) == sorted(reference)
    for key, array in reference.items():
        np.testing.assert_array_equal(stored[key], array)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavg", {"weighted": 0}),
        ("fedavgm", {"momentum": 0.5}),
        ("fedadam", {"eta": 0.05}),
        ("fedprox", {"proximal_mu": 0.1}),
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("median", {"nnm_f": 1}),
        ("trimmed_mean", {"beta": 0.2, "nnm_f": 2}),
        ("krum", {"f": 1}),
        ("multikrum", {"f": 1}),
    ],
)
def test_round_equals_memory(harness: Harness, name, params):
    configure(harness, name, params)
    recorder = GetRecorder()
    uploads = play_round(harness)
    assert harness.pointer()["round"] == 2
    reference, _ = expected(
        name, params, harness.base, uploads, ServerState.initial(resolve(name, params))
    )
    assert_same(harness.model(2), reference)
    state = harness.state(1)
    assert state["strategy"] == name
    assert state["strategy_params"] == dict(resolve(name, params).params)
    if resolve(name).family == "robust":
        assert len(recorder.ranged) > DEVICES
    else:
        assert recorder.ranged == []


def test_ranged_reads_in_blocks(make_harness, monkeypatch):
    monkeypatch.setenv("AGGREGATION_BLOCK_BYTES", "16")
    harness = make_harness(target_updates=DEVICES)
    config.load_config.cache_clear()
    configure(harness, "median", {})
    recorder = GetRecorder()
    uploads = play_round(harness)
    reference, _ = expected("median", {}, harness.base, uploads, ServerState("median"))
    assert_same(harness.model(2), reference)
    # Blocks of 2 elements: every update is read in many small ranges.
    elements = sum(array.size for array in harness.base.values())
    assert len(recorder.ranged) >= DEVICES * elements // 2


@pytest.mark.parametrize(
    ("name", "params"),
    [("fedavg", {}), ("fedavg", {"clip_norm": 0.01}), ("fedadam", {"eta": 0.05})],
)
def test_float32_accumulator_round(make_harness, monkeypatch, caplog, name, params):
    caplog.set_level(logging.INFO, logger="lambdas.aggregator.aggregate")
    harness = make_harness(target_updates=DEVICES)
    monkeypatch.setenv("AGGREGATION_ACCUMULATOR", "float32")
    config.load_config.cache_clear()
    configure(harness, name, params)
    uploads = play_round(harness)
    reference, _ = expected(
        name, params, harness.base, uploads, ServerState.initial(resolve(name, params))
    )
    assert f"{name}: folding {DEVICES} updates into a float32" in caplog.text
    stored = harness.model(2)
    for key, array in reference.items():
        assert stored[key].dtype == array.dtype
        np.testing.assert_allclose(stored[key], array, rtol=0, atol=1e-6)


def test_model_records_proximal_mu(harness: Harness):
    configure(harness, "fedprox", {"proximal_mu": 0.25})
    play_round(harness)
    data = harness.s3.get_object(Bucket=harness.models_bucket, Key=layout.model_key(2))[
        "Body"
    ].read()
    header_length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_length])["__metadata__"]
    assert metadata["proximal_mu"] == "0.25"
    assert metadata["strategy"] == "fedprox"


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_state_survives_fresh_invocations(harness: Harness, name):
    params = {"eta": 0.05} if name != "fedavgm" else {"momentum": 0.9}
    configure(harness, name, params)
    strategy = resolve(name, params)
    model = dict(harness.base)
    state = ServerState.initial(strategy)
    for round_number in (1, 2, 3):
        # A fresh process: no cached client, configuration or model.
        clients.reset()
        config.load_config.cache_clear()
        modelcache.clear()
        uploads = play_round(harness)
        model, state = expected(name, params, model, uploads, state)
        assert_same(harness.model(round_number + 1), model)
    stored = harness.s3.get_object(
        Bucket=harness.models_bucket, Key=layout.server_state_key(4)
    )["Body"].read()
    assert stored == server_state.encode(state, produced_by_round=3)


def test_too_few_abandons_round(make_harness):
    # The round may close at its deadline with min_updates = 3, fewer than the
    # 5 that Krum with f = 1 needs, so the close abandons it.
    harness = make_harness(target_updates=DEVICES, min_updates=3)
    configure(harness, "krum", {"f": 1})
    document = json.loads(
        harness.s3.get_object(
            Bucket=harness.models_bucket, Key=layout.ROUND_CONFIG_KEY
        )["Body"].read()
    )
    document.update({"min_updates": 3})
    harness.s3.put_object(
        Bucket=harness.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=json.dumps(document).encode(),
    )
    play_round(harness, count=3)
    assert harness.sweep(time.time() + 901) == "closed"
    body = harness.state(1)
    assert body["status"] == "abandoned"
    assert "needs more than 2f + 2 = 4 updates, got 3" in body["abandoned"]["reason"]
    assert harness.pointer()["round"] == 2
    assert harness.pointer()["model_key"] == layout.model_key(1)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_diverged_step_abandons_round(harness: Harness):
    # eta = 1e39 moves the float32 weights past float32's largest value, 3.4e38.
    configure(harness, "fedadam", {"eta": 1e39})
    play_round(harness)
    body = harness.state(1)
    assert body["status"] == "abandoned"
    assert "non-finite" in body["abandoned"]["reason"]
    assert harness.pointer()["model_key"] == layout.model_key(1)


def test_deleted_member_abandons_ranged_round(harness: Harness):
    # The robust rules read members by range; a deleted version fails that path.
    configure(harness, "median", {})
    uploads = [
        harness.upload(f"dev-{index}", num_examples=3) for index in range(DEVICES)
    ]
    assert harness.deliver(*uploads[:-1]) == []
    harness.s3.delete_object(
        Bucket=harness.updates_bucket,
        Key=uploads[0].key,
        VersionId=uploads[0].version_id,
    )
    assert harness.deliver(uploads[-1]) == []
    body = harness.state(1)
    assert body["status"] == "abandoned"
    assert uploads[0].key in body["abandoned"]["reason"]
    assert harness.pointer()["model_key"] == layout.model_key(1)
