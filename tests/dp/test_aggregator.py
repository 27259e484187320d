"""dp_fedavg through the real handler on moto: noise, clipping, epsilon, budget."""

from __future__ import annotations

import contextlib
import json
import logging
import time

import numpy as np
import pytest

from fedcore import layout, privacy, safetensors_io, server_state
from fedcore.accounting import RdpAccountant, RoundEvent
from fedcore.dp_fedavg import accountant_of
from fedcore.models import evaluate
from fedcore.rounds import aggregate_round
from fedcore.server_state import ServerState
from fedcore.strategies import resolve
from lambdas.aggregator import aggregate, clients, config, faults, modelcache
from tests.aggregator.harness import Harness, holdout

DEVICES = 3
SEED = 1234
CLIP = 0.5
NOISE = 1.1
PARAMS = {
    "clip_norm": CLIP,
    "noise_multiplier": NOISE,
    "population": 6,
    "sampling_rate": 0.5,
    "delta": 1e-5,
}


def configure(harness: Harness, params: dict[str, float]) -> None:
    document = {
        "target_updates": DEVICES,
        "min_updates": DEVICES,
        "deadline_seconds": 900,
        "strategy": "dp_fedavg",
        "strategy_params": params,
    }
    harness.s3.put_object(
        Bucket=harness.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=json.dumps(document).encode(),
    )


def play_round(harness: Harness, scale: float = 0.3):
    # Deltas of norm about 2, so the clip norm of 0.5 scales every one down.
    uploads = [
        harness.upload(
            f"dev-{index}", num_examples=2 + index, tensors=harness.delta(scale)
        )
        for index in range(DEVICES)
    ]
    assert harness.deliver(*uploads) == []
    return sorted(uploads, key=lambda upload: upload.device)


def fresh_process() -> None:
    clients.reset()
    config.load_config.cache_clear()
    modelcache.clear()


def epsilon_after(rounds: int, params=PARAMS) -> float:
    accountant = RdpAccountant()
    accountant.compose(
        RoundEvent(params["sampling_rate"], params["noise_multiplier"]), rounds
    )
    return accountant.epsilon(params["delta"])


def stored_state(harness: Harness, round_number: int) -> ServerState:
    data = harness.s3.get_object(
        Bucket=harness.models_bucket, Key=layout.server_state_key(round_number)
    )["Body"].read()
    return server_state.decode(data)


def test_delta_equals_noisy_clipped_sum(harness: Harness, monkeypatch):
    monkeypatch.setattr(aggregate, "_TEST_NOISE_SEED", SEED)
    configure(harness, PARAMS)
    uploads = play_round(harness)
    names = sorted(harness.base)
    clipped_sum = {name: np.zeros(harness.base[name].shape) for name in names}
    for upload in uploads:
        flat = np.concatenate(
            [np.ravel(upload.tensors[name]).astype(np.float64) for name in names]
        )
        scale = min(1.0, CLIP / np.linalg.norm(flat))
        for name in names:
            clipped_sum[name] += scale * upload.tensors[name].astype(np.float64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(SEED)))
    model = harness.model(2)
    for name in names:
        noise = rng.normal(0.0, NOISE * CLIP, size=clipped_sum[name].shape)
        delta = (clipped_sum[name] + noise) / (0.5 * 6)
        expected = harness.base[name].astype(np.float64) + delta
        np.testing.assert_allclose(model[name], expected, rtol=0, atol=1e-6)


def test_every_update_clipped(harness: Harness, monkeypatch):
    results: list[privacy.ClipResult] = []
    original = privacy.DpSum.add

    def spy(self, tensors, *, weight=1.0):
        result = original(self, tensors, weight=weight)
        results.append(result)
        return result

    monkeypatch.setattr(privacy.DpSum, "add", spy)
    configure(harness, PARAMS)
    play_round(harness)
    assert len(results) == DEVICES
    for result in results:
        flat = np.concatenate([np.ravel(array) for array in result.tensors.values()])
        assert result.was_clipped
        assert np.linalg.norm(flat) <= CLIP


def test_epsilon_reported_each_round(harness: Harness):
    configure(harness, PARAMS)
    for _ in range(3):
        play_round(harness)
    expected = [epsilon_after(rounds) for rounds in (1, 2, 3)]
    emitted = [record["PrivacyEpsilon"] for record in harness.metrics("PrivacyEpsilon")]
    assert emitted == pytest.approx(expected, rel=1e-12)
    registered = [
        float(version["CustomerMetadataProperties"]["dp_epsilon"])
        for version in harness.registry()
    ]
    assert registered == pytest.approx(expected, rel=1e-12)
    evaluation = harness.read_json(layout.evaluation_key(4))
    assert evaluation is not None
    quality = evaluation["model_quality"]
    assert quality["dp_epsilon"] == pytest.approx(expected[-1], rel=1e-12)
    assert quality["dp_delta"] == 1e-5
    assert quality["dp_noise_multiplier"] == NOISE
    assert quality["dp_clip_norm"] == CLIP
    assert "participants" not in quality


def test_registry_omits_counts(harness: Harness):
    configure(harness, PARAMS)
    play_round(harness)
    properties = harness.registry()[0]["CustomerMetadataProperties"]
    assert "participants" not in properties
    assert "examples" not in properties
    assert properties["dp_noise_multiplier"] == repr(NOISE)


