"""Tests of the local DP trainer wrapper."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edge_client.client import weight_delta
from edge_client.errors import TrainingError
from edge_client.local_dp import LocalDpTrainer, local_epsilon
from edge_client.trainers import NumpyTrainer
from fedcore import models
from fedcore.accounting import RdpAccountant, RoundEvent
from fedcore.privacy import update_norm


class FixedStepTrainer:
    """A trainer whose fit adds a fixed delta to the weights."""

    def __init__(self, step: Mapping[str, np.ndarray]) -> None:
        self.step = dict(step)
        self.weights: dict[str, npt.NDArray[np.float32]] = {}

    def get_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        return {name: array.copy() for name, array in self.weights.items()}

    def set_weights(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self.weights = {n: np.array(a, dtype=np.float32) for n, a in weights.items()}

    def fit(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        self.weights = {
            name: (array + self.step[name]).astype(np.float32)
            for name, array in self.weights.items()
        }
        return {"loss": 0.5}

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        return {"loss": 0.5, "accuracy": 1.0}


def uploaded_delta(
    step_scale: float, noise_multiplier: float, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    generator = np.random.default_rng(seed)
    base = {"w": generator.normal(size=(300, 200)).astype(np.float32)}
    step = {"w": generator.normal(size=(300, 200)) * step_scale}
    wrapper = LocalDpTrainer(
        FixedStepTrainer(step),
        clip_norm=2.0,
        noise_multiplier=noise_multiplier,
        seed=seed,
    )
    wrapper.set_weights(base)
    metrics = wrapper.fit(np.zeros((1, 1)), np.zeros(1))
    delta = weight_delta(wrapper.get_weights(), base)
    return delta, step, metrics


@pytest.mark.parametrize("step_scale", [1e-4, 1.0, 1e4])
def test_local_noise_around_clipped_delta(step_scale: float) -> None:
    delta, step, _ = uploaded_delta(step_scale, 0.5, seed=3)
    step_norm = update_norm(step)
    clipped = step["w"] * min(1.0, 2.0 / step_norm)
    noise = delta["w"].astype(np.float64) - clipped
    # Noise std z * C = 1.0; float32 rounding of the weights adds ~1e-7.
    n = noise.size
    score = (float(np.var(noise, ddof=1)) - 1.0) / math.sqrt(2.0 / (n - 1))
    assert abs(score) < 5.0
    assert abs(float(noise.mean())) < 5.0 / math.sqrt(n)


def test_local_sensitivity_bounded() -> None:
    # Two devices with very different data: their uploads, less the shared noise
    # (same seed), differ by at most 2 C.
    small, _, _ = uploaded_delta(1e-3, 0.5, seed=8)
    huge, _, _ = uploaded_delta(1e5, 0.5, seed=8)
    difference = {"w": huge["w"].astype(np.float64) - small["w"]}
    assert update_norm(difference) <= 2 * 2.0 * (1 + 1e-5)


def test_local_returns_no_metrics() -> None:
    _, _, metrics = uploaded_delta(1.0, 0.5, seed=1)
    assert metrics == {}


def test_local_wraps_numpy_trainer() -> None:
    weights = models.init_model("mlp", input_dim=8, hidden_units=4, classes=3, seed=0)
    generator = np.random.default_rng(0)
    x = generator.normal(size=(40, 8)).astype(np.float32)
    y = generator.integers(0, 3, size=40)
    wrapper = LocalDpTrainer(
        NumpyTrainer(epochs=2, seed=0), clip_norm=0.5, noise_multiplier=1.0, seed=0
    )
    wrapper.set_weights(weights)
    wrapper.fit(x, y)
    delta = weight_delta(wrapper.get_weights(), weights)
    assert set(delta) == set(weights)
    assert update_norm(delta) > 0.5
    assert set(wrapper.evaluate(x, y)) == {"loss", "accuracy"}


def test_local_fit_before_weights_rejected() -> None:
    wrapper = LocalDpTrainer(NumpyTrainer(), clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(TrainingError, match="set_weights"):
        wrapper.fit(np.zeros((1, 8)), np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize(
    ("clip_norm", "noise_multiplier"),
    [(0.0, 1.0), (1.0, 0.0), (math.inf, 1.0), (1.0, math.nan)],
)
def test_local_rejects_bad_settings(clip_norm: float, noise_multiplier: float) -> None:
    with pytest.raises(ValueError, match="expected a finite number"):
        LocalDpTrainer(
            NumpyTrainer(), clip_norm=clip_norm, noise_multiplier=noise_multiplier
        )


def test_local_epsilon_is_halved_multiplier() -> None:
    accountant = RdpAccountant()
    accountant.compose(RoundEvent(1.0, 2.0), 5)
    assert local_epsilon(4.0, 5, 1e-5) == accountant.epsilon(1e-5)
