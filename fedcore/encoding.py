"""Update encodings: how a device may compress the tensors of its update.

The ``encoding`` entry of an update's ``__metadata__`` names the encoding; a missing
entry means ``none``. Integer and bool tensors are never lossy-encoded: every
encoding stores them raw under their own names. Floating-point tensors are stored as
follows, with ``::`` reserved as the separator of auxiliary tensor names (so model
tensor names must not contain it):

``none``
    ``<name>``: the tensor itself, in the model's dtype.
``float16``
    ``<name>::f16``: F16, the model tensor's shape.
``q8``
    8-bit stochastic quantization per tensor. ``<name>::q8``: U8, the model tensor's
    shape. ``<name>::scale`` and ``<name>::offset``: F32 scalars (shape ``[]``).
    The value is ``offset + scale * q``, with ``offset`` the tensor's minimum and
    ``scale = (max - min) / 255`` rounded up, so each decoded element lies within
    one ``scale`` of the original. The rounding is unbiased: ``q`` is
    ``floor(t + u)`` for ``t = (x - offset) / scale`` and ``u`` uniform in [0, 1).
``topk`` and ``topk_q8``
    Top-k sparsification over all floating-point tensors together. They are viewed
    as one flat vector, concatenated in sorted name order, each flattened in C
    order. ``__flat__::indices``: U16, U32 or U64, the k positions kept, strictly
    increasing (sorted and unique), each below the vector's length.
    ``topk`` then stores ``__flat__::values``: F16, F32 or F64, shape ``[k]``.
    ``topk_q8`` stores the k values quantized as ``q8`` does:
    ``__flat__::q8`` (U8, ``[k]``), ``__flat__::scale`` and ``__flat__::offset``.
    Every other position decodes to zero. The device keeps what it did not send
    as an error-feedback residual and adds it to its next delta (see
    :class:`UpdateEncoder`).

With ``float16`` and ``q8`` a floating-point tensor may also be stored raw under its
own name, in the model's dtype. The sparse encodings use one group of auxiliary
tensors for the whole update, not one per tensor, because the safetensors header
costs about 70 bytes per tensor: for small models it would cost more than the values.

:func:`decode_update` is strict. Each model tensor must be present exactly once in
one form, each auxiliary tensor must have the dtype and shape above, indices must be
in range and strictly increasing, counts must agree, scales must be finite and
non-negative and offsets finite, and no other tensor may be present. Each violation
raises :class:`~fedcore.errors.UpdateRejected` with a specific reason. Every reader
of an update (validation at intake, aggregation at close) calls it, and it returns
dense tensors with the model's names, shapes and dtypes whatever the encoding.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedcore import safetensors_io
from fedcore.errors import RejectReason, UpdateRejected

if TYPE_CHECKING:
    from fedcore.update import TensorSpec

logger = logging.getLogger(__name__)

NONE = "none"
FLOAT16 = "float16"
Q8 = "q8"
TOPK = "topk"
TOPK_Q8 = "topk_q8"
ENCODINGS = (NONE, FLOAT16, Q8, TOPK, TOPK_Q8)
SPARSE_ENCODINGS = frozenset({TOPK, TOPK_Q8})
METADATA_KEY = "encoding"

# Values sent by the sparse encodings are float32 (or quantized from float32 bounds).
_FLOAT32_MAX = float(np.finfo(np.float32).max)

SEPARATOR = "::"
F16_SUFFIX = "::f16"
Q8_SUFFIX = "::q8"
SCALE_SUFFIX = "::scale"
OFFSET_SUFFIX = "::offset"
INDICES_SUFFIX = "::indices"
VALUES_SUFFIX = "::values"
# Base name of the auxiliary tensors of the sparse encodings.
FLAT = "__flat__"

Q8_LEVELS = 255
_FLOAT_CODES = frozenset({"F16", "F32", "F64"})
_INDEX_CODES = ("U16", "U32", "U64")
DEFAULT_TOPK_FRACTION = 0.01


def is_lossy(spec: TensorSpec) -> bool:
    """Tell whether an encoding may change a tensor of this spec (floats only)."""
    return spec.dtype in _FLOAT_CODES


def dequantize(
    codes: np.ndarray, scale: float, offset: float, dtype: npt.DTypeLike
) -> np.ndarray:
    """Return ``offset + scale * codes`` computed in float64 and cast to ``dtype``.

    The device computes its error-feedback residual with this function too, so it
    subtracts exactly the values the aggregator decodes.
    """
    wide = np.multiply(codes, float(scale), dtype=np.float64)
    wide += float(offset)
    result: np.ndarray = wide.astype(dtype, copy=False)
    return result


def quantize(
    values: np.ndarray, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], np.float32, np.float32]:
    """Quantize values to 8 bits with unbiased stochastic rounding.

    Returns
    -------
    tuple
        The codes, with the array's shape, and the float32 ``scale`` and ``offset``
        that :func:`dequantize` takes. Each decoded value is within ``scale`` of
        the original and equals it in expectation over the generator's draws.

    Raises
    ------
    ValueError
        If a value is NaN or infinite, or the range does not fit in float32.
    """
    wide = np.asarray(values, dtype=np.float64)
    if wide.size == 0:
        return np.zeros(wide.shape, dtype=np.uint8), np.float32(0), np.float32(0)
    low = float(wide.min())
    high = float(wide.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("cannot quantize NaN or infinite values")
    offset = np.float32(low)
    if float(offset) > low:
        offset = np.nextafter(offset, np.float32(-np.inf))
    scale = np.float32((high - float(offset)) / Q8_LEVELS)
    # Rounding scale up keeps every t = (x - offset) / scale within [0, 255].
    while float(scale) * Q8_LEVELS < high - float(offset):
        scale = np.nextafter(scale, np.float32(np.inf))
    if not (np.isfinite(offset) and np.isfinite(scale)):
        raise ValueError(f"value range [{low}, {high}] does not fit in float32")
    if scale == 0:
        return np.zeros(wide.shape, dtype=np.uint8), scale, offset
    steps = (wide - float(offset)) / float(scale)
    steps += rng.random(size=wide.shape)
    np.floor(steps, out=steps)
    np.clip(steps, 0, Q8_LEVELS, out=steps)
    return steps.astype(np.uint8), scale, offset


def index_dtype(length: int) -> np.dtype[np.generic]:
    """Return the smallest unsigned dtype that can hold positions below ``length``."""
    if length <= 1 << 16:
        return np.dtype(np.uint16)
    if length <= 1 << 32:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def _invalid(detail: str) -> UpdateRejected:
    return UpdateRejected(RejectReason.INVALID_ENCODING, detail)


def _require(
    tensors: Mapping[str, np.ndarray],
    name: str,
    codes: tuple[str, ...] | frozenset[str],
    shape: tuple[int, ...] | None,
) -> np.ndarray:
    """Return an auxiliary tensor after checking its presence, dtype and shape."""
    array = tensors.get(name)
    if array is None:
        raise _invalid(f"auxiliary tensor {name!r} is missing")
    code = safetensors_io.dtype_code(array.dtype)
    if code not in codes:
        raise _invalid(
            f"auxiliary tensor {name!r} has dtype {code}, expected one of "
            f"{sorted(codes)}"
        )
    if shape is not None and tuple(array.shape) != shape:
        raise _invalid(
            f"auxiliary tensor {name!r} has shape {list(array.shape)}, "
            f"expected {list(shape)}"
        )
    return array


def _scale_offset(tensors: Mapping[str, np.ndarray], base: str) -> tuple[float, float]:
    scale = float(_require(tensors, base + SCALE_SUFFIX, ("F32",), ()))
    offset = float(_require(tensors, base + OFFSET_SUFFIX, ("F32",), ()))
    if not (math.isfinite(scale) and scale >= 0):
        raise _invalid(
            f"{base + SCALE_SUFFIX!r} is {scale!r}, expected a finite number >= 0"
        )
    if not math.isfinite(offset):
        raise _invalid(f"{base + OFFSET_SUFFIX!r} is {offset!r}, expected finite")
    return scale, offset


def _dense_names(encoding: str, name: str) -> tuple[str, ...]:
    if encoding == FLOAT16:
        return (name + F16_SUFFIX,)
    return (name + Q8_SUFFIX, name + SCALE_SUFFIX, name + OFFSET_SUFFIX)


def _decode_dense(
    tensors: Mapping[str, np.ndarray], encoding: str, name: str, spec: TensorSpec
) -> np.ndarray:
    """Decode one float tensor of a ``float16`` or ``q8`` update."""
    dtype = safetensors_io.DTYPES[spec.dtype]
    if encoding == FLOAT16:
        half = _require(tensors, name + F16_SUFFIX, ("F16",), spec.shape)
        return half.astype(dtype)
    codes = _require(tensors, name + Q8_SUFFIX, ("U8",), spec.shape)
    scale, offset = _scale_offset(tensors, name)
    return dequantize(codes, scale, offset, dtype)


def _decode_flat(
    tensors: Mapping[str, np.ndarray],
    encoding: str,
    floats: list[tuple[str, TensorSpec]],
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Scatter the kept values of a sparse update into dense float tensors."""
    length = sum(math.prod(spec.shape) for _, spec in floats)
    indices = _require(tensors, FLAT + INDICES_SUFFIX, _INDEX_CODES, None)
    if indices.ndim != 1:
        raise _invalid(
            f"{FLAT + INDICES_SUFFIX!r} has shape {list(indices.shape)}, "
            "expected one dimension"
        )
    count = int(indices.shape[0])
    if count > length:
        raise _invalid(
            f"{count} indices for {length} floating-point values, expected at most "
            f"{length}"
        )
    if count > 1 and not bool(np.all(indices[1:] > indices[:-1])):
        raise _invalid(
            f"{FLAT + INDICES_SUFFIX!r} is not strictly increasing: indices must be "
            "sorted and unique"
        )
    if count and int(indices[-1]) >= length:
        raise _invalid(
            f"index {int(indices[-1])} is out of range for {length} "
            "floating-point values"
        )
    if encoding == TOPK:
        used = {FLAT + INDICES_SUFFIX, FLAT + VALUES_SUFFIX}
        values = _require(tensors, FLAT + VALUES_SUFFIX, _FLOAT_CODES, (count,))
        scale = offset = 0.0
    else:
        used = {FLAT + INDICES_SUFFIX, FLAT + Q8_SUFFIX}
        used |= {FLAT + SCALE_SUFFIX, FLAT + OFFSET_SUFFIX}
        values = _require(tensors, FLAT + Q8_SUFFIX, ("U8",), (count,))
        scale, offset = _scale_offset(tensors, FLAT)
    positions = indices.astype(np.int64)
    decoded: dict[str, np.ndarray] = {}
    start = 0
    for name, spec in floats:
        size = math.prod(spec.shape)
        dtype = safetensors_io.DTYPES[spec.dtype]
        low, high = np.searchsorted(positions, [start, start + size])
        dense = np.zeros(size, dtype=dtype)
        chunk = values[low:high]
        if encoding == TOPK_Q8:
            chunk = dequantize(chunk, scale, offset, dtype)
        dense[positions[low:high] - start] = chunk
        decoded[name] = dense.reshape(spec.shape)
        start += size
    return decoded, used


