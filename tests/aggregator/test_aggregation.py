"""Admission and aggregation through the handler, with exact expected values."""

from __future__ import annotations

import json
from urllib.parse import quote_plus, unquote_plus

import numpy as np
import pytest

from fedcore import layout, safetensors_io
from lambdas.aggregator import constants as names
from lambdas.aggregator import handler

from .harness import Harness, Upload, expected_model
from .invariants import check_all

FEDERATION_ONLY = [["Federation"]]
BY_REASON = [["Federation"], ["Federation", "Reason"]]


def assert_model_equals(harness: Harness, round_number: int, expected) -> None:
    stored = harness.model(round_number)
    assert sorted(stored) == sorted(expected)
    for name, array in expected.items():
        assert stored[name].dtype == np.float32
        np.testing.assert_allclose(stored[name], array, rtol=0, atol=1e-6)


def test_publish_weighted_mean(harness: Harness) -> None:
    uploads = [
        harness.upload(f"dev-{index}", num_examples=count)
        for index, count in enumerate((1, 7, 50))
    ]
    assert harness.deliver(*uploads) == []
    assert harness.pointer()["round"] == 2
    assert_model_equals(harness, 2, expected_model(harness.base, uploads))
    check_all(harness, uploads, [upload.key for upload in uploads])


def test_publish_two_rounds(harness: Harness) -> None:
    first = [harness.upload(f"dev-{index}", num_examples=3) for index in range(3)]
    harness.deliver(*first)
    round_two_base = harness.model(2)
    second = [
        harness.upload(f"dev-{index}", num_examples=index + 1) for index in range(3)
    ]
    harness.deliver(*second)
    assert harness.pointer()["round"] == 3
    assert_model_equals(harness, 3, expected_model(round_two_base, second))
    check_all(harness, first + second, [upload.key for upload in first + second])


def test_examples_zero_rejected(harness: Harness) -> None:
    upload = harness.upload("dev-0", metadata={"num_examples": "0"})
    harness.deliver(upload)
    assert harness.rejection(1, upload.key)["reason"] == "examples_invalid"


def test_bad_device_others_aggregate(harness: Harness) -> None:
    good = [
        harness.upload(f"dev-{index}", num_examples=4 + index) for index in range(3)
    ]
    missing = dict(harness.delta())
    missing.pop(sorted(missing)[0])
    wrong_shape = dict(harness.delta())
    first = sorted(wrong_shape)[0]
    wrong_shape[first] = np.zeros((1, 1), dtype=np.float32)
    nan = harness.delta()
    nan[first] = nan[first].copy()
    nan[first].flat[0] = np.nan
    bad = [
        harness.upload("bad-missing", tensors=missing),
        harness.upload("bad-shape", tensors=wrong_shape),
        harness.upload("bad-nan", tensors=nan),
    ]
    assert harness.deliver(bad[0], good[0], bad[1], good[1], bad[2], good[2]) == []
    assert_model_equals(harness, 2, expected_model(harness.base, good))
    reasons = [harness.rejection(1, upload.key)["reason"] for upload in bad]
    assert reasons == ["missing_tensor", "shape_mismatch", "non_finite"]
    check_all(harness, good + bad, [upload.key for upload in good])


def test_archived_update_rejected_alone(harness: Harness) -> None:
    good = [harness.upload(f"dev-{index}") for index in range(2)]
    # GetObject rejects an object in the GLACIER storage class.
    archived = harness.upload("dev-archived", storage_class="GLACIER")
    assert harness.deliver(good[0], archived, good[1]) == []
    rejection = harness.rejection(1, archived.key)
    assert rejection["reason"] == "unreadable"
    assert "InvalidObjectState" in rejection["detail"]
    assert harness.rejected_by_reason() == {"unreadable": 1}
    assert sorted(harness.state(1)["accepted"]) == ["dev-0", "dev-1"]


def test_deleted_update_rejected_alone(harness: Harness) -> None:
    good = harness.upload("dev-0")
    deleted = harness.upload("dev-deleted")
    harness.s3.delete_object(
        Bucket=harness.updates_bucket, Key=deleted.key, VersionId=deleted.version_id
    )
    assert harness.deliver(deleted, good) == []
    assert harness.rejection(1, deleted.key)["reason"] == "unreadable"
    assert sorted(harness.state(1)["accepted"]) == ["dev-0"]


