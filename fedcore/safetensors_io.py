"""A strict safetensors reader and writer in pure numpy.

The file layout is the one the ``safetensors`` library defines: an 8-byte
little-endian header length ``N``, ``N`` bytes of UTF-8 JSON, then the tensor bytes.
The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets"}``, with offsets
relative to the first byte after the header, plus an optional ``__metadata__`` map of
strings. Files written here load in PyTorch, Keras and numpy through that library.

Reading rejects anything a hostile uploader could send: a short file, an oversized
header, offsets outside the file, overlapping or missing byte ranges, unknown dtypes
and trailing bytes. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcore import jsontext
from fedcore.errors import FormatError, RejectReason

DEFAULT_MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 4096
# The format stores shapes and offsets as unsigned 64-bit integers.
_MAX_COUNT = (1 << 64) - 1
_ALIGNMENT = 8

DTYPES: dict[str, np.dtype[np.generic]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# Dtypes the safetensors format defines but numpy cannot represent natively.
_NUMPY_LESS_DTYPES = frozenset({"BF16", "F8_E4M3", "F8_E5M2"})
_CODES = {dtype.newbyteorder("="): code for code, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numpy_dtype(self) -> np.dtype[np.generic]:
        """The little-endian numpy dtype of the stored bytes."""
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class Header:
    """A parsed and validated safetensors header."""

    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_length(self) -> int:
        """Number of tensor bytes that follow the header."""
        return max((info.end for info in self.tensors.values()), default=0)

    @property
    def file_length(self) -> int:
        """Exact length of a file with this header."""
        return self.data_start + self.data_length


def dtype_code(dtype: npt.DTypeLike) -> str:
    """Return the safetensors dtype code of a numpy dtype.

    Raises
    ------
    ValueError
        If safetensors has no code for the dtype (object, string, complex, ...).
    """
    native = np.dtype(dtype).newbyteorder("=")
    try:
        return _CODES[native]
    except KeyError:
        raise ValueError(
            f"dtype {np.dtype(dtype)} cannot be stored in safetensors: use one of "
            "float16/32/64, int8-64, uint8-64 or bool"
        ) from None


def encode(tensors: Mapping[str, npt.ArrayLike], metadata: Mapping[str, str]) -> bytes:
    """Serialize named arrays and string metadata to safetensors bytes.

    Every dtype and shape round-trips exactly, 0-d arrays and integer buffers included.
    """
    header: dict[str, object] = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(
                    f"metadata entry {key!r}: {value!r} is not str -> str; "
                    "encode numbers and JSON as strings"
                )
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__" or not name:
            raise ValueError(
                f"invalid tensor name {name!r}: names must be non-empty and "
                "'__metadata__' is reserved for the metadata map"
            )
        array = np.asarray(tensors[name])
        code = dtype_code(array.dtype)
        data = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % _ALIGNMENT)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks)


def header_length(
    prefix: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> int:
    """Read the JSON header length from the first 8 bytes of a file."""
    if len(prefix) < 8:
        raise FormatError(
            RejectReason.TRUNCATED,
            f"file has {len(prefix)} bytes, fewer than the 8-byte header length",
        )
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > max_header_bytes:
        raise FormatError(
            RejectReason.HEADER_TOO_LARGE,
            f"header length {length} exceeds the limit of {max_header_bytes} bytes",
        )
    if length < 2:
        raise FormatError(
            RejectReason.NOT_SAFETENSORS,
            f"header length {length} is too short for a JSON object",
        )
    return int(length)


def parse_header(
    prefix: bytes,
    *,
    file_length: int | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Header:
    """Parse and validate the header at the start of a safetensors file.

    Parameters
    ----------
    prefix
        At least the first ``8 + N`` bytes of the file.
    file_length
        Total file size when known; the tensor byte ranges must then cover the data
        section exactly.
    max_header_bytes
        Largest JSON header accepted.
    """
    length = header_length(prefix, max_header_bytes=max_header_bytes)
    if len(prefix) < 8 + length:
        raise FormatError(
            RejectReason.TRUNCATED,
            f"header declares {length} bytes but only {len(prefix) - 8} follow",
        )
    raw = prefix[8 : 8 + length]
    if not raw.lstrip().startswith(b"{"):
        raise FormatError(RejectReason.NOT_SAFETENSORS, "header is not a JSON object")
    try:
        document = jsontext.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except ValueError as exc:
        # Bad UTF-8, bad JSON, deep nesting and duplicate keys are all ValueErrors.
        raise FormatError(
            RejectReason.NOT_SAFETENSORS, f"header is not valid UTF-8 JSON: {exc}"
        ) from exc
    if not isinstance(document, dict):
        raise FormatError(RejectReason.NOT_SAFETENSORS, "header is not a JSON object")
    metadata = _parse_metadata(document.pop("__metadata__", {}))
    if len(document) > MAX_TENSORS:
        raise FormatError(
            RejectReason.HEADER_TOO_LARGE,
            f"header lists {len(document)} tensors, "
            f"more than the limit of {MAX_TENSORS}",
        )
    tensors = {name: _parse_entry(name, entry) for name, entry in document.items()}
    _check_coverage(tensors, None if file_length is None else file_length - 8 - length)
    return Header(data_start=8 + length, tensors=tensors, metadata=metadata)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {key[:80]!r} appears more than once")
        document[key] = value
    return document


def _parse_metadata(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in raw.items()
    ):
        raise FormatError(
            RejectReason.NOT_SAFETENSORS,
            "__metadata__ is not a map of strings to strings",
        )
    return dict(raw)


def _parse_entry(name: str, entry: object) -> TensorInfo:
    if not isinstance(entry, dict):
        raise FormatError(
            RejectReason.NOT_SAFETENSORS, f"tensor {name!r}: entry is not an object"
        )
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")

    if isinstance(dtype, str) and dtype in _NUMPY_LESS_DTYPES:
        raise FormatError(
            RejectReason.DTYPE_MISMATCH,
            f"tensor {name!r}: dtype {dtype} is valid safetensors but numpy has no "
            "type for it, so convert the tensor to F32 before saving",
        )
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FormatError(
            RejectReason.DTYPE_MISMATCH,
            f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}",
        )
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise FormatError(
            RejectReason.NOT_SAFETENSORS,
            f"tensor {name!r}: shape {_brief(shape)} is not a list of integers "
            "in 0..2**64-1",
        )
    expected = DTYPES[dtype].itemsize
    for dim in shape:
        # Multiplying step by step keeps a hostile shape from building a huge integer.
        expected *= dim
        if expected > _MAX_COUNT:
            raise FormatError(
                RejectReason.NOT_SAFETENSORS,
                f"tensor {name!r}: shape {_brief(shape)} of {dtype} needs more than "
                "2**64-1 bytes",
            )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
        or offsets[0] > offsets[1]
    ):
        raise FormatError(
            RejectReason.OFFSETS_OUT_OF_RANGE,
            f"tensor {name!r}: data_offsets {_brief(offsets)} is not [begin, end] "
            "with begin <= end",
        )
    begin, end = offsets
    if end - begin != expected:
        raise FormatError(
            RejectReason.OFFSETS_OUT_OF_RANGE,
            f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype}, "
            f"expected {expected}",
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _is_count(value: object) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= _MAX_COUNT
    )


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_coverage(tensors: Mapping[str, TensorInfo], data_length: int | None) -> None:
    position = 0
    for info in sorted(tensors.values(), key=lambda item: (item.begin, item.end)):
        if info.begin != position:
            problem = (
                "overlaps another tensor" if info.begin < position else "leaves a gap"
            )
            raise FormatError(
                RejectReason.OFFSETS_OUT_OF_RANGE,
                f"tensor {info.name!r} at data byte {info.begin} {problem}: "
                f"expected it to start at byte {position}",
            )
        position = info.end
    if data_length is None:
        return
    if position > data_length:
        raise FormatError(
            RejectReason.TRUNCATED,
            f"tensors need {position} data bytes but the file has {data_length}",
        )
    if position < data_length:
        raise FormatError(
            RejectReason.OFFSETS_OUT_OF_RANGE,
            f"file has {data_length - position} bytes after the last tensor",
        )


def decode(
    data: bytes, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes into read-only arrays and string metadata.

    Raises
    ------
    FormatError
        With the reason why the bytes are not an acceptable safetensors file.
    """
    header = parse_header(
        data, file_length=len(data), max_header_bytes=max_header_bytes
    )
    tensors = {
        name: tensor_from_bytes(info, data, header.data_start + info.begin)
        for name, info in header.tensors.items()
    }
    return tensors, header.metadata


def tensor_from_bytes(info: TensorInfo, buffer: bytes, offset: int = 0) -> np.ndarray:
    """View one tensor's bytes in ``buffer`` at ``offset`` as a read-only array."""
    count = math.prod(info.shape)
    array = np.frombuffer(buffer, dtype=info.numpy_dtype, count=count, offset=offset)
    return array.reshape(info.shape)