def test_fresh_invocations_equal_one_process(harness: Harness, monkeypatch):
    monkeypatch.setattr(aggregate, "_TEST_NOISE_SEED", SEED)
    params = {**PARAMS, "adaptive": 1, "count_stddev": 1.0}
    configure(harness, params)
    strategy = resolve("dp_fedavg", params)
    model, state = dict(harness.base), ServerState.initial(strategy)
    for round_number in (1, 2, 3):
        fresh_process()
        uploads = play_round(harness)
        model, state = aggregate_round(
            strategy,
            model,
            [upload.tensors for upload in uploads],
            [upload.num_examples for upload in uploads],
            state,
            rng=privacy.secure_rng(SEED),
        )
        stored = harness.model(round_number + 1)
        for name, array in model.items():
            np.testing.assert_allclose(stored[name], array, rtol=0, atol=1e-6)
    stored_bytes = harness.s3.get_object(
        Bucket=harness.models_bucket, Key=layout.server_state_key(4)
    )["Body"].read()
    assert stored_bytes == server_state.encode(state, produced_by_round=3)
    assert accountant_of(state).rounds == 3


def test_budget_stops_publishing(harness: Harness, caplog):
    budget = epsilon_after(1) * 1.01
    configure(harness, {**PARAMS, "epsilon_budget": budget})
    play_round(harness)
    assert harness.pointer()["round"] == 2
    with caplog.at_level(logging.ERROR, logger="lambdas.aggregator.closer"):
        play_round(harness)
    body = harness.state(2)
    assert body is not None
    assert body["status"] == "abandoned"
    assert body["abandoned"]["privacy_budget_exhausted"] is True
    pointer = harness.pointer()
    assert pointer["round"] == 3
    assert pointer["model_key"] == layout.model_key(2)
    assert harness.keys(layout.model_key(3)) == []
    assert harness.total("PrivacyBudgetExhausted") == 1.0
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.ERROR
    ]
    assert len(lines) == 1
    assert "privacy budget exhausted" in lines[0]
    assert f"epsilon so far {epsilon_after(1):.4g}" in lines[0]
    assert f"budget of {budget:g}" in lines[0]
    assert "delta 1e-05" in lines[0]


def test_budget_stop_repeats(harness: Harness):
    configure(harness, {**PARAMS, "epsilon_budget": epsilon_after(1) * 1.01})
    for _ in range(3):
        play_round(harness)
    statuses = [harness.state(number)["status"] for number in (1, 2, 3)]
    assert statuses == ["published", "abandoned", "abandoned"]
    assert harness.total("PrivacyBudgetExhausted") == 2.0
    assert harness.pointer()["model_key"] == layout.model_key(2)


@pytest.mark.parametrize(
    "point", ["after_write_model", "after_register", "after_move_pointer"]
)
def test_takeover_spends_once(make_harness, point):
    harness = make_harness(target_updates=DEVICES, min_updates=DEVICES)
    configure(harness, PARAMS)
    for round_number in (1, 2):
        faults.arm(point)
        uploads = [
            harness.upload(f"dev-{index}", tensors=harness.delta(0.3))
            for index in range(DEVICES)
        ]
        with contextlib.suppress(faults.InjectedFault):
            harness.deliver(*uploads)
        lease_over = time.time() + harness.config.lease_seconds + 1
        harness.sweep(lease_over)
        assert harness.state(round_number)["status"] == "published"
        model_key = layout.model_key(round_number + 1)
        assert len(harness.versions(model_key)) == 1
        state_key = layout.server_state_key(round_number + 1)
        assert len(harness.versions(state_key)) == 1
        ledger = accountant_of(stored_state(harness, round_number + 1))
        assert ledger.rounds == round_number
    emitted = [record["PrivacyEpsilon"] for record in harness.metrics("PrivacyEpsilon")]
    assert emitted == pytest.approx([epsilon_after(1), epsilon_after(2)], rel=1e-12)


def test_takeover_evaluates_stored_model(make_harness, monkeypatch):
    harness = make_harness(target_updates=DEVICES, min_updates=DEVICES)
    configure(harness, PARAMS)
    faults.arm("after_write_model")
    uploads = [
        harness.upload(f"dev-{index}", tensors=harness.delta(0.3))
        for index in range(DEVICES)
    ]
    with contextlib.suppress(faults.InjectedFault):
        harness.deliver(*uploads)
    # The takeover draws other noise than the crashed close.
    monkeypatch.setattr(aggregate, "_TEST_NOISE_SEED", SEED)
    harness.sweep(time.time() + harness.config.lease_seconds + 1)
    data = harness.s3.get_object(Bucket=harness.models_bucket, Key=layout.model_key(2))[
        "Body"
    ].read()
    tensors, metadata = safetensors_io.decode(data)
    features, labels = holdout()
    loss, _ = evaluate(tensors, features, labels)
    evaluation = harness.read_json(layout.evaluation_key(2))
    assert evaluation is not None
    assert evaluation["model_quality"]["loss"] == float(loss)
    assert metadata["holdout_loss"] == repr(float(loss))
