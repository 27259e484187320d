"""Byzantine-robust aggregation over coordinate blocks.

The rules need every update at once, so instead of loading whole updates they read
one block of coordinates of every update at a time through a :class:`BlockReader`.
Memory is O(block x updates) for the inputs plus one output delta. The readers in the
aggregator fetch each block with an S3 ranged GET; tests pass in-memory readers.

Rules:

- coordinate-wise median and trimmed mean (Yin et al., "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates", ICML 2018);
- Krum and Multi-Krum (Blanchard et al., "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent", NeurIPS 2017). The score of update i is the
  sum of its n - f - 2 smallest squared distances to the other updates. Krum keeps
  the best-scored update, Multi-Krum averages the m best. Ties go to the update that
  comes first, and the aggregator orders updates by device id.

Median and trimmed mean can first mix the updates: with ``nnm_f`` > 0, a first pass
over the blocks sums the squared distances between updates, and each update is then
replaced by the mean of its n - nnm_f nearest (Allouah et al., "Fixing by Mixing: A
Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023). The second pass
applies the rule to the mixed blocks, so the updates are read twice.

Tensors that are not weights are averaged with example counts over all updates,
as :func:`fedcore.strategies.is_weight` documents.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedcore.server_update import split_specs
from fedcore.strategies import (
    Strategy,
    StrategyError,
    required_updates,
    selected_count,
    trimmed_count,
)
from fedcore.update import TensorSpec

DEFAULT_BLOCK_ELEMENTS = 1 << 19


class BlockReader(Protocol):
    """Source of coordinate blocks of the round's updates."""

    def read(self, index: int, name: str, start: int, stop: int) -> np.ndarray:
        """Return elements ``start:stop`` of tensor ``name`` of update ``index``.

        The elements are those of the flattened tensor in C order, as float64.
        """
        ...


