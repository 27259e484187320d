"""Tests of loading a device's CSV and NPZ data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_client.data import DataError, load_csv, load_data, load_npz


def _write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_csv_happy_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "f0,label,f1\n0.5,2,1e-3\n-1,0,4\n")
    x, y = load_data(path, label_column="label", classes=3)
    np.testing.assert_array_equal(x, np.array([[0.5, 1e-3], [-1, 4]], np.float32))
    np.testing.assert_array_equal(y, [2, 0])
    assert x.dtype == np.float32
    assert y.dtype == np.int64


def test_csv_tolerated_forms(tmp_path: Path) -> None:
    """A BOM, CRLF line ends, blank lines, spaces and integral float labels."""
    text = "\ufefff0 , target\r\n1, 3.0\r\n\r\n 2 ,4\r\n"
    x, y = load_csv(_write(tmp_path, text), label_column="target")
    np.testing.assert_array_equal(x, [[1.0], [2.0]])
    np.testing.assert_array_equal(y, [3, 4])


def test_csv_many_rows_chunked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(10_000, 3)).astype(np.float32)
    labels = rng.integers(0, 5, size=10_000)
    lines = ["a,b,c,label"] + [
        f"{row[0]!r},{row[1]!r},{row[2]!r},{label}"
        for row, label in zip(features.tolist(), labels, strict=True)
    ]
    x, y = load_csv(_write(tmp_path, "\n".join(lines) + "\n"))
    np.testing.assert_array_equal(x, features)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("f0,label\n", "no data rows"),
        ("f0,y\n1,2\n", "label column 'label' not found"),
        ("label\n1\n", "no feature columns"),
        ("f0,f0,label\n1,2,0\n", "duplicate column names \\['f0'\\]"),
        ("f0,,label\n1,2,0\n", "header field 2 is empty"),
        ("f0,f1,label\n1,2,0\n1,abc,0\n", "line 3, column 'f1': 'abc' is not a number"),
        ("f0,f1,label\n1,,0\n", "line 2, column 'f1': '' is not a number"),
        ("f0,label\nnan,0\n", "line 2, column 'f0': 'nan' is not a finite number"),
        ("f0,label\n-inf,0\n", "'-inf' is not a finite number"),
        ("f0,label\n1e39,0\n", "line 2, column 'f0': '1e39' is too large"),
        ("f0,f1,label\n1,2\n", "line 2: 2 fields, expected 3"),
        ("f0,f1,label\n1,2,0,4\n", "line 2: 4 fields, expected 3"),
        ("f0,label\n1,2.5\n", "line 2, column 'label': label '2.5' is not an integer"),
        ("f0,label\n1,cat\n", "label 'cat' is not an integer"),
        ("f0,label\n1,99999999999999999999\n", "does not fit in int64"),
        ("f0,label\n1,1e30\n", "label '1e30' does not fit in int64"),
        ("f0,label\n1,-1\n", "label -1 of example 0"),
        ("f0,label\n1,0\n1,10\n", "label 10 of example 1 .* in 0..9"),
    ],
)
def test_csv_rejects(tmp_path: Path, text: str, fragment: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=fragment) as raised:
        load_csv(path, classes=10)
    assert str(path) in str(raised.value)


def test_csv_rejects_non_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path, b"f0,label\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_csv(path)


def test_csv_rejects_nul(tmp_path: Path) -> None:
    path = _write(tmp_path, "f0,label\n1\x00,1\n")
    with pytest.raises(DataError, match="line"):
        load_csv(path)


def test_npz_happy_path(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(path, x=x, y=np.array([0, 1, 2, 1], dtype=np.int32))
    loaded = load_data(path, classes=3)
    np.testing.assert_array_equal(loaded.x, x.astype(np.float32))
    np.testing.assert_array_equal(loaded.y, [0, 1, 2, 1])
    assert loaded.x.dtype == np.float32
    assert loaded.y.dtype == np.int64


def test_npz_named_keys(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez_compressed(
        path, features=np.ones((2, 2), np.uint8), target=np.array([1.0, 0.0])
    )
    x, y = load_npz(path, x_key="features", y_key="target")
    np.testing.assert_array_equal(x, np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(y, [1, 0])


NPZ_CASES = [
    ({"x": np.ones((2, 2))}, "arrays \\['y'\\] not found"),
    ({"x": np.ones((2, 2, 2)), "y": np.zeros(2, int)}, "flatten each example"),
    ({"x": np.ones((2, 2)), "y": np.zeros((2, 1), int)}, "one label per row"),
    ({"x": np.ones((3, 2)), "y": np.zeros(2, int)}, "2 labels but 'x' has 3 rows"),
    ({"x": np.ones((0, 2)), "y": np.zeros(0, int)}, "it is empty"),
    ({"x": np.array([["a", "b"]]), "y": np.zeros(1, int)}, "expected numbers"),
    ({"x": np.array([[1.0, np.inf]]), "y": np.zeros(1, int)}, "row 0, column 1"),
    ({"x": np.array([[1e39, 1.0]]), "y": np.zeros(1, int)}, "too large for float32"),
    ({"x": np.ones((2, 2)), "y": np.array([0.5, 1.0])}, "expected integer class"),
    ({"x": np.ones((2, 2)), "y": np.array([0, 12])}, "label 12 of example 1"),
    (
        {"x": np.ones((1, 2)), "y": np.array([object()], dtype=object)},
        "not a valid .npz archive",
    ),
]


@pytest.mark.parametrize(("arrays", "fragment"), NPZ_CASES)
def test_npz_rejects(tmp_path: Path, arrays: dict, fragment: str) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, allow_pickle=True, **arrays)
    with pytest.raises(DataError, match=fragment) as raised:
        load_npz(path, classes=10)
    assert str(path) in str(raised.value)


def test_npz_rejects_non_zip(tmp_path: Path) -> None:
    path = _write(tmp_path, b"this is not a zip file", name="data.npz")
    with pytest.raises(DataError, match=r"data\.npz"):
        load_npz(path)


def test_npz_rejects_npy(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with path.open("wb") as stream:
        np.save(stream, np.ones(3))
    with pytest.raises(DataError, match=r"not an \.npz archive"):
        load_npz(path)


def test_load_rejects_suffix(tmp_path: Path) -> None:
    path = _write(tmp_path, "f0,label\n1,0\n", name="data.json")
    with pytest.raises(DataError, match=r"unsupported file type '\.json'"):
        load_data(path)


@pytest.mark.parametrize("name", ["missing.csv", "missing.npz"])
def test_load_rejects_missing(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="cannot read the file"):
        load_data(tmp_path / name)