def test_unquote_plus_semantics() -> None:
    assert unquote_plus("a%2Bb+c") == "a+b c"
    assert unquote_plus("updates%2Fdev-1%2Fx") == "updates/dev-1/x"
    assert quote_plus("dev_1.a-b") == "dev_1.a-b"


def test_encoded_key_accepted(harness: Harness) -> None:
    upload = harness.upload("dev_1.a-b")
    body = harness.body(upload)
    assert quote_plus(upload.key) in body
    assert "%2F" in quote_plus(upload.key)
    harness.deliver_bodies([body])
    assert "dev_1.a-b" in harness.state(1)["accepted"]


@pytest.mark.parametrize(
    ("raw_device", "decoded_device"),
    [("dev%2B1", "dev+1"), ("dev+1", "dev 1")],
)
def test_encoded_plus_invalid_key(
    harness: Harness, raw_device: str, decoded_device: str
) -> None:
    upload = harness.upload("dev-1")
    raw_key = f"updates%2F{raw_device}%2Fround-000001%2Fu1.safetensors"
    decoded_key = f"updates/{decoded_device}/round-000001/u1.safetensors"
    assert unquote_plus(raw_key) == decoded_key
    failed = harness.deliver_bodies([harness.body(upload, raw_key=raw_key)])
    assert failed == []
    record = harness.rejection(None, decoded_key)
    assert record["reason"] == "invalid_key"
    assert record["key"] == decoded_key
    assert harness.state(1) is None