@dataclass
class RobustResult:
    """The aggregated deltas and which updates a selection rule kept."""

    weights: dict[str, np.ndarray]
    others: dict[str, np.ndarray]
    selected: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def blocks(
    specs: Mapping[str, TensorSpec], block_elements: int
) -> Iterator[tuple[str, int, int]]:
    """Yield ``(name, start, stop)`` element ranges covering every tensor in order."""
    if block_elements < 1:
        raise ValueError(f"block_elements is {block_elements}, expected >= 1")
    for name in sorted(specs):
        size = int(np.prod(specs[name].shape, dtype=np.int64))
        for start in range(0, size, block_elements):
            yield name, start, min(size, start + block_elements)


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Return the median of each column of ``stack`` (updates x coordinates).

    With an even number of updates the median is the mean of the two middle values.
    """
    return np.asarray(np.median(stack, axis=0))


def trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    """Drop floor(beta * n) values from each end of every column and average the rest.

    Raises
    ------
    StrategyError
        If trimming leaves no value.
    """
    count = stack.shape[0]
    trimmed = trimmed_count(beta, count)
    if count - 2 * trimmed < 1:
        raise StrategyError(
            f"trimmed mean with beta {beta} trims {trimmed} of {count} values from "
            "each end and leaves none"
        )
    ordered = np.sort(stack, axis=0)
    return np.asarray(ordered[trimmed : count - trimmed].mean(axis=0))


def add_squared_distances(distances: np.ndarray, stack: np.ndarray) -> None:
    """Add the squared distances between the rows of one block to ``distances``.

    Each pair is summed from its own differences, so D[i, j] equals D[j, i] exactly
    and does not depend on the order of the other rows.
    """
    for row in range(stack.shape[0]):
        difference = stack - stack[row]
        distances[row] += np.einsum("ij,ij->i", difference, difference)


def krum_scores(distances: np.ndarray, byzantine: int) -> np.ndarray:
    """Return each update's Krum score from the matrix of squared distances.

    Raises
    ------
    StrategyError
        If there are not more than 2f + 2 updates.
    """
    count = distances.shape[0]
    if count <= 2 * byzantine + 2:
        raise StrategyError(
            f"Krum with f={byzantine} needs more than {2 * byzantine + 2} updates, "
            f"got {count}"
        )
    neighbours = count - byzantine - 2
    scores = np.empty(count, dtype=np.float64)
    for row in range(count):
        others = np.delete(distances[row], row)
        scores[row] = np.sort(others)[:neighbours].sum()
    return scores


def mixing_matrix(distances: np.ndarray, byzantine: int) -> np.ndarray:
    """Return the matrix of nearest-neighbour mixing from squared distances.

    Row i has 1 / (n - f) at the n - f updates nearest to update i, itself
    included, and 0 elsewhere, so ``mixing @ stack`` replaces every update by the
    mean of its neighbours. Equal distances are broken by the update's index.

    Raises
    ------
    StrategyError
        If f is negative or leaves no neighbour.
    """
    count = distances.shape[0]
    neighbours = count - byzantine
    if byzantine < 0 or neighbours < 1:
        raise StrategyError(
            f"nearest-neighbour mixing with nnm_f={byzantine} of {count} updates "
            "leaves no neighbour to average"
        )
    mixing = np.zeros((count, count), dtype=np.float64)
    for row in range(count):
        # Sorting (distance, index) pairs keeps each update itself among its
        # neighbours: its distance is 0, and a tie at 0 with a duplicate is fine
        # because the duplicate has the same values.
        nearest = np.lexsort((np.arange(count), distances[row]))[:neighbours]
        mixing[row, nearest] = 1.0 / neighbours
    return mixing


def krum_select(scores: np.ndarray, selected: int) -> list[int]:
    """Return the indices of the ``selected`` lowest scores, ties to the lower index."""
    order = np.argsort(scores, kind="stable")
    return sorted(int(index) for index in order[:selected])


def aggregate_blocks(
    strategy: Strategy,
    specs: Mapping[str, TensorSpec],
    reader: BlockReader,
    examples: Sequence[int],
    *,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> RobustResult:
    """Aggregate a round's updates with a robust rule, one block at a time.

    Parameters
    ----------
    strategy
        ``median``, ``trimmed_mean``, ``krum`` or ``multikrum``.
    specs
        Names, shapes and dtypes of the global model.
    reader
        Returns blocks of update ``i`` for ``i`` in ``range(len(examples))``.
    examples
        Example count of each update.
    block_elements
        Coordinates read from each update per block.

    Raises
    ------
    StrategyError
        If the strategy is not robust or the round has too few updates for it.
    """
    count = len(examples)
    required_updates(strategy, count)
    weight_specs, other_specs = split_specs(specs)
    result = RobustResult(
        weights=_zeros(weight_specs), others=_zeros(other_specs), selected=[]
    )
    if strategy.name in ("median", "trimmed_mean"):
        mixing = None
        if strategy.mixing:
            distances = np.zeros((count, count), dtype=np.float64)
            for name, start, stop in blocks(weight_specs, block_elements):
                add_squared_distances(
                    distances, _stack(reader, count, name, start, stop)
                )
            mixing = mixing_matrix(distances, strategy.mixing)
        for name, start, stop in blocks(weight_specs, block_elements):
            stack = _stack(reader, count, name, start, stop)
            if mixing is not None:
                stack = mixing @ stack
            if strategy.name == "median":
                values = coordinate_median(stack)
            else:
                values = trimmed_mean(stack, strategy.parameter("beta"))
            result.weights[name].reshape(-1)[start:stop] = values
    elif strategy.name in ("krum", "multikrum"):
        distances = np.zeros((count, count), dtype=np.float64)
        for name, start, stop in blocks(weight_specs, block_elements):
            add_squared_distances(distances, _stack(reader, count, name, start, stop))
        scores = krum_scores(distances, int(strategy.parameter("f")))
        result.scores = [float(score) for score in scores]
        result.selected = krum_select(scores, selected_count(strategy, count))
        weights = np.array(
            [
                float(examples[index]) if strategy.weighted else 1.0
                for index in result.selected
            ]
        )
        _weighted_mean(
            reader,
            result.selected,
            weights,
            weight_specs,
            result.weights,
            block_elements=block_elements,
        )
    else:
        raise StrategyError(f"strategy {strategy.name!r} is not a robust rule")
    _weighted_mean(
        reader,
        list(range(count)),
        np.asarray(examples, dtype=np.float64),
        other_specs,
        result.others,
        block_elements=block_elements,
    )
    return result


def _zeros(specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    return {
        name: np.zeros(spec.shape, dtype=np.float64) for name, spec in specs.items()
    }


def _stack(
    reader: BlockReader, count: int, name: str, start: int, stop: int
) -> np.ndarray:
    stack = np.empty((count, stop - start), dtype=np.float64)
    for index in range(count):
        stack[index] = reader.read(index, name, start, stop)
    return stack


def _weighted_mean(
    reader: BlockReader,
    indices: Sequence[int],
    weights: np.ndarray,
    specs: Mapping[str, TensorSpec],
    out: dict[str, np.ndarray],
    *,
    block_elements: int,
) -> None:
    total = float(weights.sum())
    if specs and total <= 0:
        raise StrategyError("the selected updates have a total weight of 0")
    for name, start, stop in blocks(specs, block_elements):
        accumulator = np.zeros(stop - start, dtype=np.float64)
        for index, weight in zip(indices, weights, strict=True):
            accumulator += weight * reader.read(index, name, start, stop)
        out[name].reshape(-1)[start:stop] = accumulator / total
