"""Nearest-neighbour mixing before median and trimmed mean, against hand values."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedcore.robust import mixing_matrix
from fedcore.rounds import aggregate_round
from fedcore.server_state import ServerState
from fedcore.strategies import (
    StrategyError,
    least_updates,
    required_updates,
    resolve,
)

BASE = {"w": np.array([1.0], dtype=np.float32)}
# Updates of one coordinate: the squared distances between 0, 1, 3 and 10 decide
# the neighbours.
POINTS = [0.0, 1.0, 3.0, 10.0]
MIXED = {
    "median": [{"nnm_f": 1}],
    "trimmed_mean": [{"beta": 0.25, "nnm_f": 1}],
}


def aggregate(name, params, points, *, base=BASE, block_elements=None):
    strategy = resolve(name, params)
    updates = [{"w": np.array([value], dtype=np.float32)} for value in points]
    extra = {} if block_elements is None else {"block_elements": block_elements}
    model, _ = aggregate_round(
        strategy,
        base,
        updates,
        [1] * len(points),
        ServerState.initial(strategy),
        **extra,
    )
    return float(model["w"][0])


def test_mixing_matrix_by_hand():
    points = np.array(POINTS)
    distances = (points[:, None] - points[None, :]) ** 2
    # With f = 1 each point keeps its 3 nearest: 0, 1 and 3 for the first three
    # points, and 1, 3 and 10 for the last.
    expected = (
        np.array(
            [
                [1, 1, 1, 0],
                [1, 1, 1, 0],
                [1, 1, 1, 0],
                [0, 1, 1, 1],
            ]
        )
        / 3
    )
    np.testing.assert_array_equal(mixing_matrix(distances, 1), expected)


def test_mixing_matrix_rows_sum_to_one():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(9, 4))
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(mixing_matrix(distances, 3).sum(axis=1), 1.0)


def test_mixing_matrix_keeps_itself():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(7, 3))
    distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    assert np.all(np.diag(mixing_matrix(distances, 3)) > 0)


def test_mixing_matrix_tie_goes_to_lower_index():
    # Points 1 and 2 are both 1 away from point 0: with 2 neighbours, point 0
    # keeps itself and point 1.
    distances = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 4.0], [1.0, 4.0, 0.0]])
    assert mixing_matrix(distances, 1)[0].tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize("byzantine", [-1, 3])
def test_mixing_matrix_rejects_f(byzantine):
    with pytest.raises(StrategyError, match="leaves no neighbour"):
        mixing_matrix(np.zeros((3, 3)), byzantine)


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_mixed_rule_by_hand(name):
    # Mixed points: 4/3, 4/3, 4/3 and 14/3. The median of four is the mean of the
    # middle two, 4/3. Beta 0.25 trims one from each end and averages the same two.
    result = aggregate(name, MIXED[name][0], POINTS)
    assert result == pytest.approx(1.0 + 4.0 / 3.0, abs=1e-6)


def test_mixing_off_by_default():
    # The plain median of 0, 1, 3 and 10 is 2, so the weight moves from 1 to 3.
    assert aggregate("median", {}, POINTS) == pytest.approx(3.0, abs=1e-6)


def test_mixing_outlier_by_hand():
    # With f = 1 each point keeps its 4 nearest. The four points near 1 all mix to
    # their mean 1.05; the outlier mixes to (50 + 1.2 + 1.1 + 1.0) / 4 = 13.325.
    # The median of the five mixed points is 1.05.
    points = [0.9, 1.0, 1.1, 1.2, 50.0]
    mixed = aggregate("median", {"nnm_f": 1}, points)
    assert mixed == pytest.approx(1.0 + 1.05, abs=1e-6)


@pytest.mark.parametrize("block", [1, 2, 1000])
@pytest.mark.parametrize(
    ("name", "params"),
    [("median", {"nnm_f": 2}), ("trimmed_mean", {"beta": 0.2, "nnm_f": 2})],
)
def test_mixing_blocks_do_not_change_result(name, params, block):
    rng = np.random.default_rng(4)
    base = {"w": rng.normal(size=(3, 5)).astype(np.float32)}
    updates = [{"w": rng.normal(size=(3, 5)).astype(np.float32)} for _ in range(7)]
    strategy = resolve(name, params)
    whole, _ = aggregate_round(
        strategy, base, updates, [1] * 7, ServerState.initial(strategy)
    )
    blocked, _ = aggregate_round(
        strategy,
        base,
        updates,
        [1] * 7,
        ServerState.initial(strategy),
        block_elements=block,
    )
    np.testing.assert_allclose(blocked["w"], whole["w"], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "params"),
    [("median", {"nnm_f": 2}), ("trimmed_mean", {"beta": 0.2, "nnm_f": 2})],
)
def test_mixing_arrival_order_irrelevant(name, params):
    rng = np.random.default_rng(6)
    base = {"w": rng.normal(size=8).astype(np.float32)}
    updates = [{"w": rng.normal(size=8).astype(np.float32)} for _ in range(9)]
    examples = [int(value) for value in rng.integers(1, 50, size=9)]
    strategy = resolve(name, params)
    reference, _ = aggregate_round(
        strategy, base, updates, examples, ServerState.initial(strategy)
    )
    for _ in range(4):
        order = rng.permutation(9)
        model, _ = aggregate_round(
            strategy,
            base,
            [updates[index] for index in order],
            [examples[index] for index in order],
            ServerState.initial(strategy),
        )
        np.testing.assert_allclose(model["w"], reference["w"], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("count", "nnm_f"),
    [(4, 2), (2, 1), (6, 3)],
)
def test_mixing_too_few_updates(count, nnm_f):
    words = f"needs more than 2 nnm_f = {2 * nnm_f} updates"
    with pytest.raises(StrategyError, match=re.escape(words)):
        aggregate("median", {"nnm_f": nnm_f}, [float(value) for value in range(count)])


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("median", {"nnm_f": 1.5}, "expected an integer"),
        ("median", {"nnm_f": -1}, "finite number >= 0"),
        ("trimmed_mean", {"nnm_f": "4"}, "expected a number"),
        ("krum", {"nnm_f": 1}, "not parameters of strategy 'krum'"),
        ("fedavg", {"nnm_f": 1}, "not parameters of strategy 'fedavg'"),
    ],
)
def test_mixing_parameter_rejected(name, params, words):
    with pytest.raises(StrategyError, match=words):
        resolve(name, params)


@pytest.mark.parametrize(
    ("name", "params", "least"),
    [
        ("fedavg", {}, 1),
        ("median", {}, 1),
        ("median", {"nnm_f": 2}, 5),
        ("trimmed_mean", {"nnm_f": 4}, 9),
        ("krum", {"f": 1}, 5),
        ("multikrum", {"f": 1, "m": 7}, 7),
        ("multikrum", {"f": 3}, 9),
    ],
)
def test_least_updates_matches_rule(name, params, least):
    strategy = resolve(name, params)
    assert least_updates(strategy) == least
    required_updates(strategy, least)
    if least > 1:
        with pytest.raises(StrategyError):
            required_updates(strategy, least - 1)
