"""The global model pointer and the global model download, with their checks.

:func:`read_pointer` reads ``global/pointer.json`` from the models bucket, which
names the open round, the key of its global model and that model's SHA-256.
:func:`fetch_global_model` downloads the model with S3 checksum validation, checks
its SHA-256 against the pointer and decodes it with :func:`decode_model`.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_client.errors import ModelFormatError, ModelIntegrityError, PointerError
from edge_client.s3_access import get_object, object_location, read_body
from fedcore import jsontext, layout, models, safetensors_io
from fedcore.errors import FedCoreError
from fedcore.update import FORMAT_VERSION

logger = logging.getLogger(__name__)

POINTER_FORMAT_VERSION = "1"
DEFAULT_MAX_MODEL_BYTES = 256 * 1024 * 1024
_ROUND = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class Pointer:
    """Contents of ``global/pointer.json``: the open round and its global model."""

    round: int
    model_key: str
    model_sha256: str
    published_at: str = ""


@dataclass(frozen=True)
class GlobalModel:
    """A downloaded and verified global model."""

    round: int
    tensors: dict[str, npt.NDArray[np.float32]]
    sha256: str
    key: str
    spec: models.ModelSpec
    # FedProx's proximal weight from the model's metadata; None when it names none.
    proximal_mu: float | None = None

    @property
    def architecture(self) -> str:
        """``"mlp"`` or ``"softmax"``."""
        return self.spec.architecture


def read_pointer(s3: Any, bucket: str, *, device_id: str) -> Pointer:
    """Read and check ``global/pointer.json`` in ``bucket``.

    Raises
    ------
    PointerNotFoundError
        If no pointer exists yet.
    PointerError
        If the pointer is not valid JSON of the pointer format.
    StorageError
        If the download fails; :class:`NetworkError` for connection errors.
    """
    key = layout.POINTER_KEY
    where = object_location(bucket, key, device_id)
    response = get_object(s3, bucket, key, device_id=device_id)
    if int(response.get("ContentLength", 0)) > 64 * 1024:
        raise PointerError(f"{where} is larger than 64 KiB")
    return parse_pointer(read_body(response, bucket, key, device_id=device_id), where)


def fetch_global_model(
    s3: Any, bucket: str, *, device_id: str, max_model_bytes: int
) -> GlobalModel:
    """Download the open round's global model and verify it against the pointer.

    Parameters
    ----------
    s3
        A boto3 S3 client.
    bucket
        Models bucket with ``global/pointer.json`` and the global models.
    device_id
        Device named in error messages.
    max_model_bytes
        Largest global model file to download.

    Raises
    ------
    ModelIntegrityError
        If the file's SHA-256 differs from the pointer's ``model_sha256``, or S3
        reports a checksum mismatch; the model is not used.
    ModelFormatError
        If the file is not a float32 safetensors model of this format, or its
        metadata disagrees with the pointer.
    PointerError, StorageError
        As for :func:`read_pointer`, and if the model download fails.
    """
    pointer = read_pointer(s3, bucket, device_id=device_id)
    where = object_location(bucket, pointer.model_key, device_id)
    response = get_object(
        s3, bucket, pointer.model_key, device_id=device_id, ChecksumMode="ENABLED"
    )
    size = int(response.get("ContentLength", 0))
    if size > max_model_bytes:
        raise ModelFormatError(
            f"{where} has {size} bytes, more than the limit of "
            f"{max_model_bytes}; raise max_model_bytes if this is expected"
        )
    data = read_body(response, bucket, pointer.model_key, device_id=device_id)
    digest = hashlib.sha256(data).hexdigest()
    if digest != pointer.model_sha256:
        raise ModelIntegrityError(
            f"{where} has SHA-256 {digest} but the pointer for round "
            f"{pointer.round} expects {pointer.model_sha256}; not training on it. "
            "The model may have been replaced or corrupted: try again after the "
            "next publish, or alert the federation operator"
        )
    tensors, spec, proximal_mu = decode_model(data, pointer.round, where)
    logger.info(
        "fetched global model of round %d from %s (%d bytes, %s, sha256 %s)",
        pointer.round,
        where,
        len(data),
        spec.architecture,
        digest[:12],
    )
    return GlobalModel(
        pointer.round, tensors, digest, pointer.model_key, spec, proximal_mu
    )


def parse_pointer(data: bytes, where: str) -> Pointer:
    """Parse the JSON of ``global/pointer.json``.

    Raises
    ------
    PointerError
        Naming the first field that is missing or invalid.
    """
    try:
        document = jsontext.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise PointerError(f"{where} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise PointerError(f"{where} is not a JSON object")
    version = document.get("format_version")
    if version != POINTER_FORMAT_VERSION:
        raise PointerError(
            f"{where} has format_version {version!r}, expected "
            f"{POINTER_FORMAT_VERSION!r}; upgrade the edge client"
        )
    round_number = document.get("round")
    if (
        not isinstance(round_number, int)
        or isinstance(round_number, bool)
        or not 0 <= round_number <= layout.MAX_ROUND
    ):
        raise PointerError(
            f"{where} has round {round_number!r}, expected an integer in "
            f"0..{layout.MAX_ROUND}"
        )
    model_key = document.get("model_key")
    if not isinstance(model_key, str) or not model_key:
        raise PointerError(f"{where} has model_key {model_key!r}, expected a key")
    digest = document.get("model_sha256")
    if not isinstance(digest, str) or not _is_sha256_hex(digest):
        raise PointerError(
            f"{where} has model_sha256 {digest!r}, expected 64 hex digits"
        )
    published_at = document.get("published_at", "")
    return Pointer(round_number, model_key, digest.lower(), str(published_at))


def _is_sha256_hex(text: str) -> bool:
    if len(text) != 64:
        return False
    try:
        binascii.unhexlify(text)
    except binascii.Error:
        return False
    return True


def decode_model(
    data: bytes, round_number: int, where: str
) -> tuple[dict[str, npt.NDArray[np.float32]], models.ModelSpec, float | None]:
    """Decode a global model file and check its metadata and tensors.

    Returns
    -------
    tuple
        Writable float32 copies of the tensors, the model's architecture and
        sizes, and the ``proximal_mu`` its metadata names (None if absent).

    Raises
    ------
    ModelFormatError
        If the file is not safetensors, its metadata lacks ``format_version`` 1,
        ``kind`` model, the ``architecture`` of its tensors or ``round_number``, or
        a tensor is not float32, or its ``proximal_mu`` is not a finite number >= 0.
    """
    try:
        raw, metadata = safetensors_io.decode(data)
    except FedCoreError as exc:
        raise ModelFormatError(
            f"{where} is not a valid safetensors file: {exc}"
        ) from exc
    try:
        spec = models.describe(raw)
    except models.ModelError as exc:
        raise ModelFormatError(f"{where} is not a supported model: {exc}") from exc
    expected = {
        "format_version": FORMAT_VERSION,
        "kind": "model",
        "architecture": spec.architecture,
    }
    for name, value in expected.items():
        if metadata.get(name) != value:
            raise ModelFormatError(
                f"{where} has metadata {name}={metadata.get(name)!r}, expected "
                f"{value!r}; the published model and the pointer disagree"
            )
    # A model starts the round in its metadata. When a round is abandoned, the
    # pointer moves to the next round and keeps the same model, so the model's
    # round may be lower than the pointer's, never higher.
    model_round = metadata.get("round", "")
    valid = _ROUND.fullmatch(model_round) is not None
    if not valid or int(model_round) > round_number:
        raise ModelFormatError(
            f"{where} has metadata round={model_round!r}, expected a round number "
            f"no later than the pointer's {round_number}; the published model and "
            "the pointer disagree"
        )
    for name, array in raw.items():
        if array.dtype != np.float32:
            raise ModelFormatError(
                f"{where}: tensor {name!r} has dtype {array.dtype}, expected float32"
            )
    tensors = {name: np.array(array, dtype=np.float32) for name, array in raw.items()}
    return tensors, spec, _proximal_mu(metadata, where)


def _proximal_mu(metadata: dict[str, str], where: str) -> float | None:
    text = metadata.get("proximal_mu")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ModelFormatError(
            f"{where} has metadata proximal_mu={text[:40]!r}, expected a finite "
            "number >= 0"
        )
    return value
