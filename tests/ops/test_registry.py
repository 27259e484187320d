"""``sfl approve`` and ``sfl reject`` on the versions the aggregator registered."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _describe(federation, version):
    sagemaker = federation.aws.client("sagemaker")
    group = federation.settings.model_package_group_name
    for summary in sagemaker.list_model_packages(ModelPackageGroupName=group)[
        "ModelPackageSummaryList"
    ]:
        if summary["ModelPackageVersion"] == version:
            return sagemaker.describe_model_package(
                ModelPackageName=summary["ModelPackageArn"]
            )
    raise AssertionError(f"version {version} is not registered")


def test_approve_sets_approved(sfl, federation):
    result = sfl("approve", "1")
    assert result.status == 0
    assert _describe(federation, 1)["ModelApprovalStatus"] == "Approved"


def test_approve_keeps_metadata(sfl, federation):
    before = _describe(federation, 1)["CustomerMetadataProperties"]
    sfl("approve", "1")
    after = _describe(federation, 1)["CustomerMetadataProperties"]
    assert after == before
    assert after["round"] == "1"


def test_approve_twice_fails(sfl):
    sfl("approve", "1")
    result = sfl("approve", "1")
    assert result.status == 1
    assert "already Approved" in result.err


def test_approve_by_arn(sfl, federation):
    arn = _describe(federation, 2)["ModelPackageArn"]
    result = sfl("approve", arn)
    assert result.status == 0
    assert _describe(federation, 2)["ModelApprovalStatus"] == "Approved"


@pytest.mark.parametrize(
    ("version", "status", "words"),
    [
        ("7", 1, "model version 7 does not exist"),
        (
            "arn:aws:sagemaker:us-east-1:123456789012:model-package/sfl-dev-global-model/9",
            1,
            "does not exist",
        ),
        ("latest", 2, "expected a version number"),
        ("0", 2, "expected a version number"),
        (
            "arn:aws:sagemaker:us-east-1:123456789012:model-package/other-group/1",
            2,
            "belongs to group 'other-group'",
        ),
        (
            "arn:aws:sagemaker:eu-west-1:123456789012:model-package/sfl-dev-global-model/2",
            2,
            "is in region eu-west-1, but the command runs in us-east-1",
        ),
    ],
)
def test_approve_unknown_version_fails(sfl, version, status, words):
    result = sfl("approve", version)
    assert result.status == status
    assert words in result.err
    assert "Traceback" not in result.err


def test_reject_stores_reason(sfl, federation):
    result = sfl("reject", "2", "--reason", "accuracy below the last version")
    described = _describe(federation, 2)
    assert result.status == 0
    assert described["ModelApprovalStatus"] == "Rejected"
    assert described["ApprovalDescription"] == "accuracy below the last version"


def test_reject_keeps_metadata(sfl, federation):
    sfl("reject", "2", "--reason", "first")
    assert _describe(federation, 2)["CustomerMetadataProperties"]["round"] == "2"


def _rejected_for(sfl, reason):
    # Earlier tests of this module may have left version 2 in any state.
    sfl("approve", "2", "--force")
    assert sfl("reject", "2", "--reason", reason).status == 0


def test_approve_rejected_needs_force(sfl, federation):
    _rejected_for(sfl, "accuracy below the last version")
    result = sfl("approve", "2")
    assert result.status == 1
    assert "was rejected ('accuracy below the last version')" in result.err
    assert "--force" in result.err
    assert _describe(federation, 2)["ModelApprovalStatus"] == "Rejected"


def test_approve_rejected_with_force(sfl, federation):
    _rejected_for(sfl, "accuracy below the last version")
    result = sfl("approve", "2", "--force")
    assert result.status == 0
    assert _describe(federation, 2)["ModelApprovalStatus"] == "Approved"


def test_reject_requires_reason(sfl):
    result = sfl("reject", "2")
    assert result.status == 2
    assert "--reason" in result.err


def test_moto_update_drops_metadata(federation):
    # Pins the moto 5.2.5 behaviour that makes approve and reject pass the
    # properties again: an update without them wipes the stored ones.
    sagemaker = federation.aws.client("sagemaker")
    group = federation.settings.model_package_group_name
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="PendingManualApproval",
        CustomerMetadataProperties={"round": "99"},
    )["ModelPackageArn"]
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    assert not described.get("CustomerMetadataProperties")
