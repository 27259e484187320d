"""Global models and the server holdout, read once per warm Lambda.

A model is cached by its SHA-256, which is checked on every read from S3, so a
cached entry can never stand for other bytes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from fedcore import layout, safetensors_io
from fedcore.update import TensorSpec, specs_of
from lambdas.aggregator import store
from lambdas.aggregator.config import AggregatorConfig

logger = logging.getLogger(__name__)

_MAX_MODELS = 2
_lock = threading.Lock()
_models: dict[str, LoadedModel] = {}
_holdout: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}


class ModelIntegrityError(store.StoreError):
    """A stored global model whose bytes do not match the recorded SHA-256."""


@dataclass(frozen=True)
class LoadedModel:
    """A decoded global model with its tensor specs and metadata."""

    tensors: dict[str, np.ndarray]
    specs: dict[str, TensorSpec]
    metadata: dict[str, str]
    sha256: str


def load_model(config: AggregatorConfig, key: str, sha256: str) -> LoadedModel:
    """Return the global model stored at ``key``, checking its SHA-256."""
    with _lock:
        cached = _models.get(sha256)
    if cached is not None:
        return cached
    data = store.read_bytes(config.models_bucket, key)
    actual = store.sha256_hex(data)
    if actual != sha256:
        raise ModelIntegrityError(
            f"s3://{config.models_bucket}/{key} has SHA-256 {actual}, expected {sha256}"
        )
    tensors, metadata = safetensors_io.decode(data, max_header_bytes=64 << 20)
    model = LoadedModel(
        tensors={name: np.array(array) for name, array in tensors.items()},
        specs=specs_of(tensors),
        metadata=metadata,
        sha256=sha256,
    )
    with _lock:
        if len(_models) >= _MAX_MODELS:
            _models.pop(next(iter(_models)))
        _models[sha256] = model
    return model


def load_holdout(config: AggregatorConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the server holdout ``(x, y)``, or None when none was uploaded."""
    with _lock:
        if config.models_bucket in _holdout:
            return _holdout[config.models_bucket]
    document = store.read_optional_bytes(config.models_bucket, layout.HOLDOUT_KEY)
    holdout: tuple[np.ndarray, np.ndarray] | None = None
    if document is None:
        logger.warning(
            "no holdout at s3://%s/%s: global loss and accuracy are not reported",
            config.models_bucket,
            layout.HOLDOUT_KEY,
        )
    else:
        tensors, _ = safetensors_io.decode(document, max_header_bytes=1 << 20)
        if set(tensors) != {"x", "y"}:
            raise store.StoreError(
                f"holdout has tensors {sorted(tensors)}, expected exactly 'x' and 'y'"
            )
        holdout = (np.array(tensors["x"]), np.array(tensors["y"]))
    with _lock:
        _holdout[config.models_bucket] = holdout
    return holdout


def clear() -> None:
    """Forget cached models and holdouts, for tests."""
    with _lock:
        _models.clear()
        _holdout.clear()
