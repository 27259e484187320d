"""Cold import time of the aggregator handler and the zipped size of its asset.

``python -m benchmarks.cold_start`` prints one JSON line. Import time is measured in
fresh interpreters (``import lambdas.aggregator.handler`` timed with
``time.perf_counter``), so nothing is cached in ``sys.modules``. The modules that
the handler imports on first use are timed the same way, after the handler. The
operating system's file cache is warm after the first run. The asset size comes from
``infra.asset_size`` on ``cdk.out`` when ``make synth`` has staged the asset.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 5
_SNIPPET = (
    "import time; started = time.perf_counter(); "
    "import lambdas.aggregator.handler; "
    "print(time.perf_counter() - started)"
)
# The modules the handler loads on first use: the close path, the privacy
# accountant for dp_fedavg rounds, the robust rules, and the model code that
# scores a new model on the holdout.
_LATER_SNIPPET = (
    "import lambdas.aggregator.handler, time; started = time.perf_counter(); "
    "import lambdas.aggregator.closer, fedcore.dp_fedavg, fedcore.robust, "
    "fedcore.models; "
    "print(time.perf_counter() - started)"
)


def import_seconds(snippet: str = _SNIPPET) -> list[float]:
    environment = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    found = []
    for _ in range(RUNS):
        completed = subprocess.run(
            [sys.executable, "-c", snippet],
            check=True,
            capture_output=True,
            text=True,
            env=environment,
        )
        found.append(float(completed.stdout.strip().splitlines()[-1]))
    return found


def asset_size(cdk_out: Path) -> dict[str, object]:
    from infra.asset_size import AssetNotFoundError, find_aggregator_asset, measure  # noqa: PLC0415

    if not cdk_out.is_dir():
        return {
            "measured": False,
            "reason": f"{cdk_out} does not exist: run make synth",
        }
    try:
        asset = find_aggregator_asset(cdk_out)
    except AssetNotFoundError as exc:
        return {"measured": False, "reason": str(exc)}
    size = measure(asset)
    age_hours = (time.time() - asset.stat().st_mtime) / 3600
    return {
        "measured": True,
        "zipped_bytes": size.zipped_bytes,
        "unzipped_bytes": size.unzipped_bytes,
        "asset_age_hours": round(age_hours, 1),
    }


def main() -> int:
    seconds = import_seconds()
    later = import_seconds(_LATER_SNIPPET)
    print(
        json.dumps(
            {
                "import_seconds_median": statistics.median(seconds),
                "import_seconds": seconds,
                "later_import_seconds_median": statistics.median(later),
                "asset": asset_size(Path("cdk.out")),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
