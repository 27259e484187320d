"""AWS clients created lazily and reused while the Lambda stays warm.

Clients come from botocore, which boto3 wraps: the handler needs no boto3
resource, and not importing boto3 shortens every cold start. Clients honour
``AWS_ENDPOINT_URL``, which the local runtime sets to its moto server on 127.0.0.1.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import botocore.session
from botocore.config import Config

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    max_pool_connections=32,
)


@cache
def client(service: str) -> Any:
    """Return the shared client for ``service`` ("s3", "sagemaker", ...)."""
    return botocore.session.get_session().create_client(service, config=_CONFIG)


def reset() -> None:
    """Drop cached clients, for tests that switch endpoints or credentials."""
    client.cache_clear()
