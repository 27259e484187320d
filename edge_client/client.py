"""The device side of a round: download the global model, train, upload the update.

The steps of a round on a device:

1. Read ``global/pointer.json`` from the models bucket. Its ``round`` is the open
   round and its ``model_key`` the global model to train from.
2. Download that model with S3 checksum validation, and check its SHA-256 against the
   pointer's ``model_sha256``. A mismatch stops the round before any training.
3. Train locally and upload the difference between the trained and the global weights
   to ``updates/<device>/round-<R>/<update_id>.safetensors`` in the updates bucket,
   as a conditional write (``If-None-Match: *``) so that no upload ever overwrites.
   The difference may be compressed with an encoding of :mod:`fedcore.encoding`.
   With ``topk`` or ``topk_q8`` the values not sent stay on the device as an
   error-feedback residual, in memory and optionally in a local safetensors file,
   and are added to the next round's difference.

Network loss: botocore's standard retry mode retries every S3 call on connection
errors, timeouts, throttling and 5xx responses, with exponential backoff. When a
download still fails, :class:`~edge_client.errors.NetworkError` is raised and nothing
is trained or uploaded. When an upload fails that way, the request may have reached
S3, so the client sends the same bytes to the same key again; a 412 response then
means an earlier attempt stored the object, which the client confirms by comparing
the stored SHA-256 checksum with its own.

NOTE: when every upload attempt fails, the update may still be stored. Running the
round again uploads a second update under a new update id, so the aggregator may then
see two updates from this device for the same round.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from edge_client.errors import (
    ModelFormatError,
    ModelIntegrityError,
    ModelMismatchError,
    NetworkError,
    PointerError,
    PointerNotFoundError,
    RoundTimeoutError,
    StorageError,
    TrainingError,
    UploadConflictError,
)
from edge_client.trainers import Trainer
from fedcore import encoding as encoding_module
from fedcore import jsontext, layout, models, safetensors_io
from fedcore.errors import FedCoreError
from fedcore.update import FORMAT_VERSION, UpdateMetadata, specs_of

logger = logging.getLogger(__name__)

POINTER_FORMAT_VERSION = "1"
RESIDUAL_KIND = "residual"
DEFAULT_MAX_MODEL_BYTES = 256 * 1024 * 1024
MAX_CLIENT_METRICS = 32
_NETWORK_ERRORS = (BotoConnectionError, HTTPClientError)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
# S3 returns 409 ConditionalRequestConflict while another conditional write to the
# same key is in flight; the write may be retried.
_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "409"})
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

    @property
    def architecture(self) -> str:
        """``"mlp"`` or ``"softmax"``."""
        return self.spec.architecture


@dataclass(frozen=True)
class UploadResult:
    """Outcome of one device's upload for one round."""

    bucket: str
    key: str
    round: int
    update_id: str
    size_bytes: int
    sha256: str
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    already_stored: bool = False


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_retries: int = 4,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Any:
    """Create an S3 client with standard-mode retries and explicit timeouts.

    Parameters
    ----------
    endpoint_url
        S3 endpoint, for example a local S3 on ``http://127.0.0.1:<port>``; ``None``
        uses AWS.
    region
        AWS region; ``None`` uses ``AWS_REGION``/``AWS_DEFAULT_REGION`` or the profile.
    max_retries
        Retries after the first attempt of each request. botocore's retry setting
        ``max_attempts`` counts retries only, so a request is sent at most
        ``max_retries + 1`` times.
    connect_timeout, read_timeout
        Seconds before a connection attempt or a read counts as failed and is retried.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": max_retries},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = boto3.session.Session()
    return session.client(
        "s3", region_name=region, endpoint_url=endpoint_url, config=config
    )


class EdgeClient:
    """Take part in federated rounds as one device.

    Parameters
    ----------
    device_id
        This device's id: 1-64 letters, digits, ``.``, ``_`` or ``-``.
    updates_bucket
        Bucket the device uploads its updates to.
    models_bucket
        Bucket with ``global/pointer.json`` and the global models.
    trainer
        Local model; it receives the global weights at the start of every round.
    s3_client
        A boto3 S3 client; when ``None`` one is made by :func:`make_s3_client` from
        ``endpoint_url``, ``region`` and ``max_retries``.
    architecture
        When given, the global model must have this architecture.
    upload_attempts
        Times the same upload is sent when it fails with a connection error or
        timeout after botocore's own retries.
    retry_delay
        Seconds before the second upload attempt, doubled for each further one.
    max_model_bytes
        Largest global model file the client downloads.
    encoding
        Encoding of the uploaded updates, one of :data:`fedcore.encoding.ENCODINGS`.
    topk_fraction
        Share of the values sent by ``topk`` and ``topk_q8``, in (0, 1].
    encoding_seed
        Seed of ``q8``'s stochastic rounding; ``None`` seeds from the system.
    residual_path
        Local safetensors file that keeps the top-k error-feedback residual across
        restarts. It is read when the client is created, if it exists, and
        replaced after every successful upload. ``None`` keeps it in memory only.
    """

    def __init__(
        self,
        *,
        device_id: str,
        updates_bucket: str,
        models_bucket: str,
        trainer: Trainer,
        s3_client: Any | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_retries: int = 4,
        architecture: str | None = None,
        upload_attempts: int = 3,
        retry_delay: float = 1.0,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        encoding: str = "none",
        topk_fraction: float = 0.01,
        encoding_seed: int | None = None,
        residual_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not layout.DEVICE_ID_PATTERN.match(device_id):
            raise ValueError(
                f"invalid device id {device_id!r}: expected 1-64 characters of "
                "letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if architecture is not None and architecture not in models.ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {architecture!r}: "
                f"expected one of {list(models.ARCHITECTURES)}"
            )
        if upload_attempts < 1:
            raise ValueError(f"upload_attempts is {upload_attempts}: expected >= 1")
        self.encoder = encoding_module.UpdateEncoder(
            encoding, topk_fraction=topk_fraction, seed=encoding_seed
        )
        self.residual_path = None if residual_path is None else Path(residual_path)
        if self.residual_path is not None:
            self.encoder.set_residual(load_residual(self.residual_path))
        self.device_id = device_id
        self.updates_bucket = updates_bucket
        self.models_bucket = models_bucket
        self.trainer = trainer
        self.architecture = architecture
        self.upload_attempts = upload_attempts
        self.retry_delay = retry_delay
        self.max_model_bytes = max_model_bytes
        if s3_client is None:
            s3_client = make_s3_client(
                endpoint_url=endpoint_url, region=region, max_retries=max_retries
            )
        self.s3 = s3_client

    def _where(self, bucket: str, key: str) -> str:
        return f"s3://{bucket}/{key} (device {self.device_id})"

    def _get(self, bucket: str, key: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self.s3.get_object(
                Bucket=bucket, Key=key, **kwargs
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES and key == layout.POINTER_KEY:
                raise PointerNotFoundError(
                    f"no global model is published: {self._where(bucket, key)} "
                    "not found; start the federation or check the models bucket name"
                ) from exc
            raise StorageError(
                f"download of {self._where(bucket, key)} failed: {code or exc}"
            ) from exc
        except _NETWORK_ERRORS as exc:
            raise NetworkError(
                f"download of {self._where(bucket, key)} failed after retries: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"download of {self._where(bucket, key)} failed: {exc}"
            ) from exc
        return response

    def _read_body(self, response: Mapping[str, Any], bucket: str, key: str) -> bytes:
        try:
            body: bytes = response["Body"].read()
        except (*_NETWORK_ERRORS, IncompleteReadError) as exc:
            raise NetworkError(
                f"download of {self._where(bucket, key)} was cut off: {exc}"
            ) from exc
        except FlexibleChecksumError as exc:
            raise ModelIntegrityError(
                f"download of {self._where(bucket, key)} failed the S3 checksum "
                f"check: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"download of {self._where(bucket, key)} failed: {exc}"
            ) from exc
        return body

    def read_pointer(self) -> Pointer:
        """Read and check ``global/pointer.json``.

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
        response = self._get(self.models_bucket, key)
        if int(response.get("ContentLength", 0)) > 64 * 1024:
            raise PointerError(
                f"{self._where(self.models_bucket, key)} is larger than 64 KiB"
            )
        return parse_pointer(
            self._read_body(response, self.models_bucket, key),
            self._where(self.models_bucket, key),
        )

    def fetch_global_model(self) -> GlobalModel:
        """Download the open round's global model and verify it against the pointer.

        Raises
        ------
        ModelIntegrityError
            If the file's SHA-256 differs from the pointer's ``model_sha256``, or S3
            reports a checksum mismatch; the model is not used.
        ModelFormatError
            If the file is not a float32 safetensors model of this format, or its
            metadata disagrees with the pointer.
        PointerError, StorageError
            As for :meth:`read_pointer`, and if the model download fails.
        """
        pointer = self.read_pointer()
        bucket = self.models_bucket
        where = self._where(bucket, pointer.model_key)
        response = self._get(bucket, pointer.model_key, ChecksumMode="ENABLED")
        size = int(response.get("ContentLength", 0))
        if size > self.max_model_bytes:
            raise ModelFormatError(
                f"{where} has {size} bytes, more than the limit of "
                f"{self.max_model_bytes}; raise max_model_bytes if this is expected"
            )
        data = self._read_body(response, bucket, pointer.model_key)
        digest = hashlib.sha256(data).hexdigest()
        if digest != pointer.model_sha256:
            raise ModelIntegrityError(
                f"{where} has SHA-256 {digest} but the pointer for round "
                f"{pointer.round} expects {pointer.model_sha256}; not training on it. "
                "The model may have been replaced or corrupted: try again after the "
                "next publish, or alert the federation operator"
            )
        tensors, spec = decode_model(data, pointer.round, where)
        logger.info(
            "fetched global model of round %d from %s (%d bytes, %s, sha256 %s)",
            pointer.round,
            where,
            len(data),
            spec.architecture,
            digest[:12],
        )
        return GlobalModel(pointer.round, tensors, digest, pointer.model_key, spec)

    def train_round(
        self, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]
    ) -> UploadResult:
        """Train on the open round's global model and upload the update.

        Raises
        ------
        ModelMismatchError
            If the global model does not have the expected architecture, or does not
            fit the local data's feature count or labels.
        TrainingError
            If training fails or produces non-finite weights.
        UploadConflictError
            If the update key already contains different bytes.
        EdgeClientError
            Any other error of :meth:`fetch_global_model` and :meth:`upload_update`.
        """
        model = self.fetch_global_model()
        self._check_fit(model, x, y)
        self.trainer.set_weights(model.tensors)
        metrics = self.trainer.fit(x, y)
        delta = weight_delta(self.trainer.get_weights(), model.tensors)
        update_id = uuid.uuid4().hex
        key = layout.update_key(self.device_id, model.round, update_id)
        client_metrics = _finite_metrics(metrics)
        metadata = UpdateMetadata(
            round=model.round,
            device_id=self.device_id,
            update_id=update_id,
            num_examples=int(y.shape[0]),
            base_model_sha256=model.sha256,
            client_metrics=client_metrics,
        )
        try:
            tensors, extra = self.encoder.encode(delta)
        except ValueError as exc:
            raise TrainingError(
                f"the update of round {model.round} cannot be encoded as "
                f"{self.encoder.encoding}: {exc}"
            ) from exc
        body = safetensors_io.encode(tensors, {**metadata.to_strings(), **extra})
        already_stored = self.upload_update(key, body)
        if self.encoder.commit() and self.residual_path is not None:
            residual = self.encoder.residual
            assert residual is not None
            save_residual(self.residual_path, residual, self.encoder.encoding)
        logger.info(
            "device %s uploaded its update for round %d to s3://%s/%s "
            "(%d bytes, %s, %d examples, loss %.4f, accuracy %.4f)",
            self.device_id,
            model.round,
            self.updates_bucket,
            key,
            len(body),
            self.encoder.encoding,
            metadata.num_examples,
            client_metrics.get("loss", math.nan),
            client_metrics.get("accuracy", math.nan),
        )
        return UploadResult(
            bucket=self.updates_bucket,
            key=key,
            round=model.round,
            update_id=update_id,
            size_bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            num_examples=metadata.num_examples,
            metrics=client_metrics,
            already_stored=already_stored,
        )

    def _check_fit(
        self, model: GlobalModel, x: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> None:
        spec = model.spec
        if self.architecture is not None and spec.architecture != self.architecture:
            raise ModelMismatchError(
                f"the global model of round {model.round} ({model.key}) is "
                f"{spec.architecture!r}, but this device expects {self.architecture!r}"
            )
        if x.ndim != 2 or x.shape[1] != spec.input_dim:
            raise ModelMismatchError(
                f"local data has shape {list(x.shape)} but the global model of round "
                f"{model.round} expects {spec.input_dim} features per example"
            )
        if y.shape != (x.shape[0],):
            raise ModelMismatchError(
                f"local data has {x.shape[0]} examples but {list(y.shape)} labels"
            )
        if y.size == 0:
            raise ModelMismatchError("local data has no examples to train on")
        if y.min() < 0 or y.max() >= spec.classes:
            raise ModelMismatchError(
                f"local labels span {int(y.min())}..{int(y.max())} but the global "
                f"model of round {model.round} has classes 0..{spec.classes - 1}"
            )

    def upload_update(self, key: str, body: bytes) -> bool:
        """Store ``body`` at ``key`` in the updates bucket without overwriting.

        A connection error or timeout after botocore's retries leads to the same
        request again, up to ``upload_attempts`` times in all.

        Returns
        -------
        bool
            ``False`` when this call stored the object, ``True`` when an earlier
            attempt had already stored these exact bytes (412 with an equal
            SHA-256 checksum).

        Raises
        ------
        UploadConflictError
            If the key contains different bytes, which are left as they are.
        NetworkError
            If every attempt failed with a connection error or timeout. The update
            may or may not be stored.
        StorageError
            If S3 rejects the upload, for example with AccessDenied.
        """
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        where = self._where(self.updates_bucket, key)
        for attempt in range(1, self.upload_attempts + 1):
            try:
                self.s3.put_object(
                    Bucket=self.updates_bucket,
                    Key=key,
                    Body=body,
                    IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                    ContentType="application/octet-stream",
                )
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in _PRECONDITION_CODES:
                    self._confirm_stored(key, checksum, body, exc)
                    logger.info("%s was stored by an earlier attempt", where)
                    return True
                if code not in _CONFLICT_CODES or attempt == self.upload_attempts:
                    raise StorageError(f"upload to {where} failed: {code}") from exc
                self._log_retry(where, attempt, exc)
            except _NETWORK_ERRORS as exc:
                if attempt == self.upload_attempts:
                    raise NetworkError(
                        f"upload to {where} failed {attempt} times: {exc}. The "
                        "update may or may not be stored; run again to retrain and "
                        "upload under a new update id"
                    ) from exc
                self._log_retry(where, attempt, exc)
            except BotoCoreError as exc:
                raise StorageError(f"upload to {where} failed: {exc}") from exc
            else:
                return False
            time.sleep(self.retry_delay * 2 ** (attempt - 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _log_retry(self, where: str, attempt: int, exc: Exception) -> None:
        logger.warning(
            "upload to %s failed (attempt %d of %d): %s; sending the same bytes again",
            where,
            attempt,
            self.upload_attempts,
            exc,
        )

    def _confirm_stored(
        self, key: str, checksum: str, body: bytes, cause: ClientError
    ) -> None:
        """Raise unless the object at ``key`` contains exactly ``body``."""
        where = self._where(self.updates_bucket, key)
        try:
            head = self.s3.head_object(
                Bucket=self.updates_bucket, Key=key, ChecksumMode="ENABLED"
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(
                f"upload to {where} returned 412, and reading the stored object "
                f"failed: {exc}"
            ) from exc
        stored = head.get("ChecksumSHA256")
        if stored is None:
            # Objects stored without a SHA-256 checksum are compared byte for byte.
            response = self._get(self.updates_bucket, key)
            same = self._read_body(response, self.updates_bucket, key) == body
        else:
            same = stored == checksum
        if not same:
            raise UploadConflictError(
                f"{where} already contains a different object (SHA-256 {stored}, ours "
                f"{checksum}); it was not overwritten. Upload under a new update id"
            ) from cause

    def wait_for_round(
        self, after_round: int, timeout: float, poll_interval: float = 5.0
    ) -> Pointer:
        """Poll the pointer until its round is greater than ``after_round``.

        A missing pointer or a connection error counts as "not yet" and polling
        goes on until the timeout.

        Parameters
        ----------
        after_round
            The round the device last took part in.
        timeout
            Seconds to wait in all.
        poll_interval
            Seconds between two reads of the pointer.

        Raises
        ------
        RoundTimeoutError
            If the round has not advanced after ``timeout`` seconds.
        PointerError, StorageError
            If the pointer is malformed or S3 rejects the read.
        """
        deadline = time.monotonic() + timeout
        state = "no pointer found"
        while True:
            try:
                pointer: Pointer | None = self.read_pointer()
            except PointerNotFoundError:
                pointer = None
                state = "no pointer found"
            except NetworkError as exc:
                logger.warning("reading the pointer failed, polling on: %s", exc)
                pointer = None
                state = f"last read failed: {exc}"
            if pointer is not None:
                if pointer.round > after_round:
                    logger.info(
                        "round %d is open (device %s)", pointer.round, self.device_id
                    )
                    return pointer
                state = f"round {pointer.round} still open"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RoundTimeoutError(
                    f"device {self.device_id} waited {timeout:g} s for a round after "
                    f"{after_round} in s3://{self.models_bucket}/{layout.POINTER_KEY} "
                    f"({state}); raise the wait timeout or check that the aggregator "
                    "is running"
                )
            time.sleep(min(poll_interval, remaining))


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
) -> tuple[dict[str, npt.NDArray[np.float32]], models.ModelSpec]:
    """Decode a global model file and check its metadata and tensors.

    Returns
    -------
    tuple
        Writable float32 copies of the tensors, and the model's architecture and
        sizes.

    Raises
    ------
    ModelFormatError
        If the file is not safetensors, its metadata lacks ``format_version`` 1,
        ``kind`` model, the ``architecture`` of its tensors or ``round_number``, or
        a tensor is not float32.
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
    return tensors, spec


def weight_delta(
    trained: Mapping[str, npt.NDArray[Any]], base: Mapping[str, npt.NDArray[np.float32]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Return ``trained - base`` per tensor, in float32.

    Raises
    ------
    TrainingError
        If the trained weights differ from the base in names, shapes or dtypes, or
        the difference is not finite.
    """
    trained_specs = specs_of(trained)
    base_specs = specs_of(base)
    if trained_specs != base_specs:
        raise TrainingError(
            f"trained weights {trained_specs} do not match the global model's "
            f"{base_specs}"
        )
    delta = {
        name: np.subtract(trained[name], base[name], dtype=np.float32)
        for name in sorted(base)
    }
    for name, array in delta.items():
        if not np.isfinite(array).all():
            raise TrainingError(
                f"the update of tensor {name!r} contains NaN or Inf; "
                "lower the learning rate"
            )
    return delta


def load_residual(path: Path) -> dict[str, np.ndarray] | None:
    """Read an error-feedback residual file; return ``None`` if it does not exist.

    Raises
    ------
    StorageError
        If the file cannot be read or is not a residual file of this client.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"reading the residual file {path} failed: {exc}") from exc
    try:
        tensors, metadata = safetensors_io.decode(data)
    except FedCoreError as exc:
        raise StorageError(
            f"residual file {path} is not a valid safetensors file: {exc}; "
            "delete it to start without a residual"
        ) from exc
    if metadata.get("kind") != RESIDUAL_KIND:
        raise StorageError(
            f"{path} has kind {metadata.get('kind')!r}, expected {RESIDUAL_KIND!r}; "
            "pass the path of a residual file written by this client"
        )
    logger.info("read the error-feedback residual from %s", path)
    return {name: np.array(array, dtype=np.float64) for name, array in tensors.items()}


def save_residual(path: Path, residual: Mapping[str, np.ndarray], name: str) -> None:
    """Replace the residual file atomically (write a temporary file, then rename).

    Raises
    ------
    StorageError
        If the file cannot be written.
    """
    data = safetensors_io.encode(
        residual,
        {"format_version": FORMAT_VERSION, "kind": RESIDUAL_KIND, "encoding": name},
    )
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        raise StorageError(f"writing the residual file {path} failed: {exc}") from exc


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    result: dict[str, float] = {}
    for name, value in sorted(metrics.items()):
        if len(result) == MAX_CLIENT_METRICS:
            logger.warning(
                "client metrics beyond the first %d are not uploaded",
                MAX_CLIENT_METRICS,
            )
            break
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number) and len(name) <= 64:
            result[name] = number
        else:
            logger.warning("client metric %r = %r is not uploaded", name, value)
    return result
