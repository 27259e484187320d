"""Tests of the edge client and ``sfl-edge`` against S3 in moto, in process."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from moto import mock_aws
from moto.server import ThreadedMotoServer
from safetensors.numpy import load as reference_load

from edge_client import cli
from edge_client.client import EdgeClient
from edge_client.errors import (
    ModelFormatError,
    ModelIntegrityError,
    ModelMismatchError,
    NetworkError,
    PointerError,
    PointerNotFoundError,
    RoundTimeoutError,
    UploadConflictError,
)
from edge_client.local_dp import LocalDpTrainer
from edge_client.s3_access import make_s3_client
from edge_client.trainers import NumpyTrainer
from fedcore import layout, models, safetensors_io
from fedcore.update import ValidationLimits, specs_of, validate_update

REGION = "us-east-1"
DEVICE = "device-1"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("s3", region_name=REGION)


@pytest.fixture
def buckets(s3: Any) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:12]
    updates, models_bucket = f"updates-{suffix}", f"models-{suffix}"
    s3.create_bucket(Bucket=updates)
    s3.create_bucket(Bucket=models_bucket)
    return updates, models_bucket


@pytest.fixture
def local_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0).astype(np.int64)
    return x, y


def _initial(architecture: str = "mlp") -> dict[str, np.ndarray]:
    return models.init_model(
        architecture, input_dim=8, hidden_units=5, classes=4, seed=0
    )


def _model_bytes(
    tensors: dict[str, np.ndarray], round_number: int, **overrides: str
) -> bytes:
    metadata = {
        "format_version": "1",
        "kind": "model",
        "architecture": models.architecture_of(tensors),
        "round": str(round_number),
        **overrides,
    }
    return safetensors_io.encode(tensors, metadata)


def _publish(
    s3: Any,
    bucket: str,
    round_number: int,
    data: bytes,
    *,
    sha256: str | None = None,
) -> str:
    """Store a model and point the open round at it; return the pointer's digest."""
    key = layout.model_key(round_number)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    digest = sha256 or hashlib.sha256(data).hexdigest()
    pointer = {
        "format_version": "1",
        "round": round_number,
        "model_key": key,
        "model_sha256": digest,
        "published_at": "2025-01-01T00:00:00Z",
    }
    s3.put_object(Bucket=bucket, Key=layout.POINTER_KEY, Body=json.dumps(pointer))
    return digest


def _client(s3: Any, buckets: tuple[str, str], **kwargs: Any) -> EdgeClient:
    updates, models_bucket = buckets
    settings: dict[str, Any] = {
        "device_id": DEVICE,
        "updates_bucket": updates,
        "models_bucket": models_bucket,
        "trainer": NumpyTrainer(epochs=2, batch_size=8, learning_rate=0.1, seed=0),
        "s3_client": s3,
        "retry_delay": 0.0,
        **kwargs,
    }
    return EdgeClient(**settings)


def _keys(s3: Any, bucket: str) -> list[str]:
    response = s3.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in response.get("Contents", [])]


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_train_round_uploads_delta(
    s3: Any, buckets: tuple[str, str], local_data: tuple
) -> None:
    updates, models_bucket = buckets
    initial = _initial()
    digest = _publish(s3, models_bucket, 3, _model_bytes(initial, 3))
    client = _client(s3, buckets)
    x, y = local_data

    result = client.train_round(x, y)

    body = s3.get_object(Bucket=updates, Key=result.key)["Body"].read()
    tensors, metadata = safetensors_io.decode(body)
    trained = client.trainer.get_weights()
    assert result.key == layout.update_key(DEVICE, 3, result.update_id)
    assert _keys(s3, updates) == [result.key]
    assert result.size_bytes == len(body)
    assert result.already_stored is False
    assert metadata["kind"] == "update"
    assert metadata["round"] == "3"
    assert metadata["device_id"] == DEVICE
    assert metadata["update_id"] == result.update_id
    assert metadata["num_examples"] == "60"
    assert metadata["base_model_sha256"] == digest
    assert set(json.loads(metadata["client_metrics"])) >= {"loss", "accuracy"}
    assert specs_of(tensors) == specs_of(initial)
    for name in initial:
        np.testing.assert_array_equal(tensors[name], trained[name] - initial[name])
    assert any(np.abs(tensors[name]).max() > 0 for name in tensors)


