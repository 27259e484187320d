"""Decoding outside JSON with every failure as a ValueError."""

from __future__ import annotations

import pytest

from fedcore import jsontext


def test_loads_valid_document():
    assert jsontext.loads(b'{"round": 3}') == {"round": 3}


def test_loads_passes_options():
    pairs = jsontext.loads('{"a": 1}', object_pairs_hook=list)
    assert pairs == [("a", 1)]


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000 + b"]" * 100_000, b"not json", b"\xff", "{" * 100_000],
    ids=["nested", "syntax", "bad-utf8", "nested-open"],
)
def test_loads_invalid_raises_value_error(data):
    with pytest.raises(ValueError):
        jsontext.loads(data)


def test_loads_nested_message():
    with pytest.raises(ValueError, match="nested deeper than Python's recursion"):
        jsontext.loads("[" * 100_000 + "]" * 100_000)
