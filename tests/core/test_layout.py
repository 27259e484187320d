"""Tests of the object key layout."""

from __future__ import annotations

import hashlib

import pytest

from fedcore import layout
from fedcore.errors import LayoutError

DEVICE_64 = "d" * 64
UPDATE_64 = "u" * 64


def test_update_key_documented_form() -> None:
    assert (
        layout.update_key("dev-1", 7, "abc")
        == "updates/dev-1/round-000007/abc.safetensors"
    )


def test_update_key_property() -> None:
    key = layout.UpdateKey("dev-1", 7, "abc")
    assert key.key == "updates/dev-1/round-000007/abc.safetensors"


@pytest.mark.parametrize(
    ("device_id", "round_number", "update_id"),
    [
        ("a", 0, "u"),
        ("D.e_v-9", 999_999, "X_y-1"),
        ("dev.", 12, "0"),
        (DEVICE_64, 1, UPDATE_64),
        ("9", 100_000, "a-b_c"),
    ],
    ids=["minimal", "max-round", "trailing-dot", "64-chars", "digit-start"],
)
def test_update_key_round_trip(
    device_id: str, round_number: int, update_id: str
) -> None:
    key = layout.update_key(device_id, round_number, update_id)
    assert layout.parse_update_key(key) == layout.UpdateKey(
        device_id, round_number, update_id
    )


INVALID_KEYS = [
    ("wrong-prefix", "update/dev/round-000001/u.safetensors"),
    ("models-prefix", "models/round-000001/model.safetensors"),
    ("uppercase-prefix", "Updates/dev/round-000001/u.safetensors"),
    ("leading-slash", "/updates/dev/round-000001/u.safetensors"),
    ("missing-round", "updates/dev/u.safetensors"),
    ("round-5-digits", "updates/dev/round-00001/u.safetensors"),
    ("round-7-digits", "updates/dev/round-0000001/u.safetensors"),
    ("round-letter", "updates/dev/round-00000a/u.safetensors"),
    ("round-negative", "updates/dev/round--00001/u.safetensors"),
    ("device-slash", "updates/a/b/round-000001/u.safetensors"),
    ("device-plus", "updates/a+b/round-000001/u.safetensors"),
    ("device-space", "updates/a b/round-000001/u.safetensors"),
    ("device-65-chars", f"updates/{'d' * 65}/round-000001/u.safetensors"),
    ("device-empty", "updates//round-000001/u.safetensors"),
    ("device-dotdot", "updates/../round-000001/u.safetensors"),
    ("device-leading-dash", "updates/-dev/round-000001/u.safetensors"),
    ("update-empty", "updates/dev/round-000001/.safetensors"),
    ("update-dotdot", "updates/dev/round-000001/...safetensors"),
    ("update-dot", "updates/dev/round-000001/a.b.safetensors"),
    ("update-65-chars", f"updates/dev/round-000001/{'u' * 65}.safetensors"),
    ("update-percent", "updates/dev/round-000001/a%2F.safetensors"),
    ("wrong-suffix", "updates/dev/round-000001/u.json"),
    ("no-suffix", "updates/dev/round-000001/u"),
    ("extra-level", "updates/dev/round-000001/x/u.safetensors"),
    ("trailing-newline", "updates/dev/round-000001/u.safetensors\n"),
    ("device-newline", "updates/dev\n/round-000001/u.safetensors"),
    ("empty", ""),
]


@pytest.mark.parametrize(
    "key", [case[1] for case in INVALID_KEYS], ids=[case[0] for case in INVALID_KEYS]
)
def test_parse_update_key_invalid(key: str) -> None:
    with pytest.raises(LayoutError) as caught:
        layout.parse_update_key(key)
    assert repr(key) in str(caught.value)


INVALID_PARTS = [
    ("device-slash", "a/b", 1, "u", "invalid device id 'a/b'"),
    ("device-plus", "a+b", 1, "u", "invalid device id 'a+b'"),
    ("device-space", "a b", 1, "u", "invalid device id 'a b'"),
    ("device-65-chars", "d" * 65, 1, "u", "invalid device id 'ddd"),
    ("device-empty", "", 1, "u", "invalid device id ''"),
    ("device-dotdot", "..", 1, "u", "invalid device id '..'"),
    ("device-newline", "dev\n", 1, "u", "invalid device id 'dev\\n'"),
    ("update-empty", "dev", 1, "", "invalid update id ''"),
    ("update-dotdot", "dev", 1, "..", "invalid update id '..'"),
    ("update-dot", "dev", 1, "a.b", "invalid update id 'a.b'"),
    ("update-newline", "dev", 1, "u\n", "invalid update id 'u\\n'"),
    ("round-negative", "dev", -1, "u", "round -1 is outside 0..999999"),
    ("round-too-large", "dev", 1_000_000, "u", "round 1000000 is outside"),
]


