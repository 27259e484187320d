"""The edge client's encoding option and its error-feedback residual file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_client.cli import build_parser
from edge_client.client import EdgeClient
from edge_client.errors import StorageError
from edge_client.residual import load_residual, save_residual
from edge_client.trainers import NumpyTrainer
from fedcore import safetensors_io
from tests.aggregator.harness import Harness


def local_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((30, 8)).astype(np.float32), rng.integers(0, 3, 30)


def make_client(harness: Harness, encoding: str, path: Path | None) -> EdgeClient:
    return EdgeClient(
        device_id="dev-0",
        updates_bucket=harness.updates_bucket,
        models_bucket=harness.models_bucket,
        trainer=NumpyTrainer(epochs=1, seed=0),
        s3_client=harness.s3,
        encoding=encoding,
        topk_fraction=0.2,
        encoding_seed=0,
        residual_path=path,
    )


def stored_metadata(harness: Harness, key: str) -> dict[str, str]:
    data = harness.s3.get_object(Bucket=harness.updates_bucket, Key=key)["Body"].read()
    return safetensors_io.decode(data)[1]


@pytest.mark.parametrize("encoding", ["float16", "q8", "topk", "topk_q8"])
def test_client_uploads_encoding(harness: Harness, encoding: str) -> None:
    result = make_client(harness, encoding, None).train_round(*local_data())
    assert stored_metadata(harness, result.key)["encoding"] == encoding


def test_client_residual_file_written(harness: Harness, tmp_path: Path) -> None:
    path = tmp_path / "residual.safetensors"
    client = make_client(harness, "topk", path)
    client.train_round(*local_data())
    residual = client.encoder.residual
    assert residual is not None
    stored = load_residual(path)
    assert stored is not None
    for name, array in residual.items():
        np.testing.assert_array_equal(stored[name], array)


def test_client_residual_file_read(harness: Harness, tmp_path: Path) -> None:
    path = tmp_path / "residual.safetensors"
    save_residual(path, {"w": np.arange(3.0)}, "topk")
    client = make_client(harness, "topk", path)
    residual = client.encoder.residual
    assert residual is not None
    np.testing.assert_array_equal(residual["w"], np.arange(3.0))


@pytest.mark.parametrize("encoding", ["none", "float16", "q8"])
def test_dense_encoding_leaves_residual(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    path = tmp_path / "residual.safetensors"
    save_residual(path, {"w": np.arange(3.0)}, "topk")
    before = path.read_bytes()
    client = make_client(harness, encoding, path)
    client.train_round(*local_data())
    assert client.encoder.residual is None
    assert path.read_bytes() == before
    assert "neither read nor changed" in caplog.text


def test_residual_missing_file_none(tmp_path: Path) -> None:
    assert load_residual(tmp_path / "absent.safetensors") is None


def test_residual_wrong_kind_raises(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_io.encode({"w": np.zeros(2)}, {"kind": "model"}))
    with pytest.raises(StorageError, match="kind"):
        load_residual(path)


def test_residual_non_finite_raises(tmp_path: Path) -> None:
    path = tmp_path / "residual.safetensors"
    save_residual(path, {"w": np.array([1.0, np.inf])}, "topk")
    with pytest.raises(StorageError, match="NaN or Inf; delete it"):
        load_residual(path)


def test_residual_garbage_raises(tmp_path: Path) -> None:
    path = tmp_path / "residual.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(StorageError, match="not a valid safetensors"):
        load_residual(path)


def test_cli_encoding_options() -> None:
    args = build_parser().parse_args(
        [
            "--device-id=d",
            "--updates-bucket=u",
            "--models-bucket=m",
            "--data=x.csv",
            "--encoding=topk_q8",
            "--topk-fraction=0.05",
            "--residual-file=r.safetensors",
        ]
    )
    assert (args.encoding, args.topk_fraction, args.residual_file) == (
        "topk_q8",
        0.05,
        "r.safetensors",
    )


@pytest.mark.parametrize("value", ["0", "1.5", "x"])
def test_cli_bad_fraction_exits(value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            [
                "--device-id=d",
                "--updates-bucket=u",
                "--models-bucket=m",
                "--data=x.csv",
                f"--topk-fraction={value}",
            ]
        )
