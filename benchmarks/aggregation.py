"""Aggregation of N float32 updates: our streaming fold, Flower's, and an add loop.

Run one contender in a fresh process so its peak memory is its own::

    python -m benchmarks.aggregation CONTENDER UPDATES PARAMETERS

It prints one JSON line: the first, best and median wall time over the
repetitions, and
the peak memory above a baseline taken with every input already in memory, measured
two ways: the kernel's peak RSS (``VmHWM`` after a reset) and tracemalloc's peak of
numpy's allocations (numpy reports its data buffers to tracemalloc).

Contenders, all given the same update bytes and example counts:

``ours``
    ``fedcore.aggregation.WeightedMean``: fold each update in, then ``result()``
    (the float64 weighted mean).
``ours32``
    The same with ``accumulator="float32"``, which the aggregator uses when
    ``fl:aggregator.accumulator`` is ``float32``: the sum and the mean are float32.
``flower``
    ``flwr.server.strategy.aggregate.aggregate`` from Flower 1.42.0 on the list of
    ``(layers, num_examples)`` pairs (it returns the float32 weighted mean).
``floor``
    The bare loop ``np.add(acc, layer, out=acc)`` into a float64 accumulator per
    layer, unweighted and without the final division: the least work any
    float64 aggregation over the same bytes can do.
``floor32``
    The same loop into a float32 accumulator: the floor of ``ours32``, and,
    beside ``floor``, what float64 accumulation costs.
``read``
    ``np.sum`` of every layer of every update in float32: each byte is read once
    and nothing is written, the least work any aggregation of these bytes can do.
``blocked``
    A design that is not shipped: the weighted mean of one block of coordinates
    across every update at a time, in a float64 block that stays in cache, written
    to a float32 result. It needs every update readable by block (in memory here;
    ranged GETs in S3), which the streaming fold does not.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from benchmarks.measure import peak_rss, reset_peak_rss
from fedcore.aggregation import FLOAT32, WeightedMean
from fedcore.update import specs_of

REPETITIONS = 3
# Layer sizes as shares of the parameter count: two kernels and two biases.
LAYER_SHARES = (0.75, 0.001, 0.248, 0.001)


def make_updates(
    updates: int, parameters: int
) -> tuple[list[list[np.ndarray]], list[int]]:
    rng = np.random.default_rng(0)
    sizes = [max(1, int(parameters * share)) for share in LAYER_SHARES]
    sizes[0] += parameters - sum(sizes)
    layers = [
        [rng.standard_normal(size, dtype=np.float32) for size in sizes]
        for _ in range(updates)
    ]
    examples = [int(count) for count in rng.integers(1, 200, size=updates)]
    return layers, examples


def run_ours(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    names = [f"layer{index}" for index in range(len(layers[0]))]
    mean = WeightedMean(specs_of(dict(zip(names, layers[0], strict=True))))
    for update, count in zip(layers, examples, strict=True):
        mean.add(dict(zip(names, update, strict=True)), float(count))
    return mean.result()


def run_ours32(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    names = [f"layer{index}" for index in range(len(layers[0]))]
    mean = WeightedMean(
        specs_of(dict(zip(names, layers[0], strict=True))), accumulator=FLOAT32
    )
    for update, count in zip(layers, examples, strict=True):
        mean.add(dict(zip(names, update, strict=True)), float(count))
    return mean.result()


def run_read(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    return [float(np.sum(layer)) for update in layers for layer in update]


def run_flower(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    from flwr.server.strategy.aggregate import aggregate  # noqa: PLC0415

    return aggregate(list(zip(layers, examples, strict=True)))


def add_loop(layers: list[list[np.ndarray]], dtype: type[np.floating]) -> object:
    sums = [np.zeros(layer.size, dtype=dtype) for layer in layers[0]]
    for update in layers:
        for total, layer in zip(sums, update, strict=True):
            np.add(total, layer, out=total)
    return sums


def run_floor(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    return add_loop(layers, np.float64)


def run_floor32(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    return add_loop(layers, np.float32)


BLOCK_ELEMENTS = 1 << 15


def run_blocked(layers: list[list[np.ndarray]], examples: list[int]) -> object:
    weights = [float(count) for count in examples]
    total_weight = sum(weights)
    block = np.empty(BLOCK_ELEMENTS, dtype=np.float64)
    scratch = np.empty(BLOCK_ELEMENTS, dtype=np.float64)
    means = []
    for index, first in enumerate(layers[0]):
        mean = np.empty(first.size, dtype=np.float32)
        for start in range(0, first.size, BLOCK_ELEMENTS):
            stop = min(start + BLOCK_ELEMENTS, first.size)
            total = block[: stop - start]
            weighted = scratch[: stop - start]
            np.multiply(first[start:stop], weights[0], out=total, dtype=np.float64)
            for update, weight in zip(layers[1:], weights[1:], strict=True):
                layer = update[index][start:stop]
                np.multiply(layer, weight, out=weighted, dtype=np.float64)
                np.add(total, weighted, out=total)
            np.divide(total, total_weight, out=mean[start:stop], casting="same_kind")
        means.append(mean)
    return means


CONTENDERS: dict[str, Callable[[list[list[np.ndarray]], list[int]], object]] = {
    "ours": run_ours,
    "ours32": run_ours32,
    "flower": run_flower,
    "floor": run_floor,
    "floor32": run_floor32,
    "read": run_read,
    "blocked": run_blocked,
}


def main(argv: list[str]) -> int:
    contender, updates, parameters = argv[0], int(argv[1]), int(argv[2])
    run = CONTENDERS[contender]
    layers, examples = make_updates(updates, parameters)
    if contender == "flower":
        run_flower(layers[:1], examples[:1])  # import Flower outside the timing
    gc.collect()
    times: list[float] = []
    rss_peaks: list[int] = []
    for _ in range(REPETITIONS):
        baseline = reset_peak_rss()
        started = time.perf_counter()
        result = run(layers, examples)
        times.append(time.perf_counter() - started)
        rss_peaks.append(peak_rss() - baseline)
        del result
        gc.collect()
    tracemalloc.start()
    result = run(layers, examples)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    print(
        json.dumps(
            {
                "contender": contender,
                "updates": updates,
                "parameters": parameters,
                "model_bytes": parameters * 4,
                "first_seconds": times[0],
                "best_seconds": min(times),
                "median_seconds": statistics.median(times),
                "peak_rss_bytes": max(rss_peaks),
                "peak_traced_bytes": traced_peak,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
