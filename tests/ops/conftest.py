"""A small federation on moto's server, and a runner for ``sfl`` commands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from moto.moto_api._internal.models import moto_api_backend

from infra.config import load_settings
from local_aws import cli
from local_aws.federation import LocalFederation
from operator_tools.sandbox import small_federation

DEVICES = 3
ROUNDS = 2


@dataclass(frozen=True)
class Result:
    """Exit status and output of one ``sfl`` command."""

    status: int
    out: str
    err: str


@pytest.fixture(scope="module")
def federation() -> Iterator[LocalFederation]:
    """Run 2 rounds of 3 devices, then keep the federation running for the module."""
    # Every moto server in a process shares one in-memory state, so buckets, model
    # versions and endpoints of an earlier module would still exist. This is the
    # reset that moto's POST /moto-api/reset runs.
    moto_api_backend.reset()
    try:
        with small_federation(
            load_settings(), devices=DEVICES, rounds=ROUNDS, seed=3
        ) as running:
            yield running
    finally:
        moto_api_backend.reset()


@pytest.fixture
def sfl(
    federation: LocalFederation, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """Run ``sfl COMMAND --endpoint-url <server> ARGS...`` in this process."""

    def run(command: str, *args: str) -> Result:
        capsys.readouterr()
        status = cli.main([command, "--endpoint-url", federation.aws.endpoint, *args])
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run
