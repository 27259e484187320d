"""The server's side of a round: clip and average deltas, then take a server step.

:class:`ClippedMean` folds updates in one at a time, so the mean family needs memory
for one accumulator per tensor however many updates a round has. :func:`server_step`
turns the averaged delta into the next global model with the strategy's server
optimizer and returns the state for the next round.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np

from fedcore.aggregation import FLOAT64, WeightedMean, apply_delta
from fedcore.errors import AggregationError
from fedcore.safetensors_io import DTYPES
from fedcore.server_state import ServerState, check_slots
from fedcore.strategies import Strategy, StrategyError, is_variance, is_weight
from fedcore.update import TensorSpec, sum_of_squares


def split_specs(
    specs: Mapping[str, TensorSpec],
) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Split a model's tensors into weights and the rest (see ``is_weight``)."""
    weights: dict[str, TensorSpec] = {}
    others: dict[str, TensorSpec] = {}
    for name, spec in specs.items():
        kind = DTYPES[spec.dtype].kind
        (weights if is_weight(name, kind) else others)[name] = spec
    return weights, others


def update_norm(
    tensors: Mapping[str, np.ndarray], weight_names: Mapping[str, object]
) -> float:
    """Return the L2 norm of an update's weight tensors, in float64.

    Each tensor is widened to float64 one chunk at a time, so the norm needs no
    float64 copy of the update.
    """
    squared = sum(sum_of_squares(tensors[name]) for name in sorted(weight_names))
    return math.sqrt(squared)


