"""The published global model is a plain safetensors file that other tools can read."""

from __future__ import annotations

import itertools
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors

from fedcore import layout, models, safetensors_io
from local_aws.dataset import federated_digits
from tests.ops.conftest import ROUNDS

pytestmark = pytest.mark.slow

NUMPY_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


@pytest.fixture(scope="module")
def published(federation):
    """Bytes of the global model the last round published."""
    return (
        federation.s3()
        .get_object(
            Bucket=federation.resources.models_bucket, Key=layout.model_key(ROUNDS + 1)
        )["Body"]
        .read()
    )


def _parse(data):
    """Decode a safetensors file with struct, json and numpy only."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__")
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = np.dtype(NUMPY_DTYPES[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[start + begin : start + end], dtype=dtype)
        tensors[name] = tensors[name].reshape(entry["shape"])
    return header, metadata, tensors


def test_header_length_little_endian(published):
    (length,) = struct.unpack("<Q", published[:8])
    assert published[8 + length - 1 : 8 + length] in (b"}", b" ")
    assert json.loads(published[8 : 8 + length])


def test_header_names_mlp_tensors(published):
    header, _, _ = _parse(published)
    assert sorted(header) == sorted(models.MLP_NAMES)


def test_header_kernel_layout_input_output(published):
    header, _, _ = _parse(published)
    assert header["hidden/kernel"]["shape"] == [64, 32]
    assert header["output/kernel"]["shape"] == [32, 10]


def test_header_dtypes_float32(published):
    header, _, _ = _parse(published)
    assert {entry["dtype"] for entry in header.values()} == {"F32"}


def test_data_offsets_cover_buffer(published):
    header, _, _ = _parse(published)
    (length,) = struct.unpack("<Q", published[:8])
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0
    assert all(left[1] == right[0] for left, right in itertools.pairwise(spans))
    assert spans[-1][1] == len(published) - 8 - length


def test_metadata_names_round(published):
    _, metadata, _ = _parse(published)
    assert metadata["round"] == str(ROUNDS + 1)
    assert metadata["produced_by_round"] == str(ROUNDS)
    assert metadata["architecture"] == "mlp"


def test_numpy_parse_matches_fedcore(published):
    _, _, tensors = _parse(published)
    expected, _ = safetensors_io.decode(published)
    for name, array in expected.items():
        np.testing.assert_array_equal(tensors[name], array)


def test_safetensors_library_forward_pass(published):
    weights = load_safetensors(published)
    x = federated_digits(devices=3, alpha=0.5, seed=3).holdout_x[:50]
    hidden = np.maximum(x @ weights["hidden/kernel"] + weights["hidden/bias"], 0.0)
    logits = hidden @ weights["output/kernel"] + weights["output/bias"]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    expected = models.predict_proba(weights, x)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
