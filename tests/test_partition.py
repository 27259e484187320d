"""Tests of the Dirichlet device partition and the holdout split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fedcore.partition import PartitionError, dirichlet_partition, holdout_split


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_digits().target.astype(np.int64)


def _dominant_share(labels: np.ndarray, shares: list[np.ndarray]) -> float:
    """Mean over devices of the fraction of a device's examples in its top class."""
    fractions = [np.bincount(labels[share]).max() / share.size for share in shares]
    return float(np.mean(fractions))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5, 100.0])
def test_partition_covers_each_index_once(labels: np.ndarray, alpha: float) -> None:
    shares = dirichlet_partition(labels, 20, alpha, seed=0)
    combined = np.concatenate(shares)
    assert len(shares) == 20
    assert combined.size == labels.size
    np.testing.assert_array_equal(np.sort(combined), np.arange(labels.size))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5])
def test_partition_min_size(labels: np.ndarray, alpha: float) -> None:
    shares = dirichlet_partition(labels, 20, alpha, seed=1, min_size=25)
    assert min(share.size for share in shares) >= 25


def test_partition_tiny_alpha_topped_up(caplog: pytest.LogCaptureFixture) -> None:
    """Draws that keep missing min_size end by moving examples."""
    labels = np.repeat(np.arange(2), 50)
    with caplog.at_level("INFO", logger="fedcore.partition"):
        shares = dirichlet_partition(labels, 10, 0.001, seed=0, min_size=9)
    assert "moving examples from the largest devices" in caplog.text
    assert min(share.size for share in shares) >= 9
    np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(100))


def test_partition_deterministic(labels: np.ndarray) -> None:
    first = dirichlet_partition(labels, 10, 0.5, seed=3)
    again = dirichlet_partition(labels, 10, 0.5, seed=3)
    for left, right in zip(first, again, strict=True):
        np.testing.assert_array_equal(left, right)


def test_partition_seed_changes_split(labels: np.ndarray) -> None:
    first = dirichlet_partition(labels, 10, 0.5, seed=3)
    other = dirichlet_partition(labels, 10, 0.5, seed=4)
    assert any(
        not np.array_equal(left, right)
        for left, right in zip(first, other, strict=True)
    )


def test_partition_sorted_int64(labels: np.ndarray) -> None:
    shares = dirichlet_partition(labels, 5, 0.5, seed=0)
    assert all(share.dtype == np.int64 for share in shares)
    assert all(np.all(np.diff(share) > 0) for share in shares)


def test_partition_skew(labels: np.ndarray) -> None:
    """Small alpha concentrates classes; large alpha mirrors the global mix."""
    global_share = np.bincount(labels).max() / labels.size
    skewed = _dominant_share(labels, dirichlet_partition(labels, 20, 0.1, seed=0))
    uniform = _dominant_share(labels, dirichlet_partition(labels, 20, 100.0, seed=0))
    assert skewed > 0.5
    assert uniform < global_share + 0.1


def test_partition_single_device(labels: np.ndarray) -> None:
    shares = dirichlet_partition(labels, 1, 0.5, seed=0)
    np.testing.assert_array_equal(shares[0], np.arange(labels.size))


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"num_devices": 0}, "num_devices is 0"),
        ({"alpha": 0.0}, "alpha is 0.0"),
        ({"alpha": float("inf")}, "alpha is inf"),
        ({"min_size": 0}, "min_size is 0"),
        ({"num_devices": 11}, "cannot give 11 devices 10 each"),
        ({"labels": np.zeros((10, 10), dtype=np.int64)}, "one label per example"),
        ({"labels": np.zeros(100)}, "expected integers"),
    ],
)
def test_partition_rejects(arguments: dict, fragment: str) -> None:
    settings = {
        "labels": np.arange(100) % 3,
        "num_devices": 4,
        "alpha": 0.5,
        "seed": 0,
        **arguments,
    }
    min_size = settings.pop("min_size", 10)
    with pytest.raises(PartitionError, match=fragment):
        dirichlet_partition(**settings, min_size=min_size)


def test_holdout_split_disjoint_cover() -> None:
    train, holdout = holdout_split(100, 0.2, seed=0)
    assert holdout.size == 20
    assert np.intersect1d(train, holdout).size == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train, holdout])), np.arange(100)
    )


def test_holdout_split_deterministic() -> None:
    first = holdout_split(50, 0.3, seed=2)
    again = holdout_split(50, 0.3, seed=2)
    np.testing.assert_array_equal(first[1], again[1])


@pytest.mark.parametrize(("n", "fraction", "size"), [(2, 0.01, 1), (3, 0.99, 2)])
def test_holdout_split_both_nonempty(n: int, fraction: float, size: int) -> None:
    train, holdout = holdout_split(n, fraction, seed=0)
    assert holdout.size == size
    assert train.size == n - size


@pytest.mark.parametrize(
    ("n", "fraction", "fragment"),
    [
        (1, 0.5, "at least 2"),
        (0, 0.5, "n is 0"),
        (10, 0.0, "fraction is 0.0"),
        (10, 1.0, "fraction is 1.0"),
        (10, float("nan"), "fraction is nan"),
    ],
)
def test_holdout_split_rejects(n: int, fraction: float, fragment: str) -> None:
    with pytest.raises(PartitionError, match=fragment):
        holdout_split(n, fraction, seed=0)