class ClippedMean:
    """Streaming mean of deltas for the mean family, with optional norm clipping.

    Weight tensors are scaled by ``min(1, clip_norm / norm)`` and averaged with the
    strategy's weights (example counts, or 1 each when ``weighted`` is 0). The other
    tensors are averaged with example counts and never clipped.

    Parameters
    ----------
    strategy
        A mean-family strategy.
    specs
        Names, shapes and dtypes of the global model.
    clip_norm
        Bound on each update's weight norm, or None for no clipping.
    accumulator
        What the weight tensors are summed in, ``"float64"`` (the default) or
        ``"float32"`` (see :func:`fedcore.aggregation.sum_dtype`). The other
        tensors are always summed in float64.
    """

    def __init__(
        self,
        strategy: Strategy,
        specs: Mapping[str, TensorSpec],
        clip_norm: float | None,
        accumulator: str = FLOAT64,
    ) -> None:
        self.strategy = strategy
        self.weight_specs, self.other_specs = split_specs(specs)
        self.clip_norm = clip_norm
        self._weights = WeightedMean(self.weight_specs, accumulator)
        self._others = WeightedMean(self.other_specs)
        self.norms: list[float] = []
        self.examples = 0

    def add(self, tensors: Mapping[str, np.ndarray], num_examples: int) -> None:
        """Fold one update in.

        Raises
        ------
        AggregationError
            If the update's tensors differ from the model's.
        """
        if set(tensors) != set(self.weight_specs) | set(self.other_specs):
            raise AggregationError(
                f"update tensors {sorted(tensors)} differ from the model's "
                f"{sorted(set(self.weight_specs) | set(self.other_specs))}"
            )
        norm = update_norm(tensors, self.weight_specs)
        scale = 1.0
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / norm
        weight = float(num_examples) if self.strategy.weighted else 1.0
        weights = {name: tensors[name] for name in self.weight_specs}
        self._weights.add(weights, weight, scale)
        self._others.add(
            {name: tensors[name] for name in self.other_specs}, float(num_examples)
        )
        self.norms.append(norm)
        self.examples += int(num_examples)

    def result(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Return the mean delta of the weights and of the other tensors.

        Raises
        ------
        AggregationError
            If no update was added or the total weight is zero.
        """
        if self._others.count == 0:
            raise AggregationError("no updates were added, so there is no mean")
        weights = self._weights.result() if self.weight_specs else {}
        others = self._others.result() if self.other_specs else {}
        return weights, others


def next_clip_norm(
    strategy: Strategy, clip_norm: float | None, norms: list[float]
) -> float | None:
    """Return the clip bound for the next round.

    A fixed bound stays. An adaptive one moves geometrically towards the
    ``clip_quantile`` of the norms: C * exp(-clip_lr * (b - q)), where b is the
    fraction of this round's updates whose norm was <= C.
    """
    if clip_norm is None or not strategy.adaptive_clip or not norms:
        return clip_norm
    below = sum(1 for norm in norms if norm <= clip_norm) / len(norms)
    quantile = strategy.parameter("clip_quantile")
    return clip_norm * math.exp(-strategy.parameter("clip_lr") * (below - quantile))


def server_step(
    strategy: Strategy,
    base: Mapping[str, np.ndarray],
    weight_delta: Mapping[str, np.ndarray],
    other_delta: Mapping[str, np.ndarray],
    state: ServerState,
) -> tuple[dict[str, np.ndarray], ServerState]:
    """Apply the aggregated delta to the base model with the server optimizer.

    ``fedavg``, ``fedprox``, ``dp_fedavg`` and the robust rules add the delta as it
    is (server learning rate 1). ``fedavgm``
    keeps a momentum buffer. ``fedadam``, ``fedyogi`` and ``fedadagrad`` follow
    Algorithm 2 of Reddi et al. (ICLR 2021) with no bias correction, starting from
    m = 0 and v = tau^2. Flower's FedAdam starts v at 0 and corrects the bias, so
    its first rounds differ. Tensors that are not weights take ``other_delta`` as it
    is, integers are rounded back to their dtype and running variances are clipped
    to >= 0.

    Returns
    -------
    tuple
        The next model, in the base model's dtypes, and the next server state.
        ``state`` is not modified.

    Raises
    ------
    AggregationError
        If a floating-point tensor of the next model is not finite, which a server
        learning rate too large for the model's dtype causes. No model is returned,
        so a diverged step is never published.
    """
    next_state = ServerState(
        strategy=state.strategy,
        steps=state.steps + 1,
        clip_norm=state.clip_norm,
        slots={slot: dict(arrays) for slot, arrays in state.slots.items()},
        privacy=copy.deepcopy(state.privacy),
    )
    check_slots(
        next_state, {name: np.shape(delta) for name, delta in weight_delta.items()}
    )
    step = _optimizer_step(strategy, weight_delta, next_state)
    model = apply_delta(base, {**step, **other_delta})
    for name, array in model.items():
        if is_variance(name) and array.dtype.kind == "f":
            model[name] = np.maximum(array, 0).astype(array.dtype)
    _check_finite(strategy, model)
    return model, next_state


def _check_finite(strategy: Strategy, model: Mapping[str, np.ndarray]) -> None:
    for name, array in model.items():
        if array.dtype.kind != "f":
            continue
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            params = ", ".join(f"{k}={v:g}" for k, v in sorted(strategy.params.items()))
            raise AggregationError(
                f"the {strategy.name} server step made {bad} of {array.size} values "
                f"of tensor {name!r} non-finite ({params or 'default parameters'}): "
                "lower the server learning rate (eta or server_lr) and configure "
                "the strategy again"
            )


def _optimizer_step(
    strategy: Strategy, delta: Mapping[str, np.ndarray], state: ServerState
) -> dict[str, np.ndarray]:
    name = strategy.name
    if name in ("fedavg", "fedprox") or strategy.family != "mean":
        # apply_delta widens chunk by chunk, so a float32 mean is not copied here.
        return dict(delta)
    wide = {key: np.asarray(value, dtype=np.float64) for key, value in delta.items()}
    if name == "fedavgm":
        momentum = strategy.parameter("momentum")
        buffer = state.slots.get("momentum") or {
            key: np.zeros_like(value) for key, value in wide.items()
        }
        buffer = {key: momentum * buffer[key] + wide[key] for key in wide}
        state.slots["momentum"] = buffer
        rate = strategy.parameter("server_lr")
        return {key: rate * value for key, value in buffer.items()}
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        return _adaptive_step(strategy, wide, state)
    raise StrategyError(f"strategy {name!r} has no server optimizer")


def _adaptive_step(
    strategy: Strategy, delta: Mapping[str, np.ndarray], state: ServerState
) -> dict[str, np.ndarray]:
    beta1 = strategy.parameter("beta1")
    tau = strategy.parameter("tau")
    eta = strategy.parameter("eta")
    first = state.slots.get("m") or {
        key: np.zeros_like(value) for key, value in delta.items()
    }
    second = state.slots.get("v") or {
        key: np.full_like(value, tau * tau) for key, value in delta.items()
    }
    new_first: dict[str, np.ndarray] = {}
    new_second: dict[str, np.ndarray] = {}
    step: dict[str, np.ndarray] = {}
    for key, value in delta.items():
        squared = value * value
        new_first[key] = beta1 * first[key] + (1.0 - beta1) * value
        if strategy.name == "fedadagrad":
            new_second[key] = second[key] + squared
        elif strategy.name == "fedyogi":
            beta2 = strategy.parameter("beta2")
            new_second[key] = second[key] - (1.0 - beta2) * squared * np.sign(
                second[key] - squared
            )
        else:
            beta2 = strategy.parameter("beta2")
            new_second[key] = beta2 * second[key] + (1.0 - beta2) * squared
        step[key] = eta * new_first[key] / (np.sqrt(new_second[key]) + tau)
    state.slots["m"] = new_first
    state.slots["v"] = new_second
    return step