def test_train_round_passes_validation(
    s3: Any, buckets: tuple[str, str], local_data: tuple
) -> None:
    """The aggregator's own validation and the safetensors library accept the update."""
    updates, models_bucket = buckets
    initial = _initial("softmax")
    digest = _publish(s3, models_bucket, 0, _model_bytes(initial, 0))
    result = _client(s3, buckets).train_round(*local_data)
    body = s3.get_object(Bucket=updates, Key=result.key)["Body"].read()

    validated = validate_update(
        body,
        key=layout.parse_update_key(result.key),
        reference=specs_of(initial),
        open_round=0,
        base_model_sha256=digest,
        limits=ValidationLimits(),
    )

    assert validated.metadata.num_examples == 60
    assert set(reference_load(body)) == set(initial)


def test_upload_stores_sha256_checksum(
    s3: Any, buckets: tuple[str, str], local_data: tuple
) -> None:
    updates, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial(), 1))
    result = _client(s3, buckets).train_round(*local_data)
    head = s3.head_object(Bucket=updates, Key=result.key, ChecksumMode="ENABLED")
    body = s3.get_object(Bucket=updates, Key=result.key)["Body"].read()
    assert head["ChecksumSHA256"] == _b64_sha256(body)
    assert head["ContentType"] == "application/octet-stream"


def test_moto_rejects_second_conditional_put(s3: Any, buckets: tuple[str, str]) -> None:
    """The conflict tests below rely on moto enforcing If-None-Match."""
    updates, _ = buckets
    s3.put_object(Bucket=updates, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket=updates, Key="k", Body=b"second", IfNoneMatch="*")
    assert raised.value.response["Error"]["Code"] == "PreconditionFailed"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_upload_conflict_not_overwritten(s3: Any, buckets: tuple[str, str]) -> None:
    updates, _ = buckets
    client = _client(s3, buckets)
    key = layout.update_key(DEVICE, 2, uuid.uuid4().hex)
    assert client.upload_update(key, b"original bytes") is False
    with pytest.raises(UploadConflictError, match="not overwritten") as raised:
        client.upload_update(key, b"different bytes")
    cause = raised.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["Error"]["Code"] == "PreconditionFailed"
    stored = s3.get_object(Bucket=updates, Key=key)["Body"].read()
    assert stored == b"original bytes"


def test_upload_retry_same_bytes_succeeds(s3: Any, buckets: tuple[str, str]) -> None:
    """An object stored by an earlier, unanswered attempt counts as uploaded."""
    updates, _ = buckets
    key = layout.update_key(DEVICE, 2, uuid.uuid4().hex)
    body = b"update bytes"
    s3.put_object(
        Bucket=updates, Key=key, Body=body, ChecksumAlgorithm="SHA256", IfNoneMatch="*"
    )
    assert _client(s3, buckets).upload_update(key, body) is True
    assert s3.get_object(Bucket=updates, Key=key)["Body"].read() == body


def test_upload_retry_without_checksum(s3: Any, buckets: tuple[str, str]) -> None:
    """A stored object without a SHA-256 checksum is compared byte for byte."""
    updates, _ = buckets
    key = layout.update_key(DEVICE, 2, uuid.uuid4().hex)
    s3.put_object(Bucket=updates, Key=key, Body=b"same")
    client = _client(s3, buckets)
    assert client.upload_update(key, b"same") is True
    with pytest.raises(UploadConflictError):
        client.upload_update(key, b"other")


def test_upload_lost_response_retried(s3: Any, buckets: tuple[str, str]) -> None:
    """A timeout after S3 stored the object leads to a 412 and a confirmed upload."""
    updates, _ = buckets
    key = layout.update_key(DEVICE, 2, uuid.uuid4().hex)
    body = b"update bytes"
    calls: list[str] = []

    def lose_first_response(**_: Any) -> None:
        calls.append("put")
        if len(calls) == 1:
            raise ReadTimeoutError(endpoint_url=f"https://s3/{updates}/{key}")

    s3.meta.events.register("after-call.s3.PutObject", lose_first_response)
    try:
        already_stored = _client(s3, buckets).upload_update(key, body)
    finally:
        s3.meta.events.unregister("after-call.s3.PutObject", lose_first_response)
    assert already_stored is True
    assert len(calls) == 2
    assert s3.get_object(Bucket=updates, Key=key)["Body"].read() == body


