"""moto 5.2.5 behaviours the aggregator and these tests rely on, pinned."""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from local_aws.server import REGION, local_aws


@pytest.fixture
def s3(aws_environment: None):
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        bucket = f"pin-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        yield client, bucket


def test_if_none_match_existing_key(s3) -> None:
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="k", Body=b"2", IfNoneMatch="*")
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_archived_object_unreadable(s3) -> None:
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="k", Body=b"1", StorageClass="GLACIER")
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert caught.value.response["Error"]["Code"] == "InvalidObjectState"


def test_if_match_stale_etag(s3) -> None:
    client, bucket = s3
    first = client.put_object(Bucket=bucket, Key="k", Body=b"1")["ETag"]
    client.put_object(Bucket=bucket, Key="k", Body=b"2", IfMatch=first)
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="k", Body=b"3", IfMatch=first)
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


@pytest.mark.parametrize("attempt", range(5))
def test_if_match_race_one_winner(s3, attempt: int) -> None:
    """Eight threads race one compare-and-swap: one wins (with the conftest lock)."""
    client, bucket = s3
    # The first body differs from every racer's, so a winner changes the ETag.
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"initial")["ETag"]
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def swap(index: int) -> None:
        start.wait()
        try:
            client.put_object(
                Bucket=bucket, Key="k", Body=str(index).encode(), IfMatch=etag
            )
            outcomes.append("won")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("won") == 1
    assert outcomes.count("PreconditionFailed") == 7


def test_versions_listed_newest_first(s3) -> None:
    client, bucket = s3
    for index in range(4):
        client.put_object(Bucket=bucket, Key="k", Body=str(index).encode())
    versions = client.list_object_versions(Bucket=bucket, Prefix="k")["Versions"]
    bodies = [
        client.get_object(Bucket=bucket, Key="k", VersionId=item["VersionId"])[
            "Body"
        ].read()
        for item in versions
    ]
    assert bodies == [b"3", b"2", b"1", b"0"]
    assert versions[0]["IsLatest"] is True


def test_get_reports_version_read(s3) -> None:
    # The aggregator records this version when an event carries no versionId.
    client, bucket = s3
    first = client.put_object(Bucket=bucket, Key="k", Body=b"1")["VersionId"]
    assert client.get_object(Bucket=bucket, Key="k")["VersionId"] == first


def test_deleted_version_is_404(s3) -> None:
    client, bucket = s3
    version = client.put_object(Bucket=bucket, Key="k", Body=b"1")["VersionId"]
    client.delete_object(Bucket=bucket, Key="k", VersionId=version)
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket=bucket, Key="k", VersionId=version)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_sqs_redrive_to_dlq(aws_environment: None) -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        dlq_url = sqs.create_queue(QueueName="pin-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(
            QueueUrl=dlq_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}
        url = sqs.create_queue(
            QueueName="pin-main",
            Attributes={"VisibilityTimeout": "0", "RedrivePolicy": json.dumps(redrive)},
        )["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="poison")
        receives = 0
        for _ in range(4):
            if sqs.receive_message(QueueUrl=url).get("Messages"):
                receives += 1
        moved = sqs.receive_message(QueueUrl=dlq_url).get("Messages", [])
        assert receives == 2
        assert [message["Body"] for message in moved] == ["poison"]


def test_update_model_package_wipes_metadata(aws_environment: None) -> None:
    """Without CustomerMetadataProperties moto drops them, so approvals resend them."""
    with mock_aws():
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model_package_group(ModelPackageGroupName="pin-group")
        arn = sagemaker.create_model_package(
            ModelPackageGroupName="pin-group",
            ModelApprovalStatus="PendingManualApproval",
            CustomerMetadataProperties={"round": "1"},
        )["ModelPackageArn"]
        sagemaker.update_model_package(
            ModelPackageArn=arn, ModelApprovalStatus="Approved"
        )
        described = sagemaker.describe_model_package(ModelPackageName=arn)
        assert described["ModelApprovalStatus"] == "Approved"
        assert described.get("CustomerMetadataProperties", {}) == {}


def test_create_model_package_ignores_client_token(aws_environment: None) -> None:
    """moto creates a second version for a repeated ClientToken; AWS is idempotent."""
    with mock_aws():
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model_package_group(ModelPackageGroupName="pin-group")
        arns = {
            sagemaker.create_model_package(
                ModelPackageGroupName="pin-group", ClientToken="same-token"
            )["ModelPackageArn"]
            for _ in range(2)
        }
        assert len(arns) == 2


def test_s3_to_sqs_key_quote_plus(aws_environment: None) -> None:
    """moto's server sends S3 notifications to SQS with quote_plus-encoded keys."""
    key = "updates/dev-1/round-000001/a b+c.safetensors"
    with local_aws() as aws:
        s3 = aws.client("s3")
        sqs = aws.client("sqs")
        url = sqs.create_queue(QueueName="pin-events")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        s3.create_bucket(Bucket="pin-updates")
        s3.put_bucket_notification_configuration(
            Bucket="pin-updates",
            NotificationConfiguration={
                "QueueConfigurations": [
                    {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}
                ]
            },
        )
        s3.put_object(Bucket="pin-updates", Key=key, Body=b"x")
        keys: list[str] = []
        deadline = time.monotonic() + 10
        while not keys and time.monotonic() < deadline:
            for message in sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", []):
                document = json.loads(message["Body"])
                keys.extend(
                    record["s3"]["object"]["key"]
                    for record in document.get("Records", [])
                )
    assert keys == [quote_plus(key)]
