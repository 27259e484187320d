"""Local storage of the top-k error-feedback residual.

With the ``topk`` and ``topk_q8`` encodings of :mod:`fedcore.encoding`, the values
of an update that are not sent stay on the device as a residual and are added to
the next round's update. :func:`save_residual` keeps that residual in a local
safetensors file of kind ``residual`` so that it survives a restart, and
:func:`load_residual` reads it back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_client.errors import StorageError
from fedcore import safetensors_io
from fedcore.errors import FedCoreError
from fedcore.update import FORMAT_VERSION

logger = logging.getLogger(__name__)

RESIDUAL_KIND = "residual"


def load_residual(path: Path) -> dict[str, np.ndarray] | None:
    """Read an error-feedback residual file; return ``None`` if it does not exist.

    Raises
    ------
    StorageError
        If the file cannot be read, is not a residual file of this client, or
        contains NaN or Inf.
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
    residual = {
        name: np.array(array, dtype=np.float64) for name, array in tensors.items()
    }
    for name, array in residual.items():
        if not np.isfinite(array).all():
            raise StorageError(
                f"residual file {path}: tensor {name!r} contains NaN or Inf; "
                "delete it to start without a residual"
            )
    logger.info("read the error-feedback residual from %s", path)
    return residual


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
