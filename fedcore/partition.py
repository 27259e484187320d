"""Seeded splits of a data set over simulated devices and into train and holdout parts.

:func:`dirichlet_partition` gives each device a label-skewed share: for every class,
the share of its examples that each device receives is drawn from a symmetric
Dirichlet distribution with concentration ``alpha``. Small ``alpha`` (0.1) gives each
device a few dominant classes; large ``alpha`` (100) approaches a uniform split.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcore.errors import FedCoreError

logger = logging.getLogger(__name__)

IndexArray = npt.NDArray[np.int64]
MAX_DRAWS = 100


class PartitionError(FedCoreError, ValueError):
    """Partition settings that cannot be met by the data."""


def dirichlet_partition(
    labels: npt.ArrayLike,
    num_devices: int,
    alpha: float,
    seed: int,
    *,
    min_size: int = 10,
) -> list[IndexArray]:
    """Split example indices over devices with Dirichlet label skew.

    The split is drawn again, from the same seeded generator, while a device has fewer
    than ``min_size`` examples. After :data:`MAX_DRAWS` draws, the devices still short
    take random examples from the largest devices, which weakens the skew slightly
    but always ends.

    Parameters
    ----------
    labels
        One integer class label per example.
    num_devices
        Number of devices, at least 1.
    alpha
        Dirichlet concentration, a finite number > 0.
    seed
        Seed of ``numpy.random.default_rng``; the same inputs give the same split.
    min_size
        Minimum number of examples each device receives, at least 1.

    Returns
    -------
    list of numpy.ndarray
        ``num_devices`` sorted int64 index arrays; every index ``0..len(labels) - 1``
        appears in exactly one of them.

    Raises
    ------
    PartitionError
        If a setting is invalid or there are fewer than ``num_devices * min_size``
        examples.
    """
    label_array = _check_labels(labels)
    _check_positive_int("num_devices", num_devices)
    _check_positive_int("min_size", min_size)
    if not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha is {alpha!r}: expected a finite number > 0")
    n = label_array.size
    if n < num_devices * min_size:
        raise PartitionError(
            f"{n} examples cannot give {num_devices} devices {min_size} each: "
            f"use at most {n // min_size} devices"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(label_array == c) for c in np.unique(label_array)]
    shares: list[list[int]] = []
    for _ in range(MAX_DRAWS):
        shares = _draw(by_class, num_devices, alpha, n, rng)
        if min(len(share) for share in shares) >= min_size:
            break
    else:
        logger.info(
            "no Dirichlet(%s) draw gave every one of %d devices %d examples in %d "
            "draws; moving examples from the largest devices",
            alpha,
            num_devices,
            min_size,
            MAX_DRAWS,
        )
        _top_up(shares, min_size, rng)
    return [np.sort(np.asarray(share, dtype=np.int64)) for share in shares]


def _draw(
    by_class: list[npt.NDArray[np.intp]],
    num_devices: int,
    alpha: float,
    n: int,
    rng: np.random.Generator,
) -> list[list[int]]:
    shares: list[list[int]] = [[] for _ in range(num_devices)]
    for members in by_class:
        shuffled = rng.permutation(members)
        proportions = rng.dirichlet(np.full(num_devices, alpha))
        # A device that already has its even share receives nothing more from this
        # class, which keeps device sizes from drifting far apart.
        full = np.array([len(share) >= n / num_devices for share in shares])
        if not full.all():
            proportions = np.where(full, 0.0, proportions)
            total = proportions.sum()
            # With a very small alpha the open devices' shares can underflow to 0.
            proportions = (
                proportions / total if total > 0 else (~full) / np.count_nonzero(~full)
            )
        cuts = (np.cumsum(proportions)[:-1] * shuffled.size).astype(int)
        for share, part in zip(shares, np.split(shuffled, cuts), strict=True):
            share.extend(int(index) for index in part)
    return shares


def _top_up(shares: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    for share in shares:
        while len(share) < min_size:
            donor = max(shares, key=len)
            share.append(donor.pop(int(rng.integers(len(donor)))))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[IndexArray, IndexArray]:
    """Split ``range(n)`` at random into training and holdout indices.

    Parameters
    ----------
    n
        Number of examples, at least 2.
    fraction
        Share of the examples held out, strictly between 0 and 1. The holdout size is
        ``round(n * fraction)``, clipped to ``1..n - 1``, so both parts are non-empty.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    tuple of numpy.ndarray
        Sorted int64 ``(train, holdout)`` indices, disjoint and covering ``range(n)``.
    """
    _check_positive_int("n", n)
    if n < 2:
        raise PartitionError(f"n is {n}: a holdout split needs at least 2 examples")
    if not 0.0 < fraction < 1.0:
        raise PartitionError(f"fraction is {fraction!r}: expected 0 < fraction < 1")
    holdout_size = min(max(round(n * fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    holdout = np.sort(order[:holdout_size]).astype(np.int64)
    train = np.sort(order[holdout_size:]).astype(np.int64)
    return train, holdout


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise PartitionError(f"{name} is {value!r}: expected a positive integer")


def _check_labels(labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise PartitionError(
            f"labels have shape {list(array.shape)}: expected one label per example"
        )
    if array.dtype.kind not in "iu":
        raise PartitionError(f"labels have dtype {array.dtype}: expected integers")
    return array.astype(np.int64, copy=False)
