"""``sfl sandbox``: a small federation on the embedded AWS that stays up.

It trains a few rounds with real edge clients on the digits data, like a smaller demo.
Then it keeps moto's server and the aggregator running until interrupted, so the
operator commands can be tried against it from another shell.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from edge_client.client import EdgeClient
from edge_client.trainers import NumpyTrainer
from infra.config import DeploymentSettings
from local_aws.dataset import federated_digits
from local_aws.federation import (
    LocalFederation,
    initialize_with_digits,
    run_federation,
    run_rounds,
    serve_until_interrupted,
    with_round_settings,
)

ROUND_TIMEOUT_SECONDS = 120.0


@contextmanager
def small_federation(
    settings: DeploymentSettings, *, devices: int, rounds: int, seed: int = 0
) -> Iterator[LocalFederation]:
    """Run ``rounds`` rounds of ``devices`` devices and yield the running federation.

    Every device takes part in every round, so each round closes at its target.
    """
    data = federated_digits(devices=devices, alpha=0.5, seed=seed)
    settings = with_round_settings(
        settings, target_updates=devices, min_updates=max(1, devices // 2)
    )
    with run_federation(settings, workers=2) as federation:
        initialize_with_digits(federation, data, seed=seed)
        clients = [
            EdgeClient(
                device_id=f"device-{index:03d}",
                updates_bucket=federation.resources.updates_bucket,
                models_bucket=federation.resources.models_bucket,
                trainer=NumpyTrainer(epochs=2, seed=seed * 1000 + index),
                s3_client=federation.s3(),
            )
            for index in range(devices)
        ]
        run_rounds(federation, clients, data, rounds, timeout=ROUND_TIMEOUT_SECONDS)
        yield federation


def run_sandbox(settings: DeploymentSettings, *, devices: int, rounds: int) -> int:
    """Run :func:`small_federation` and keep it up until Ctrl-C; return 0."""
    print(f"training {rounds} rounds on {devices} devices ...", flush=True)
    with small_federation(settings, devices=devices, rounds=rounds) as federation:
        federation.store_round_settings()
        serve_until_interrupted(federation)
    return 0
