"""Tests of update metadata parsing and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcore import safetensors_io
from fedcore.errors import FormatError, RejectReason, UpdateRejected
from fedcore.layout import UpdateKey
from fedcore.update import (
    FORMAT_VERSION,
    SQUARES_CHUNK_ELEMENTS,
    TensorSpec,
    UpdateMetadata,
    ValidationLimits,
    check_identity,
    check_round,
    check_tensors,
    parse_metadata,
    specs_of,
    sum_of_squares,
    validate_update,
)

DIGEST = "0123456789abcdef" * 4
OTHER_DIGEST = "fedcba9876543210" * 4
LIMITS = ValidationLimits(max_examples=1000)
KEY = UpdateKey("dev-1", 4, "u-1")

REFERENCE = {
    "w": TensorSpec((2, 2), "F32"),
    "b": TensorSpec((2,), "F32"),
    "steps": TensorSpec((), "I64"),
}


def good_strings() -> dict[str, str]:
    return {
        "format_version": FORMAT_VERSION,
        "kind": "update",
        "round": "4",
        "device_id": "dev-1",
        "update_id": "u-1",
        "num_examples": "25",
        "base_model_sha256": DIGEST,
        "client_metrics": '{"loss": 0.25, "accuracy": 1}',
    }


def good_metadata(**changes: object) -> UpdateMetadata:
    fields: dict[str, object] = {
        "round": 4,
        "device_id": "dev-1",
        "update_id": "u-1",
        "num_examples": 25,
        "base_model_sha256": DIGEST,
    }
    fields.update(changes)
    return UpdateMetadata(**fields)  # type: ignore[arg-type]


def good_tensors() -> dict[str, np.ndarray]:
    return {
        "w": np.array([[3.0, 0.0], [0.0, 0.0]], dtype=np.float32),
        "b": np.array([4.0, 0.0], dtype=np.float32),
        "steps": np.array(10**12, dtype=np.int64),
    }


# parse_metadata


def test_parse_metadata_valid() -> None:
    parsed = parse_metadata(good_strings(), limits=LIMITS)
    assert parsed == UpdateMetadata(
        round=4,
        device_id="dev-1",
        update_id="u-1",
        num_examples=25,
        base_model_sha256=DIGEST,
        client_metrics={"accuracy": 1.0, "loss": 0.25},
        format_version="1",
    )


def test_parse_metadata_metrics_are_floats() -> None:
    parsed = parse_metadata(good_strings(), limits=LIMITS)
    assert type(parsed.client_metrics["accuracy"]) is float


def test_parse_metadata_to_strings_round_trip() -> None:
    metadata = good_metadata(client_metrics={"loss": 0.5})
    assert parse_metadata(metadata.to_strings(), limits=LIMITS) == metadata


def test_parse_metadata_metrics_default() -> None:
    strings = good_strings()
    del strings["client_metrics"]
    assert parse_metadata(strings, limits=LIMITS).client_metrics == {}


def test_parse_metadata_kind_default() -> None:
    strings = good_strings()
    del strings["kind"]
    assert parse_metadata(strings, limits=LIMITS).round == 4


@pytest.mark.parametrize("examples", ["1", "1000"])
def test_parse_metadata_examples_bounds(examples: str) -> None:
    strings = {**good_strings(), "num_examples": examples}
    assert parse_metadata(strings, limits=LIMITS).num_examples == int(examples)


MISSING = None
BAD_METADATA: list[tuple[str, dict[str, str | None], RejectReason, str]] = [
    (
        "version-missing",
        {"format_version": MISSING},
        RejectReason.UNKNOWN_FORMAT_VERSION,
        "format_version None",
    ),
    (
        "version-unknown",
        {"format_version": "2"},
        RejectReason.UNKNOWN_FORMAT_VERSION,
        "format_version '2'",
    ),
    ("kind-model", {"kind": "model"}, RejectReason.INVALID_METADATA, "'model'"),
    (
        "examples-missing",
        {"num_examples": MISSING},
        RejectReason.EXAMPLES_MISSING,
        "'num_examples' is missing",
    ),
    (
        "examples-empty",
        {"num_examples": ""},
        RejectReason.EXAMPLES_MISSING,
        "'num_examples' is missing",
    ),
    (
        "examples-zero",
        {"num_examples": "0"},
        RejectReason.EXAMPLES_INVALID,
        "num_examples 0 is outside 1..1000",
    ),
    (
        "examples-negative",
        {"num_examples": "-3"},
        RejectReason.EXAMPLES_INVALID,
        "num_examples -3 is outside",
    ),
    (
        "examples-fraction",
        {"num_examples": "1.5"},
        RejectReason.EXAMPLES_INVALID,
        "'1.5' is not an integer",
    ),
    (
        "examples-letters",
        {"num_examples": "abc"},
        RejectReason.EXAMPLES_INVALID,
        "'abc' is not an integer",
    ),
    (
        "examples-plus-sign",
        {"num_examples": "+5"},
        RejectReason.EXAMPLES_INVALID,
        "'+5' is not an integer",
    ),
    (
        "examples-superscript",
        {"num_examples": "²"},
        RejectReason.EXAMPLES_INVALID,
        "'²' is not an integer",
    ),
    (
        "examples-arabic-digits",
        {"num_examples": "١٢"},
        RejectReason.EXAMPLES_INVALID,
        "'١٢' is not an integer",
    ),
    (
        "examples-19-digits",
        {"num_examples": "1" * 19},
        RejectReason.EXAMPLES_INVALID,
        "at most 18 digits",
    ),
    (
        "examples-above-max",
        {"num_examples": "1001"},
        RejectReason.EXAMPLES_INVALID,
        "num_examples 1001 is outside 1..1000",
    ),
    (
        "round-missing",
        {"round": MISSING},
        RejectReason.ROUND_MISSING,
        "'round' is missing",
    ),
    (
        "round-letters",
        {"round": "four"},
        RejectReason.ROUND_INVALID,
        "'four' is not an integer",
    ),
    (
        "round-fraction",
        {"round": "4.0"},
        RejectReason.ROUND_INVALID,
        "'4.0' is not an integer",
    ),
    (
        "round-5000-digits",
        {"round": "9" * 5000},
        RejectReason.ROUND_INVALID,
        "'999999",
    ),
    (
        "digest-missing",
        {"base_model_sha256": MISSING},
        RejectReason.INVALID_METADATA,
        "base_model_sha256 ''",
    ),
    (
        "digest-uppercase",
        {"base_model_sha256": DIGEST.upper()},
        RejectReason.INVALID_METADATA,
        DIGEST.upper(),
    ),
    (
        "digest-63-chars",
        {"base_model_sha256": DIGEST[:63]},
        RejectReason.INVALID_METADATA,
        f"'{DIGEST[:63]}'",
    ),
    (
        "digest-non-hex",
        {"base_model_sha256": "g" * 64},
        RejectReason.INVALID_METADATA,
        "g" * 64,
    ),
    (
        "metrics-not-json",
        {"client_metrics": "loss=0.5"},
        RejectReason.INVALID_METADATA,
        "client_metrics is not JSON",
    ),
    (
        "metrics-array",
        {"client_metrics": "[0.5]"},
        RejectReason.INVALID_METADATA,
        "not a JSON object",
    ),
    (
        "metrics-number",
        {"client_metrics": "0.5"},
        RejectReason.INVALID_METADATA,
        "not a JSON object",
    ),
    (
        "metrics-33-entries",
        {"client_metrics": str({f"m{i}": i for i in range(33)}).replace("'", '"')},
        RejectReason.INVALID_METADATA,
        "at most 32 numbers",
    ),
    (
        "metrics-nan",
        {"client_metrics": '{"loss": NaN}'},
        RejectReason.INVALID_METADATA,
        "'loss' = nan",
    ),
    (
        "metrics-infinity",
        {"client_metrics": '{"loss": Infinity}'},
        RejectReason.INVALID_METADATA,
        "'loss' = inf",
    ),
    (
        "metrics-negative-infinity",
        {"client_metrics": '{"loss": -Infinity}'},
        RejectReason.INVALID_METADATA,
        "'loss' = -inf",
    ),
    (
        "metrics-float-overflow",
        {"client_metrics": '{"loss": 1e400}'},
        RejectReason.INVALID_METADATA,
        "'loss' = inf",
    ),
    (
        "metrics-int-overflow",
        {"client_metrics": '{"big": ' + "9" * 400 + "}"},
        RejectReason.INVALID_METADATA,
        "'big' = 9999",
    ),
    (
        "metrics-int-5000-digits",
        {"client_metrics": '{"big": ' + "9" * 5000 + "}"},
        RejectReason.INVALID_METADATA,
        "client_metrics is not JSON",
    ),
    (
        "metrics-deep-nesting",
        {"client_metrics": "[" * 100_000 + "]" * 100_000},
        RejectReason.INVALID_METADATA,
        "client_metrics is not JSON",
    ),
    (
        "metrics-bool",
        {"client_metrics": '{"converged": true}'},
        RejectReason.INVALID_METADATA,
        "'converged' = True",
    ),
    (
        "metrics-string",
        {"client_metrics": '{"loss": "0.5"}'},
        RejectReason.INVALID_METADATA,
        "'loss' = '0.5'",
    ),
    (
        "metrics-null",
        {"client_metrics": '{"loss": null}'},
        RejectReason.INVALID_METADATA,
        "'loss' = None",
    ),
    (
        "metrics-long-name",
        {"client_metrics": '{"' + "n" * 65 + '": 1}'},
        RejectReason.INVALID_METADATA,
        "n" * 64,
    ),
]


def apply_changes(changes: dict[str, str | None]) -> dict[str, str]:
    strings = good_strings()
    for name, value in changes.items():
        if value is None:
            del strings[name]
        else:
            strings[name] = value
    return strings


@pytest.mark.parametrize(
    ("changes", "reason", "fragment"),
    [case[1:] for case in BAD_METADATA],
    ids=[case[0] for case in BAD_METADATA],
)
def test_parse_metadata_reason(
    changes: dict[str, str | None], reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        parse_metadata(apply_changes(changes), limits=LIMITS)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("changes", "reason", "fragment"),
    [case[1:] for case in BAD_METADATA],
    ids=[case[0] for case in BAD_METADATA],
)
def test_parse_metadata_message(
    changes: dict[str, str | None], reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        parse_metadata(apply_changes(changes), limits=LIMITS)
    assert fragment in caught.value.detail


def test_parse_metadata_message_bounded() -> None:
    strings = {**good_strings(), "round": "9" * 5000}
    with pytest.raises(UpdateRejected) as caught:
        parse_metadata(strings, limits=LIMITS)
    assert len(caught.value.detail) < 200


# check_identity and check_round


def test_check_identity_match() -> None:
    check_identity(good_metadata(), KEY)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"device_id": "dev-2"}, "device_id is 'dev-2' in the metadata but 'dev-1'"),
        ({"round": 5}, "round is 5 in the metadata but 4 in the key"),
        ({"update_id": "u-2"}, "update_id is 'u-2' in the metadata but 'u-1'"),
        ({"device_id": ""}, "device_id is '' in the metadata"),
    ],
    ids=["device", "round", "update", "device-empty"],
)
def test_check_identity_mismatch(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(UpdateRejected) as caught:
        check_identity(good_metadata(**changes), KEY)
    assert caught.value.reason is RejectReason.IDENTITY_MISMATCH
    assert fragment in caught.value.detail


def test_check_round_open() -> None:
    check_round(good_metadata(round=4), 4)


@pytest.mark.parametrize(
    ("update_round", "reason", "fragment"),
    [
        (3, RejectReason.STALE_ROUND, "round 3 but round 4 is open"),
        (0, RejectReason.STALE_ROUND, "round 0 but round 4 is open"),
        (-1, RejectReason.STALE_ROUND, "round -1 but round 4 is open"),
        (5, RejectReason.FUTURE_ROUND, "round 5 but round 4 is open"),
        (10**17, RejectReason.FUTURE_ROUND, f"round {10**17} but"),
    ],
    ids=["stale", "stale-zero", "stale-negative", "future", "future-far"],
)
def test_check_round_rejects(
    update_round: int, reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        check_round(good_metadata(round=update_round), 4)
    assert caught.value.reason is reason
    assert fragment in caught.value.detail


# check_tensors


def test_specs_of_model() -> None:
    assert specs_of(good_tensors()) == REFERENCE


def test_check_tensors_norm_exact() -> None:
    assert check_tensors(good_tensors(), REFERENCE, max_norm=None) == 5.0


def test_check_tensors_norm_at_bound() -> None:
    assert check_tensors(good_tensors(), REFERENCE, max_norm=5.0) == 5.0


def test_check_tensors_norm_above_bound() -> None:
    with pytest.raises(UpdateRejected) as caught:
        check_tensors(good_tensors(), REFERENCE, max_norm=math.nextafter(5.0, 0.0))
    assert caught.value.reason is RejectReason.NORM_EXCEEDED
    assert "norm 5 exceeds the bound 5" in caught.value.detail


def test_check_tensors_norm_reference() -> None:
    generator = np.random.default_rng(7)
    tensors: dict[str, np.ndarray] = {
        "a": generator.normal(size=(50, 40)).astype(np.float32),
        "b": generator.normal(size=300).astype(np.float16),
        "c": np.array(generator.normal()),
        "n": generator.integers(-(10**6), 10**6, size=17),
    }
    expected = np.linalg.norm(
        np.concatenate(
            [tensors[name].astype(np.float64).ravel() for name in ("a", "b", "c")]
        )
    )
    norm = check_tensors(tensors, specs_of(tensors), max_norm=None)
    assert norm == pytest.approx(expected, rel=1e-12)


def test_check_tensors_norm_float32_no_overflow() -> None:
    big = np.full(4, 1e30, dtype=np.float32)
    norm = check_tensors({"w": big}, {"w": TensorSpec((4,), "F32")}, max_norm=None)
    assert norm == pytest.approx(2 * float(np.float32(1e30)), rel=1e-12)


def test_check_tensors_float64_overflow_not_nan() -> None:
    # Finite values whose squares overflow give an infinite norm, not NON_FINITE.
    huge = np.full(4, 1e200)
    with pytest.raises(UpdateRejected) as caught:
        check_tensors({"w": huge}, {"w": TensorSpec((4,), "F64")}, max_norm=5.0)
    assert caught.value.reason is RejectReason.NORM_EXCEEDED


def test_check_tensors_nan_in_late_chunk() -> None:
    values = np.zeros(3 * SQUARES_CHUNK_ELEMENTS, dtype=np.float32)
    values[-1] = np.nan
    spec = {"w": TensorSpec(values.shape, "F32")}
    with pytest.raises(UpdateRejected) as caught:
        check_tensors({"w": values}, spec, max_norm=None)
    assert caught.value.reason is RejectReason.NON_FINITE


def test_sum_of_squares_across_chunks() -> None:
    values = np.random.default_rng(2).normal(size=5 * SQUARES_CHUNK_ELEMENTS // 2)
    narrow = values.astype(np.float32)
    wide = narrow.astype(np.float64)
    assert sum_of_squares(narrow) == pytest.approx(float(wide @ wide), rel=1e-12)


def test_sum_of_squares_empty() -> None:
    assert sum_of_squares(np.zeros((0, 3), dtype=np.float32)) == 0.0


def test_check_tensors_integer_not_in_norm() -> None:
    tensors = {**good_tensors(), "steps": np.array(-(2**62), dtype=np.int64)}
    assert check_tensors(tensors, REFERENCE, max_norm=5.0) == 5.0


def with_tensor(name: str, value: np.ndarray | None) -> dict[str, np.ndarray]:
    tensors = good_tensors()
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    return tensors


def with_element(name: str, index: tuple[int, ...], value: float) -> np.ndarray:
    array = good_tensors()[name].copy()
    array[index] = value
    return array


BAD_TENSORS: list[tuple[str, dict[str, np.ndarray], RejectReason, str]] = [
    ("missing", with_tensor("b", None), RejectReason.MISSING_TENSOR, "['b']"),
    (
        "extra",
        with_tensor("z", np.zeros(1, np.float32)),
        RejectReason.EXTRA_TENSOR,
        "['z']",
    ),
    (
        "shape",
        with_tensor("w", np.zeros(4, np.float32)),
        RejectReason.SHAPE_MISMATCH,
        "'w' has shape [4], expected [2, 2]",
    ),
    (
        "shape-transposed-vector",
        with_tensor("b", np.zeros((2, 1), np.float32)),
        RejectReason.SHAPE_MISMATCH,
        "'b' has shape [2, 1], expected [2]",
    ),
    (
        "dtype",
        with_tensor("w", np.zeros((2, 2), np.float64)),
        RejectReason.DTYPE_MISMATCH,
        "'w' has dtype F64, expected F32",
    ),
    (
        "dtype-complex",
        with_tensor("w", np.zeros((2, 2), np.complex64)),
        RejectReason.DTYPE_MISMATCH,
        "'w' has dtype complex64, expected F32",
    ),
    (
        "nan-one-element",
        with_tensor("w", with_element("w", (1, 0), np.nan)),
        RejectReason.NON_FINITE,
        "'w' contains NaN or Inf",
    ),
    (
        "positive-inf-one-element",
        with_tensor("b", with_element("b", (1,), np.inf)),
        RejectReason.NON_FINITE,
        "'b' contains NaN or Inf",
    ),
    (
        "negative-inf-one-element",
        with_tensor("w", with_element("w", (0, 1), -np.inf)),
        RejectReason.NON_FINITE,
        "'w' contains NaN or Inf",
    ),
    (
        "integer-shape",
        with_tensor("steps", np.zeros(1, np.int64)),
        RejectReason.SHAPE_MISMATCH,
        "'steps' has shape [1], expected []",
    ),
    (
        "integer-dtype",
        with_tensor("steps", np.array(1, np.int32)),
        RejectReason.DTYPE_MISMATCH,
        "'steps' has dtype I32, expected I64",
    ),
]


@pytest.mark.parametrize(
    ("tensors", "reason", "fragment"),
    [case[1:] for case in BAD_TENSORS],
    ids=[case[0] for case in BAD_TENSORS],
)
def test_check_tensors_reason(
    tensors: dict[str, np.ndarray], reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        check_tensors(tensors, REFERENCE, max_norm=None)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("tensors", "reason", "fragment"),
    [case[1:] for case in BAD_TENSORS],
    ids=[case[0] for case in BAD_TENSORS],
)
def test_check_tensors_message(
    tensors: dict[str, np.ndarray], reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        check_tensors(tensors, REFERENCE, max_norm=None)
    assert fragment in caught.value.detail


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_check_tensors_float16_non_finite(value: float) -> None:
    array = np.zeros(3, dtype=np.float16)
    array[2] = value
    with pytest.raises(UpdateRejected) as caught:
        check_tensors({"h": array}, {"h": TensorSpec((3,), "F16")}, max_norm=None)
    assert caught.value.reason is RejectReason.NON_FINITE


def test_check_tensors_non_finite_before_norm() -> None:
    tensors = with_tensor("b", with_element("b", (0,), np.inf))
    with pytest.raises(UpdateRejected) as caught:
        check_tensors(tensors, REFERENCE, max_norm=1.0)
    assert caught.value.reason is RejectReason.NON_FINITE


# validate_update


def encode_update(
    tensors: dict[str, np.ndarray] | None = None, **changes: object
) -> bytes:
    metadata = good_metadata(**changes)
    return safetensors_io.encode(
        good_tensors() if tensors is None else tensors, metadata.to_strings()
    )


def validate(data: bytes, **overrides: object) -> object:
    arguments: dict[str, object] = {
        "key": KEY,
        "reference": REFERENCE,
        "open_round": 4,
        "base_model_sha256": DIGEST,
        "limits": LIMITS,
    }
    arguments.update(overrides)
    return validate_update(data, **arguments)  # type: ignore[arg-type]


def test_validate_update_accepts() -> None:
    update = validate_update(
        encode_update(),
        key=KEY,
        reference=REFERENCE,
        open_round=4,
        base_model_sha256=DIGEST,
        limits=LIMITS,
    )
    assert update.metadata == good_metadata()
    assert update.norm == 5.0
    assert sorted(update.tensors) == ["b", "steps", "w"]
    assert update.tensors["w"].tolist() == [[3.0, 0.0], [0.0, 0.0]]
    assert int(update.tensors["steps"]) == 10**12


@pytest.mark.parametrize(
    ("data", "overrides", "reason", "fragment"),
    [
        (
            encode_update(base_model_sha256=OTHER_DIGEST),
            {},
            RejectReason.BASE_MODEL_MISMATCH,
            "from model fedcba987654..., but round 4 started from 0123456789ab...",
        ),
        (
            encode_update(),
            {"key": UpdateKey("dev-2", 4, "u-1")},
            RejectReason.IDENTITY_MISMATCH,
            "'dev-1' in the metadata but 'dev-2'",
        ),
        (
            encode_update(round=3),
            {"key": UpdateKey("dev-1", 3, "u-1")},
            RejectReason.STALE_ROUND,
            "round 3 but round 4 is open",
        ),
        (
            encode_update(num_examples=5000),
            {},
            RejectReason.EXAMPLES_INVALID,
            "num_examples 5000",
        ),
        (
            encode_update(with_tensor("b", None)),
            {},
            RejectReason.MISSING_TENSOR,
            "['b']",
        ),
        (
            encode_update(),
            {"limits": ValidationLimits(max_examples=1000, max_update_norm=4.0)},
            RejectReason.NORM_EXCEEDED,
            "norm 5 exceeds the bound 4",
        ),
        (
            encode_update(),
            {"limits": ValidationLimits(max_header_bytes=64)},
            RejectReason.HEADER_TOO_LARGE,
            "exceeds the limit of 64 bytes",
        ),
        (
            safetensors_io.encode(good_tensors(), {}),
            {},
            RejectReason.UNKNOWN_FORMAT_VERSION,
            "format_version None",
        ),
        (
            b"PK\x03\x04 a zip file",
            {},
            RejectReason.HEADER_TOO_LARGE,
            "header length",
        ),
        (
            encode_update()[:-1],
            {},
            RejectReason.TRUNCATED,
            "data bytes",
        ),
    ],
    ids=[
        "base-model",
        "identity",
        "stale",
        "examples",
        "missing-tensor",
        "norm",
        "header-limit",
        "no-metadata",
        "not-safetensors",
        "truncated",
    ],
)
def test_validate_update_rejects(
    data: bytes, overrides: dict[str, object], reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(UpdateRejected) as caught:
        validate(data, **overrides)
    assert caught.value.reason is reason
    assert fragment in caught.value.detail


def test_validate_update_format_error_type() -> None:
    with pytest.raises(FormatError):
        validate(b"")


def test_update_rejected_detail_cut() -> None:
    error = UpdateRejected(RejectReason.MISSING_TENSOR, "x" * 5000)
    assert error.detail == "x" * 997 + "..."


def test_validate_update_long_name_cut() -> None:
    data = encode_update({**good_tensors(), "n" * 100_000: np.array([1.0])})
    with pytest.raises(UpdateRejected) as caught:
        validate(data)
    assert caught.value.reason is RejectReason.EXTRA_TENSOR
    assert len(caught.value.detail) == UpdateRejected.MAX_DETAIL_CHARS


def test_update_rejected_str() -> None:
    error = UpdateRejected(RejectReason.STALE_ROUND, "round 3 is closed")
    assert str(error) == "stale_round: round 3 is closed"
