"""Malformed encoded updates: each is rejected with a specific reason."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedcore import encoding, safetensors_io
from fedcore.errors import RejectReason, UpdateRejected
from fedcore.layout import UpdateKey
from fedcore.update import UpdateMetadata, ValidationLimits, specs_of, validate_update

DELTA = {
    "k": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "b": np.linspace(0, 1, 5, dtype=np.float32),
    "n": np.arange(3, dtype=np.int32),
}
REFERENCE = specs_of(DELTA)
BASE_SHA = "ab" * 32
Tensors = dict[str, np.ndarray]
Mutation = Callable[[Tensors], None]


def encoded(name: str) -> Tensors:
    tensors, _ = encoding.UpdateEncoder(name, topk_fraction=0.5, seed=0).encode(DELTA)
    return {key: np.array(value) for key, value in tensors.items()}


def setter(key: str, value: np.ndarray) -> Mutation:
    def change(tensors: Tensors) -> None:
        tensors[key] = value

    return change


def remover(key: str) -> Mutation:
    def change(tensors: Tensors) -> None:
        del tensors[key]

    return change


def indices_of(tensors: Tensors) -> np.ndarray:
    return tensors["__flat__::indices"]


def swap_first_indices(tensors: Tensors) -> None:
    indices = indices_of(tensors).copy()
    indices[[0, 1]] = indices[[1, 0]]
    tensors["__flat__::indices"] = indices


def repeat_first_index(tensors: Tensors) -> None:
    indices = indices_of(tensors).copy()
    indices[1] = indices[0]
    tensors["__flat__::indices"] = indices


def last_index_out_of_range(tensors: Tensors) -> None:
    indices = indices_of(tensors).copy()
    indices[-1] = 17
    tensors["__flat__::indices"] = indices


def drop_one_value(tensors: Tensors) -> None:
    tensors["__flat__::values"] = tensors["__flat__::values"][:-1]


def too_many_indices(tensors: Tensors) -> None:
    tensors["__flat__::indices"] = np.arange(18, dtype=np.uint16)
    tensors["__flat__::values"] = np.ones(18, dtype=np.float32)


INVALID = RejectReason.INVALID_ENCODING
HOSTILE: list[tuple[str, str, Mutation, RejectReason, str]] = [
    ("q8-no-scale", "q8", remover("k::scale"), INVALID, "'k::scale' is missing"),
    ("q8-no-offset", "q8", remover("b::offset"), INVALID, "'b::offset' is missing"),
    (
        "q8-codes-missing",
        "q8",
        remover("k::q8"),
        INVALID,
        "'k::q8' is missing",
    ),
    (
        "q8-all-missing",
        "q8",
        lambda t: [t.pop(k) for k in ("k::q8", "k::scale", "k::offset")],
        RejectReason.MISSING_TENSOR,
        "'k'",
    ),
    (
        "q8-negative-scale",
        "q8",
        setter("k::scale", np.array(-1.0, np.float32)),
        INVALID,
        "expected a finite number >= 0",
    ),
    (
        "q8-nan-scale",
        "q8",
        setter("k::scale", np.array(np.nan, np.float32)),
        INVALID,
        "expected a finite number >= 0",
    ),
    (
        "q8-inf-offset",
        "q8",
        setter("b::offset", np.array(np.inf, np.float32)),
        INVALID,
        "expected finite",
    ),
    (
        "q8-scale-f64",
        "q8",
        setter("k::scale", np.array(0.1, np.float64)),
        INVALID,
        "dtype F64",
    ),
    (
        "q8-scale-vector",
        "q8",
        setter("k::scale", np.ones(2, np.float32)),
        INVALID,
        "shape [2]",
    ),
    (
        "q8-codes-int8",
        "q8",
        setter("k::q8", np.zeros((3, 4), np.int8)),
        INVALID,
        "dtype I8",
    ),
    (
        "q8-codes-shape",
        "q8",
        setter("k::q8", np.zeros((4, 3), np.uint8)),
        INVALID,
        "shape [4, 3]",
    ),
    (
        "q8-raw-and-coded",
        "q8",
        setter("k", DELTA["k"]),
        INVALID,
        "present twice",
    ),
    (
        "q8-extra-aux",
        "q8",
        setter("k::f16", np.zeros((3, 4), np.float16)),
        RejectReason.EXTRA_TENSOR,
        "k::f16",
    ),
    (
        "q8-integer-missing",
        "q8",
        remover("n"),
        RejectReason.MISSING_TENSOR,
        "'n'",
    ),
    (
        "f16-wrong-dtype",
        "float16",
        setter("k::f16", np.zeros((3, 4), np.float32)),
        INVALID,
        "dtype F32",
    ),
    (
        "f16-stray",
        "float16",
        setter("x::f16", np.zeros(2, np.float16)),
        RejectReason.EXTRA_TENSOR,
        "x::f16",
    ),
    ("topk-unsorted", "topk", swap_first_indices, INVALID, "strictly increasing"),
    ("topk-duplicate", "topk", repeat_first_index, INVALID, "strictly increasing"),
    ("topk-out-of-range", "topk", last_index_out_of_range, INVALID, "out of range"),
    ("topk-count-mismatch", "topk", drop_one_value, INVALID, "expected [9]"),
    ("topk-too-many", "topk", too_many_indices, INVALID, "at most 17"),
    (
        "topk-signed-indices",
        "topk",
        lambda t: t.update({"__flat__::indices": indices_of(t).astype(np.int64)}),
        INVALID,
        "dtype I64",
    ),
    (
        "topk-2d-indices",
        "topk",
        lambda t: t.update({"__flat__::indices": indices_of(t).reshape(3, 3)}),
        INVALID,
        "one dimension",
    ),
    (
        "topk-no-values",
        "topk",
        remover("__flat__::values"),
        INVALID,
        "'__flat__::values' is missing",
    ),
    (
        "topk-no-indices",
        "topk",
        remover("__flat__::indices"),
        INVALID,
        "'__flat__::indices' is missing",
    ),
    (
        "topk-raw-float",
        "topk",
        setter("k", DELTA["k"]),
        RejectReason.EXTRA_TENSOR,
        "'k'",
    ),
    (
        "topk-nan-value",
        "topk",
        lambda t: t.update({"__flat__::values": np.full(9, np.nan, dtype=np.float32)}),
        RejectReason.NON_FINITE,
        "NaN",
    ),
    (
        "topk-q8-bad-scale",
        "topk_q8",
        setter("__flat__::scale", np.array(-2.0, np.float32)),
        INVALID,
        "expected a finite number >= 0",
    ),
    (
        "topk-q8-short-codes",
        "topk_q8",
        lambda t: t.update({"__flat__::q8": t["__flat__::q8"][:3]}),
        INVALID,
        "expected [9]",
    ),
]


def upload_bytes(tensors: Tensors, encoding_name: str | None) -> bytes:
    metadata = UpdateMetadata(
        round=4,
        device_id="dev-1",
        update_id="u" * 32,
        num_examples=5,
        base_model_sha256=BASE_SHA,
    ).to_strings()
    if encoding_name is not None:
        metadata["encoding"] = encoding_name
    return safetensors_io.encode(tensors, metadata)


def validate(data: bytes) -> None:
    validate_update(
        data,
        key=UpdateKey(device_id="dev-1", round=4, update_id="u" * 32),
        reference=REFERENCE,
        open_round=4,
        base_model_sha256=BASE_SHA,
        limits=ValidationLimits(),
    )


@pytest.mark.parametrize(
    ("case", "name", "mutate", "reason", "fragment"),
    HOSTILE,
    ids=[row[0] for row in HOSTILE],
)
def test_hostile_rejected_reason(
    case: str, name: str, mutate: Mutation, reason: RejectReason, fragment: str
) -> None:
    tensors = encoded(name)
    mutate(tensors)
    with pytest.raises(UpdateRejected) as caught:
        validate(upload_bytes(tensors, name))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("case", "name", "mutate", "reason", "fragment"),
    HOSTILE,
    ids=[row[0] for row in HOSTILE],
)
def test_hostile_detail_names_value(
    case: str, name: str, mutate: Mutation, reason: RejectReason, fragment: str
) -> None:
    tensors = encoded(name)
    mutate(tensors)
    with pytest.raises(UpdateRejected) as caught:
        validate(upload_bytes(tensors, name))
    assert fragment in caught.value.detail


def test_unknown_encoding_rejected() -> None:
    with pytest.raises(UpdateRejected) as caught:
        validate(upload_bytes(dict(DELTA), "gzip"))
    assert caught.value.reason == RejectReason.INVALID_ENCODING


def test_coded_tensors_without_metadata_rejected() -> None:
    with pytest.raises(UpdateRejected) as caught:
        validate(upload_bytes(encoded("q8"), None))
    assert caught.value.reason == RejectReason.MISSING_TENSOR


@pytest.mark.parametrize("name", encoding.ENCODINGS)
def test_valid_encoding_accepted(name: str) -> None:
    tensors = encoded(name)
    metadata_name = None if name == encoding.NONE else name
    validate(upload_bytes(tensors, metadata_name))


def test_q8_raw_float_tensor_accepted() -> None:
    tensors = encoded("q8")
    for suffix in ("::q8", "::scale", "::offset"):
        del tensors["b" + suffix]
    tensors["b"] = DELTA["b"]
    validate(upload_bytes(tensors, "q8"))


def test_q8_norm_checked_after_decode() -> None:
    tensors = encoded("q8")
    tensors["k::scale"] = np.array(1e30, np.float32)
    data = upload_bytes(tensors, "q8")
    with pytest.raises(UpdateRejected) as caught:
        validate_update(
            data,
            key=UpdateKey(device_id="dev-1", round=4, update_id="u" * 32),
            reference=REFERENCE,
            open_round=4,
            base_model_sha256=BASE_SHA,
            limits=ValidationLimits(max_update_norm=100.0),
        )
    assert caught.value.reason in (RejectReason.NORM_EXCEEDED, RejectReason.NON_FINITE)
