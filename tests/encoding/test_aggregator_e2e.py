"""Encoded uploads through the real handler: the model is the mean of the decoded."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from fedcore import encoding, layout, safetensors_io
from fedcore.update import specs_of
from tests.aggregator.harness import Harness, Upload, expected_model


def encoded_upload(
    harness: Harness, device: str, name: str, num_examples: int, seed: int
) -> Upload:
    """Upload an update encoded with ``name``; its tensors are the decoded ones."""
    coder = encoding.UpdateEncoder(name, topk_fraction=0.3, seed=seed)
    round_number = harness.pointer()["round"]
    update_id = uuid.uuid4().hex
    tensors, extra = coder.encode(harness.delta())
    metadata = {
        **harness.metadata(device, round_number, update_id, num_examples),
        **extra,
    }
    data = safetensors_io.encode(tensors, metadata)
    stored, stored_metadata = safetensors_io.decode(data)
    decoded = encoding.decode_update(stored, stored_metadata, specs_of(harness.base))
    return harness.put(
        layout.update_key(device, round_number, update_id),
        data,
        device=device,
        round_number=round_number,
        num_examples=num_examples,
        tensors=decoded,
    )


@pytest.mark.parametrize(
    "names",
    [
        ("q8", "q8", "q8"),
        ("topk", "topk", "topk"),
        ("q8", "topk", "topk_q8"),
        ("none", "float16", "q8"),
    ],
)
def test_publish_mean_of_decoded(harness: Harness, names: tuple[str, ...]) -> None:
    uploads = [
        encoded_upload(harness, f"dev-{index}", name, 3 + 5 * index, index)
        for index, name in enumerate(names)
    ]
    assert harness.deliver(*uploads) == []
    assert harness.pointer()["round"] == 2
    stored = harness.model(2)
    for tensor, array in expected_model(harness.base, uploads).items():
        np.testing.assert_allclose(stored[tensor], array, rtol=0, atol=1e-6)


def test_malformed_encoding_rejected(harness: Harness) -> None:
    round_number = harness.pointer()["round"]
    update_id = uuid.uuid4().hex
    tensors, extra = encoding.UpdateEncoder("q8", seed=0).encode(harness.delta())
    first = sorted(name for name in tensors if name.endswith("::scale"))[0]
    tensors[first] = np.array(-1.0, dtype=np.float32)
    metadata = {**harness.metadata("dev-x", round_number, update_id, 4), **extra}
    upload = harness.put(
        layout.update_key("dev-x", round_number, update_id),
        safetensors_io.encode(tensors, metadata),
        device="dev-x",
        round_number=round_number,
    )
    harness.deliver(upload)
    rejection = harness.rejection(round_number, upload.key)
    assert rejection is not None
    assert rejection["reason"] == "invalid_encoding"


@pytest.mark.parametrize(
    ("names", "warned"),
    [(("topk", "topk_q8", "q8"), True), (("q8", "float16", "none"), False)],
)
def test_median_warns_topk(
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
    names: tuple[str, ...],
    warned: bool,
) -> None:
    document = {
        "target_updates": 3,
        "min_updates": 2,
        "deadline_seconds": 900,
        "strategy": "median",
        "strategy_params": {},
    }
    harness.s3.put_object(
        Bucket=harness.models_bucket,
        Key=layout.ROUND_CONFIG_KEY,
        Body=json.dumps(document).encode(),
    )
    uploads = [
        encoded_upload(harness, f"dev-{index}", name, 5, index)
        for index, name in enumerate(names)
    ]
    assert harness.deliver(*uploads) == []
    assert harness.pointer()["round"] == 2
    assert ("2 of 3 updates are top-k encoded" in caplog.text) is warned
