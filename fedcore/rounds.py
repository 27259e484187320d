"""One round of server aggregation on updates held in memory.

The aggregator runs the same steps on updates in S3 (``lambdas.aggregator.aggregate``).
This module serves tests, experiments and simulations that keep updates in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedcore import dp_fedavg
from fedcore.privacy import secure_rng
from fedcore.robust import DEFAULT_BLOCK_ELEMENTS, aggregate_blocks
from fedcore.server_state import ServerState
from fedcore.server_update import ClippedMean, next_clip_norm, server_step
from fedcore.strategies import DP, MEAN, Strategy, required_updates
from fedcore.update import specs_of


class MemoryReader:
    """A :class:`fedcore.robust.BlockReader` over updates held in memory."""

    def __init__(self, updates: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._updates = updates

    def read(self, index: int, name: str, start: int, stop: int) -> np.ndarray:
        """Return elements ``start:stop`` of tensor ``name`` of update ``index``."""
        flat = np.asarray(self._updates[index][name]).reshape(-1)
        return flat[start:stop].astype(np.float64)


def aggregate_round(
    strategy: Strategy,
    base: Mapping[str, np.ndarray],
    updates: Sequence[Mapping[str, np.ndarray]],
    examples: Sequence[int],
    state: ServerState,
    *,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, np.ndarray], ServerState]:
    """Aggregate one round of deltas into the next model and server state.

    Parameters
    ----------
    strategy
        Any strategy of :mod:`fedcore.strategies`.
    base
        The global model the updates were trained from.
    updates
        Each device's delta, with the base model's names and shapes.
    examples
        Each device's example count.
    state
        The server state after the previous round (``ServerState.initial`` first).
    rng
        Noise generator of ``dp_fedavg``; None draws from
        :func:`fedcore.privacy.secure_rng`. Other strategies draw no noise.

    Raises
    ------
    fedcore.strategies.StrategyError
        If the round has too few updates for the strategy.
    fedcore.dp_fedavg.PrivacyBudgetExhausted
        If a ``dp_fedavg`` round would take epsilon over its budget.
    """
    if len(updates) != len(examples):
        raise ValueError(
            f"{len(updates)} updates but {len(examples)} example counts were given"
        )
    required_updates(strategy, len(updates))
    current = state.continued(strategy)
    specs = specs_of(base)
    if strategy.family == MEAN:
        mean = ClippedMean(strategy, specs, current.clip_norm)
        for tensors, count in zip(updates, examples, strict=True):
            mean.add(tensors, count)
        weights, others = mean.result()
        current.clip_norm = next_clip_norm(strategy, current.clip_norm, mean.norms)
    elif strategy.family == DP:
        settings = dp_fedavg.DpSettings.from_strategy(strategy)
        dp_fedavg.check_budget(settings, current)
        dp_round = dp_fedavg.DpRound(
            settings, specs, current.clip_norm or settings.clip_norm
        )
        for tensors, count in zip(updates, examples, strict=True):
            dp_round.add(tensors, count)
        weights, others, _ = dp_fedavg.finish_round(
            settings, current, dp_round, rng if rng is not None else secure_rng()
        )
    else:
        result = aggregate_blocks(
            strategy,
            specs,
            MemoryReader(updates),
            examples,
            block_elements=block_elements,
        )
        weights, others = result.weights, result.others
    return server_step(strategy, base, weights, others, current)
