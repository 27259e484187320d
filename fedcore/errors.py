"""Exceptions of the cloud-neutral core."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Reason an uploaded update was rejected, also used as a metric dimension."""

    NOT_SAFETENSORS = "not_safetensors"
    TRUNCATED = "truncated"
    HEADER_TOO_LARGE = "header_too_large"
    OFFSETS_OUT_OF_RANGE = "offsets_out_of_range"
    UNKNOWN_FORMAT_VERSION = "unknown_format_version"
    MISSING_TENSOR = "missing_tensor"
    EXTRA_TENSOR = "extra_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    EXAMPLES_MISSING = "examples_missing"
    EXAMPLES_INVALID = "examples_invalid"
    ROUND_MISSING = "round_missing"
    ROUND_INVALID = "round_invalid"
    STALE_ROUND = "stale_round"
    FUTURE_ROUND = "future_round"
    IDENTITY_MISMATCH = "identity_mismatch"
    BASE_MODEL_MISMATCH = "base_model_mismatch"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    TOO_LARGE = "too_large"
    DUPLICATE_DEVICE = "duplicate_device"
    INVALID_KEY = "invalid_key"
    INVALID_METADATA = "invalid_metadata"
    INVALID_ENCODING = "invalid_encoding"
    # The object cannot be read: it or its version was deleted, it was archived, or
    # it was encrypted with a key the aggregator does not have.
    UNREADABLE = "unreadable"


class FedCoreError(Exception):
    """Base class of the core's exceptions."""


class LayoutError(FedCoreError, ValueError):
    """An object key or id that does not follow the key layout."""


class UpdateRejected(FedCoreError):
    """An update that failed validation.

    Parameters
    ----------
    reason
        The machine-readable reason, used as the ``Reason`` metric dimension.
    detail
        A sentence naming the offending value and what was expected. Details longer
        than ``MAX_DETAIL_CHARS`` are cut, because they quote uploaded values.
    """

    MAX_DETAIL_CHARS = 1000

    def __init__(self, reason: RejectReason, detail: str) -> None:
        if len(detail) > self.MAX_DETAIL_CHARS:
            detail = detail[: self.MAX_DETAIL_CHARS - 3] + "..."
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class FormatError(UpdateRejected):
    """A byte string that is not a valid safetensors file of this format."""


class AggregationError(FedCoreError):
    """A round that cannot be aggregated, for example with a total weight of zero."""