def test_upload_network_down_raises(s3: Any, buckets: tuple[str, str]) -> None:
    updates, _ = buckets
    key = layout.update_key(DEVICE, 2, uuid.uuid4().hex)
    calls: list[str] = []

    def lose_every_response(**_: Any) -> None:
        calls.append("put")
        raise ReadTimeoutError(endpoint_url=f"https://s3/{updates}/{key}")

    s3.meta.events.register("after-call.s3.PutObject", lose_every_response)
    try:
        with pytest.raises(NetworkError, match="may or may not be stored"):
            _client(s3, buckets, upload_attempts=3).upload_update(key, b"bytes")
    finally:
        s3.meta.events.unregister("after-call.s3.PutObject", lose_every_response)
    assert len(calls) == 3


def test_tampered_model_rejected(
    s3: Any, buckets: tuple[str, str], local_data: tuple
) -> None:
    updates, models_bucket = buckets
    original = _model_bytes(_initial(), 4)
    digest = _publish(s3, models_bucket, 4, original)
    tampered = _model_bytes({k: v + 1 for k, v in _initial().items()}, 4)
    s3.put_object(Bucket=models_bucket, Key=layout.model_key(4), Body=tampered)
    client = _client(s3, buckets)
    with pytest.raises(ModelIntegrityError, match=f"expects {digest}"):
        client.train_round(*local_data)
    assert _keys(s3, updates) == []


def test_fetch_missing_pointer(s3: Any, buckets: tuple[str, str]) -> None:
    with pytest.raises(PointerNotFoundError, match="no global model is published"):
        _client(s3, buckets).fetch_global_model()


@pytest.mark.parametrize(
    ("pointer", "fragment"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[]", "not a JSON object"),
        ({"format_version": "2"}, "format_version '2'"),
        ({"round": -1}, "round -1"),
        ({"round": "3"}, "round '3'"),
        ({"round": True}, "round True"),
        ({"model_key": ""}, "model_key ''"),
        ({"model_sha256": "abc"}, "model_sha256 'abc'"),
        ({"model_sha256": "z" * 64}, "expected 64 hex digits"),
    ],
)
def test_fetch_bad_pointer(
    s3: Any, buckets: tuple[str, str], pointer: bytes | dict, fragment: str
) -> None:
    _, models_bucket = buckets
    if isinstance(pointer, dict):
        document = {
            "format_version": "1",
            "round": 0,
            "model_key": layout.model_key(0),
            "model_sha256": "0" * 64,
            **pointer,
        }
        pointer = json.dumps(document).encode()
    s3.put_object(Bucket=models_bucket, Key=layout.POINTER_KEY, Body=pointer)
    with pytest.raises(PointerError, match=fragment):
        _client(s3, buckets).fetch_global_model()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"round": "2"}, "round='2'"),
        ({"round": "one"}, "round='one'"),
        ({"round": ""}, "round=''"),
        ({"kind": "update"}, "kind='update'"),
        ({"format_version": "9"}, "format_version='9'"),
        ({"architecture": "softmax"}, "architecture='softmax'"),
        ({"proximal_mu": "inf"}, "proximal_mu='inf'"),
        ({"proximal_mu": "-1"}, "proximal_mu='-1'"),
        ({"proximal_mu": "abc"}, "proximal_mu='abc'"),
    ],
)
def test_fetch_model_metadata_mismatch(
    s3: Any, buckets: tuple[str, str], overrides: dict, fragment: str
) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial(), 1, **overrides))
    with pytest.raises(ModelFormatError, match=fragment):
        _client(s3, buckets).fetch_global_model()


