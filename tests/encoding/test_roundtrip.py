"""Round trips of every encoding: error bounds, unbiasedness, top-k and residuals."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore import encoding, safetensors_io
from fedcore.update import specs_of


def sample_delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense/kernel": rng.normal(size=(16, 8)).astype(np.float32),
        "dense/bias": (rng.normal(size=8) * 1e-3).astype(np.float32),
        "steps": rng.integers(-5, 5, size=3).astype(np.int64),
        "mask": np.array([True, False, True]),
    }


def round_trip(
    coder: encoding.UpdateEncoder, delta: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    tensors, metadata = coder.encode(delta)
    data = safetensors_io.encode(tensors, metadata)
    stored, stored_metadata = safetensors_io.decode(data)
    return encoding.decode_update(stored, stored_metadata, specs_of(delta))


@pytest.mark.parametrize("name", encoding.ENCODINGS)
def test_decode_keeps_names_shapes_dtypes(name: str) -> None:
    delta = sample_delta()
    decoded = round_trip(encoding.UpdateEncoder(name, seed=1), delta)
    assert specs_of(decoded) == specs_of(delta)


@pytest.mark.parametrize("name", encoding.ENCODINGS)
@pytest.mark.parametrize("tensor", ["steps", "mask"])
def test_integer_tensors_untouched(name: str, tensor: str) -> None:
    delta = sample_delta()
    coder = encoding.UpdateEncoder(name, seed=1)
    tensors, _ = coder.encode(delta)
    assert tensors[tensor].dtype == delta[tensor].dtype
    np.testing.assert_array_equal(tensors[tensor], delta[tensor])


def test_none_is_identity() -> None:
    delta = sample_delta()
    decoded = round_trip(encoding.UpdateEncoder(encoding.NONE), delta)
    for name, array in delta.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_none_writes_no_metadata() -> None:
    _, metadata = encoding.UpdateEncoder(encoding.NONE).encode(sample_delta())
    assert metadata == {}


def test_float16_relative_error() -> None:
    delta = sample_delta()
    decoded = round_trip(encoding.UpdateEncoder(encoding.FLOAT16), delta)
    for name in ("dense/kernel", "dense/bias"):
        original = delta[name].astype(np.float64)
        error = np.abs(decoded[name] - original)
        # float16 has a 10-bit mantissa, so rounding is within 2**-11 relative;
        # subnormals below 2**-14 are spaced 2**-24 apart.
        assert np.all(error <= np.abs(original) * 2.0**-11 + 2.0**-25)


def test_float16_overflow_raises() -> None:
    coder = encoding.UpdateEncoder(encoding.FLOAT16)
    with pytest.raises(ValueError, match="float16"):
        coder.encode({"w": np.array([1e6], dtype=np.float32)})


@pytest.mark.parametrize("seed", range(5))
def test_q8_error_within_one_step(seed: int) -> None:
    delta = sample_delta(seed)
    decoded = round_trip(encoding.UpdateEncoder(encoding.Q8, seed=seed), delta)
    for name in ("dense/kernel", "dense/bias"):
        original = delta[name].astype(np.float64)
        step = (original.max() - original.min()) / 255
        error = np.abs(decoded[name].astype(np.float64) - original)
        # One quantization step, plus the float32 rounding of the scale and result.
        assert error.max() <= step * (1 + 1e-5) + np.abs(original).max() * 2.0**-23


def test_q8_unbiased_over_draws() -> None:
    values = np.random.default_rng(3).normal(size=200)
    draws = 4000
    rng = np.random.default_rng(4)
    total = np.zeros_like(values)
    scale = 0.0
    for _ in range(draws):
        codes, scale32, offset = encoding.quantize(values, rng)
        scale = float(scale32)
        total += encoding.dequantize(codes, scale, float(offset), np.float64)
    mean = total / draws
    # Stochastic rounding has a standard deviation of at most scale / 2 per draw.
    standard_error = scale / 2 / np.sqrt(draws)
    assert np.abs(mean - values).max() < 5 * standard_error


def test_q8_constant_tensor_exact() -> None:
    delta = {"w": np.full((4, 4), 0.25, dtype=np.float32)}
    decoded = round_trip(encoding.UpdateEncoder(encoding.Q8, seed=0), delta)
    np.testing.assert_array_equal(decoded["w"], delta["w"])


def test_q8_same_seed_same_bytes() -> None:
    delta = sample_delta()
    first, _ = encoding.UpdateEncoder(encoding.Q8, seed=9).encode(delta)
    second, _ = encoding.UpdateEncoder(encoding.Q8, seed=9).encode(delta)
    np.testing.assert_array_equal(first["dense/kernel::q8"], second["dense/kernel::q8"])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_topk_keeps_k_largest(fraction: float) -> None:
    delta = sample_delta()
    coder = encoding.UpdateEncoder(encoding.TOPK, topk_fraction=fraction)
    decoded = round_trip(coder, delta)
    flat = np.concatenate([delta["dense/bias"], delta["dense/kernel"].ravel()])
    sent = np.concatenate([decoded["dense/bias"], decoded["dense/kernel"].ravel()])
    count = max(1, int(np.ceil(fraction * flat.size)))
    kept = sent != 0
    assert int(kept.sum()) == count
    np.testing.assert_array_equal(sent[kept], flat[kept])
    if count < flat.size:
        assert np.abs(flat[kept]).min() >= np.abs(flat[~kept]).max()


@pytest.mark.parametrize("name", [encoding.TOPK, encoding.TOPK_Q8])
def test_error_feedback_conserves_sum(name: str) -> None:
    # Multiples of 2**-10 below 2**10 add up exactly in float64, so the identity
    # is exact to the bit.
    rng = np.random.default_rng(5)
    coder = encoding.UpdateEncoder(name, topk_fraction=0.1, seed=2)
    shape = {"a": (12, 5), "b": (7,)}
    total_deltas = {key: np.zeros(size) for key, size in shape.items()}
    total_sent = {key: np.zeros(size) for key, size in shape.items()}
    for _ in range(6):
        delta = {
            key: (rng.integers(-512, 512, size=size) / 1024).astype(np.float32)
            for key, size in shape.items()
        }
        decoded = round_trip(coder, delta)
        assert coder.commit()
        for key in shape:
            total_deltas[key] += delta[key]
            total_sent[key] += decoded[key]
    residual = coder.residual
    assert residual is not None
    for key in shape:
        np.testing.assert_array_equal(
            total_sent[key] + residual[key], total_deltas[key]
        )


@pytest.mark.parametrize("name", [encoding.TOPK, encoding.TOPK_Q8])
def test_sparse_beyond_float32_raises(name: str) -> None:
    coder = encoding.UpdateEncoder(name, topk_fraction=0.5)
    coder.set_residual({"w": np.array([1e300, 0.0, 0.0, 0.0])})
    with pytest.raises(ValueError, match="beyond float32's range"):
        coder.encode({"w": np.ones(4, dtype=np.float32)})
    assert coder.residual is not None


def test_residual_waits_for_commit() -> None:
    coder = encoding.UpdateEncoder(encoding.TOPK, topk_fraction=0.1)
    coder.encode(sample_delta())
    assert coder.residual is None


def test_residual_reshaped_model_discarded() -> None:
    coder = encoding.UpdateEncoder(encoding.TOPK, topk_fraction=0.5)
    coder.encode({"w": np.ones(4, dtype=np.float32)})
    coder.commit()
    coder.encode({"w": np.ones(6, dtype=np.float32)})
    coder.commit()
    residual = coder.residual
    assert residual is not None
    assert residual["w"].shape == (6,)


def test_topk_q8_residual_includes_quantization_error() -> None:
    delta = {"w": np.linspace(-1, 1, 50, dtype=np.float32)}
    coder = encoding.UpdateEncoder(encoding.TOPK_Q8, topk_fraction=0.2, seed=0)
    decoded = round_trip(coder, delta)
    coder.commit()
    residual = coder.residual
    assert residual is not None
    np.testing.assert_allclose(decoded["w"] + residual["w"], delta["w"], atol=1e-6)


@pytest.mark.parametrize(
    ("length", "dtype"),
    [(10, np.uint16), (1 << 16, np.uint16), ((1 << 16) + 1, np.uint32)],
)
def test_index_dtype_smallest(length: int, dtype: type) -> None:
    assert encoding.index_dtype(length) == np.dtype(dtype)


@pytest.mark.parametrize("bad", ["w::q8", "a::b"])
def test_reserved_name_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        encoding.UpdateEncoder(encoding.Q8).encode({bad: np.zeros(2, np.float32)})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"encoding": "zip"}, "unknown encoding"),
        ({"encoding": "topk", "topk_fraction": 0.0}, "topk_fraction"),
        ({"encoding": "topk", "topk_fraction": 1.5}, "topk_fraction"),
    ],
)
def test_encoder_bad_options(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        encoding.UpdateEncoder(**kwargs)  # type: ignore[arg-type]
