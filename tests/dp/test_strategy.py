"""dp_fedavg parameters and the in-memory round, against plain numpy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedcore import server_state
from fedcore.accounting import RdpAccountant, RoundEvent
from fedcore.dp_fedavg import PrivacyBudgetExhausted, accountant_of
from fedcore.privacy import secure_rng
from fedcore.rounds import aggregate_round
from fedcore.server_state import ServerState
from fedcore.strategies import StrategyError, resolve

VALID = {"population": 10, "sampling_rate": 0.5}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sampling_rate": 0.5}, "population is 0.0"),
        ({"population": 10}, "sampling_rate is 0.0"),
        ({**VALID, "sampling_rate": 1.5}, "expected a probability in (0, 1]"),
        ({**VALID, "population": 10.5}, "expected an integer"),
        ({**VALID, "noise_multiplier": 0}, "noise_multiplier is 0"),
        ({**VALID, "delta": 1.0}, "delta is 1.0"),
        ({**VALID, "adaptive": 2}, "adaptive is 2"),
        ({**VALID, "target_quantile": 1.5}, "target_quantile is 1.5"),
        ({**VALID, "adaptive": 1, "count_stddev": 0.5}, "count_stddev > "),
    ],
)
def test_resolve_rejects(params, message):
    with pytest.raises(StrategyError, match=re.escape(message)):
        resolve("dp_fedavg", params)


def test_resolve_fills_defaults():
    strategy = resolve("dp_fedavg", VALID)
    assert strategy.family == "dp"
    assert strategy.params["delta"] == 1e-5
    assert strategy.params["epsilon_budget"] == 0.0
    assert not strategy.adaptive_clip


def test_resolve_adaptive():
    strategy = resolve("dp_fedavg", {**VALID, "adaptive": 1, "count_stddev": 1.0})
    assert strategy.adaptive_clip


def deltas(seed, count=4):
    rng = np.random.default_rng(seed)
    return [
        {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=2)}
        for _ in range(count)
    ]


BASE = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2)}


def test_round_equals_numpy():
    params = {**VALID, "clip_norm": 0.5, "noise_multiplier": 1.3}
    strategy = resolve("dp_fedavg", params)
    updates = deltas(1)
    model, _ = aggregate_round(
        strategy,
        BASE,
        updates,
        [1] * len(updates),
        ServerState.initial(strategy),
        rng=secure_rng(42),
    )
    clipped_sum = {"b": np.zeros(2), "w": np.zeros((3, 2))}
    for update in updates:
        flat = np.concatenate([np.ravel(update[name]) for name in ("b", "w")])
        scale = min(1.0, 0.5 / np.linalg.norm(flat.astype(np.float64)))
        for name in clipped_sum:
            clipped_sum[name] += scale * np.asarray(update[name], dtype=np.float64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(42)))
    for name in ("b", "w"):
        noise = rng.normal(0.0, 1.3 * 0.5, size=clipped_sum[name].shape)
        expected = (clipped_sum[name] + noise) / 5.0
        np.testing.assert_allclose(model[name], expected, rtol=1e-6, atol=1e-6)


def test_ledger_survives_encoding():
    strategy = resolve("dp_fedavg", {**VALID, "adaptive": 1, "count_stddev": 1.0})
    state = ServerState.initial(strategy)
    model = BASE
    for round_number in range(1, 4):
        model, state = aggregate_round(
            strategy, model, deltas(round_number), [1] * 4, state
        )
        state = server_state.decode(
            server_state.encode(state, produced_by_round=round_number)
        )
    reference = RdpAccountant()
    reference.compose(RoundEvent(0.5, 1.0), 3)
    assert accountant_of(state).epsilon(1e-5) == reference.epsilon(1e-5)
    assert state.clip_norm != 1.0


def test_ledger_kept_across_strategies():
    strategy = resolve("dp_fedavg", VALID)
    _, state = aggregate_round(
        strategy, BASE, deltas(1), [1] * 4, ServerState.initial(strategy)
    )
    other = state.continued(resolve("fedavg"))
    assert accountant_of(other).rounds == 1


def test_budget_stops_round():
    first = RdpAccountant()
    first.compose(RoundEvent(0.5, 1.0))
    strategy = resolve(
        "dp_fedavg", {**VALID, "epsilon_budget": first.epsilon(1e-5) * 1.01}
    )
    _, state = aggregate_round(
        strategy, BASE, deltas(1), [1] * 4, ServerState.initial(strategy)
    )
    with pytest.raises(PrivacyBudgetExhausted, match="privacy budget exhausted"):
        aggregate_round(strategy, BASE, deltas(2), [1] * 4, state)
