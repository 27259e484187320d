"""The bad-input catalogue: each input is rejected for one specific reason.

Every row checks the rejection record, the ``UpdatesRejected`` metric with its
``Reason`` dimension, and that the round still publishes exactly the mean of the
valid updates delivered in the same batch.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fedcore import layout, safetensors_io
from lambdas.aggregator import clients

from .conftest import HarnessFactory
from .harness import Harness, Upload, craft, expected_model

MAX_NORM = 50.0
MAX_EXAMPLES = 1000
Builder = Callable[[Harness], Upload]


def with_tensor(change: Callable[[dict[str, np.ndarray], str], None]) -> Builder:
    def build(harness: Harness) -> Upload:
        tensors = dict(harness.delta())
        change(tensors, sorted(tensors)[0])
        return harness.upload("dev-bad", tensors=tensors)

    return build


def with_metadata(**overrides: str | None) -> Builder:
    def build(harness: Harness) -> Upload:
        return harness.upload("dev-bad", metadata=overrides)

    return build


def with_bytes(make: Callable[[Harness, bytes], bytes]) -> Builder:
    def build(harness: Harness) -> Upload:
        valid = harness.upload("dev-bad-source")
        return harness.upload("dev-bad", data=make(harness, valid.data))

    return build


def set_nan(tensors: dict[str, np.ndarray], name: str) -> None:
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan


def set_inf(tensors: dict[str, np.ndarray], name: str) -> None:
    tensors[name] = tensors[name].copy()
    tensors[name].flat[-1] = -np.inf


def header_of(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def shift_offsets(harness: Harness, data: bytes) -> bytes:
    header, payload = header_of(data)
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [
                offset + 1_000_000 for offset in entry["data_offsets"]
            ]
    return craft(header, payload)


def string_dtype(harness: Harness, data: bytes) -> bytes:
    header, payload = header_of(data)
    name = sorted(key for key in header if key != "__metadata__")[0]
    header[name]["dtype"] = "STR"
    return craft(header, payload)


def other_key(harness: Harness, *, device: str, round_number: int) -> Upload:
    update_id = "mismatch1"
    metadata = harness.metadata("dev-bad", 1, update_id, 5)
    data = safetensors_io.encode(harness.delta(), metadata)
    key = layout.update_key(device, round_number, update_id)
    return harness.put(key, data, device=device, round_number=round_number)


CATALOGUE: list[tuple[str, Builder, str]] = [
    (
        "not-safetensors",
        with_bytes(lambda h, d: struct.pack("<Q", 8) + b"not json"),
        "not_safetensors",
    ),
    ("truncated", with_bytes(lambda h, d: d[:-5]), "truncated"),
    ("tiny", with_bytes(lambda h, d: b"abc"), "truncated"),
    (
        "header-too-large",
        with_bytes(lambda h, d: struct.pack("<Q", 1 << 30) + b"{}"),
        "header_too_large",
    ),
    ("offsets-outside", with_bytes(shift_offsets), "offsets_out_of_range"),
    (
        "extra-tensor",
        with_tensor(lambda t, n: t.update(extra=np.zeros(2, np.float32))),
        "extra_tensor",
    ),
    ("missing-tensor", with_tensor(lambda t, n: t.pop(n)), "missing_tensor"),
    (
        "wrong-shape",
        with_tensor(lambda t, n: t.update({n: np.zeros(3, np.float32)})),
        "shape_mismatch",
    ),
    (
        "wrong-dtype",
        with_tensor(lambda t, n: t.update({n: t[n].astype(np.float64)})),
        "dtype_mismatch",
    ),
    ("string-dtype", with_bytes(string_dtype), "dtype_mismatch"),
    ("nan", with_tensor(set_nan), "non_finite"),
    ("inf", with_tensor(set_inf), "non_finite"),
    (
        "norm-above-bound",
        with_tensor(lambda t, n: t.update({n: np.full_like(t[n], 100.0)})),
        "norm_exceeded",
    ),
    ("examples-missing", with_metadata(num_examples=None), "examples_missing"),
    ("examples-zero", with_metadata(num_examples="0"), "examples_invalid"),
    ("examples-negative", with_metadata(num_examples="-4"), "examples_invalid"),
    ("examples-fraction", with_metadata(num_examples="1.5"), "examples_invalid"),
    (
        "examples-absurd",
        with_metadata(num_examples=str(MAX_EXAMPLES + 1)),
        "examples_invalid",
    ),
    ("round-missing", with_metadata(round=None), "round_missing"),
    ("round-not-integer", with_metadata(round="1.0"), "round_invalid"),
    ("round-stale", lambda h: h.upload("dev-bad", round_number=0), "stale_round"),
    ("round-future", lambda h: h.upload("dev-bad", round_number=2), "future_round"),
    (
        "device-disagrees",
        lambda h: other_key(h, device="dev-other", round_number=1),
        "identity_mismatch",
    ),
    ("round-disagrees", with_metadata(round="2"), "identity_mismatch"),
    ("format-version", with_metadata(format_version="2"), "unknown_format_version"),
    ("base-digest", with_metadata(base_model_sha256="0" * 64), "base_model_mismatch"),
    ("client-metrics", with_metadata(client_metrics="{oops"), "invalid_metadata"),
]


@pytest.fixture
def guarded(make_harness: HarnessFactory) -> Harness:
    return make_harness(max_update_norm=MAX_NORM, max_examples=MAX_EXAMPLES)


@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(build, reason, id=name) for name, build, reason in CATALOGUE],
)
def test_bad_input_rejected(guarded: Harness, build: Builder, reason: str) -> None:
    harness = guarded
    bad = build(harness)
    good = [
        harness.upload(f"dev-{index}", num_examples=index + 3) for index in range(3)
    ]
    assert harness.deliver(bad, *good) == []
    record = harness.rejection(bad.round if bad.round <= 2 else None, bad.key)
    assert record is not None
    assert record["reason"] == reason
    assert record["key"] == bad.key
    assert harness.rejected_by_reason() == {reason: 1}
    (metric,) = harness.metrics("UpdatesRejected")
    assert metric["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["Federation"],
        ["Federation", "Reason"],
    ]
    assert sorted(harness.state(1)["accepted"]) == ["dev-0", "dev-1", "dev-2"]
    stored = harness.model(2)
    for name, array in expected_model(harness.base, good).items():
        np.testing.assert_allclose(stored[name], array, rtol=0, atol=1e-6)


def test_catalogue_covers_reasons() -> None:
    reasons = {reason for _, _, reason in CATALOGUE}
    assert len(reasons) >= 19


def test_size_bound_before_download(guarded: Harness) -> None:
    """The event's size decides; the object does not even exist, and no GET is sent."""
    harness = guarded
    keys: list[str] = []
    clients.client("s3").meta.events.register(
        "before-parameter-build.s3.GetObject",
        lambda params, **_: keys.append(params["Key"]),
    )
    key = layout.update_key("dev-big", 1, "absent")
    phantom = Upload(key, "dev-big", 1, b"", 0, "0" * 32, None)
    size = harness.config.max_update_bytes + 1
    assert harness.deliver_bodies([harness.body(phantom, size=size)]) == []
    assert harness.rejection(1, key)["reason"] == "too_large"
    assert harness.rejected_by_reason() == {"too_large": 1}
    assert key not in keys


def test_size_bound_on_real_length(make_harness: HarnessFactory) -> None:
    """An event that understates the size is caught by the object's real length."""
    harness = make_harness(max_update_bytes=512)
    upload = harness.upload("dev-big")
    assert upload.size > 512
    harness.deliver_bodies([harness.body(upload, size=100)])
    assert harness.rejection(1, upload.key)["reason"] == "too_large"


def test_second_upload_same_device(harness: Harness) -> None:
    first = harness.upload("dev-0", num_examples=4)
    second = harness.upload("dev-0", num_examples=9)
    harness.deliver(first)
    harness.deliver(second)
    assert harness.state(1)["accepted"]["dev-0"]["key"] == first.key
    assert harness.rejection(1, second.key)["reason"] == "duplicate_device"
    assert harness.rejected_by_reason() == {"duplicate_device": 1}


def test_same_device_one_batch(harness: Harness) -> None:
    first = harness.upload("dev-0")
    second = harness.upload("dev-0")
    harness.deliver(first, second)
    counted = harness.state(1)["accepted"]["dev-0"]["key"]
    other = second.key if counted == first.key else first.key
    assert counted in (first.key, second.key)
    assert harness.rejection(1, other)["reason"] == "duplicate_device"
