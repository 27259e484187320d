"""The model update: what a device uploads, and how the aggregator validates it.

An update is a safetensors file whose tensors are the device's change to the global
model (local weights minus the global weights it started from), under the same names,
shapes and dtypes as the global model. Its ``__metadata__`` carries the fields of
:class:`UpdateMetadata`, and may name an ``encoding`` that compresses the tensors
(see :mod:`fedcore.encoding`). Validation decodes the update to dense tensors
before it checks them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedcore import jsontext, safetensors_io
from fedcore.encoding import decode_update
from fedcore.errors import RejectReason, UpdateRejected
from fedcore.layout import UpdateKey

FORMAT_VERSION = "1"
# ASCII digits only: str.isdigit() also accepts characters such as "²" that int()
# rejects. Eighteen digits keep every accepted value inside int64.
_INTEGER = re.compile(r"-?[0-9]{1,18}")
SUPPORTED_FORMAT_VERSIONS = frozenset({FORMAT_VERSION})
# Elements widened to float64 at a time by sum_of_squares: 1 MiB of float64.
SQUARES_CHUNK_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class TensorSpec:
    """Name-independent description of one tensor: shape and dtype."""

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, array: np.ndarray) -> TensorSpec:
        """Describe an array."""
        return cls(tuple(array.shape), safetensors_io.dtype_code(array.dtype))


def specs_of(tensors: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """Describe every tensor of a model."""
    return {name: TensorSpec.of(array) for name, array in tensors.items()}


@dataclass(frozen=True, kw_only=True)
class UpdateMetadata:
    """Metadata a device attaches to its update."""

    round: int
    device_id: str
    update_id: str
    num_examples: int
    base_model_sha256: str
    client_metrics: dict[str, float] = field(default_factory=dict)
    format_version: str = FORMAT_VERSION

    def to_strings(self) -> dict[str, str]:
        """Render as the string map stored in ``__metadata__``."""
        return {
            "format_version": self.format_version,
            "kind": "update",
            "round": str(self.round),
            "device_id": self.device_id,
            "update_id": self.update_id,
            "num_examples": str(self.num_examples),
            "base_model_sha256": self.base_model_sha256,
            "client_metrics": json.dumps(self.client_metrics, sort_keys=True),
        }


@dataclass(frozen=True, kw_only=True)
class ValidationLimits:
    """Bounds an update must respect to be accepted."""

    max_examples: int = 1_000_000
    max_update_norm: float | None = None
    max_header_bytes: int = safetensors_io.DEFAULT_MAX_HEADER_BYTES


@dataclass(frozen=True)
class ValidatedUpdate:
    """An update that passed every check and may be folded into its round."""

    metadata: UpdateMetadata
    tensors: dict[str, np.ndarray]
    norm: float


def _require_int(metadata: Mapping[str, str], name: str, missing: RejectReason) -> int:
    raw = metadata.get(name)
    if raw is None or raw == "":
        raise UpdateRejected(missing, f"metadata field {name!r} is missing")
    text = raw.strip()
    if _INTEGER.fullmatch(text) is None:
        invalid = (
            RejectReason.EXAMPLES_INVALID
            if name == "num_examples"
            else RejectReason.ROUND_INVALID
        )
        raise UpdateRejected(
            invalid,
            f"metadata field {name!r} = {raw[:80]!r} is not an integer "
            "of at most 18 digits",
        )
    return int(text)


def parse_metadata(
    metadata: Mapping[str, str], *, limits: ValidationLimits
) -> UpdateMetadata:
    """Check and convert the string metadata of an update.

    Raises
    ------
    UpdateRejected
        With the reason for the first field that is missing or invalid.
    """
    version = metadata.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise UpdateRejected(
            RejectReason.UNKNOWN_FORMAT_VERSION,
            f"format_version {version!r} is not one of "
            f"{sorted(SUPPORTED_FORMAT_VERSIONS)}",
        )
    if metadata.get("kind", "update") != "update":
        raise UpdateRejected(
            RejectReason.INVALID_METADATA,
            f"kind {metadata.get('kind')!r} is not 'update'",
        )
    round_number = _require_int(metadata, "round", RejectReason.ROUND_MISSING)
    num_examples = _require_int(metadata, "num_examples", RejectReason.EXAMPLES_MISSING)
    if not 1 <= num_examples <= limits.max_examples:
        raise UpdateRejected(
            RejectReason.EXAMPLES_INVALID,
            f"num_examples {num_examples} is outside 1..{limits.max_examples}",
        )
    digest = metadata.get("base_model_sha256", "")
    if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest):
        raise UpdateRejected(
            RejectReason.INVALID_METADATA,
            f"base_model_sha256 {digest[:80]!r} is not a 64-digit lowercase hex "
            "SHA-256",
        )
    return UpdateMetadata(
        round=round_number,
        device_id=metadata.get("device_id", ""),
        update_id=metadata.get("update_id", ""),
        num_examples=num_examples,
        base_model_sha256=digest,
        client_metrics=_parse_client_metrics(metadata.get("client_metrics", "{}")),
        format_version=version,
    )


def _parse_client_metrics(raw: str) -> dict[str, float]:
    try:
        value = jsontext.loads(raw)
    except ValueError as exc:
        raise UpdateRejected(
            RejectReason.INVALID_METADATA, f"client_metrics is not JSON: {exc}"
        ) from exc
    if not isinstance(value, dict) or len(value) > 32:
        raise UpdateRejected(
            RejectReason.INVALID_METADATA,
            "client_metrics is not a JSON object of at most 32 numbers",
        )
    metrics: dict[str, float] = {}
    for name, number in value.items():
        converted = _finite_float(number)
        if converted is None or len(name) > 64:
            raise UpdateRejected(
                RejectReason.INVALID_METADATA,
                f"client metric {name[:64]!r} = {repr(number)[:80]} is not a finite "
                "number with a name of at most 64 characters",
            )
        metrics[name] = converted
    return metrics


def _finite_float(number: object) -> float | None:
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        return None
    try:
        converted = float(number)
    except OverflowError:
        return None
    return converted if math.isfinite(converted) else None


def check_identity(metadata: UpdateMetadata, key: UpdateKey) -> None:
    """Reject an update whose metadata disagrees with its object key."""
    for field_name, in_key, in_metadata in (
        ("device_id", key.device_id, metadata.device_id),
        ("round", key.round, metadata.round),
        ("update_id", key.update_id, metadata.update_id),
    ):
        if in_key != in_metadata:
            raise UpdateRejected(
                RejectReason.IDENTITY_MISMATCH,
                f"{field_name} is {in_metadata!r} in the metadata "
                f"but {in_key!r} in the key",
            )


def check_round(metadata: UpdateMetadata, open_round: int) -> None:
    """Reject an update that was not trained for the open round."""
    if metadata.round < open_round:
        raise UpdateRejected(
            RejectReason.STALE_ROUND,
            f"update is for round {metadata.round} but round {open_round} is open",
        )
    if metadata.round > open_round:
        raise UpdateRejected(
            RejectReason.FUTURE_ROUND,
            f"update is for round {metadata.round} but round {open_round} is open",
        )


def sum_of_squares(array: np.ndarray) -> float:
    """Return the sum of the squared elements of ``array``, in float64.

    The elements are widened to float64 one chunk at a time, so the sum needs no
    float64 copy of the array. Squares beyond float64's range give ``inf``.
    """
    flat = np.asarray(array).reshape(-1)
    total = 0.0
    with np.errstate(over="ignore"):
        for start in range(0, flat.size, SQUARES_CHUNK_ELEMENTS):
            chunk = flat[start : start + SQUARES_CHUNK_ELEMENTS].astype(np.float64)
            total += float(np.dot(chunk, chunk))
    return total


def check_tensors(
    tensors: Mapping[str, np.ndarray],
    reference: Mapping[str, TensorSpec],
    *,
    max_norm: float | None,
) -> float:
    """Check names, shapes, dtypes and values against the global model.

    Returns
    -------
    float
        The L2 norm of the whole update, computed in float64.
    """
    missing = sorted(set(reference) - set(tensors))
    if missing:
        raise UpdateRejected(
            RejectReason.MISSING_TENSOR, f"tensors {missing[:10]} are missing"
        )
    extra = sorted(set(tensors) - set(reference))
    if extra:
        raise UpdateRejected(
            RejectReason.EXTRA_TENSOR,
            f"tensors {extra[:10]} are not in the global model",
        )
    squared = 0.0
    for name in sorted(reference):
        spec = reference[name]
        array = tensors[name]
        if tuple(array.shape) != spec.shape:
            raise UpdateRejected(
                RejectReason.SHAPE_MISMATCH,
                f"tensor {name!r} has shape {list(array.shape)}, "
                f"expected {list(spec.shape)}",
            )
        try:
            code = safetensors_io.dtype_code(array.dtype)
        except ValueError:
            code = str(array.dtype)
        if code != spec.dtype:
            raise UpdateRejected(
                RejectReason.DTYPE_MISMATCH,
                f"tensor {name!r} has dtype {code}, expected {spec.dtype}",
            )
        if array.dtype.kind == "f":
            squares = sum_of_squares(array)
            # A NaN or Inf makes the sum non-finite, so finite sums skip the
            # element-wise check and its boolean copy of the tensor.
            if not math.isfinite(squares) and not np.isfinite(array).all():
                raise UpdateRejected(
                    RejectReason.NON_FINITE, f"tensor {name!r} contains NaN or Inf"
                )
            squared += squares
    norm = math.sqrt(squared)
    if max_norm is not None and norm > max_norm:
        raise UpdateRejected(
            RejectReason.NORM_EXCEEDED,
            f"update L2 norm {norm:.6g} exceeds the bound {max_norm:.6g}",
        )
    return norm


def validate_update(
    data: bytes,
    *,
    key: UpdateKey,
    reference: Mapping[str, TensorSpec],
    open_round: int,
    base_model_sha256: str,
    limits: ValidationLimits,
) -> ValidatedUpdate:
    """Decode and check one uploaded update against the open round's global model.

    An encoded update is decoded to dense tensors first, and the returned
    :class:`ValidatedUpdate` contains the decoded tensors.

    Raises
    ------
    UpdateRejected
        With the first reason the update fails; nothing about the round changes.
        A malformed encoding is rejected with ``invalid_encoding``.
    """
    tensors, raw_metadata = safetensors_io.decode(
        data, max_header_bytes=limits.max_header_bytes
    )
    metadata = parse_metadata(raw_metadata, limits=limits)
    check_identity(metadata, key)
    check_round(metadata, open_round)
    if metadata.base_model_sha256 != base_model_sha256:
        raise UpdateRejected(
            RejectReason.BASE_MODEL_MISMATCH,
            f"update was trained from model {metadata.base_model_sha256[:12]}..., "
            f"but round {open_round} started from {base_model_sha256[:12]}...",
        )
    tensors = decode_update(tensors, raw_metadata, reference)
    norm = check_tensors(tensors, reference, max_norm=limits.max_update_norm)
    return ValidatedUpdate(metadata=metadata, tensors=tensors, norm=norm)
