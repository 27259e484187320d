"""Streaming aggregation of model updates.

Updates are folded in one at a time, so memory stays at one accumulator per tensor
however many devices take part. The accumulator is float64 by default, twice the
size of a float32 model. With the ``float32`` accumulator, float32 and float16
tensors are summed in float32 instead, which halves that memory and the traffic of
every fold at the cost of float32 rounding in the sum. Each update is weighted in
chunks through one small reused buffer, so folding allocates no temporary of the
update's size, and the mean is divided in place, so the result takes no memory of
its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from fedcore.errors import AggregationError
from fedcore.safetensors_io import DTYPES
from fedcore.update import TensorSpec

logger = logging.getLogger(__name__)

# Elements per chunk: the 1 MiB float64 buffer and the matching 1 MiB slice of the
# accumulator stay in a core's 2 MiB L2 cache through the copy, multiply and add.
# Smaller chunks measured slower: they spend more time in Python per element.
CHUNK_ELEMENTS = 1 << 17

FLOAT64 = "float64"
FLOAT32 = "float32"
# Accumulators a mean may sum in. float64 is the default everywhere.
ACCUMULATORS = (FLOAT64, FLOAT32)


def sum_dtype(spec: TensorSpec, accumulator: str) -> np.dtype[np.floating]:
    """Return the dtype a tensor is summed in under ``accumulator``.

    Only floating-point tensors of at most 32 bits are summed in float32. Float64,
    integer and bool tensors are always summed in float64, so the float32
    accumulator never rounds a count or a float64 value.

    Raises
    ------
    AggregationError
        If ``accumulator`` is not one of :data:`ACCUMULATORS`.
    """
    if accumulator not in ACCUMULATORS:
        raise AggregationError(
            f"accumulator {accumulator!r} is not one of {list(ACCUMULATORS)}"
        )
    dtype = np.dtype(DTYPES[spec.dtype])
    if accumulator == FLOAT32 and dtype.kind == "f" and dtype.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


class WeightedMean:
    """Weighted mean of updates, accumulated in float64 or float32.

    Parameters
    ----------
    reference
        Names, shapes and dtypes every added update must have.
    accumulator
        ``"float64"`` (the default) or ``"float32"``: see :func:`sum_dtype`.

    Raises
    ------
    AggregationError
        If ``accumulator`` is unknown.
    """

    def __init__(
        self, reference: Mapping[str, TensorSpec], accumulator: str = FLOAT64
    ) -> None:
        self._reference = dict(reference)
        self._sums = {
            name: np.zeros(spec.shape, dtype=sum_dtype(spec, accumulator))
            for name, spec in reference.items()
        }
        self.total_weight = 0.0
        self.count = 0
        self._finished = False
        self._buffers: dict[np.dtype[np.floating], np.ndarray] = {}

    def add(
        self, tensors: Mapping[str, np.ndarray], weight: float, scale: float = 1.0
    ) -> None:
        """Fold one update in with a non-negative weight.

        The update adds ``weight * scale * tensors`` to the sum and ``weight`` to
        the total weight, so ``scale`` shrinks the update (norm clipping) without
        changing its share of the mean, and without a scaled copy of it.

        Every tensor is checked before any is added, so a rejected update leaves the
        accumulator unchanged.

        Raises
        ------
        AggregationError
            If the weight is negative or not finite, if the scale is not finite,
            if the update's tensor names or shapes differ from the reference, or
            if :meth:`result` was called.
        """
        if self._finished:
            raise AggregationError(
                "result() was already called, so no update can be added: "
                "start a new WeightedMean for the next round"
            )
        if not weight >= 0 or not np.isfinite(weight):
            raise AggregationError(
                f"weight {weight!r} is not a finite non-negative number"
            )
        if not np.isfinite(scale):
            raise AggregationError(f"scale {scale!r} is not a finite number")
        if set(tensors) != set(self._sums):
            raise AggregationError(
                f"update tensors {sorted(tensors)} differ from "
                f"the model's {sorted(self._sums)}"
            )
        arrays = {name: np.asarray(tensors[name]) for name in self._sums}
        for name, array in arrays.items():
            expected = self._sums[name].shape
            if array.shape != expected:
                raise AggregationError(
                    f"tensor {name!r} has shape {array.shape}, expected {expected}"
                )
        for name, array in arrays.items():
            self._fold(
                self._sums[name].reshape(-1),
                array.reshape(-1),
                float(weight) * float(scale),
            )
        self.total_weight += float(weight)
        self.count += 1

    def _buffer(self, dtype: np.dtype[np.floating], size: int) -> np.ndarray:
        if dtype not in self._buffers:
            self._buffers[dtype] = np.empty(CHUNK_ELEMENTS, dtype=dtype)
        return self._buffers[dtype][:size]

    def _fold(self, total: np.ndarray, values: np.ndarray, weight: float) -> None:
        """Add ``weight * values`` to ``total`` in place, one chunk at a time.

        A chunk of another dtype is cast to the sum's dtype by a plain copy, then
        scaled and added. Three same-dtype passes over a chunk in cache measured
        faster than one multiply that casts as it goes, and give the same bits. A
        chunk already in the sum's dtype is scaled straight into the buffer.
        """
        for start in range(0, values.size, CHUNK_ELEMENTS):
            stop = min(start + CHUNK_ELEMENTS, values.size)
            chunk = values[start:stop]
            if chunk.dtype != total.dtype:
                weighted = self._buffer(total.dtype, stop - start)
                np.copyto(weighted, chunk, casting="same_kind")
                if weight != 1.0:
                    np.multiply(weighted, weight, out=weighted)
                chunk = weighted
            elif weight != 1.0:
                weighted = self._buffer(total.dtype, stop - start)
                np.multiply(chunk, weight, out=weighted)
                chunk = weighted
            np.add(total[start:stop], chunk, out=total[start:stop])

    def result(self) -> dict[str, np.ndarray]:
        """Return the weighted mean, in each tensor's :func:`sum_dtype`.

        The accumulators are divided in place and returned, so no copy of the model
        is made. Later calls return the same arrays; :meth:`add` refuses updates
        after the first call.

        Raises
        ------
        AggregationError
            If no update was added or every weight was zero, because there is nothing
            to average.
        """
        if self.count == 0:
            raise AggregationError(
                "no updates were added, so there is no mean to publish"
            )
        if self.total_weight <= 0:
            raise AggregationError(
                f"the {self.count} updates have a total weight of 0 "
                "(every example count is zero), so there is no mean to publish"
            )
        if not self._finished:
            for total in self._sums.values():
                np.divide(total, self.total_weight, out=total)
            self._finished = True
        return dict(self._sums)


def apply_delta(
    model: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Add an averaged update to a model, keeping each tensor's dtype.

    The addition runs in float64, one chunk at a time, so it needs no float64 copy
    of the model. Integer and bool tensors are then rounded with
    ``np.rint`` (half to even, so 2.5 becomes 2 and 3.5 becomes 4) and clipped to
    the range of their dtype instead of wrapping around.

    Raises
    ------
    AggregationError
        If the delta's tensor names or shapes differ from the model's.
    """
    if set(model) != set(delta):
        raise AggregationError(
            f"delta tensors {sorted(delta)} differ from the model's {sorted(model)}"
        )
    updated: dict[str, np.ndarray] = {}
    for name, weights in model.items():
        source = np.asarray(weights)
        change = np.asarray(delta[name])
        if change.shape != source.shape:
            raise AggregationError(
                f"delta tensor {name!r} has shape {change.shape}, "
                f"expected the model's {source.shape}"
            )
        result = np.empty(source.shape, dtype=source.dtype)
        flat_source, flat_change = source.reshape(-1), change.reshape(-1)
        flat_result = result.reshape(-1)
        integral = source.dtype.kind in "iub"
        bounds = _float_range(source.dtype) if integral else (0.0, 0.0)
        # One chunk at a time, so the float64 sum never takes a model's memory.
        for start in range(0, source.size, CHUNK_ELEMENTS):
            stop = min(start + CHUNK_ELEMENTS, source.size)
            total = flat_source[start:stop].astype(np.float64)
            total += flat_change[start:stop]
            if integral:
                np.clip(np.rint(total, out=total), *bounds, out=total)
            flat_result[start:stop] = total.astype(source.dtype)
        updated[name] = result
    return updated


def _float_range(dtype: np.dtype[np.generic]) -> tuple[float, float]:
    """Return the widest float64 interval whose values all cast into ``dtype``."""
    if dtype.kind == "b":
        return 0.0, 1.0
    info = np.iinfo(dtype.str)
    high = float(info.max)
    # float(2**63 - 1) rounds up to 2**63, which no longer fits in int64.
    if int(high) > info.max:
        high = float(np.nextafter(high, 0.0))
    return float(info.min), high
