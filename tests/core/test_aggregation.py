"""Tests of the streaming weighted mean and of applying a delta to a model."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fedcore.aggregation import (
    CHUNK_ELEMENTS,
    FLOAT32,
    FLOAT64,
    WeightedMean,
    apply_delta,
    sum_dtype,
)
from fedcore.errors import AggregationError
from fedcore.update import TensorSpec

REFERENCE = {
    "w": TensorSpec((3, 4), "F32"),
    "b": TensorSpec((4,), "F64"),
    "scale": TensorSpec((), "F32"),
}


def random_update(generator: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": generator.normal(size=(3, 4)).astype(np.float32),
        "b": generator.normal(size=4),
        "scale": np.array(generator.normal(), dtype=np.float32),
    }


def reference_mean(
    updates: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    return {
        name: np.average(
            np.stack([update[name].astype(np.float64) for update in updates]),
            axis=0,
            weights=weights,
        )
        for name in updates[0]
    }


def folded(
    updates: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    mean = WeightedMean(REFERENCE)
    for update, weight in zip(updates, weights, strict=True):
        mean.add(update, weight)
    return mean.result()


@pytest.fixture
def updates() -> list[dict[str, np.ndarray]]:
    generator = np.random.default_rng(11)
    return [random_update(generator) for _ in range(5)]


WEIGHTS = [10.0, 30.0, 5.0, 1.0, 54.0]


# WeightedMean


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_weighted_mean_matches_average(
    updates: list[dict[str, np.ndarray]], name: str
) -> None:
    expected = reference_mean(updates, WEIGHTS)[name]
    np.testing.assert_allclose(folded(updates, WEIGHTS)[name], expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_weighted_mean_shape(updates: list[dict[str, np.ndarray]], name: str) -> None:
    assert folded(updates, WEIGHTS)[name].shape == REFERENCE[name].shape


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_weighted_mean_float64(updates: list[dict[str, np.ndarray]], name: str) -> None:
    assert folded(updates, WEIGHTS)[name].dtype == np.float64


def test_weighted_mean_counts(updates: list[dict[str, np.ndarray]]) -> None:
    mean = WeightedMean(REFERENCE)
    for update, weight in zip(updates, WEIGHTS, strict=True):
        mean.add(update, weight)
    assert mean.count == 5
    assert mean.total_weight == 100.0


def test_weighted_mean_single_update(updates: list[dict[str, np.ndarray]]) -> None:
    result = folded(updates[:1], [7.0])
    assert result["w"].tolist() == updates[0]["w"].astype(np.float64).tolist()


def test_weighted_mean_zero_weight_ignored(
    updates: list[dict[str, np.ndarray]],
) -> None:
    with_zero = folded(updates, [*WEIGHTS[:4], 0.0])
    expected = reference_mean(updates[:4], WEIGHTS[:4])
    np.testing.assert_allclose(with_zero["w"], expected["w"], rtol=1e-12)


def test_weighted_mean_float64_accumulation() -> None:
    # 1e8 is exact in float32, but float32 spacing there is 8, so a float32
    # accumulator would drop every one of the 1000 ones added after it.
    spec = {"x": TensorSpec((1,), "F32")}
    mean = WeightedMean(spec)
    mean.add({"x": np.array([1e8], dtype=np.float32)}, 1.0)
    for _ in range(1000):
        mean.add({"x": np.array([1.0], dtype=np.float32)}, 1.0)
    exact = float(Fraction(10**8 + 1000, 1001))
    assert mean.result()["x"][0] == exact


def test_float32_accumulation_loses_precision() -> None:
    # Pins that the float64 test above can fail: float32 gives a different value.
    total = np.float32(1e8)
    for _ in range(1000):
        total = np.float32(total + np.float32(1.0))
    assert float(total) / 1001 != float(Fraction(10**8 + 1000, 1001))


def test_weighted_mean_order_independent() -> None:
    generator = np.random.default_rng(3)
    updates = [random_update(generator) for _ in range(20)]
    weights = [float(weight) for weight in generator.integers(1, 1000, size=20)]
    baseline = folded(updates, weights)
    for _ in range(5):
        order = generator.permutation(20)
        shuffled = folded(
            [updates[index] for index in order], [weights[index] for index in order]
        )
        for name in REFERENCE:
            np.testing.assert_allclose(
                shuffled[name], baseline[name], rtol=0, atol=1e-12
            )


def test_weighted_mean_all_zero_weights(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 0.0)
    mean.add(updates[1], 0.0)
    with pytest.raises(AggregationError, match="2 updates have a total weight of 0"):
        mean.result()


def test_weighted_mean_no_updates() -> None:
    with pytest.raises(AggregationError, match="no updates were added"):
        WeightedMean(REFERENCE).result()


@pytest.mark.parametrize(
    ("weight", "fragment"),
    [(-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf"), (-0.5, "-0.5")],
    ids=["negative", "nan", "inf", "negative-fraction"],
)
def test_weighted_mean_bad_weight(
    updates: list[dict[str, np.ndarray]], weight: float, fragment: str
) -> None:
    with pytest.raises(AggregationError, match=f"weight {fragment} is not"):
        WeightedMean(REFERENCE).add(updates[0], weight)


def test_weighted_mean_missing_name(updates: list[dict[str, np.ndarray]]) -> None:
    update = dict(updates[0])
    del update["b"]
    with pytest.raises(AggregationError, match=r"\['scale', 'w'\] differ"):
        WeightedMean(REFERENCE).add(update, 1.0)


def test_weighted_mean_extra_name(updates: list[dict[str, np.ndarray]]) -> None:
    update = {**updates[0], "z": np.zeros(1)}
    with pytest.raises(AggregationError, match="'z'"):
        WeightedMean(REFERENCE).add(update, 1.0)


def test_weighted_mean_shape_mismatch(updates: list[dict[str, np.ndarray]]) -> None:
    update = {**updates[0], "w": np.zeros((4, 3), dtype=np.float32)}
    with pytest.raises(AggregationError, match=r"'w' has shape \(4, 3\)"):
        WeightedMean(REFERENCE).add(update, 1.0)


def test_weighted_mean_broadcastable_shape(
    updates: list[dict[str, np.ndarray]],
) -> None:
    update = {**updates[0], "b": np.zeros(1)}
    with pytest.raises(AggregationError, match=r"'b' has shape \(1,\)"):
        WeightedMean(REFERENCE).add(update, 1.0)


def test_weighted_mean_rejected_leaves_state(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 2.0)
    # "scale" comes last in the reference, so a fold that checked shapes while
    # adding would already have added "w" and "b".
    bad = {**updates[1], "scale": np.zeros(1, dtype=np.float32)}
    with pytest.raises(AggregationError):
        mean.add(bad, 3.0)
    result = mean.result()
    assert mean.count == 1
    assert mean.total_weight == 2.0
    assert result["w"].tolist() == updates[0]["w"].astype(np.float64).tolist()
    assert result["b"].tolist() == updates[0]["b"].tolist()


def test_weighted_mean_result_twice(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 2.0)
    mean.add(updates[1], 6.0)
    first = {name: array.copy() for name, array in mean.result().items()}
    second = mean.result()
    for name in REFERENCE:
        np.testing.assert_array_equal(second[name], first[name])


def test_weighted_mean_result_in_place(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 1.0)
    assert mean.result()["w"] is mean.result()["w"]


def test_weighted_mean_add_after_result(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 1.0)
    mean.result()
    with pytest.raises(AggregationError, match=r"result\(\) was already called"):
        mean.add(updates[1], 1.0)


def test_weighted_mean_failed_result_allows_add(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 0.0)
    with pytest.raises(AggregationError, match="total weight of 0"):
        mean.result()
    mean.add(updates[1], 2.0)
    np.testing.assert_array_equal(
        mean.result()["b"], updates[1]["b"].astype(np.float64)
    )


# apply_delta


def test_apply_delta_float32_model() -> None:
    model = {"w": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    delta = {"w": np.array([0.1, -0.2, 1e-9])}
    updated = apply_delta(model, delta)
    expected = (model["w"].astype(np.float64) + delta["w"]).astype(np.float32)
    assert updated["w"].dtype == np.float32
    assert updated["w"].tobytes() == expected.tobytes()


def test_apply_delta_float64_model() -> None:
    model = {"w": np.array([1.0, 2.0])}
    updated = apply_delta(model, {"w": np.array([0.5, 0.25])})
    assert updated["w"].tolist() == [1.5, 2.25]


def test_apply_delta_float16_model() -> None:
    model = {"h": np.array([1.0], dtype=np.float16)}
    updated = apply_delta(model, {"h": np.array([0.5])})
    assert updated["h"].dtype == np.float16
    assert updated["h"].tolist() == [1.5]


def test_apply_delta_zero_d() -> None:
    updated = apply_delta({"s": np.array(2.0, np.float32)}, {"s": np.array(0.5)})
    assert updated["s"].shape == ()
    assert float(updated["s"]) == 2.5


def test_apply_delta_model_unchanged() -> None:
    model = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    apply_delta(model, {"w": np.array([1.0, 1.0])})
    assert model["w"].tolist() == [1.0, 2.0]


def test_apply_delta_round_half_even() -> None:
    # np.rint rounds halves to the nearest even integer.
    model = {"n": np.zeros(8, dtype=np.int32)}
    delta = {"n": np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, 0.51, -2.5])}
    updated = apply_delta(model, delta)
    assert updated["n"].dtype == np.int32
    assert updated["n"].tolist() == [0, 2, 2, 0, -2, 0, 1, -2]


@pytest.mark.parametrize(
    ("dtype", "start", "change", "expected"),
    [
        (np.uint8, 255, 1.0, 255),
        (np.uint8, 0, -1.0, 0),
        (np.int8, 127, 200.0, 127),
        (np.int8, -128, -0.6, -128),
        (np.uint16, 65535, 1e9, 65535),
        (np.int32, -(2**31), -1e12, -(2**31)),
    ],
    ids=["u8-high", "u8-low", "i8-high", "i8-low", "u16-high", "i32-low"],
)
def test_apply_delta_saturates(
    dtype: type, start: int, change: float, expected: int
) -> None:
    updated = apply_delta(
        {"n": np.array([start], dtype=dtype)}, {"n": np.array([change])}
    )
    assert updated["n"].tolist() == [expected]


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_apply_delta_saturates_64bit(dtype: type) -> None:
    info = np.iinfo(dtype)
    updated = apply_delta(
        {"n": np.array([info.max], dtype=dtype)}, {"n": np.array([1e30])}
    )
    # float64 cannot hold the exact maximum, so the result stops 1024 or 2048
    # below it instead of wrapping to a small or negative number.
    assert int(updated["n"][0]) > info.max - 4096


def test_apply_delta_bool() -> None:
    model = {"mask": np.array([True, False, True, False])}
    delta = {"mask": np.array([-0.7, 0.6, 5.0, -3.0])}
    updated = apply_delta(model, delta)
    assert updated["mask"].dtype == np.bool_
    assert updated["mask"].tolist() == [False, True, True, False]


def test_apply_delta_missing_name() -> None:
    model = {"a": np.zeros(1), "b": np.zeros(1)}
    with pytest.raises(AggregationError, match=r"\['a'\] differ from the model's"):
        apply_delta(model, {"a": np.zeros(1)})


def test_apply_delta_mean_end_to_end(updates: list[dict[str, np.ndarray]]) -> None:
    model: dict[str, np.ndarray] = {
        "w": np.ones((3, 4), dtype=np.float32),
        "b": np.zeros(4),
        "scale": np.array(1.0, dtype=np.float32),
    }
    updated = apply_delta(model, folded(updates, WEIGHTS))
    expected = (1.0 + reference_mean(updates, WEIGHTS)["w"]).astype(np.float32)
    assert updated["w"].dtype == np.float32
    np.testing.assert_allclose(updated["w"], expected, rtol=1e-6)


def test_apply_delta_shape_mismatch() -> None:
    with pytest.raises(AggregationError, match=r"delta tensor 'w' has shape \(2,\)"):
        apply_delta({"w": np.zeros(3, np.float32)}, {"w": np.ones(2)})


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_apply_delta_across_chunks(dtype: type) -> None:
    # Two and a half chunks, so the chunked sum has a partial last chunk.
    size = 5 * CHUNK_ELEMENTS // 2
    generator = np.random.default_rng(5)
    model = {"w": (generator.normal(size=size) * 100).astype(dtype)}
    delta = {"w": generator.normal(size=size) * 10}
    total = model["w"].astype(np.float64) + delta["w"]
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        total = np.clip(np.rint(total), info.min, info.max)
    updated = apply_delta(model, delta)
    assert updated["w"].tobytes() == total.astype(dtype).tobytes()


# scale


def test_weighted_mean_scale_shrinks_update(
    updates: list[dict[str, np.ndarray]],
) -> None:
    scaled = WeightedMean(REFERENCE)
    scaled.add(updates[0], 2.0, 0.5)
    scaled.add(updates[1], 6.0)
    copied = WeightedMean(REFERENCE)
    copied.add({name: updates[0][name] * 0.5 for name in REFERENCE}, 2.0)
    copied.add(updates[1], 6.0)
    for name in REFERENCE:
        np.testing.assert_allclose(
            scaled.result()[name], copied.result()[name], rtol=1e-12
        )


def test_weighted_mean_scale_keeps_weight(
    updates: list[dict[str, np.ndarray]],
) -> None:
    mean = WeightedMean(REFERENCE)
    mean.add(updates[0], 2.0, 0.25)
    assert mean.total_weight == 2.0


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_weighted_mean_bad_scale(
    updates: list[dict[str, np.ndarray]], scale: float
) -> None:
    mean = WeightedMean(REFERENCE)
    with pytest.raises(AggregationError, match="scale"):
        mean.add(updates[0], 1.0, scale)
    assert mean.count == 0


# float32 accumulator


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("F32", np.float32),
        ("F16", np.float32),
        ("F64", np.float64),
        ("I64", np.float64),
        ("U8", np.float64),
        ("BOOL", np.float64),
    ],
)
def test_sum_dtype_float32(code: str, expected: type) -> None:
    assert sum_dtype(TensorSpec((2,), code), FLOAT32) == expected


@pytest.mark.parametrize("code", ["F32", "F16", "I32"])
def test_sum_dtype_float64(code: str) -> None:
    assert sum_dtype(TensorSpec((2,), code), FLOAT64) == np.float64


def test_unknown_accumulator() -> None:
    with pytest.raises(AggregationError, match=r"accumulator 'float16' is not one"):
        WeightedMean(REFERENCE, accumulator="float16")


@pytest.mark.parametrize(("name", "dtype"), [("w", np.float32), ("b", np.float64)])
def test_float32_accumulator_dtypes(
    updates: list[dict[str, np.ndarray]], name: str, dtype: type
) -> None:
    mean = WeightedMean(REFERENCE, accumulator=FLOAT32)
    for update, weight in zip(updates, WEIGHTS, strict=True):
        mean.add(update, weight)
    assert mean.result()[name].dtype == dtype


def test_float32_accumulator_close_to_float64() -> None:
    generator = np.random.default_rng(8)
    spec = {"w": TensorSpec((3 * CHUNK_ELEMENTS // 2,), "F32")}
    wide = WeightedMean(spec)
    narrow = WeightedMean(spec, accumulator=FLOAT32)
    for _ in range(50):
        update = {"w": generator.normal(size=spec["w"].shape).astype(np.float32)}
        weight = float(generator.integers(1, 1000))
        wide.add(update, weight)
        narrow.add(update, weight, 0.75)
    reference = wide.result()["w"] * 0.75
    # Fifty float32 roundings of sums of magnitude ~1 stay within 1e-5.
    np.testing.assert_allclose(narrow.result()["w"], reference, rtol=0, atol=1e-5)


def test_float32_accumulator_float64_update() -> None:
    # A float64 update is cast to the float32 sum instead of being rejected.
    mean = WeightedMean({"w": TensorSpec((2,), "F32")}, accumulator=FLOAT32)
    mean.add({"w": np.array([0.5, 1.5])}, 2.0)
    assert mean.result()["w"].tolist() == [0.5, 1.5]
