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

The steps live in their own modules: :mod:`edge_client.global_model` reads the
pointer and downloads the model, :mod:`edge_client.upload` stores the update and
:mod:`edge_client.residual` keeps the residual file. :class:`EdgeClient` runs them
in order for one device.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_client import global_model, upload
from edge_client.errors import (
    ModelMismatchError,
    NetworkError,
    PointerNotFoundError,
    RoundTimeoutError,
    StorageError,
    TrainingError,
)
from edge_client.global_model import DEFAULT_MAX_MODEL_BYTES, GlobalModel, Pointer
from edge_client.residual import load_residual, save_residual
from edge_client.s3_access import make_s3_client
from edge_client.trainers import ProximalTrainer, Trainer
from edge_client.upload import UploadResult
from fedcore import encoding as encoding_module
from fedcore import layout, models, safetensors_io
from fedcore.update import UpdateMetadata, specs_of

logger = logging.getLogger(__name__)

MAX_CLIENT_METRICS = 32


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
    proximal_mu_from_model
        Set the trainer's ``proximal_mu`` each round to the value in the global
        model's metadata, which the ``fedprox`` strategy writes, or to 0 when the
        model names none. The trainer must be a :class:`ProximalTrainer`.
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
        proximal_mu_from_model: bool = False,
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
            _check_residual_path(self.residual_path)
            if encoding in encoding_module.SPARSE_ENCODINGS:
                self.encoder.set_residual(load_residual(self.residual_path))
            else:
                logger.warning(
                    "encoding %s sends the whole delta, so the residual file %s is "
                    "neither read nor changed; only topk and topk_q8 use it",
                    encoding,
                    self.residual_path,
                )
        self.proximal_mu_from_model = proximal_mu_from_model
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

    def read_pointer(self) -> Pointer:
        """Read and check ``global/pointer.json``.

        Raises as :func:`edge_client.global_model.read_pointer`, with
        :class:`PointerNotFoundError` when no pointer exists yet.
        """
        return global_model.read_pointer(
            self.s3, self.models_bucket, device_id=self.device_id
        )

    def fetch_global_model(self) -> GlobalModel:
        """Download the open round's global model and verify it against the pointer.

        Raises the errors of :func:`edge_client.global_model.fetch_global_model`.
        A model that fails a check is not used.
        """
        return global_model.fetch_global_model(
            self.s3,
            self.models_bucket,
            device_id=self.device_id,
            max_model_bytes=self.max_model_bytes,
        )

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
        if self.proximal_mu_from_model:
            self._follow_proximal_mu(model)
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
            hint = ""
            if self.residual_path is not None and self.encoder.residual is not None:
                hint = (
                    f"; if the residual file {self.residual_path} is the cause, "
                    "delete it to start without a residual"
                )
            raise TrainingError(
                f"the update of round {model.round} cannot be encoded as "
                f"{self.encoder.encoding}: {exc}{hint}"
            ) from exc
        body = safetensors_io.encode(tensors, {**metadata.to_strings(), **extra})
        already_stored = self.upload_update(key, body)
        if self.encoder.commit() and self.residual_path is not None:
            residual = self.encoder.residual
            assert residual is not None
            try:
                save_residual(self.residual_path, residual, self.encoder.encoding)
            except StorageError as exc:
                raise StorageError(
                    f"the update of round {model.round} was uploaded to "
                    f"s3://{self.updates_bucket}/{key}, but {exc}; the residual "
                    "stays in memory only, so a restart loses it"
                ) from exc
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

    def _follow_proximal_mu(self, model: GlobalModel) -> None:
        """Train with the FedProx weight the model names, or 0 if it names none."""
        mu = 0.0 if model.proximal_mu is None else model.proximal_mu
        if isinstance(self.trainer, ProximalTrainer):
            if self.trainer.proximal_mu != mu:
                logger.info(
                    "device %s trains round %d with proximal_mu %s from the model",
                    self.device_id,
                    model.round,
                    mu,
                )
            self.trainer.proximal_mu = mu
        elif mu > 0:
            logger.warning(
                "the model of round %d names proximal_mu %s, but trainer %s has no "
                "proximal term: training without it",
                model.round,
                mu,
                type(self.trainer).__name__,
            )

    def upload_update(self, key: str, body: bytes) -> bool:
        """Store ``body`` at ``key`` in the updates bucket without overwriting.

        A connection error or timeout after botocore's retries leads to the same
        request again, up to ``upload_attempts`` times in all. Returns and raises
        as :func:`edge_client.upload.upload_update`.
        """
        return upload.upload_update(
            self.s3,
            self.updates_bucket,
            key,
            body,
            device_id=self.device_id,
            attempts=self.upload_attempts,
            retry_delay=self.retry_delay,
        )

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


def _check_residual_path(path: Path) -> None:
    """Raise ValueError before training if the residual file cannot be written."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"residual file {path} is a folder: expected a file path")
    if not folder.is_dir():
        raise ValueError(
            f"residual file {path}: folder {folder} does not exist; create it or "
            "choose another path"
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(
            f"residual file {path}: folder {folder} is not writable; choose "
            "another path"
        )


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