@pytest.mark.parametrize(
    "case",
    [
        ({"proximal_mu": "0.5"}, True, 0.5),
        ({}, True, 0.0),
        ({"proximal_mu": "0.5"}, False, 0.25),
    ],
)
def test_proximal_mu_from_model(
    s3: Any,
    buckets: tuple[str, str],
    local_data: tuple[np.ndarray, np.ndarray],
    case: tuple[dict[str, str], bool, float],
) -> None:
    overrides, follow, expected = case
    _, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial(), 1, **overrides))
    trainer = NumpyTrainer(epochs=1, proximal_mu=0.25, seed=0)
    client = _client(s3, buckets, trainer=trainer, proximal_mu_from_model=follow)
    client.train_round(*local_data)
    assert trainer.proximal_mu == expected


def test_proximal_mu_unsupported_trainer_warns(
    s3: Any,
    buckets: tuple[str, str],
    local_data: tuple[np.ndarray, np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The local-DP wrapper has no proximal term of its own.
    _, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial(), 1, proximal_mu="0.5"))
    trainer = LocalDpTrainer(
        NumpyTrainer(epochs=1, seed=0), clip_norm=1.0, noise_multiplier=0.5, seed=0
    )
    client = _client(s3, buckets, trainer=trainer, proximal_mu_from_model=True)
    client.train_round(*local_data)
    assert "names proximal_mu 0.5, but trainer LocalDpTrainer" in caplog.text


def test_fetch_model_of_earlier_round(s3: Any, buckets: tuple[str, str]) -> None:
    # An abandoned round moves the pointer on and keeps the model it started from.
    _, models_bucket = buckets
    data = _model_bytes(_initial(), 3)
    key = layout.model_key(3)
    s3.put_object(Bucket=models_bucket, Key=key, Body=data)
    pointer = {
        "format_version": "1",
        "round": 5,
        "model_key": key,
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "published_at": "2025-01-01T00:00:00Z",
    }
    s3.put_object(
        Bucket=models_bucket, Key=layout.POINTER_KEY, Body=json.dumps(pointer)
    )
    model = _client(s3, buckets).fetch_global_model()
    assert model.round == 5


def test_fetch_model_not_safetensors(s3: Any, buckets: tuple[str, str]) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 1, b"\x00" * 16)
    with pytest.raises(ModelFormatError, match="not a valid safetensors file"):
        _client(s3, buckets).fetch_global_model()


def test_fetch_model_float64_rejected(s3: Any, buckets: tuple[str, str]) -> None:
    _, models_bucket = buckets
    tensors = {k: v.astype(np.float64) for k, v in _initial().items()}
    _publish(s3, models_bucket, 1, _model_bytes(tensors, 1))
    with pytest.raises(ModelFormatError, match="expected float32"):
        _client(s3, buckets).fetch_global_model()


def test_fetch_model_too_large(s3: Any, buckets: tuple[str, str]) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial(), 1))
    with pytest.raises(ModelFormatError, match="more than the limit of 100"):
        _client(s3, buckets, max_model_bytes=100).fetch_global_model()


def test_fetch_model_writable_copy(s3: Any, buckets: tuple[str, str]) -> None:
    _, models_bucket = buckets
    initial = _initial()
    digest = _publish(s3, models_bucket, 5, _model_bytes(initial, 5))
    model = _client(s3, buckets).fetch_global_model()
    assert model.round == 5
    assert model.sha256 == digest
    assert model.key == layout.model_key(5)
    assert model.architecture == "mlp"
    assert all(array.flags.writeable for array in model.tensors.values())
    np.testing.assert_array_equal(
        model.tensors["output/kernel"], initial["output/kernel"]
    )


def test_train_round_wrong_architecture(
    s3: Any, buckets: tuple[str, str], local_data: tuple
) -> None:
    updates, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial("mlp"), 1))
    client = _client(s3, buckets, architecture="softmax")
    with pytest.raises(ModelMismatchError, match="expects 'softmax'"):
        client.train_round(*local_data)
    assert _keys(s3, updates) == []


@pytest.mark.parametrize(
    ("features", "labels", "fragment"),
    [
        (np.zeros((4, 7), np.float32), np.zeros(4, np.int64), "expects 8 features"),
        (np.zeros((4, 8), np.float32), np.array([0, 1, 2, 4]), "classes 0..3"),
        (np.zeros((4, 8), np.float32), np.zeros(3, np.int64), "but \\[3\\] labels"),
        (np.zeros((0, 8), np.float32), np.zeros(0, np.int64), "no examples"),
    ],
)
def test_train_round_data_mismatch(
    s3: Any,
    buckets: tuple[str, str],
    features: np.ndarray,
    labels: np.ndarray,
    fragment: str,
) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 1, _model_bytes(_initial(), 1))
    with pytest.raises(ModelMismatchError, match=fragment):
        _client(s3, buckets).train_round(features, labels)


