"""Storage stack: KMS key, data buckets, access-log bucket."""

from __future__ import annotations

from dataclasses import fields

import pytest
from aws_cdk.assertions import Capture, Match

from fedcore.layout import UPDATES_PREFIX
from infra.storage_stack import StorageExports

pytestmark = pytest.mark.infra

DATA_BUCKETS = ("UpdatesBucket", "ModelsBucket")


def _bucket(template, construct_id):
    buckets = template.find_resources("AWS::S3::Bucket")
    matches = [b for logical, b in buckets.items() if logical.startswith(construct_id)]
    assert len(matches) == 1, f"expected one {construct_id}, found {sorted(buckets)}"
    return matches[0]


def _logical_id(template, construct_id):
    buckets = template.find_resources("AWS::S3::Bucket")
    return next(logical for logical in buckets if logical.startswith(construct_id))


def test_key_rotation(synthesized):
    template = synthesized.template("storage")
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_key_retained(synthesized):
    template = synthesized.template("storage")
    template.has_resource("AWS::KMS::Key", {"DeletionPolicy": "Retain"})


@pytest.mark.parametrize("construct_id", DATA_BUCKETS)
def test_data_bucket_sse_kms(synthesized, construct_id):
    template = synthesized.template("storage")
    key_id = next(iter(template.find_resources("AWS::KMS::Key")))
    rule = _bucket(template, construct_id)["Properties"]["BucketEncryption"][
        "ServerSideEncryptionConfiguration"
    ][0]
    assert rule["BucketKeyEnabled"] is True
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {
        "Fn::GetAtt": [key_id, "Arn"]
    }


@pytest.mark.parametrize("construct_id", DATA_BUCKETS)
def test_data_bucket_versioned(synthesized, construct_id):
    bucket = _bucket(synthesized.template("storage"), construct_id)
    assert bucket["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}


@pytest.mark.parametrize("construct_id", (*DATA_BUCKETS, "AccessLogBucket"))
def test_bucket_blocks_public_access(synthesized, construct_id):
    bucket = _bucket(synthesized.template("storage"), construct_id)
    assert bucket["Properties"]["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }


@pytest.mark.parametrize("construct_id", DATA_BUCKETS)
def test_data_bucket_retained(synthesized, construct_id):
    bucket = _bucket(synthesized.template("storage"), construct_id)
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"


@pytest.mark.parametrize(
    ("construct_id", "prefix"),
    [("UpdatesBucket", "updates-bucket/"), ("ModelsBucket", "models-bucket/")],
)
def test_data_bucket_access_logs(synthesized, construct_id, prefix):
    template = synthesized.template("storage")
    log_bucket = _logical_id(template, "AccessLogBucket")
    logging = _bucket(template, construct_id)["Properties"]["LoggingConfiguration"]
    assert logging == {
        "DestinationBucketName": {"Ref": log_bucket},
        "LogFilePrefix": prefix,
    }


def test_log_bucket_sse_s3(synthesized):
    bucket = _bucket(synthesized.template("storage"), "AccessLogBucket")
    encryption = bucket["Properties"]["BucketEncryption"]
    default = encryption["ServerSideEncryptionConfiguration"][0]
    assert default["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}


def test_log_bucket_allows_log_delivery(synthesized):
    template = synthesized.template("storage")
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": _logical_id(template, "AccessLogBucket")},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": "s3:PutObject",
                                "Effect": "Allow",
                                "Principal": {"Service": "logging.s3.amazonaws.com"},
                            }
                        )
                    ]
                )
            },
        },
    )


def test_log_bucket_has_no_acl(synthesized):
    bucket = _bucket(synthesized.template("storage"), "AccessLogBucket")
    assert "AccessControl" not in bucket["Properties"]


def test_updates_lifecycle_expiry(synthesized):
    settings = synthesized.settings
    bucket = _bucket(synthesized.template("storage"), "UpdatesBucket")
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["Prefix"] == UPDATES_PREFIX
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == settings.retention_days
    assert rule["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": settings.retention_days
    }


def test_models_lifecycle_keeps_current(synthesized):
    bucket = _bucket(synthesized.template("storage"), "ModelsBucket")
    for rule in bucket["Properties"]["LifecycleConfiguration"]["Rules"]:
        assert "ExpirationInDays" not in rule


def test_retention_override(synth_with):
    result = synth_with({"fl:retention_days": 7})
    bucket = _bucket(result.template("storage"), "UpdatesBucket")
    rule = bucket["Properties"]["LifecycleConfiguration"]["Rules"][0]
    assert rule["ExpirationInDays"] == 7


@pytest.mark.parametrize("construct_id", (*DATA_BUCKETS, "AccessLogBucket"))
def test_bucket_policy_denies_insecure_transport(synthesized, construct_id):
    template = synthesized.template("storage")
    logical = _logical_id(template, construct_id)
    resources = Capture()
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": logical},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        {
                            "Action": "s3:*",
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            "Effect": "Deny",
                            "Principal": {"AWS": "*"},
                            "Resource": resources,
                        }
                    ]
                )
            },
        },
    )
    assert {"Fn::GetAtt": [logical, "Arn"]} in resources.as_array()


@pytest.mark.parametrize("field", [f.name for f in fields(StorageExports)])
def test_exports_named_from_settings(synthesized, field):
    export = getattr(StorageExports.for_settings(synthesized.settings), field)
    outputs = synthesized.template("storage").find_outputs("*")
    names = {output.get("Export", {}).get("Name") for output in outputs.values()}
    assert export.startswith(synthesized.settings.federation)
    assert export in names