def decode_update(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
    reference: Mapping[str, TensorSpec],
) -> dict[str, np.ndarray]:
    """Return the dense tensors of an update stored with any supported encoding.

    Raw tensors are returned as they are, so the caller still checks their names,
    shapes, dtypes and values against the model.

    Raises
    ------
    UpdateRejected
        ``invalid_encoding`` if the ``encoding`` metadata names no supported
        encoding or an auxiliary tensor is malformed (see the module docstring),
        ``missing_tensor`` if a model tensor is present in no form, and
        ``extra_tensor`` if a tensor belongs to no model tensor.
    """
    encoding = metadata.get(METADATA_KEY, NONE)
    if encoding not in ENCODINGS:
        raise _invalid(f"encoding {encoding[:40]!r} is not one of {list(ENCODINGS)}")
    if encoding == NONE:
        return dict(tensors)
    decoded: dict[str, np.ndarray] = {}
    used: set[str] = set()
    floats: list[tuple[str, TensorSpec]] = []
    for name in sorted(reference):
        spec = reference[name]
        if not is_lossy(spec):
            if name not in tensors:
                raise UpdateRejected(
                    RejectReason.MISSING_TENSOR, f"tensor {name!r} is missing"
                )
            decoded[name] = tensors[name]
            used.add(name)
        elif encoding in SPARSE_ENCODINGS:
            floats.append((name, spec))
        else:
            encoded = [aux for aux in _dense_names(encoding, name) if aux in tensors]
            if name in tensors and encoded:
                raise _invalid(
                    f"tensor {name!r} is present twice: raw and as {encoded}"
                )
            if name in tensors:
                decoded[name] = tensors[name]
                used.add(name)
            elif encoded:
                decoded[name] = _decode_dense(tensors, encoding, name, spec)
                used.update(_dense_names(encoding, name))
            else:
                raise UpdateRejected(
                    RejectReason.MISSING_TENSOR,
                    f"tensor {name!r} is missing in every form of {encoding}",
                )
    if floats:
        dense, flat_names = _decode_flat(tensors, encoding, floats)
        decoded.update(dense)
        used |= flat_names
    extra = sorted(set(tensors) - used)
    if extra:
        raise UpdateRejected(
            RejectReason.EXTRA_TENSOR,
            f"tensors {extra[:10]} are not part of a {encoding} update of this model",
        )
    return decoded


