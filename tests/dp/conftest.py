"""Fixtures of the aggregator suite, reused for DP-FedAvg through the handler."""

from tests.aggregator.conftest import (
    aws_environment,
    harness,
    linearizable_s3_puts,
    make_harness,
)

__all__ = ["aws_environment", "harness", "linearizable_s3_puts", "make_harness"]
