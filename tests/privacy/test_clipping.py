"""Tests of update clipping, the DP sum and its fixed-denominator mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcore.privacy import DpSum, PrivacyError, capped_weight, clip_update, update_norm
from fedcore.update import TensorSpec

REFERENCE = {"w": TensorSpec((3, 4), "F32"), "b": TensorSpec((4,), "F64")}


def random_update(
    generator: np.random.Generator, scale: float
) -> dict[str, np.ndarray]:
    return {
        "w": (generator.normal(size=(3, 4)) * scale).astype(np.float64),
        "b": generator.normal(size=4) * scale,
    }


def reference_norm(tensors: dict[str, np.ndarray]) -> float:
    # An independent reference: math.hypot scales its arguments internally, so it
    # neither overflows nor underflows.
    return math.hypot(*(float(v) for a in tensors.values() for v in a.ravel()))


@pytest.mark.parametrize(
    "scale",
    [0.0, 1e-300, 1e-160, 1e-10, 1.0, 3.0, 1e10, 1e150, 1e300],
)
@pytest.mark.parametrize("clip_norm", [1e-6, 0.5, 1.0, 1e6])
def test_clip_bound_holds(scale: float, clip_norm: float) -> None:
    generator = np.random.default_rng(7)
    for _ in range(20):
        result = clip_update(random_update(generator, scale), clip_norm)
        assert update_norm(result.tensors) <= clip_norm
        assert reference_norm(result.tensors) <= clip_norm * (1 + 1e-12)


def test_clip_bound_random_scales() -> None:
    generator = np.random.default_rng(11)
    for _ in range(2000):
        scale = 10.0 ** generator.uniform(-300, 300)
        clip_norm = 10.0 ** generator.uniform(-6, 6)
        result = clip_update(random_update(generator, scale), clip_norm)
        assert update_norm(result.tensors) <= clip_norm


def test_clip_keeps_short_update() -> None:
    update = {"w": np.full((3, 4), 0.1), "b": np.zeros(4)}
    result = clip_update(update, 10.0)
    assert result.was_clipped is False
    assert np.array_equal(result.tensors["w"], update["w"])
    assert result.norm == pytest.approx(math.sqrt(12 * 0.01), rel=1e-12)


def test_clip_keeps_direction() -> None:
    generator = np.random.default_rng(3)
    update = random_update(generator, 100.0)
    result = clip_update(update, 2.0)
    assert result.was_clipped is True
    assert result.norm == pytest.approx(reference_norm(update), rel=1e-12)
    for name, array in update.items():
        np.testing.assert_allclose(result.tensors[name], array * 2.0 / result.norm)


def test_clip_norm_of_zero_update() -> None:
    result = clip_update({"w": np.zeros((3, 4)), "b": np.zeros(4)}, 1.0)
    assert result.norm == 0.0
    assert result.was_clipped is False


def test_norm_of_float32_overflow() -> None:
    # Squares of float32 maxima overflow float32, and of 1e300 overflow float64.
    assert update_norm({"a": np.array([1e300, 1e300])}) == pytest.approx(
        math.sqrt(2) * 1e300
    )
    big = np.finfo(np.float32).max
    assert update_norm({"a": np.array([big, big], dtype=np.float32)}) == pytest.approx(
        math.sqrt(2) * float(big)
    )


@pytest.mark.parametrize(
    ("tensors", "fragment"),
    [
        ({"a": np.array([1, 2], dtype=np.int32)}, "floating point"),
        ({"a": np.array([True])}, "floating point"),
        ({"a": np.array([np.nan])}, "NaN or Inf"),
        ({"a": np.array([np.inf], dtype=np.float32)}, "NaN or Inf"),
    ],
)
def test_clip_rejects_bad_tensor(tensors: dict[str, np.ndarray], fragment: str) -> None:
    with pytest.raises(PrivacyError, match=fragment):
        clip_update(tensors, 1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_clip_rejects_bad_clip_norm(clip_norm: float) -> None:
    with pytest.raises(PrivacyError, match="clip_norm"):
        clip_update({"a": np.ones(2)}, clip_norm)


def test_sum_matches_reference_mean() -> None:
    generator = np.random.default_rng(5)
    updates = [random_update(generator, 2.0**k) for k in range(-3, 5)]
    dp_sum = DpSum(REFERENCE, clip_norm=1.5)
    for update in updates:
        dp_sum.add(update)
    mean = dp_sum.finalize(
        expected_weight=20.0, noise_multiplier=0.0, rng=np.random.default_rng(0)
    )
    for name in REFERENCE:
        expected = sum(
            update[name] * min(1.0, 1.5 / reference_norm(update)) for update in updates
        )
        np.testing.assert_allclose(mean[name], expected / 20.0, rtol=1e-12)
    assert dp_sum.count == len(updates)
    assert dp_sum.unclipped_count == sum(
        reference_norm(update) <= 1.5 for update in updates
    )


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_sum_sensitivity_one_device(scale: float) -> None:
    generator = np.random.default_rng(9)
    others = [random_update(generator, 1.0) for _ in range(5)]
    extra = random_update(generator, scale)
    means = []
    for members in (others, [*others, extra]):
        dp_sum = DpSum(REFERENCE, clip_norm=0.7)
        for update in members:
            dp_sum.add(update, weight=1.0)
        means.append(
            dp_sum.finalize(
                expected_weight=4.0, noise_multiplier=0.0, rng=np.random.default_rng(0)
            )
        )
    difference = {name: means[1][name] - means[0][name] for name in REFERENCE}
    assert update_norm(difference) <= 0.7 / 4.0 * (1 + 1e-12)


def test_sum_applies_capped_weight() -> None:
    dp_sum = DpSum({"a": TensorSpec((2,), "F64")}, clip_norm=10.0)
    dp_sum.add({"a": np.array([2.0, 4.0])}, weight=capped_weight(5, 20))
    mean = dp_sum.finalize(
        expected_weight=1.0, noise_multiplier=0.0, rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(mean["a"], [0.5, 1.0])
    assert dp_sum.total_weight == 0.25


@pytest.mark.parametrize(
    ("num_examples", "cap", "expected"),
    [(0, 10, 0.0), (5, 10, 0.5), (10, 10, 1.0), (1000, 10, 1.0)],
)
def test_capped_weight_table(num_examples: int, cap: int, expected: float) -> None:
    assert capped_weight(num_examples, cap) == expected


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, True])
def test_sum_rejects_bad_weight(weight: float) -> None:
    dp_sum = DpSum(REFERENCE, clip_norm=1.0)
    with pytest.raises(PrivacyError, match="weight"):
        dp_sum.add(random_update(np.random.default_rng(0), 1.0), weight=weight)
    assert dp_sum.count == 0


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"w": np.zeros((3, 4))}, "differ from"),
        ({"w": np.zeros((4, 3)), "b": np.zeros(4)}, "shape"),
        ({"w": np.zeros((3, 4)), "b": np.array([0, 0, 0, 1])}, "floating point"),
    ],
)
def test_sum_rejects_bad_update(update: dict[str, np.ndarray], fragment: str) -> None:
    dp_sum = DpSum(REFERENCE, clip_norm=1.0)
    with pytest.raises(PrivacyError, match=fragment):
        dp_sum.add(update)
    assert dp_sum.count == 0


def test_sum_finalize_twice_rejected() -> None:
    dp_sum = DpSum(REFERENCE, clip_norm=1.0)
    dp_sum.finalize(
        expected_weight=1.0, noise_multiplier=1.0, rng=np.random.default_rng(0)
    )
    with pytest.raises(PrivacyError, match="already finalized"):
        dp_sum.finalize(
            expected_weight=1.0, noise_multiplier=1.0, rng=np.random.default_rng(0)
        )


def test_sum_add_after_finalize_rejected() -> None:
    dp_sum = DpSum(REFERENCE, clip_norm=1.0)
    dp_sum.finalize(
        expected_weight=1.0, noise_multiplier=1.0, rng=np.random.default_rng(0)
    )
    with pytest.raises(PrivacyError, match="already finalized"):
        dp_sum.add(random_update(np.random.default_rng(0), 1.0))


@pytest.mark.parametrize("expected_weight", [0.0, -2.0, math.inf])
def test_sum_rejects_bad_denominator(expected_weight: float) -> None:
    dp_sum = DpSum(REFERENCE, clip_norm=1.0)
    with pytest.raises(PrivacyError, match="expected_weight"):
        dp_sum.finalize(
            expected_weight=expected_weight,
            noise_multiplier=1.0,
            rng=np.random.default_rng(0),
        )
