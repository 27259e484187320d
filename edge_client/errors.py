"""Exceptions of the edge client.

Each message names the bucket, key, round or device involved and what to do next.
"""

from __future__ import annotations


class EdgeClientError(Exception):
    """Base class of the edge client's exceptions."""


class DataError(EdgeClientError, ValueError):
    """Local training data that is missing, malformed or does not fit the model."""


class StorageError(EdgeClientError):
    """An S3 request that failed after botocore's retries."""


class NetworkError(StorageError):
    """An S3 request that failed with a connection error or timeout after retries.

    Unlike other storage errors, waiting and trying again later may succeed.
    """


class PointerError(EdgeClientError):
    """A global model pointer that is missing or does not follow the format."""


class PointerNotFoundError(PointerError):
    """No global model has been published to the models bucket yet."""


class ModelIntegrityError(EdgeClientError):
    """A downloaded global model whose SHA-256 differs from the one in the pointer."""


class ModelFormatError(EdgeClientError):
    """A global model file that is not a valid model of this format."""


class ModelMismatchError(EdgeClientError):
    """A global model that does not fit the local settings or data."""


class TrainingError(EdgeClientError):
    """Local training that failed, for example because the loss diverged."""


class UploadConflictError(EdgeClientError):
    """An update key that already contains different bytes, left as they are."""


class RoundTimeoutError(EdgeClientError):
    """The open round did not advance before the wait timed out."""
