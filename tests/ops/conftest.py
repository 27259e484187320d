"""A small federation on moto's server, and a runner for ``sfl`` commands."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from moto.moto_api._internal.models import moto_api_backend

from fedcore import layout
from infra.config import load_settings
from local_aws import cli
from local_aws.federation import LocalFederation
from operator_tools.sandbox import small_federation

DEVICES = 3
ROUNDS = 2
# The sweep runs every second, so the next round opens well within this.
OPEN_WAIT_SECONDS = 30.0


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
            _wait_for_open_round(running, ROUNDS + 1)
            yield running
    finally:
        moto_api_backend.reset()


def _wait_for_open_round(federation: LocalFederation, round_number: int) -> None:
    """Wait until the sweep has written the state of the round after the last one.

    The pointer moves when a round is published, but the next round's state appears
    only when the sweep or a first update opens it, so a test that lists rounds
    right after the fixture starts would otherwise race the sweep.
    """
    s3 = federation.s3()
    key = layout.round_state_key(round_number)
    deadline = time.monotonic() + OPEN_WAIT_SECONDS
    while time.monotonic() < deadline:
        listed = s3.list_objects_v2(
            Bucket=federation.resources.models_bucket, Prefix=key
        )
        if listed.get("KeyCount", 0):
            return
        time.sleep(0.1)
    pytest.fail(f"round {round_number} did not open within {OPEN_WAIT_SECONDS} s")


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
