"""Loading a device's local training data from CSV or NPZ files.

Both loaders return float32 features of shape ``(n, features)`` and int64 labels of
shape ``(n,)``, and reject anything else with a :class:`DataError` that names the
file and, for CSV, the line and column.
"""

from __future__ import annotations

import csv
import logging
import math
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from edge_client.errors import DataError

logger = logging.getLogger(__name__)

CSV_CHUNK_ROWS = 4096
FLOAT32_MAX = float(np.finfo(np.float32).max)


class LocalData(NamedTuple):
    """Features and labels of one device."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]


def load_data(
    path: str | Path,
    *,
    label_column: str = "label",
    x_key: str = "x",
    y_key: str = "y",
    classes: int | None = None,
) -> LocalData:
    """Load a ``.csv`` or ``.npz`` file, chosen by the file name's suffix.

    Parameters
    ----------
    path
        The data file.
    label_column
        CSV only: name of the column with the integer class labels; every other
        column is a numeric feature.
    x_key, y_key
        NPZ only: names of the feature and label arrays.
    classes
        When given, labels must lie in ``0..classes - 1``.

    Raises
    ------
    DataError
        If the file cannot be read or its contents are invalid.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return load_csv(path, label_column=label_column, classes=classes)
    if suffix == ".npz":
        return load_npz(path, x_key=x_key, y_key=y_key, classes=classes)
    raise DataError(f"{path}: unsupported file type {suffix!r}: expected .csv or .npz")


