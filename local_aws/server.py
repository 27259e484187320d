"""moto's server on a free loopback port, with fake credentials."""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from moto.s3.responses import S3Response
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


_PUT_LOCK = threading.Lock()


def make_conditional_puts_atomic() -> None:
    """Serialize moto's PutObject handler so conditional writes are atomic, as in S3.

    moto 5.2.5 checks If-Match and If-None-Match, then stores the object in a
    separate step without a lock, so two racing writers could both win. The
    aggregator's compare-and-swap relies on S3 rejecting the loser. The patch is
    applied once per process and covers every moto server in it.
    """
    original = S3Response.put_object
    if getattr(original, "serialized", False):
        return

    def put_object(self: S3Response) -> Any:
        with _PUT_LOCK:
            return original(self)

    put_object.serialized = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]


def reset_state(endpoint: str) -> None:
    """Clear every resource of the embedded AWS through moto's reset API.

    Every moto server in one process shares one in-memory state, so a second
    server would otherwise start with the first one's buckets and queues.
    """
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset",
        data=b"",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


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
            service,
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
    make_conditional_puts_atomic()
    # The server's access log is one line per request: keep it out of the output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=chosen, verbose=False)
    server.start()
    aws = LocalAws(f"http://127.0.0.1:{chosen}")
    reset_state(aws.endpoint)
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
        reset_state(aws.endpoint)
        server.stop()
        logger.info("embedded AWS stopped")