def test_client_rejects_device_id(s3: Any, buckets: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid device id 'a/b'"):
        _client(s3, buckets, device_id="a/b")


def test_wait_for_round_advanced(s3: Any, buckets: tuple[str, str]) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 2, _model_bytes(_initial(), 2))
    pointer = _client(s3, buckets).wait_for_round(1, timeout=5, poll_interval=0.01)
    assert pointer.round == 2


def test_wait_for_round_survives_network_loss(
    s3: Any, buckets: tuple[str, str]
) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 2, _model_bytes(_initial(), 2))
    calls: list[str] = []

    def fail_first_read(**_: Any) -> None:
        calls.append("get")
        if len(calls) == 1:
            raise EndpointConnectionError(endpoint_url="https://s3")

    s3.meta.events.register("after-call.s3.GetObject", fail_first_read)
    try:
        pointer = _client(s3, buckets).wait_for_round(1, timeout=5, poll_interval=0.01)
    finally:
        s3.meta.events.unregister("after-call.s3.GetObject", fail_first_read)
    assert pointer.round == 2
    assert len(calls) == 2


def test_wait_for_round_timeout(s3: Any, buckets: tuple[str, str]) -> None:
    _, models_bucket = buckets
    _publish(s3, models_bucket, 2, _model_bytes(_initial(), 2))
    with pytest.raises(RoundTimeoutError, match="round 2 still open"):
        _client(s3, buckets).wait_for_round(2, timeout=0.05, poll_interval=0.01)


def test_wait_for_round_no_pointer(s3: Any, buckets: tuple[str, str]) -> None:
    with pytest.raises(RoundTimeoutError, match="no pointer found"):
        _client(s3, buckets).wait_for_round(0, timeout=0.05, poll_interval=0.01)


def test_make_s3_client_retries(aws_env: None) -> None:
    client = make_s3_client(region=REGION, max_retries=6)
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert client.meta.region_name == REGION


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    header = ",".join(f"f{i}" for i in range(x.shape[1])) + ",label"
    rows = [
        ",".join(map(repr, row)) + f",{label}"
        for row, label in zip(x.tolist(), y, strict=True)
    ]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _cli_args(buckets: tuple[str, str], data: Path, *extra: str) -> list[str]:
    updates, models_bucket = buckets
    return [
        "--device-id",
        DEVICE,
        "--updates-bucket",
        updates,
        "--models-bucket",
        models_bucket,
        "--data",
        str(data),
        "--region",
        REGION,
        "--epochs",
        "1",
        "--seed",
        "0",
        *extra,
    ]


