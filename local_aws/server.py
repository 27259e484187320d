"""moto's server on a free loopback port, with fake credentials."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=64
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalAws:
    """A running moto server and clients pointed at it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self, service: str) -> Any:
        """Return a new boto3 client for ``service`` on the embedded AWS."""
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
            config=_CLIENT_CONFIG,
        )

    def environment(self) -> dict[str, str]:
        """Variables that point any boto3 client in this process at the server."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


@contextmanager
def local_aws(port: int | None = None) -> Iterator[LocalAws]:
    """Run moto's server on 127.0.0.1 and set this process's AWS variables to it.

    The previous values of the variables are restored on exit.
    """
    chosen = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=chosen, verbose=False)
    server.start()
    aws = LocalAws(f"http://127.0.0.1:{chosen}")
    saved = {name: os.environ.get(name) for name in aws.environment()}
    os.environ.update(aws.environment())
    logger.info("embedded AWS listening on %s", aws.endpoint)
    try:
        yield aws
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
        logger.info("embedded AWS stopped")
