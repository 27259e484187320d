"""Tests of the safetensors reader and writer, against the reference library too."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load as reference_load
from safetensors.numpy import save as reference_save

from fedcore import safetensors_io
from fedcore.errors import FormatError, RejectReason

# One array per dtype, with the extreme values of the type, so a silent cast or byte
# swap changes the stored bytes.
DTYPE_SAMPLES: dict[str, np.ndarray] = {
    "F64": np.array(
        [0.0, -0.0, 1.5, np.finfo(np.float64).max, 5e-324, np.inf, -np.inf, np.nan]
    ),
    "F32": np.array(
        [0.0, -0.0, 1.5, np.finfo(np.float32).max, 1e-45, np.inf, np.nan],
        dtype=np.float32,
    ),
    "F16": np.array([0.0, -0.0, 1.5, 65504.0, 6e-8, -np.inf, np.nan], dtype=np.float16),
    "I64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]),
    "I32": np.array([np.iinfo(np.int32).min, -1, 0, np.iinfo(np.int32).max], np.int32),
    "I16": np.array([-32768, -1, 0, 32767], dtype=np.int16),
    "I8": np.array([-128, -1, 0, 127], dtype=np.int8),
    "U64": np.array([0, 1, np.iinfo(np.uint64).max], dtype=np.uint64),
    "U32": np.array([0, 1, np.iinfo(np.uint32).max], dtype=np.uint32),
    "U16": np.array([0, 1, 65535], dtype=np.uint16),
    "U8": np.array([0, 1, 255], dtype=np.uint8),
    "BOOL": np.array([True, False, True]),
}


def frame(header: str | bytes, data: bytes = b"") -> bytes:
    """Prefix a raw header with its 8-byte little-endian length."""
    raw = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def entry(dtype: object, shape: object, offsets: object) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def framed_json(document: Mapping[str, object], data: bytes = b"") -> bytes:
    return frame(json.dumps(document), data)


def round_trip(array: np.ndarray) -> np.ndarray:
    tensors, _ = safetensors_io.decode(safetensors_io.encode({"t": array}, {}))
    return tensors["t"]


# Round trips


@pytest.mark.parametrize("code", sorted(DTYPE_SAMPLES))
def test_round_trip_dtype_code(code: str) -> None:
    assert safetensors_io.dtype_code(round_trip(DTYPE_SAMPLES[code]).dtype) == code


@pytest.mark.parametrize("code", sorted(DTYPE_SAMPLES))
def test_round_trip_bytes_exact(code: str) -> None:
    original = DTYPE_SAMPLES[code]
    assert round_trip(original).tobytes() == original.tobytes()


@pytest.mark.parametrize("code", sorted(DTYPE_SAMPLES))
def test_round_trip_shape(code: str) -> None:
    assert round_trip(DTYPE_SAMPLES[code].reshape(1, -1, 1)).shape == (
        1,
        DTYPE_SAMPLES[code].size,
        1,
    )


@pytest.mark.parametrize(
    ("array", "shape"),
    [
        (np.array(2.5), ()),
        (np.array(-7, dtype=np.int16), ()),
        (np.array(True), ()),
        (np.zeros(0, dtype=np.float32), (0,)),
        (np.zeros((2, 0, 3), dtype=np.int64), (2, 0, 3)),
    ],
    ids=["0d-f64", "0d-i16", "0d-bool", "empty-1d", "empty-3d"],
)
def test_round_trip_odd_shapes(array: np.ndarray, shape: tuple[int, ...]) -> None:
    decoded = round_trip(array)
    assert decoded.shape == shape
    assert decoded.dtype == array.dtype
    assert decoded.tobytes() == array.tobytes()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4).T,
        np.arange(20, dtype=np.int32)[::3],
        np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    ],
    ids=["transposed", "strided", "fortran"],
)
def test_round_trip_non_contiguous(array: np.ndarray) -> None:
    decoded = round_trip(array)
    assert decoded.shape == array.shape
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize(
    ("array", "code"),
    [
        (np.array([1.5, -2.25, 1e300], dtype=">f8"), "F64"),
        (np.array([1.5, -2.25], dtype=">f4"), "F32"),
        (np.array([1.5, -2.25], dtype=">f2"), "F16"),
        (np.array([-(2**40), 3], dtype=">i8"), "I64"),
        (np.array([-70000, 3], dtype=">i4"), "I32"),
        (np.array([-300, 3], dtype=">i2"), "I16"),
        (np.array([2**63, 3], dtype=">u8"), "U64"),
        (np.array([2**31, 3], dtype=">u4"), "U32"),
        (np.array([60000, 3], dtype=">u2"), "U16"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_round_trip_big_endian(array: np.ndarray, code: str) -> None:
    data = safetensors_io.encode({"t": array}, {})
    header = safetensors_io.parse_header(data, file_length=len(data))
    little = array.astype(array.dtype.newbyteorder("<"))
    decoded, _ = safetensors_io.decode(data)
    assert header.tensors["t"].dtype == code
    assert data[header.data_start :] == little.tobytes()
    assert np.array_equal(decoded["t"], array)


def test_round_trip_several_tensors() -> None:
    tensors = {name: DTYPE_SAMPLES[name] for name in ("F32", "I8", "U64", "BOOL")}
    decoded, _ = safetensors_io.decode(safetensors_io.encode(tensors, {}))
    assert sorted(decoded) == sorted(tensors)
    for name, array in tensors.items():
        assert decoded[name].tobytes() == array.tobytes(), name


def test_round_trip_metadata() -> None:
    metadata = {"round": "3", "empty": "", "unicode": "Grüße ✓", "json": '{"a": 1}'}
    _, decoded = safetensors_io.decode(safetensors_io.encode({}, metadata))
    assert decoded == metadata


def test_round_trip_no_metadata() -> None:
    _, decoded = safetensors_io.decode(safetensors_io.encode({"t": np.ones(2)}, {}))
    assert decoded == {}


def test_decode_arrays_read_only() -> None:
    assert not round_trip(np.ones(3)).flags.writeable


def test_encode_header_aligned() -> None:
    data = safetensors_io.encode({"t": np.ones(1, dtype=np.uint8)}, {"k": "v"})
    header = safetensors_io.parse_header(data, file_length=len(data))
    assert header.data_start % 8 == 0


def test_encode_exact_bytes() -> None:
    data = safetensors_io.encode({"a": np.array([1, 2], dtype=np.uint8)}, {"k": "v"})
    document = (
        b'{"__metadata__":{"k":"v"},'
        b'"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    )
    padded = document + b" " * (-len(document) % 8)
    assert data == struct.pack("<Q", len(padded)) + padded + b"\x01\x02"


def test_parse_header_prefix_only() -> None:
    data = safetensors_io.encode({"t": np.zeros((4, 4), dtype=np.float32)}, {})
    length = safetensors_io.header_length(data)
    header = safetensors_io.parse_header(data[: 8 + length])
    assert header.data_length == 64
    assert header.file_length == len(data)
    assert header.tensors["t"] == safetensors_io.TensorInfo("t", "F32", (4, 4), 0, 64)


def test_tensor_from_bytes_offset() -> None:
    info = safetensors_io.TensorInfo("t", "I16", (2,), 0, 4)
    buffer = b"\xff\xff" + np.array([5, -6], dtype="<i2").tobytes()
    assert safetensors_io.tensor_from_bytes(info, buffer, 2).tolist() == [5, -6]


@pytest.mark.parametrize(
    ("dtype", "code"),
    [
        (np.float64, "F64"),
        ("<f4", "F32"),
        (">f2", "F16"),
        (np.int8, "I8"),
        (">u2", "U16"),
        (np.bool_, "BOOL"),
    ],
)
def test_dtype_code_known(dtype: str | type, code: str) -> None:
    assert safetensors_io.dtype_code(dtype) == code


# Compatibility with the reference safetensors library


@pytest.mark.parametrize("code", sorted(DTYPE_SAMPLES))
def test_reference_loads_ours(code: str) -> None:
    original = DTYPE_SAMPLES[code].reshape(1, -1)
    loaded = reference_load(safetensors_io.encode({"t": original}, {}))
    assert loaded["t"].dtype == original.dtype
    assert loaded["t"].shape == original.shape
    assert loaded["t"].tobytes() == original.tobytes()


@pytest.mark.parametrize("code", sorted(DTYPE_SAMPLES))
def test_we_load_reference(code: str) -> None:
    original = DTYPE_SAMPLES[code].reshape(-1, 1)
    decoded, _ = safetensors_io.decode(reference_save({"t": original}))
    assert decoded["t"].dtype == original.dtype
    assert decoded["t"].shape == original.shape
    assert decoded["t"].tobytes() == original.tobytes()


def test_reference_loads_ours_mixed(tmp_path: Path) -> None:
    tensors = {
        "scalar": np.array(3.0),
        "empty": np.zeros(0, dtype=np.int16),
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "mask": np.array([True, False]),
    }
    path = tmp_path / "ours.safetensors"
    path.write_bytes(safetensors_io.encode(tensors, {"round": "4", "kind": "model"}))
    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata()
        keys = sorted(handle.keys())
        loaded = {name: handle.get_tensor(name) for name in keys}
    assert metadata == {"round": "4", "kind": "model"}
    assert keys == sorted(tensors)
    for name, array in tensors.items():
        assert loaded[name].shape == array.shape, name
        assert loaded[name].tobytes() == array.tobytes(), name


def test_we_load_reference_mixed() -> None:
    tensors = {
        "scalar": np.array(3.0),
        "empty": np.zeros(0, dtype=np.int16),
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, 2, 3], dtype=np.uint8),
    }
    decoded, metadata = safetensors_io.decode(
        reference_save(tensors, metadata={"round": "4", "kind": "model"})
    )
    assert metadata == {"round": "4", "kind": "model"}
    assert sorted(decoded) == sorted(tensors)
    for name, array in tensors.items():
        assert decoded[name].shape == array.shape, name
        assert decoded[name].tobytes() == array.tobytes(), name


def test_we_load_reference_big_endian() -> None:
    original = np.array([1.5, -2.0], dtype=">f4")
    decoded, _ = safetensors_io.decode(reference_save({"t": original}))
    assert np.array_equal(decoded["t"], original)


# Hostile inputs

_VALID = safetensors_io.encode(
    {"a": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([7], dtype=np.int8)},
    {"k": "v"},
)
_TWO_F32 = np.zeros(2, dtype=np.float32).tobytes()
_ONE_F32 = {"t": entry("F32", [1], [0, 4])}
# About 1 MB of shape: 250 dimensions of 4000 digits each.
_HUGE_DIMS_HEADER = (
    '{"t":{"dtype":"F32","shape":['
    + ",".join(["9" * 4000] * 250)
    + '],"data_offsets":[0,4]}}'
)

HOSTILE: list[tuple[str, bytes, RejectReason, str]] = [
    ("empty-file", b"", RejectReason.TRUNCATED, "0 bytes"),
    ("seven-bytes", b"\x10" * 7, RejectReason.TRUNCATED, "7 bytes"),
    (
        "header-over-limit",
        struct.pack("<Q", safetensors_io.DEFAULT_MAX_HEADER_BYTES + 1) + b"{}",
        RejectReason.HEADER_TOO_LARGE,
        str(safetensors_io.DEFAULT_MAX_HEADER_BYTES + 1),
    ),
    (
        "header-length-max-u64",
        b"\xff" * 8,
        RejectReason.HEADER_TOO_LARGE,
        str(2**64 - 1),
    ),
    (
        "header-beyond-file",
        struct.pack("<Q", 100) + b'{"a":1}',
        RejectReason.TRUNCATED,
        "declares 100 bytes but only 7",
    ),
    ("header-length-zero", struct.pack("<Q", 0), RejectReason.NOT_SAFETENSORS, "0"),
    ("header-not-json", frame("{not json}"), RejectReason.NOT_SAFETENSORS, "JSON"),
    ("header-not-utf8", frame(b'{"\xff":1}'), RejectReason.NOT_SAFETENSORS, "UTF-8"),
    ("header-json-array", frame("[1, 2]"), RejectReason.NOT_SAFETENSORS, "object"),
    ("header-json-string", frame('"{}"'), RejectReason.NOT_SAFETENSORS, "object"),
    (
        "header-json-padded-array",
        frame("  [1]"),
        RejectReason.NOT_SAFETENSORS,
        "object",
    ),
    (
        "header-deep-nesting",
        frame('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"),
        RejectReason.NOT_SAFETENSORS,
        "nested",
    ),
    (
        "header-huge-integer",
        frame(
            '{"t":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,4]}}'
        ),
        RejectReason.NOT_SAFETENSORS,
        "JSON",
    ),
    (
        "duplicate-tensor-name",
        frame(
            '{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            '"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            b"\x00",
        ),
        RejectReason.NOT_SAFETENSORS,
        "'t' appears more than once",
    ),
    (
        "metadata-int-value",
        framed_json({"__metadata__": {"round": 3}}),
        RejectReason.NOT_SAFETENSORS,
        "__metadata__",
    ),
    (
        "metadata-nested",
        framed_json({"__metadata__": {"m": {"a": "b"}}}),
        RejectReason.NOT_SAFETENSORS,
        "__metadata__",
    ),
    (
        "metadata-list",
        framed_json({"__metadata__": ["a", "b"]}),
        RejectReason.NOT_SAFETENSORS,
        "__metadata__",
    ),
    (
        "metadata-null",
        framed_json({"__metadata__": None}),
        RejectReason.NOT_SAFETENSORS,
        "__metadata__",
    ),
    (
        "entry-not-object",
        framed_json({"t": [1, 2]}),
        RejectReason.NOT_SAFETENSORS,
        "'t'",
    ),
    (
        "dtype-str",
        framed_json({"t": entry("STR", [1], [0, 4])}, _TWO_F32[:4]),
        RejectReason.DTYPE_MISMATCH,
        "'STR'",
    ),
    (
        "dtype-bf16",
        framed_json({"t": entry("BF16", [2], [0, 4])}, _TWO_F32[:4]),
        RejectReason.DTYPE_MISMATCH,
        "BF16 is valid safetensors but numpy has no type for it",
    ),
    (
        "dtype-f8",
        framed_json({"t": entry("F8_E4M3", [4], [0, 4])}, _TWO_F32[:4]),
        RejectReason.DTYPE_MISMATCH,
        "F8_E4M3",
    ),
    (
        "dtype-lowercase",
        framed_json({"t": entry("f32", [1], [0, 4])}, _TWO_F32[:4]),
        RejectReason.DTYPE_MISMATCH,
        "'f32'",
    ),
    (
        "dtype-missing",
        framed_json({"t": {"shape": [1], "data_offsets": [0, 4]}}, _TWO_F32[:4]),
        RejectReason.DTYPE_MISMATCH,
        "None",
    ),
    (
        "dtype-list",
        framed_json({"t": entry(["F32"], [1], [0, 4])}, _TWO_F32[:4]),
        RejectReason.DTYPE_MISMATCH,
        "['F32']",
    ),
    (
        "shape-negative",
        framed_json({"t": entry("F32", [-1], [0, 4])}, _TWO_F32[:4]),
        RejectReason.NOT_SAFETENSORS,
        "[-1]",
    ),
    (
        "shape-bool",
        framed_json({"t": entry("F32", [True], [0, 4])}, _TWO_F32[:4]),
        RejectReason.NOT_SAFETENSORS,
        "[True]",
    ),
    (
        "shape-float",
        framed_json({"t": entry("F32", [1.0], [0, 4])}, _TWO_F32[:4]),
        RejectReason.NOT_SAFETENSORS,
        "[1.0]",
    ),
    (
        "shape-not-list",
        framed_json({"t": entry("F32", 1, [0, 4])}, _TWO_F32[:4]),
        RejectReason.NOT_SAFETENSORS,
        "shape 1",
    ),
    (
        "shape-dim-above-u64",
        framed_json({"t": entry("U8", [2**64], [0, 4])}, _TWO_F32[:4]),
        RejectReason.NOT_SAFETENSORS,
        f"[{2**64}]",
    ),
    (
        "shape-bytes-above-u64",
        framed_json({"t": entry("F32", [2**32, 2**30], [0, 4])}, _TWO_F32[:4]),
        RejectReason.NOT_SAFETENSORS,
        "[4294967296, 1073741824] of F32 needs more than 2**64-1 bytes",
    ),
    (
        "shape-many-huge-dims",
        frame(_HUGE_DIMS_HEADER),
        RejectReason.NOT_SAFETENSORS,
        "shape [9999",
    ),
    (
        "offsets-above-u64",
        framed_json({"t": entry("U8", [0], [2**64, 2**64])}),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        f"[{2**64}, {2**64}]",
    ),
    (
        "offsets-single",
        framed_json({"t": entry("F32", [1], [4])}, _TWO_F32[:4]),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "[4]",
    ),
    (
        "offsets-triple",
        framed_json({"t": entry("F32", [1], [0, 4, 8])}, _TWO_F32[:4]),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "[0, 4, 8]",
    ),
    (
        "offsets-not-list",
        framed_json({"t": entry("F32", [1], "0,4")}, _TWO_F32[:4]),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "'0,4'",
    ),
    (
        "offsets-negative",
        framed_json({"t": entry("F32", [1], [-4, 0])}, _TWO_F32[:4]),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "[-4, 0]",
    ),
    (
        "offsets-float",
        framed_json({"t": entry("F32", [1], [0, 4.0])}, _TWO_F32[:4]),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "[0, 4.0]",
    ),
    (
        "offsets-begin-after-end",
        framed_json({"t": entry("F32", [1], [8, 4])}, _TWO_F32),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "[8, 4]",
    ),
    (
        "byte-count-mismatch",
        framed_json({"t": entry("F32", [2], [0, 4])}, _TWO_F32[:4]),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "4 bytes for shape [2] of F32, expected 8",
    ),
    (
        "tensors-overlap",
        framed_json(
            {"a": entry("F32", [2], [0, 8]), "b": entry("F32", [2], [4, 12])},
            _TWO_F32 + _TWO_F32[:4],
        ),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "'b' at data byte 4 overlaps another tensor",
    ),
    (
        "tensors-gap",
        framed_json(
            {"a": entry("F32", [1], [0, 4]), "b": entry("F32", [1], [8, 12])},
            _TWO_F32 + _TWO_F32[:4],
        ),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "'b' at data byte 8 leaves a gap",
    ),
    (
        "first-tensor-not-at-zero",
        framed_json({"a": entry("F32", [1], [4, 8])}, _TWO_F32),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "'a' at data byte 4 leaves a gap",
    ),
    (
        "trailing-bytes",
        _VALID + b"\x00",
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "1 bytes after the last tensor",
    ),
    (
        "trailing-bytes-no-tensors",
        framed_json({}, b"junk"),
        RejectReason.OFFSETS_OUT_OF_RANGE,
        "4 bytes after the last tensor",
    ),
    (
        "data-shorter-than-offsets",
        _VALID[:-1],
        RejectReason.TRUNCATED,
        "need 9 data bytes but the file has 8",
    ),
    (
        "offsets-far-beyond-file",
        framed_json({"t": entry("U8", [2**40], [0, 2**40])}),
        RejectReason.TRUNCATED,
        f"need {2**40} data bytes",
    ),
    (
        "too-many-tensors",
        framed_json(
            {
                f"t{index}": entry("U8", [0], [0, 0])
                for index in range(safetensors_io.MAX_TENSORS + 1)
            }
        ),
        RejectReason.HEADER_TOO_LARGE,
        f"{safetensors_io.MAX_TENSORS + 1} tensors",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason", "fragment"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_decode_hostile_reason(
    data: bytes, reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(FormatError) as caught:
        safetensors_io.decode(data)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("data", "reason", "fragment"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_decode_hostile_message(
    data: bytes, reason: RejectReason, fragment: str
) -> None:
    with pytest.raises(FormatError) as caught:
        safetensors_io.decode(data)
    assert fragment in caught.value.detail


def test_decode_hostile_message_bounded() -> None:
    with pytest.raises(FormatError) as caught:
        safetensors_io.decode(frame(_HUGE_DIMS_HEADER))
    assert len(caught.value.detail) < 300


def test_decode_valid_fixture() -> None:
    tensors, metadata = safetensors_io.decode(_VALID)
    assert tensors["a"].tolist() == [1.0, 2.0]
    assert tensors["b"].tolist() == [7]
    assert metadata == {"k": "v"}


def test_decode_empty_tensors_share_offset() -> None:
    data = framed_json(
        {"a": entry("U8", [0], [0, 0]), "b": entry("F64", [0, 3], [0, 0]), **_ONE_F32},
        _TWO_F32[:4],
    )
    tensors, _ = safetensors_io.decode(data)
    assert tensors["b"].shape == (0, 3)
    assert tensors["t"].tolist() == [0.0]


def test_decode_custom_header_limit() -> None:
    with pytest.raises(FormatError) as caught:
        safetensors_io.decode(_VALID, max_header_bytes=16)
    assert caught.value.reason is RejectReason.HEADER_TOO_LARGE


def test_decode_header_at_limit() -> None:
    length = safetensors_io.header_length(_VALID)
    tensors, _ = safetensors_io.decode(_VALID, max_header_bytes=length)
    assert sorted(tensors) == ["a", "b"]


def test_decode_max_tensors_accepted() -> None:
    document = {
        f"t{index}": entry("U8", [0], [0, 0])
        for index in range(safetensors_io.MAX_TENSORS)
    }
    tensors, _ = safetensors_io.decode(framed_json(document))
    assert len(tensors) == safetensors_io.MAX_TENSORS


# Encoding errors

ENCODE_ERRORS: list[tuple[str, dict[str, object], dict[object, object], str]] = [
    ("object-dtype", {"t": np.array([1, "a"], dtype=object)}, {}, "dtype object"),
    ("complex-dtype", {"t": np.array([1 + 2j])}, {}, "dtype complex128"),
    ("unicode-dtype", {"t": np.array(["ab"])}, {}, "dtype <U2"),
    (
        "datetime-dtype",
        {"t": np.array(["2024-01-01"], dtype="M8[D]")},
        {},
        "dtype datetime64[D]",
    ),
    ("metadata-int-value", {}, {"round": 3}, "'round': 3"),
    ("metadata-none-value", {}, {"k": None}, "'k': None"),
    ("metadata-int-key", {}, {1: "a"}, "1: 'a'"),
    ("reserved-name", {"__metadata__": np.ones(1)}, {}, "'__metadata__'"),
    ("empty-name", {"": np.ones(1)}, {}, "''"),
]


@pytest.mark.parametrize(
    ("tensors", "metadata", "fragment"),
    [case[1:] for case in ENCODE_ERRORS],
    ids=[case[0] for case in ENCODE_ERRORS],
)
def test_encode_rejects(
    tensors: dict[str, np.ndarray], metadata: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ValueError) as caught:
        safetensors_io.encode(tensors, metadata)
    assert fragment in str(caught.value)
