"""Every aggregation rule against numbers worked out by hand or by plain numpy."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from fedcore import server_state
from fedcore.errors import AggregationError
from fedcore.robust import add_squared_distances, krum_scores, krum_select
from fedcore.rounds import aggregate_round
from fedcore.server_state import ServerState
from fedcore.server_update import next_clip_norm
from fedcore.strategies import DP, FAMILIES, PARAMETERS, StrategyError, resolve

BASE = {"w": np.array([1.0, 2.0], dtype=np.float32)}
# dp_fedavg adds random noise and needs deployment parameters: tests/dp covers it.
NOISELESS = sorted(name for name in PARAMETERS if FAMILIES[name] != DP)


def run(name, deltas, examples, params=None, *, state=None, base=None):
    strategy = resolve(name, params or {})
    start = base if base is not None else BASE
    updates = [
        {key: np.asarray(value, dtype=start[key].dtype) for key, value in d.items()}
        for d in deltas
    ]
    current = state if state is not None else ServerState.initial(strategy)
    return aggregate_round(strategy, start, updates, examples, current)


def wide(model):
    return {name: np.asarray(array, dtype=np.float64) for name, array in model.items()}


def test_fedavg_weighted_by_examples():
    model, _ = run("fedavg", [{"w": [1.0, 0.0]}, {"w": [0.0, 4.0]}], [1, 3])
    np.testing.assert_allclose(wide(model)["w"], [1.25, 5.0], atol=1e-6)


def test_fedavg_unweighted():
    model, _ = run(
        "fedavg", [{"w": [1.0, 0.0]}, {"w": [0.0, 4.0]}], [1, 3], {"weighted": 0}
    )
    np.testing.assert_allclose(wide(model)["w"], [1.5, 4.0], atol=1e-6)


def test_clip_fixed_scales_large_update():
    # Norms 5 and 1; with C = 2 the first becomes (1.2, 1.6), the second stays.
    model, state = run(
        "fedavg",
        [{"w": [3.0, 4.0]}, {"w": [1.0, 0.0]}],
        [1, 1],
        {"clip_norm": 2.0},
    )
    np.testing.assert_allclose(wide(model)["w"], [1.0 + 1.1, 2.0 + 0.8], atol=1e-6)
    assert state.clip_norm == 2.0


def test_clip_adaptive_moves_geometrically():
    strategy = resolve(
        "fedavg", {"clip_norm": 2.0, "clip_quantile": 0.5, "clip_lr": 0.2}
    )
    # Three of four norms are <= 2, so b = 0.75 and C shrinks by exp(-0.2 * 0.25).
    assert next_clip_norm(strategy, 2.0, [1.0, 2.0, 0.5, 9.0]) == pytest.approx(
        2.0 * math.exp(-0.05), rel=1e-15
    )


def test_clip_adaptive_stored_for_next_round():
    _, state = run(
        "fedavg",
        [{"w": [3.0, 4.0]}, {"w": [1.0, 0.0]}],
        [1, 1],
        {"clip_norm": 2.0, "clip_quantile": 0.5},
    )
    assert state.clip_norm == pytest.approx(2.0 * math.exp(-0.2 * 0.0), rel=1e-15)


def test_fedavgm_two_rounds():
    params = {"server_lr": 0.5, "momentum": 0.9}
    first, state = run("fedavgm", [{"w": [1.0, -2.0]}], [1], params)
    # v1 = (1, -2); x1 = x0 + 0.5 * v1
    np.testing.assert_allclose(wide(first)["w"], [1.5, 1.0], atol=1e-6)
    second, _ = run(
        "fedavgm", [{"w": [2.0, 0.0]}], [1], params, state=state, base=first
    )
    # v2 = 0.9 * (1, -2) + (2, 0) = (2.9, -1.8); x2 = x1 + 0.5 * v2
    np.testing.assert_allclose(wide(second)["w"], [1.5 + 1.45, 1.0 - 0.9], atol=1e-6)


def adaptive_reference(name, deltas, *, eta, beta1, beta2, tau):
    """Algorithm 2 of Reddi et al. written out with plain numpy, one step a round."""
    x = BASE["w"].astype(np.float64)
    m = np.zeros(2)
    v = np.full(2, tau * tau)
    for delta in deltas:
        d = np.asarray(delta, dtype=np.float64)
        m = beta1 * m + (1 - beta1) * d
        if name == "fedadagrad":
            v = v + d**2
        elif name == "fedyogi":
            v = v - (1 - beta2) * d**2 * np.sign(v - d**2)
        else:
            v = beta2 * v + (1 - beta2) * d**2
        x = (x + eta * m / (np.sqrt(v) + tau)).astype(np.float32).astype(np.float64)
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_matches_algorithm(name):
    params = {"eta": 0.1, "beta1": 0.9, "tau": 0.01}
    if name != "fedadagrad":
        params["beta2"] = 0.99
    deltas = [[0.5, -0.2], [0.1, 0.3], [-0.4, 0.05]]
    model, state = dict(BASE), ServerState.initial(resolve(name, params))
    for delta in deltas:
        model, state = run(name, [{"w": delta}], [1], params, state=state, base=model)
    expected = adaptive_reference(
        name, deltas, eta=0.1, beta1=0.9, beta2=params.get("beta2", 0.0), tau=0.01
    )
    np.testing.assert_allclose(wide(model)["w"], expected, rtol=0, atol=1e-6)
    assert state.steps == 3


def test_adam_first_step_by_hand():
    # m = 0.1 * 0.5 = 0.05; v = 0.99 * 1e-4 + 0.01 * 0.25 = 0.002599;
    # step = 0.1 * 0.05 / (sqrt(0.002599) + 0.01).
    model, _ = run(
        "fedadam",
        [{"w": [0.5, 0.0]}],
        [1],
        {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 0.01},
    )
    step = 0.1 * 0.05 / (math.sqrt(0.002599) + 0.01)
    assert float(model["w"][0]) == pytest.approx(1.0 + step, abs=1e-6)
    assert float(model["w"][1]) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize(
    ("name", "params"),
    [("fedadam", {"eta": 1e39}), ("fedavgm", {"server_lr": 1e39})],
)
def test_diverged_step_raises(name, params):
    with pytest.raises(AggregationError, match="non-finite"):
        run(name, [{"w": [0.5, -0.5]}], [1], params)


def test_yogi_initial_second_moment_is_tau_squared():
    strategy = resolve("fedyogi", {"tau": 0.01})
    _, state = run("fedyogi", [{"w": [0.0, 0.0]}], [1], {"tau": 0.01})
    # A zero delta leaves v = tau^2 exactly: v - 0.01 * 0 * sign(v) = v.
    np.testing.assert_array_equal(state.slots["v"]["w"], [1e-4, 1e-4])
    assert strategy.parameter("beta1") == 0.9


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0]], [2.0, 0.0]),
        ([[1.0, 5.0], [2.0, -1.0], [10.0, 0.0], [3.0, 1.0]], [2.5, 0.5]),
    ],
)
def test_median_coordinatewise(values, expected):
    model, _ = run("median", [{"w": row} for row in values], [1] * len(values))
    np.testing.assert_allclose(
        wide(model)["w"], np.add([1.0, 2.0], expected), atol=1e-6
    )


def test_trimmed_mean_drops_each_end():
    # beta 0.2 of 5 updates trims 1 from each end of every coordinate.
    values = [[1.0, 0.0], [2.0, 100.0], [3.0, -50.0], [4.0, 1.0], [100.0, 2.0]]
    model, _ = run(
        "trimmed_mean", [{"w": row} for row in values], [1] * 5, {"beta": 0.2}
    )
    np.testing.assert_allclose(wide(model)["w"], [1.0 + 3.0, 2.0 + 1.0], atol=1e-6)


KRUM_VALUES = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [10.0, 10.0]]


def test_krum_scores_by_hand():
    stack = np.array(KRUM_VALUES)
    distances = np.zeros((5, 5))
    add_squared_distances(distances, stack)
    # n - f - 2 = 2 nearest neighbours with f = 1.
    scores = krum_scores(distances, 1)
    np.testing.assert_array_equal(scores, [2.0, 2.0, 2.0, 2.0, 162.0 + 181.0])
    assert krum_select(scores, 1) == [0]


def test_krum_keeps_one_update():
    model, _ = run("krum", [{"w": row} for row in KRUM_VALUES], [1] * 5, {"f": 1})
    np.testing.assert_allclose(wide(model)["w"], [1.0, 2.0], atol=1e-6)


def test_multikrum_averages_best():
    model, _ = run(
        "multikrum", [{"w": row} for row in KRUM_VALUES], [1] * 5, {"f": 1, "m": 0}
    )
    # m = n - f = 4: the four unit-square corners, mean (0.5, 0.5).
    np.testing.assert_allclose(wide(model)["w"], [1.5, 2.5], atol=1e-6)


def test_multikrum_weighted():
    model, _ = run(
        "multikrum",
        [{"w": row} for row in KRUM_VALUES],
        [1, 1, 1, 5, 1],
        {"f": 1, "m": 4, "weighted": 1},
    )
    np.testing.assert_allclose(wide(model)["w"], [1.0 + 6 / 8, 2.0 + 6 / 8], atol=1e-6)


STATS_BASE = {
    "w": np.array([1.0, 2.0], dtype=np.float32),
    "bn.running_var": np.array([0.5, 0.5], dtype=np.float32),
    "bn.num_batches_tracked": np.array(10, dtype=np.int64),
}


@pytest.mark.parametrize("name", NOISELESS)
def test_statistics_weighted_mean(name):
    deltas = [
        {"w": [0.1, 0.1], "bn.running_var": [-1.0, 0.3], "bn.num_batches_tracked": 3},
        {"w": [0.2, 0.2], "bn.running_var": [-1.0, 0.1], "bn.num_batches_tracked": 4},
        {"w": [0.3, 0.3], "bn.running_var": [-1.0, 0.2], "bn.num_batches_tracked": 4},
        {"w": [0.4, 0.4], "bn.running_var": [-1.0, 0.2], "bn.num_batches_tracked": 4},
        {"w": [0.5, 0.5], "bn.running_var": [-1.0, 0.2], "bn.num_batches_tracked": 5},
    ]
    examples = [1, 1, 1, 1, 4]
    model, _ = run(
        name, deltas, examples, {"f": 1} if "krum" in name else {}, base=STATS_BASE
    )
    # Example-weighted: var 0.5 + (0.3+0.1+0.2+0.2+0.8)/8 = 0.7; the first
    # coordinate goes below 0 and is clipped; the counter 10 + 31/8 rounds to 14.
    np.testing.assert_allclose(model["bn.running_var"], [0.0, 0.7], atol=1e-6)
    assert model["bn.num_batches_tracked"] == 14
    assert model["bn.num_batches_tracked"].dtype == np.int64


def round_inputs(seed, count=7, dims=(3, 4)):
    rng = np.random.default_rng(seed)
    base = {
        "a": rng.normal(size=dims).astype(np.float32),
        "b": rng.normal(size=dims[1]).astype(np.float32),
    }
    updates = [
        {
            name: rng.normal(size=array.shape).astype(np.float32)
            for name, array in base.items()
        }
        for _ in range(count)
    ]
    examples = [int(value) for value in rng.integers(1, 50, size=count)]
    return base, updates, examples


def strategy_params(name):
    params = {
        "krum": {"f": 2},
        "multikrum": {"f": 2},
        "fedavg": {"clip_norm": 3.0, "clip_quantile": 0.5},
    }
    return params.get(name, {})


@pytest.mark.parametrize("name", NOISELESS)
def test_arrival_order_irrelevant(name):
    base, updates, examples = round_inputs(1)
    strategy = resolve(name, strategy_params(name))
    reference, reference_state = aggregate_round(
        strategy, base, updates, examples, ServerState.initial(strategy)
    )
    rng = np.random.default_rng(5)
    for _ in range(4):
        order = rng.permutation(len(updates))
        model, state = aggregate_round(
            strategy,
            base,
            [updates[index] for index in order],
            [examples[index] for index in order],
            ServerState.initial(strategy),
        )
        for key in base:
            np.testing.assert_allclose(model[key], reference[key], rtol=0, atol=1e-12)
        for slot, arrays in reference_state.slots.items():
            for key, array in arrays.items():
                np.testing.assert_allclose(
                    state.slots[slot][key], array, rtol=0, atol=1e-12
                )


@pytest.mark.parametrize("name", NOISELESS)
def test_fresh_state_equals_one_process(name):
    strategy = resolve(name, strategy_params(name))
    base, _, _ = round_inputs(2)
    kept_model, kept_state = dict(base), ServerState.initial(strategy)
    fresh_model = dict(base)
    stored = server_state.encode(ServerState.initial(strategy), produced_by_round=0)
    for round_number in range(1, 5):
        _, updates, examples = round_inputs(10 + round_number)
        kept_model, kept_state = aggregate_round(
            strategy, kept_model, updates, examples, kept_state
        )
        fresh_model, fresh_state = aggregate_round(
            strategy, fresh_model, updates, examples, server_state.decode(stored)
        )
        stored = server_state.encode(fresh_state, produced_by_round=round_number)
    for key in base:
        np.testing.assert_array_equal(fresh_model[key], kept_model[key])
    assert server_state.decode(stored).steps == kept_state.steps
    assert stored == server_state.encode(kept_state, produced_by_round=4)


@pytest.mark.parametrize("block", [1, 5, 7, 1000])
@pytest.mark.parametrize("name", ["median", "trimmed_mean", "multikrum"])
def test_blocks_do_not_change_result(name, block):
    strategy = resolve(name, strategy_params(name))
    base, updates, examples = round_inputs(3)
    whole, _ = aggregate_round(
        strategy, base, updates, examples, ServerState.initial(strategy)
    )
    blocked, _ = aggregate_round(
        strategy,
        base,
        updates,
        examples,
        ServerState.initial(strategy),
        block_elements=block,
    )
    for key in base:
        np.testing.assert_allclose(blocked[key], whole[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "params", "count", "words"),
    [
        ("fedavg", {}, 0, "got no updates"),
        ("fedadam", {}, 0, "got no updates"),
        ("median", {}, 0, "got no updates"),
        ("trimmed_mean", {"beta": 0.4}, 0, "got no updates"),
        ("krum", {"f": 1}, 4, "more than 2f + 2 = 4 updates, got 4"),
        ("multikrum", {"f": 2}, 6, "more than 2f + 2 = 6 updates, got 6"),
        ("multikrum", {"f": 1, "m": 9}, 5, "selects m=9 updates but the round has 5"),
    ],
)
def test_too_few_updates_rejected(name, params, count, words):
    base, updates, examples = round_inputs(4, count=max(count, 1))
    strategy = resolve(name, params)
    with pytest.raises(StrategyError, match=re.escape(words)):
        aggregate_round(
            strategy,
            base,
            updates[:count],
            examples[:count],
            ServerState.initial(strategy),
        )


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("fedsgd", {}, "expected one of"),
        ("fedavg", {"eta": 0.1}, "not parameters of strategy 'fedavg'"),
        ("fedadam", {"beta1": 1.0}, r"in \[0, 1\)"),
        ("fedadam", {"tau": 0}, "expected a number > 0"),
        ("fedadam", {"eta": -1}, "finite number >= 0"),
        ("krum", {"f": 1.5}, "expected an integer"),
        ("trimmed_mean", {"beta": 0.5}, r"fraction in \[0, 0.5\)"),
        ("fedavg", {"weighted": 2}, "expected 0 or 1"),
        ("fedavg", {"clip_quantile": 0.5}, "needs a positive clip_norm"),
        ("fedavg", {"clip_norm": True}, "expected a number"),
    ],
)
def test_resolve_rejects_invalid(name, params, words):
    with pytest.raises(StrategyError, match=words):
        resolve(name, params)


def test_state_of_other_strategy_ignored():
    strategy = resolve("fedadam")
    stale = ServerState(strategy="fedavgm", steps=7, slots={"momentum": {}})
    assert stale.continued(strategy).steps == 0


def test_state_round_trip_exact():
    _, state = run("fedyogi", [{"w": [0.3, -0.7]}], [1])
    decoded = server_state.decode(server_state.encode(state, produced_by_round=1))
    for slot in ("m", "v"):
        np.testing.assert_array_equal(decoded.slots[slot]["w"], state.slots[slot]["w"])
    assert decoded.steps == 1


def test_every_pair_of_orders():
    # Krum distances are summed per pair, so swapping any two updates is exact.
    stack = np.random.default_rng(9).normal(size=(6, 11))
    reference = np.zeros((6, 6))
    add_squared_distances(reference, stack)
    for first, second in itertools.combinations(range(6), 2):
        order = list(range(6))
        order[first], order[second] = order[second], order[first]
        swapped = np.zeros((6, 6))
        add_squared_distances(swapped, stack[order])
        np.testing.assert_array_equal(swapped, reference[np.ix_(order, order)])