@pytest.mark.parametrize(
    ("device_id", "round_number", "update_id", "fragment"),
    [case[1:] for case in INVALID_PARTS],
    ids=[case[0] for case in INVALID_PARTS],
)
def test_update_key_invalid(
    device_id: str, round_number: int, update_id: str, fragment: str
) -> None:
    with pytest.raises(LayoutError) as caught:
        layout.update_key(device_id, round_number, update_id)
    assert fragment in str(caught.value)


def test_layout_error_is_value_error() -> None:
    assert issubclass(LayoutError, ValueError)


@pytest.mark.parametrize("round_number", [0, 1, 999_999])
def test_round_prefix_bounds_valid(round_number: int) -> None:
    assert layout.round_prefix(round_number) == f"rounds/round-{round_number:06d}/"


ROUND_BUILDERS = [
    layout.round_prefix,
    layout.round_state_key,
    layout.registration_key,
    layout.model_prefix,
    layout.model_key,
    layout.model_archive_key,
    layout.evaluation_key,
    layout.server_state_key,
]


@pytest.mark.parametrize("builder", ROUND_BUILDERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("round_number", [-1, 1_000_000])
def test_round_builders_reject(builder: object, round_number: int) -> None:
    with pytest.raises(LayoutError, match=f"round {round_number} is outside"):
        builder(round_number)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (layout.round_prefix, "rounds/round-000012/"),
        (layout.round_state_key, "rounds/round-000012/state.json"),
        (layout.registration_key, "rounds/round-000012/registration.json"),
        (layout.model_prefix, "models/round-000012/"),
        (layout.model_key, "models/round-000012/model.safetensors"),
        (layout.model_archive_key, "models/round-000012/model.tar.gz"),
        (layout.evaluation_key, "models/round-000012/evaluation.json"),
        (layout.server_state_key, "models/round-000012/server_state.safetensors"),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_key_builder_strings(builder: object, expected: str) -> None:
    assert builder(12) == expected  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("POINTER_KEY", "global/pointer.json"),
        ("HOLDOUT_KEY", "holdout/holdout.safetensors"),
        ("ROUND_CONFIG_KEY", "config/round.json"),
        ("UPDATES_PREFIX", "updates/"),
        ("UPDATE_SUFFIX", ".safetensors"),
    ],
)
def test_layout_constants(name: str, expected: str) -> None:
    assert getattr(layout, name) == expected


def digest16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_rejection_key_unknown_round() -> None:
    key = "updates/x/junk.bin"
    assert layout.rejection_key(None, key) == (
        f"rejections/unknown/updates__x__junk.bin.{digest16(key)}.json"
    )


def test_rejection_key_round() -> None:
    key = "updates/dev/round-000003/u.safetensors"
    assert layout.rejection_key(3, key) == (
        "rejections/round-000003/updates__dev__round-000003__u.safetensors."
        f"{digest16(key)}.json"
    )


def test_rejection_key_truncated() -> None:
    key = layout.rejection_key(None, "a" * 2000)
    assert key == f"rejections/unknown/{'a' * 900}.{digest16('a' * 2000)}.json"


def test_rejection_key_round_zero() -> None:
    assert (
        layout.rejection_key(0, "k")
        == f"rejections/round-000000/k.{digest16('k')}.json"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("updates/a__b/x", "updates/a/b/x"),
        ("a" * 950 + "1", "a" * 950 + "2"),
    ],
    ids=["slash-and-underscores", "same-first-900-bytes"],
)
def test_rejection_key_distinct(first: str, second: str) -> None:
    assert layout.rejection_key(1, first) != layout.rejection_key(1, second)


def test_rejection_key_multibyte_fits_s3() -> None:
    # 508 two-byte characters after "updates/" make a 1,024-byte object key.
    key = layout.rejection_key(999_999, "updates/" + "é" * 508)
    assert len(key.encode("utf-8")) <= 1024


@pytest.mark.parametrize("round_number", [-1, 1_000_000])
def test_rejection_key_bad_round(round_number: int) -> None:
    with pytest.raises(LayoutError, match=f"round {round_number} is outside"):
        layout.rejection_key(round_number, "k")


def test_parse_long_key_message_clipped() -> None:
    key = "updates/" + "d" * 1000 + "/round-000001/u.safetensors"
    with pytest.raises(LayoutError) as caught:
        layout.parse_update_key(key)
    assert len(str(caught.value)) < 400
    assert "invalid device id 'ddd" in str(caught.value)
