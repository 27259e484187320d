"""Device access stack: IoT-assumed role confined to its own prefix."""

from __future__ import annotations

import pytest

from fedcore.layout import POINTER_KEY
from infra.storage_stack import StorageExports

pytestmark = pytest.mark.infra


def _statements(synthesized):
    template = synthesized.template("device_access")
    (policy,) = template.find_resources("AWS::IAM::Policy").values()
    return {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}


def _joined(resource):
    parts = resource["Fn::Join"][1]
    return "".join(
        p if isinstance(p, str) else f"<{p['Fn::ImportValue']}>" for p in parts
    )


def test_role_trusts_iot_credentials_provider(synthesized):
    template = synthesized.template("device_access")
    (role,) = template.find_resources("AWS::IAM::Role").values()
    statements = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statements == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "credentials.iot.amazonaws.com"},
        }
    ]


def test_only_four_statements(synthesized):
    assert sorted(_statements(synthesized)) == [
        "ReadOwnUpdates",
        "ReadPointerAndModels",
        "UploadOwnUpdates",
        "UseDataKeyThroughS3",
    ]


def test_read_back_confined_to_thing_name(synthesized):
    exports = StorageExports.for_settings(synthesized.settings)
    statement = _statements(synthesized)["ReadOwnUpdates"]
    assert statement["Action"] == "s3:GetObject"
    resource = _joined(statement["Resource"])
    assert resource == (
        f"<{exports.updates_bucket_arn}>/updates/${{credentials-iot:ThingName}}/*"
    )


def test_put_confined_to_thing_name(synthesized):
    exports = StorageExports.for_settings(synthesized.settings)
    statement = _statements(synthesized)["UploadOwnUpdates"]
    assert statement["Action"] == "s3:PutObject"
    resource = _joined(statement["Resource"])
    assert resource.endswith("updates/${credentials-iot:ThingName}/*")
    assert resource.startswith(f"<{exports.updates_bucket_arn}>/")


def test_put_standard_storage_class_only(synthesized):
    condition = _statements(synthesized)["UploadOwnUpdates"]["Condition"]
    assert condition["StringEqualsIfExists"] == {"s3:x-amz-storage-class": "STANDARD"}


def test_put_without_customer_key(synthesized):
    condition = _statements(synthesized)["UploadOwnUpdates"]["Condition"]
    assert condition["Null"] == {
        "s3:x-amz-server-side-encryption-customer-algorithm": "true"
    }


def test_reads_pointer_and_models_only(synthesized):
    exports = StorageExports.for_settings(synthesized.settings)
    statement = _statements(synthesized)["ReadPointerAndModels"]
    assert statement["Action"] == "s3:GetObject"
    resources = sorted(_joined(r) for r in statement["Resource"])
    assert resources == [
        f"<{exports.models_bucket_arn}>/{POINTER_KEY}",
        f"<{exports.models_bucket_arn}>/models/*",
    ]


def test_kms_only_via_s3(synthesized):
    statement = _statements(synthesized)["UseDataKeyThroughS3"]
    assert sorted(statement["Action"]) == [
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
    ]
    condition = statement["Condition"]["StringEquals"]["kms:ViaService"]
    assert condition == {
        "Fn::Join": ["", ["s3.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]
    }


def test_no_list_or_delete(synthesized):
    actions = []
    for statement in _statements(synthesized).values():
        value = statement["Action"]
        actions.extend(value if isinstance(value, list) else [value])
    assert not [a for a in actions if "List" in a or "Delete" in a]


def test_role_alias(synthesized):
    template = synthesized.template("device_access")
    (role_id,) = template.find_resources("AWS::IAM::Role")
    template.has_resource_properties(
        "AWS::IoT::RoleAlias",
        {
            "RoleAlias": f"{synthesized.settings.federation}-device",
            "RoleArn": {"Fn::GetAtt": [role_id, "Arn"]},
        },
    )


def test_iot_policy_allows_alias_only(synthesized):
    template = synthesized.template("device_access")
    (policy,) = template.find_resources("AWS::IoT::Policy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert [s["Action"] for s in statements] == ["iot:AssumeRoleWithCertificate"]


@pytest.mark.parametrize(
    ("concern", "output"),
    [
        ("device_access", "RoleAliasName"),
        ("device_access", "IotPolicyName"),
        ("storage", "UpdatesBucketName"),
        ("storage", "ModelsBucketName"),
    ],
)
def test_outputs(synthesized, concern, output):
    assert output in synthesized.template(concern).find_outputs("*")
