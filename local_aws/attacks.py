"""Malicious devices for robustness experiments.

:class:`MaliciousTrainer` wraps any trainer of the edge client. It trains honestly,
then replaces its weights with ``global + attack(delta)``, where ``delta`` is the
honest change to the global model. The edge client uploads that as a normal update,
so the aggregator receives an update that passes every validation check.

Attacks:

``sign_flip``
    ``-scale * delta``: the update points against the honest direction.
``scale``
    ``scale * delta``: the honest direction, magnified.
``noise``
    Gaussian noise with standard deviation ``scale`` in every coordinate, in place
    of the honest delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_client.trainers import Trainer

ATTACKS = ("sign_flip", "scale", "noise")


def attack_delta(
    attack: str, delta: np.ndarray, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Return the malicious version of one tensor's honest delta, in float64.

    Raises
    ------
    ValueError
        If ``attack`` is not one of :data:`ATTACKS`.
    """
    honest = np.asarray(delta, dtype=np.float64)
    if attack == "sign_flip":
        return -scale * honest
    if attack == "scale":
        return scale * honest
    if attack == "noise":
        return rng.normal(0.0, scale, size=honest.shape)
    raise ValueError(f"attack is {attack!r}, expected one of {list(ATTACKS)}")


class MaliciousTrainer:
    """A trainer that turns its honest update into an attack after every fit.

    Parameters
    ----------
    inner
        The honest trainer.
    attack
        One of :data:`ATTACKS`.
    scale
        Factor of ``sign_flip`` and ``scale``, standard deviation of ``noise``.
    seed
        Seed of the noise generator.
    """

    def __init__(
        self, inner: Trainer, *, attack: str, scale: float = 10.0, seed: int = 0
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"attack is {attack!r}, expected one of {list(ATTACKS)}")
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale is {scale!r}, expected a finite number > 0")
        self.inner = inner
        self.attack = attack
        self.scale = scale
        self._rng = np.random.default_rng(seed)
        self._global: dict[str, npt.NDArray[Any]] | None = None
        self._weights: dict[str, npt.NDArray[np.float32]] | None = None

    def get_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """Return the attacked weights after a fit, else the inner trainer's."""
        if self._weights is None:
            return self.inner.get_weights()
        return {name: array.copy() for name, array in self._weights.items()}

    def set_weights(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        """Set the global model the next fit starts from."""
        self.inner.set_weights(weights)
        self._global = {name: np.array(array) for name, array in weights.items()}
        self._weights = None

    def fit(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Train honestly, then attack the resulting delta."""
        metrics = self.inner.fit(x, y)
        if self._global is None:
            raise ValueError("set_weights must be called before fit")
        trained = self.inner.get_weights()
        attacked: dict[str, npt.NDArray[np.float32]] = {}
        for name, weights in trained.items():
            start = np.asarray(self._global[name], dtype=np.float64)
            delta = np.asarray(weights, dtype=np.float64) - start
            change = attack_delta(self.attack, delta, self.scale, self._rng)
            attacked[name] = (start + change).astype(weights.dtype)
        self._weights = attacked
        return metrics

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Evaluate the inner trainer's honest weights."""
        return self.inner.evaluate(x, y)


def make_trainer(
    honest: Trainer, *, malicious: bool, attack: str, scale: float, seed: int
) -> Trainer:
    """Return ``honest`` or its malicious wrapper."""
    if not malicious:
        return honest
    return MaliciousTrainer(honest, attack=attack, scale=scale, seed=seed)
