"""Report the zipped size of the aggregator's Lambda asset in a cloud assembly.

Usage: ``python -m infra.asset_size [--max-mb 25] [CDK_OUT]``. The asset directory is
found through the aggregation stack's template and asset manifest, zipped with
deflate (as the CDK CLI uploads it) into a temporary file, and measured. The exit
status is 1 when the zipped size exceeds ``--max-mb`` or the unzipped size exceeds
Lambda's 250 MB limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Both aggregator functions share one asset; their handlers live in this module.
AGGREGATOR_HANDLER_PREFIX = "lambdas.aggregator.handler."
MB = 1024 * 1024
DEFAULT_MAX_ZIPPED_MB = 25.0
# Lambda rejects functions whose unzipped code and layers exceed 250 MB.
LAMBDA_MAX_UNZIPPED_MB = 250.0


class AssetNotFoundError(LookupError):
    """The cloud assembly contains no staged aggregator asset."""


@dataclass(frozen=True)
class AssetSize:
    """Sizes of one asset directory, in bytes."""

    path: Path
    unzipped_bytes: int
    zipped_bytes: int


def find_aggregator_asset(cdk_out: Path) -> Path:
    """Return the staged asset directory of the aggregator function.

    Raises
    ------
    AssetNotFoundError
        If no template in ``cdk_out`` has a function with an aggregator handler,
        or its asset was not staged (bundling skipped).
    """
    for template_path in sorted(cdk_out.glob("*.template.json")):
        template = json.loads(template_path.read_text(encoding="utf-8"))
        for resource in template.get("Resources", {}).values():
            properties = resource.get("Properties", {})
            if resource.get("Type") != "AWS::Lambda::Function" or not str(
                properties.get("Handler", "")
            ).startswith(AGGREGATOR_HANDLER_PREFIX):
                continue
            asset_hash = str(properties["Code"]["S3Key"]).removesuffix(".zip")
            manifest_path = template_path.with_name(
                template_path.name.replace(".template.json", ".assets.json")
            )
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            source = manifest["files"][asset_hash]["source"]["path"]
            asset_dir = cdk_out / source
            if not asset_dir.is_dir():
                raise AssetNotFoundError(
                    f"asset {asset_hash} of {template_path.name} is not a directory "
                    f"at {asset_dir}: synthesize with bundling enabled"
                )
            return asset_dir
    raise AssetNotFoundError(
        f"no function with a handler in {AGGREGATOR_HANDLER_PREFIX}* in "
        f"{cdk_out}/*.template.json: "
        "run `cdk synth` first"
    )


def measure(asset_dir: Path) -> AssetSize:
    """Zip ``asset_dir`` with deflate into a temporary file and measure both sizes."""
    unzipped = 0
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "asset.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
            for root, directories, files in os.walk(asset_dir):
                directories.sort()
                for name in sorted(files):
                    path = Path(root) / name
                    unzipped += path.stat().st_size
                    zipped.write(path, path.relative_to(asset_dir).as_posix())
        return AssetSize(asset_dir, unzipped, archive.stat().st_size)


def main(argv: list[str] | None = None) -> int:
    """Print the aggregator asset's sizes; return 1 if over a limit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "cdk_out", nargs="?", default="cdk.out", type=Path, help="cloud assembly"
    )
    parser.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_ZIPPED_MB,
        help="largest zipped size allowed, in MiB (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        size = measure(find_aggregator_asset(args.cdk_out))
    except AssetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    zipped_mb = size.zipped_bytes / MB
    unzipped_mb = size.unzipped_bytes / MB
    print(
        f"aggregator asset {size.path}: {zipped_mb:.1f} MiB zipped, "
        f"{unzipped_mb:.1f} MiB unzipped"
    )
    if zipped_mb > args.max_mb:
        print(
            f"error: zipped asset is {zipped_mb:.1f} MiB, over the limit of "
            f"{args.max_mb} MiB: trim requirements-lambda.txt or strip more files",
            file=sys.stderr,
        )
        return 1
    if unzipped_mb > LAMBDA_MAX_UNZIPPED_MB:
        print(
            f"error: unzipped asset is {unzipped_mb:.1f} MiB, over Lambda's limit "
            f"of {LAMBDA_MAX_UNZIPPED_MB} MiB",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