def test_multipart_counts_like_put(harness: Harness) -> None:
    tensors = harness.delta()
    update_id = "multipart1"
    data = safetensors_io.encode(tensors, harness.metadata("dev-mp", 1, update_id, 6))
    key = layout.update_key("dev-mp", 1, update_id)
    s3 = harness.s3
    upload_id = s3.create_multipart_upload(Bucket=harness.updates_bucket, Key=key)[
        "UploadId"
    ]
    part = s3.upload_part(
        Bucket=harness.updates_bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=1,
        Body=data,
    )
    done = s3.complete_multipart_upload(
        Bucket=harness.updates_bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    multipart = Upload(
        key=key,
        device="dev-mp",
        round=1,
        data=data,
        size=len(data),
        etag=done["ETag"].strip('"'),
        version_id=done.get("VersionId"),
        num_examples=6,
        tensors=tensors,
    )
    others = [harness.upload(f"dev-{index}", num_examples=2) for index in range(2)]
    body = harness.body(multipart, event_name="ObjectCreated:CompleteMultipartUpload")
    harness.deliver_bodies([body] + [harness.body(upload) for upload in others])
    assert harness.state(1)["accepted"]["dev-mp"]["key"] == key
    assert_model_equals(harness, 2, expected_model(harness.base, [multipart, *others]))


def test_same_event_twice_counts_once(harness: Harness) -> None:
    upload = harness.upload("dev-0")
    assert harness.deliver(upload, upload) == []
    harness.deliver(upload)
    assert list(harness.state(1)["accepted"]) == ["dev-0"]
    assert harness.total("UpdatesAccepted") == 1


def test_old_round_update_stale(harness: Harness) -> None:
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    harness.deliver(*uploads)
    etag = harness.state_etag(1)
    pointer = harness.pointer()
    late = harness.upload("dev-late", round_number=1)
    harness.deliver(late)
    assert harness.rejection(1, late.key)["reason"] == "stale_round"
    assert harness.state_etag(1) == etag
    assert harness.pointer() == pointer
    assert harness.rejected_by_reason() == {"stale_round": 1}


def test_registry_version_properties(harness: Harness) -> None:
    uploads = [
        harness.upload(f"dev-{index}", num_examples=index + 2) for index in range(3)
    ]
    harness.deliver(*uploads)
    registry = harness.registry()
    assert len(registry) == 1
    version = registry[0]
    properties = version["CustomerMetadataProperties"]
    published = harness.state(1)["published"]
    assert version["ModelApprovalStatus"] == "PendingManualApproval"
    assert properties["round"] == "1"
    assert properties["federation"] == harness.settings.federation
    assert properties["participants"] == "3"
    assert properties["examples"] == str(2 + 3 + 4)
    assert properties["model_key"] == layout.model_key(2)
    assert properties["model_sha256"] == published["model_sha256"]
    assert float(properties["holdout_accuracy"]) == pytest.approx(
        published["evaluation"]["accuracy"], abs=1e-6
    )
    assert published["model_package_arn"] == version["ModelPackageArn"]
    statistics = version["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["S3Uri"].endswith(layout.evaluation_key(2))


def test_emf_dimension_sets(harness: Harness) -> None:
    uploads = [harness.upload(f"dev-{index}") for index in range(3)]
    bad = harness.upload("dev-bad", metadata={"num_examples": "-1"})
    harness.deliver(bad, *uploads)
    federation = harness.settings.federation

    def directive(record):
        (only,) = record["_aws"]["CloudWatchMetrics"]
        return only

    (accepted,) = harness.metrics(names.METRIC_UPDATES_ACCEPTED)
    assert directive(accepted)["Dimensions"] == FEDERATION_ONLY
    assert directive(accepted)["Namespace"] == harness.settings.metric_namespace
    assert accepted["Federation"] == federation
    assert accepted[names.METRIC_UPDATES_ACCEPTED] == 3.0
    (rejected,) = harness.metrics(names.METRIC_UPDATES_REJECTED)
    assert directive(rejected)["Dimensions"] == BY_REASON
    assert rejected["Reason"] == "examples_invalid"
    assert rejected["Federation"] == federation
    (published,) = harness.metrics(names.METRIC_ROUNDS_PUBLISHED)
    assert directive(published)["Dimensions"] == FEDERATION_ONLY
    metric_names = {item["Name"] for item in directive(published)["Metrics"]}
    assert metric_names == {
        names.METRIC_ROUNDS_PUBLISHED,
        names.METRIC_ROUND_PARTICIPANTS,
        names.METRIC_ROUND_DURATION,
        names.METRIC_AGGREGATION_TIME,
        names.METRIC_GLOBAL_LOSS,
        names.METRIC_GLOBAL_ACCURACY,
    }
    assert published[names.METRIC_ROUND_PARTICIPANTS] == 3.0


def test_ignored_events_logged(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    upload = harness.upload("dev-0")
    outside = harness.body(upload, raw_key=quote_plus("other/dev-0/x.safetensors"))
    other_bucket = harness.body(upload, bucket="someone-else")
    removed = json.dumps(
        {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete"}]}
    )
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})
    caplog.set_level("INFO", logger="lambdas.aggregator.handler")
    failed = harness.deliver_bodies([outside, other_bucket, removed, test_event])
    assert failed == []
    ignored = [
        record for record in caplog.records if "ignored message" in record.message
    ]
    assert len(ignored) == 4
    assert harness.keys("rejections/") == []
    assert harness.records == []


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"Records": "x"}),
        json.dumps({"Records": [7]}),
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["text", "list", "records-not-list", "record-not-object", "deeply-nested"],
)
def test_malformed_body_to_dlq(harness: Harness, body: str) -> None:
    failed = harness.deliver_bodies([body])
    assert failed == [body]
    assert harness.rejected_by_reason() == {"malformed_event": 1}


@pytest.mark.parametrize(("receives", "counted"), [("1", 1), ("3", 0), ("x", 1)])
def test_malformed_counted_first_receive(
    harness: Harness, receives: str, counted: int
) -> None:
    event = harness.sqs_event(["not json"])
    event["Records"][0]["attributes"] = {"ApproximateReceiveCount": receives}
    response = handler.handle_sqs(event, None)
    assert len(response["batchItemFailures"]) == 1
    assert harness.rejected_by_reason().get("malformed_event", 0) == counted


def test_storage_failure_retries_own_message(harness: Harness) -> None:
    first = [harness.upload(f"dev-{index}") for index in range(3)]
    assert harness.deliver(*first) == []
    late = harness.upload("dev-late", round_number=1)
    # A damaged state of round 1 makes every read of it fail, as S3 errors do.
    harness.s3.put_object(
        Bucket=harness.models_bucket, Key=layout.round_state_key(1), Body=b"{"
    )
    current = harness.upload("dev-0")
    failed = harness.deliver(late, current)
    assert failed == [harness.body(late)]
    assert sorted(harness.state(2)["accepted"]) == ["dev-0"]
