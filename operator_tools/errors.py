"""Exceptions of the operator commands, each with the exit status it maps to.

The command line prints the message of an :class:`OperatorError` as one line on
standard error and exits with its ``exit_status``: 2 for invalid input, 1 for a
missing resource, a conflict with the stored state or a failed AWS call.
"""

from __future__ import annotations

EXIT_INVALID_INPUT = 2
EXIT_FAILED = 1


class OperatorError(Exception):
    """An expected failure of an operator command."""

    exit_status = EXIT_FAILED


class InvalidInputError(OperatorError):
    """An option or argument with an invalid value."""

    exit_status = EXIT_INVALID_INPUT


class NotFoundError(OperatorError):
    """A round, object, model version or endpoint that does not exist."""


class ConflictError(OperatorError):
    """A request that the stored state forbids, such as approving twice."""


class AwsCallError(OperatorError):
    """An AWS call that failed for a reason other than a missing resource."""


class StoredDocumentError(AwsCallError):
    """An object in S3 that is not a JSON object, with the ETag it was read at."""

    def __init__(self, message: str, etag: str) -> None:
        super().__init__(message)
        self.etag = etag