def load_csv(
    path: str | Path, *, label_column: str = "label", classes: int | None = None
) -> LocalData:
    """Load a CSV file with a header row, one label column and numeric features.

    Blank lines are skipped. Labels are integers; a float with no fractional part,
    such as ``3.0``, is accepted. Features must be finite numbers.

    Raises
    ------
    DataError
        If the file is missing, empty or not UTF-8, the label column is missing, a
        line has the wrong number of fields, or a value is not a (finite) number.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:
            x, y = _read_csv(stream, str(path), label_column)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    check_labels(y, classes, str(path))
    logger.info("loaded %d examples of %d features from %s", y.size, x.shape[1], path)
    return LocalData(x, y)


def _read_csv(
    stream: Any, source: str, label_column: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    reader = csv.reader(stream)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{source}: the file is empty: expected a header row")
        names = _check_header(header, source, label_column)
        label_index = names.index(label_column)
        feature_names = [name for name in names if name != label_column]
        x_chunks: list[npt.NDArray[np.float32]] = []
        y_values: list[int] = []
        rows: list[list[float]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(names):
                raise DataError(
                    f"{source}, line {line}: {len(row)} fields, expected {len(names)} "
                    "as in the header"
                )
            label_text = row[label_index]
            y_values.append(_parse_label(label_text, source, line, label_column))
            cells = row[:label_index] + row[label_index + 1 :]
            rows.append(
                [
                    _parse_feature(cell, source, line, name)
                    for cell, name in zip(cells, feature_names, strict=True)
                ]
            )
            if len(rows) == CSV_CHUNK_ROWS:
                x_chunks.append(np.array(rows, dtype=np.float32))
                rows = []
    except csv.Error as exc:
        raise DataError(f"{source}, line {reader.line_num}: {exc}") from exc
    if rows:
        x_chunks.append(np.array(rows, dtype=np.float32))
    if not y_values:
        raise DataError(f"{source}: the file has a header but no data rows")
    x = np.concatenate(x_chunks).reshape(len(y_values), len(feature_names))
    _check_finite_float32(x, source)
    return x, np.array(y_values, dtype=np.int64)


def _check_header(header: list[str], source: str, label_column: str) -> list[str]:
    names = [name.strip() for name in header]
    for position, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{source}, line 1: header field {position} is empty")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{source}, line 1: duplicate column names {duplicates}")
    if label_column not in names:
        raise DataError(
            f"{source}: label column {label_column!r} not found in the header "
            f"{names[:20]}: pass the right --label-column"
        )
    if len(names) < 2:
        raise DataError(f"{source}: the header has no feature columns")
    return names


def _parse_feature(text: str, source: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{source}, line {line}, column {column!r}: {text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataError(
            f"{source}, line {line}, column {column!r}: {text!r} is not a finite number"
        )
    if abs(value) > FLOAT32_MAX:
        raise DataError(
            f"{source}, line {line}, column {column!r}: {text!r} is too large for "
            "float32"
        )
    return value


def _parse_label(text: str, source: str, line: int, column: str) -> int:
    where = f"{source}, line {line}, column {column!r}"
    try:
        label = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not value.is_integer():
            raise DataError(f"{where}: label {text!r} is not an integer") from None
        label = int(value)
    if not _INT64_MIN <= label <= _INT64_MAX:
        raise DataError(f"{where}: label {text[:40]!r} does not fit in int64")
    return label


_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _check_finite_float32(x: npt.NDArray[np.float32], source: str) -> None:
    if not np.isfinite(x).all():
        row, column = np.argwhere(~np.isfinite(x))[0]
        raise DataError(
            f"{source}: feature at row {row}, column {column} (0-based) is NaN or "
            "infinite, or too large for float32"
        )


def load_npz(
    path: str | Path, *, x_key: str = "x", y_key: str = "y", classes: int | None = None
) -> LocalData:
    """Load features and labels from a NumPy ``.npz`` archive, without unpickling.

    ``x_key`` must name a 2-D numeric array and ``y_key`` a 1-D array of integers
    (or integral floats) with one label per row of ``x``.

    Raises
    ------
    DataError
        If the file is missing or not an NPZ archive, a key is missing, an array
        contains Python objects, or the shapes or values are invalid.
    """
    source = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{source}: not an .npz archive of named arrays")
        with loaded as archive:
            missing = [key for key in (x_key, y_key) if key not in archive.files]
            if missing:
                raise DataError(
                    f"{source}: arrays {missing} not found; the archive has "
                    f"{sorted(archive.files)[:20]}"
                )
            raw_x = archive[x_key]
            raw_y = archive[y_key]
    except OSError as exc:
        raise DataError(f"{source}: cannot read the file: {exc}") from exc
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{source}: not a valid .npz archive: {exc}") from exc
    x = _npz_features(raw_x, source, x_key)
    y = _npz_labels(raw_y, source, y_key)
    if y.size != x.shape[0]:
        raise DataError(
            f"{source}: {y_key!r} has {y.size} labels but {x_key!r} has "
            f"{x.shape[0]} rows"
        )
    check_labels(y, classes, source)
    logger.info("loaded %d examples of %d features from %s", y.size, x.shape[1], path)
    return LocalData(x, y)


def _npz_features(
    raw: npt.NDArray[Any], source: str, key: str
) -> npt.NDArray[np.float32]:
    if raw.ndim != 2:
        raise DataError(
            f"{source}: {key!r} has shape {list(raw.shape)}: expected "
            "(examples, features); flatten each example first"
        )
    if raw.dtype.kind not in "fiub":
        raise DataError(f"{source}: {key!r} has dtype {raw.dtype}: expected numbers")
    if raw.shape[0] == 0 or raw.shape[1] == 0:
        raise DataError(f"{source}: {key!r} has shape {list(raw.shape)}: it is empty")
    with np.errstate(over="ignore"):
        # Values beyond the float32 range become Inf here and are rejected below.
        x = raw.astype(np.float32)
    _check_finite_float32(x, source)
    return x


def _npz_labels(raw: npt.NDArray[Any], source: str, key: str) -> npt.NDArray[np.int64]:
    if raw.ndim != 1:
        raise DataError(
            f"{source}: {key!r} has shape {list(raw.shape)}: expected one label per row"
        )
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    if (
        raw.dtype.kind == "f"
        and np.isfinite(raw).all()
        and (raw == np.round(raw)).all()
    ):
        return raw.astype(np.int64)
    raise DataError(
        f"{source}: {key!r} has dtype {raw.dtype} with non-integer values: "
        "expected integer class labels"
    )


def check_labels(y: npt.NDArray[np.int64], classes: int | None, source: str) -> None:
    """Check that labels are non-negative and, when ``classes`` is given, below it.

    Raises
    ------
    DataError
        Naming the first offending label and its row.
    """
    if y.size == 0:
        return
    if classes is None:
        bad = y < 0
        expected = "a class index >= 0"
    else:
        bad = (y < 0) | (y >= classes)
        expected = f"a class index in 0..{classes - 1} for a model of {classes} classes"
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{source}: label {int(y[index])} of example {index} (0-based) is invalid: "
            f"expected {expected}"
        )
