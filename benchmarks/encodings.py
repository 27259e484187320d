"""Upload bytes and final accuracy per encoding, on the demo's federation.

Run one encoding in a fresh process::

    python -m benchmarks.encodings ENCODING [TOPK_FRACTION] [ROUNDS]

The set-up is the demo's: the digits split over 20 devices with a seeded
Dirichlet(0.5) label skew, the 64-32-10 MLP, 5 local epochs, 30 rounds, every
device in every round, all through the real aggregator handler on the embedded AWS
(moto's server on 127.0.0.1). Bytes are the stored objects' sizes as S3 reports
them (``ContentLength`` of every update object), header and metadata included.
"""

from __future__ import annotations

import json
import sys
import time

from edge_client.client import EdgeClient
from edge_client.trainers import NumpyTrainer
from fedcore import layout
from infra.config import DeploymentSettings
from local_aws.dataset import federated_digits
from local_aws.federation import (
    initialize_with_digits,
    run_federation,
    run_rounds,
    with_round_settings,
)

DEVICES = 20
ROUNDS = 30
LOCAL_EPOCHS = 5
ALPHA = 0.5
SEED = 0
ROUND_TIMEOUT_SECONDS = 120.0


def run(encoding: str, fraction: float, rounds: int) -> dict[str, object]:
    started = time.monotonic()
    data = federated_digits(devices=DEVICES, alpha=ALPHA, seed=SEED)
    settings = with_round_settings(
        DeploymentSettings(prefix="bench"),
        target_updates=DEVICES,
        min_updates=DEVICES // 2,
    )
    with run_federation(settings, workers=2) as federation:
        initialize_with_digits(federation, data, seed=SEED)
        devices = [
            EdgeClient(
                device_id=f"device-{index:03d}",
                updates_bucket=federation.resources.updates_bucket,
                models_bucket=federation.resources.models_bucket,
                trainer=NumpyTrainer(epochs=LOCAL_EPOCHS, seed=SEED * 1000 + index),
                s3_client=federation.s3(),
                encoding=encoding,
                topk_fraction=fraction,
                encoding_seed=index,
            )
            for index in range(DEVICES)
        ]
        run_rounds(federation, devices, data, rounds, timeout=ROUND_TIMEOUT_SECONDS)
        s3 = federation.s3()
        sizes = []
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=federation.resources.updates_bucket, Prefix="updates/"
        ):
            sizes.extend(int(item["Size"]) for item in page.get("Contents", []))
        evaluation = json.loads(
            s3.get_object(
                Bucket=federation.resources.models_bucket,
                Key=layout.evaluation_key(rounds + 1),
            )["Body"].read()
        )["model_quality"]
    return {
        "encoding": encoding,
        "topk_fraction": fraction if encoding.startswith("topk") else None,
        "rounds": rounds,
        "updates": len(sizes),
        "upload_bytes_total": sum(sizes),
        "upload_bytes_per_update": sum(sizes) / max(1, len(sizes)),
        "final_accuracy": evaluation["accuracy"],
        "final_loss": evaluation["loss"],
        "wall_seconds": time.monotonic() - started,
    }


def main(argv: list[str]) -> int:
    encoding = argv[0]
    fraction = float(argv[1]) if len(argv) > 1 else 0.01
    rounds = int(argv[2]) if len(argv) > 2 else ROUNDS
    print(json.dumps(run(encoding, fraction, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
