"""Asset size check run by `make synth`."""

from __future__ import annotations

import json
import zipfile

import pytest

from infra import asset_size
from infra.aggregation_stack import SQS_HANDLER, SWEEP_HANDLER

pytestmark = pytest.mark.infra


def _assembly(tmp_path, *, staged=True):
    cdk_out = tmp_path / "cdk.out"
    asset = cdk_out / "asset.abc"
    if staged:
        (asset / "lambdas").mkdir(parents=True)
        (asset / "lambdas" / "handler.py").write_text("x = 1\n" * 2000)
    template = {
        "Resources": {
            "Fn": {
                "Type": "AWS::Lambda::Function",
                "Properties": {"Handler": SQS_HANDLER, "Code": {"S3Key": "abc.zip"}},
            }
        }
    }
    manifest = {"files": {"abc": {"source": {"path": "asset.abc"}}}}
    (cdk_out / "x-aggregation.template.json").write_text(json.dumps(template))
    (cdk_out / "x-aggregation.assets.json").write_text(json.dumps(manifest))
    return cdk_out


@pytest.mark.parametrize("handler", [SQS_HANDLER, SWEEP_HANDLER])
def test_prefix_matches_handlers(handler):
    assert handler.startswith(asset_size.AGGREGATOR_HANDLER_PREFIX)


def test_finds_asset(tmp_path):
    cdk_out = _assembly(tmp_path)
    assert asset_size.find_aggregator_asset(cdk_out) == cdk_out / "asset.abc"


def test_unstaged_asset_raises(tmp_path):
    (tmp_path / "cdk.out").mkdir()
    cdk_out = _assembly(tmp_path, staged=False)
    with pytest.raises(asset_size.AssetNotFoundError, match="bundling enabled"):
        asset_size.find_aggregator_asset(cdk_out)


def test_empty_assembly_raises(tmp_path):
    with pytest.raises(asset_size.AssetNotFoundError, match="cdk synth"):
        asset_size.find_aggregator_asset(tmp_path)


def test_measure_matches_zipfile(tmp_path):
    cdk_out = _assembly(tmp_path)
    size = asset_size.measure(cdk_out / "asset.abc")
    reference = tmp_path / "reference.zip"
    with zipfile.ZipFile(reference, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        path = cdk_out / "asset.abc" / "lambdas" / "handler.py"
        zipped.write(path, "lambdas/handler.py")
    assert size.unzipped_bytes == len("x = 1\n" * 2000)
    assert size.zipped_bytes == reference.stat().st_size


@pytest.mark.parametrize(("limit", "status"), [("25", 0), ("0.000001", 1)])
def test_main_limit(tmp_path, limit, status):
    cdk_out = _assembly(tmp_path)
    assert asset_size.main(["--max-mb", limit, str(cdk_out)]) == status
