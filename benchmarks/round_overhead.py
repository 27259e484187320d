"""One round on the embedded AWS against the raw S3 time of the same bytes.

Run in a fresh process::

    python -m benchmarks.round_overhead [DEVICES] [ROUNDS]

A federation runs on moto's server on 127.0.0.1 through
``local_aws.federation.run_federation``: the real handler behind the SQS poller that
plays Lambda's event source mapping (batches of up to 10, a 1 s batching window).
Each round, DEVICES pre-built float32 updates of the 1000-1000-10 MLP (1,011,010
parameters) are uploaded from 2 threads, and the round time runs from the first
upload to the pointer naming the next round.

The raw floor is measured on the same server with the same bytes: DEVICES PUTs of
the update bytes from 2 threads, then 2 x DEVICES GETs (intake reads every update
once to validate it, the close once more to aggregate it), then one PUT of a
model-sized object. Round overhead is round time minus that floor.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedcore import layout, models, safetensors_io
from fedcore.update import UpdateMetadata
from infra.config import DeploymentSettings
from local_aws.federation import run_federation, with_round_settings


def run(devices: int, rounds: int) -> dict[str, object]:
    settings = with_round_settings(
        DeploymentSettings(prefix="overhead"),
        target_updates=devices,
        min_updates=devices,
    )
    base = models.init_model(
        "mlp", input_dim=1000, hidden_units=1000, classes=10, seed=0
    )
    rng = np.random.default_rng(0)
    deltas = [
        {
            name: rng.standard_normal(array.shape, dtype=np.float32) * 1e-3
            for name, array in base.items()
        }
        for _ in range(devices)
    ]
    round_seconds: list[float] = []
    raw_seconds: list[float] = []
    with run_federation(settings, workers=2) as federation:
        digest = federation.initialize(base, architecture="mlp", holdout=None)
        s3 = federation.s3()
        bucket = federation.resources.updates_bucket
        for round_number in range(1, rounds + 1):
            if round_number > 1:
                pointer = json.loads(
                    s3.get_object(
                        Bucket=federation.resources.models_bucket,
                        Key=layout.POINTER_KEY,
                    )["Body"].read()
                )
                digest = pointer["model_sha256"]
            uploads = []
            for index, delta in enumerate(deltas):
                update_id = uuid.uuid4().hex
                device = f"d{index:04d}"
                metadata = UpdateMetadata(
                    round=round_number,
                    device_id=device,
                    update_id=update_id,
                    num_examples=10 + index,
                    base_model_sha256=digest,
                ).to_strings()
                uploads.append(
                    (
                        layout.update_key(device, round_number, update_id),
                        safetensors_io.encode(delta, metadata),
                    )
                )

            def put(item: tuple[str, bytes], bucket: str = bucket) -> None:
                s3.put_object(
                    Bucket=bucket,
                    Key=item[0],
                    Body=item[1],
                    IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256",
                )

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(put, uploads))
            federation.wait_for_round(round_number + 1, timeout=300)
            round_seconds.append(time.perf_counter() - started)
            # The same bytes, raw, on the same server, under a prefix the
            # aggregator does not receive events for.
            raw = [(f"raw/{round_number}/{key}", data) for key, data in uploads]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(put, raw))
            for _ in range(2):
                for key, _ in raw:
                    s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            s3.put_object(
                Bucket=bucket, Key=f"raw/{round_number}/model", Body=raw[0][1]
            )
            raw_seconds.append(time.perf_counter() - started)
    update_bytes = len(uploads[0][1])
    return {
        "devices": devices,
        "rounds": rounds,
        "update_bytes": update_bytes,
        "round_seconds_median": statistics.median(round_seconds),
        "raw_s3_seconds_median": statistics.median(raw_seconds),
        "overhead_seconds_median": statistics.median(
            [r - s for r, s in zip(round_seconds, raw_seconds, strict=True)]
        ),
        "round_seconds": round_seconds,
        "raw_s3_seconds": raw_seconds,
    }


def main(argv: list[str]) -> int:
    devices = int(argv[0]) if argv else 10
    rounds = int(argv[1]) if len(argv) > 1 else 3
    print(json.dumps(run(devices, rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