class UpdateEncoder:
    """Encode a device's deltas, keeping the top-k error-feedback residual.

    Parameters
    ----------
    encoding
        One of :data:`ENCODINGS`.
    topk_fraction
        Share of the floating-point values that ``topk`` and ``topk_q8`` send, in
        (0, 1]; at least one value is sent.
    seed
        Seed of the generator behind ``q8``'s stochastic rounding; ``None`` seeds
        from the operating system.

    Notes
    -----
    With a sparse encoding, :meth:`encode` adds the residual to the delta, sends the
    k entries of largest magnitude and computes the next residual as the sum minus
    the decoded values sent. That residual only replaces the current one when
    :meth:`commit` is called, so a device calls it after the upload succeeded.
    The residual is kept in float64.
    """

    def __init__(
        self,
        encoding: str = NONE,
        *,
        topk_fraction: float = DEFAULT_TOPK_FRACTION,
        seed: int | None = None,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(
                f"unknown encoding {encoding!r}: expected one of {list(ENCODINGS)}"
            )
        if not 0 < topk_fraction <= 1:
            raise ValueError(
                f"topk_fraction is {topk_fraction!r}: expected a number in (0, 1]"
            )
        self.encoding = encoding
        self.topk_fraction = float(topk_fraction)
        self._rng = np.random.default_rng(seed)
        self._residual: dict[str, np.ndarray] | None = None
        self._pending: dict[str, np.ndarray] | None = None

    @property
    def residual(self) -> dict[str, np.ndarray] | None:
        """The committed error-feedback residual per tensor, or ``None``."""
        return self._residual

    def set_residual(self, residual: Mapping[str, np.ndarray] | None) -> None:
        """Replace the committed residual, for example with one read from a file."""
        self._residual = (
            None
            if residual is None
            else {n: np.asarray(a, np.float64) for n, a in residual.items()}
        )
        self._pending = None

    def commit(self) -> bool:
        """Make the residual of the last :meth:`encode` the current one.

        Returns
        -------
        bool
            True if a new residual was committed.
        """
        if self._pending is None:
            return False
        self._residual = self._pending
        self._pending = None
        return True

    def encode(
        self, delta: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Encode one delta.

        Returns
        -------
        tuple
            The tensors to store and the metadata entries to add (none for ``none``).

        Raises
        ------
        ValueError
            If a tensor name contains ``::``, or a value cannot be encoded (NaN,
            infinite, or out of float16's range for ``float16``).
        """
        for name in delta:
            if SEPARATOR in name:
                raise ValueError(
                    f"tensor name {name!r} contains {SEPARATOR!r}, which is reserved "
                    "for auxiliary tensors; rename the tensor to encode it"
                )
        if self.encoding == NONE:
            return dict(delta), {}
        metadata = {METADATA_KEY: self.encoding}
        arrays = {name: np.asarray(delta[name]) for name in sorted(delta)}
        floats = {n: a for n, a in arrays.items() if a.dtype.kind == "f"}
        tensors = {n: a for n, a in arrays.items() if a.dtype.kind != "f"}
        if self.encoding in SPARSE_ENCODINGS:
            tensors.update(self._encode_sparse(floats))
            return tensors, metadata
        for name, array in floats.items():
            if self.encoding == FLOAT16:
                with np.errstate(over="ignore"):
                    half = array.astype(np.float16)
                if not np.isfinite(half).all():
                    raise ValueError(
                        f"tensor {name!r} has values outside float16's range "
                        "(65504) or NaN; use another encoding"
                    )
                tensors[name + F16_SUFFIX] = half
            else:
                codes, scale, offset = quantize(array, self._rng)
                tensors[name + Q8_SUFFIX] = codes
                tensors[name + SCALE_SUFFIX] = np.asarray(scale, np.float32)
                tensors[name + OFFSET_SUFFIX] = np.asarray(offset, np.float32)
        return tensors, metadata

    def _encode_sparse(self, floats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        residual = self._residual
        if residual is not None and {n: a.shape for n, a in residual.items()} != {
            n: a.shape for n, a in floats.items()
        }:
            logger.warning(
                "discarding the error-feedback residual: its tensors differ from "
                "the delta's (the model changed shape)"
            )
            residual = None
        parts = [
            np.ravel(array).astype(np.float64)
            if residual is None
            else np.ravel(array) + np.ravel(residual[name])
            for name, array in floats.items()
        ]
        total = np.concatenate(parts) if parts else np.zeros(0)
        if not np.isfinite(total).all():
            raise ValueError("the delta plus the residual contains NaN or Inf")
        count = min(total.size, max(1, math.ceil(self.topk_fraction * total.size)))
        kept = np.argpartition(np.abs(total), total.size - count)[total.size - count :]
        kept.sort()
        selected = total[kept]
        largest = float(np.abs(selected).max()) if selected.size else 0.0
        if largest > _FLOAT32_MAX:
            raise ValueError(
                f"the delta plus the residual has a value of magnitude {largest:.3g}, "
                "beyond float32's range"
            )
        out: dict[str, np.ndarray] = {
            FLAT + INDICES_SUFFIX: kept.astype(index_dtype(total.size))
        }
        if self.encoding == TOPK:
            sent = selected.astype(np.float32)
            out[FLAT + VALUES_SUFFIX] = sent
        else:
            codes, scale, offset = quantize(selected, self._rng)
            out[FLAT + Q8_SUFFIX] = codes
            out[FLAT + SCALE_SUFFIX] = np.asarray(scale, np.float32)
            out[FLAT + OFFSET_SUFFIX] = np.asarray(offset, np.float32)
            sent = dequantize(codes, float(scale), float(offset), np.float32)
        # The residual is what the aggregator will not see: the sum minus the
        # decoded values sent, which are zero outside the kept positions.
        total[kept] -= sent.astype(np.float64)
        pending: dict[str, np.ndarray] = {}
        start = 0
        for name, array in floats.items():
            pending[name] = total[start : start + array.size].reshape(array.shape)
            start += array.size
        self._pending = pending
        return out