def test_cli_one_round(
    s3: Any,
    buckets: tuple[str, str],
    local_data: tuple,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    updates, models_bucket = buckets
    _publish(s3, models_bucket, 0, _model_bytes(_initial(), 0))
    data = _write_csv(tmp_path / "local.csv", *local_data)

    status = cli.main(_cli_args(buckets, data, "--model", "mlp"))

    keys = _keys(s3, updates)
    assert status == cli.EXIT_OK
    assert len(keys) == 1
    assert keys[0].startswith(f"updates/{DEVICE}/round-000000/")
    assert f"round 0: uploaded s3://{updates}/{keys[0]}" in capsys.readouterr().out


def test_cli_several_rounds(
    s3: Any, buckets: tuple[str, str], local_data: tuple, tmp_path: Path
) -> None:
    """The command waits for the pointer to advance between its rounds."""
    updates, models_bucket = buckets
    _publish(s3, models_bucket, 0, _model_bytes(_initial(), 0))
    data = tmp_path / "local.npz"
    np.savez(data, x=local_data[0], y=local_data[1])
    stop = threading.Event()

    def aggregator() -> None:
        published = 0
        while not stop.wait(0.01) and published < 2:
            if len(_keys(s3, updates)) > published:
                published += 1
                tensors = {k: v + published for k, v in _initial().items()}
                _publish(s3, models_bucket, published, _model_bytes(tensors, published))

    thread = threading.Thread(target=aggregator, daemon=True)
    thread.start()
    try:
        status = cli.main(
            _cli_args(
                buckets,
                data,
                "--rounds",
                "3",
                "--poll-interval",
                "0.01",
                "--wait-timeout",
                "30",
            )
        )
    finally:
        stop.set()
        thread.join(timeout=5)

    rounds = sorted(key.split("/")[2] for key in _keys(s3, updates))
    assert status == cli.EXIT_OK
    assert rounds == ["round-000000", "round-000001", "round-000002"]


@pytest.fixture
def published_csv(
    s3: Any, buckets: tuple[str, str], local_data: tuple, tmp_path: Path
) -> Path:
    """Publish a round 0 model and write matching local data as CSV."""
    _publish(s3, buckets[1], 0, _model_bytes(_initial(), 0))
    return _write_csv(tmp_path / "local.csv", *local_data)


CLI_ERRORS = [
    (["--model", "softmax"], cli.EXIT_USAGE, "expects 'softmax'"),
    (["--label-column", "target"], cli.EXIT_USAGE, "label column 'target'"),
    (
        ["--rounds", "2", "--wait-timeout", "0.05", "--poll-interval", "0.01"],
        cli.EXIT_TIMEOUT,
        "round 0 still open",
    ),
    (["--device-id", "bad/id"], cli.EXIT_USAGE, "invalid device id"),
]


@pytest.mark.parametrize("case", CLI_ERRORS)
def test_cli_errors(
    buckets: tuple[str, str],
    published_csv: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[list[str], int, str],
) -> None:
    extra, status, fragment = case

    result = cli.main(_cli_args(buckets, published_csv, *extra))

    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert result == status
    assert error.startswith("sfl-edge: error: ")
    assert fragment in error


def test_cli_missing_data(
    s3: Any,
    buckets: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = cli.main(_cli_args(buckets, tmp_path / "absent.csv"))
    assert status == cli.EXIT_USAGE
    assert "cannot read the file" in capsys.readouterr().err


def test_cli_no_pointer(
    s3: Any,
    buckets: tuple[str, str],
    local_data: tuple,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _write_csv(tmp_path / "local.csv", *local_data)
    status = cli.main(_cli_args(buckets, data))
    assert status == cli.EXIT_FAILURE
    assert "no global model is published" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--epochs", "0"], "--epochs: 0 is not a positive integer"),
        (["--seed", "-1"], "--seed: -1 is negative, expected 0 or more"),
    ],
)
def test_cli_bad_option(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--device-id", "d", *option])
    assert raised.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_over_http(aws_env: None, local_data: tuple, tmp_path: Path) -> None:
    """Real HTTP against a local moto server: checksums and conditional writes."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
        suffix = uuid.uuid4().hex[:12]
        names = (f"updates-{suffix}", f"models-{suffix}")
        for name in names:
            s3.create_bucket(Bucket=name)
        _publish(s3, names[1], 0, _model_bytes(_initial(), 0))
        data = _write_csv(tmp_path / "local.csv", *local_data)

        status = cli.main(_cli_args(names, data, "--endpoint-url", endpoint))

        keys = _keys(s3, names[0])
        body = s3.get_object(Bucket=names[0], Key=keys[0])["Body"].read()
        head = s3.head_object(Bucket=names[0], Key=keys[0], ChecksumMode="ENABLED")
        client = _client(s3, names)
        retried = client.upload_update(keys[0], body)
    finally:
        server.stop()
    assert status == cli.EXIT_OK
    assert len(keys) == 1
    assert head["ChecksumSHA256"] == _b64_sha256(body)
    assert retried is True


@pytest.mark.parametrize(
    ("relative", "fragment"),
    [("missing/r.safetensors", "does not exist"), (".", "is a folder")],
)
def test_residual_path_checked_first(
    s3: Any, buckets: tuple[str, str], tmp_path: Path, relative: str, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        _client(s3, buckets, encoding="topk", residual_path=tmp_path / relative)
