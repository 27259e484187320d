"""Local trainers: the interface the client drives, and the numpy implementation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from edge_client.errors import TrainingError
from fedcore import models


class Trainer(Protocol):
    """Interface of a local model that :class:`~edge_client.client.EdgeClient` trains.

    Weights are float32 arrays under the tensor names of the global model file.
    """

    def get_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """Return a copy of the current weights."""
        ...

    def set_weights(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        """Replace the current weights with a copy of ``weights``."""
        ...

    def fit(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Train the current weights on local data and return training metrics."""
        ...

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Return ``loss`` and ``accuracy`` of the current weights on ``x, y``."""
        ...


@runtime_checkable
class ProximalTrainer(Trainer, Protocol):
    """A trainer with a FedProx proximal term that the client may set each round.

    ``proximal_mu`` weighs ``mu / 2 * ||w - w_global||^2`` in the local objective.
    """

    proximal_mu: float


class NumpyTrainer:
    """Mini-batch SGD on the ``softmax`` and ``mlp`` models of :mod:`fedcore.models`.

    The architecture is whatever the weights passed to :meth:`set_weights` are.

    Parameters
    ----------
    epochs
        Passes over the local data per :meth:`fit`.
    batch_size
        Examples per SGD step.
    learning_rate
        SGD step size.
    proximal_mu
        FedProx weight pulling the weights towards those set by :meth:`set_weights`;
        0 gives plain FedAvg local training.
    seed
        Seed of the generator that shuffles the data; successive fits draw successive
        orders from it. ``None`` seeds from the operating system.
    """

    def __init__(
        self,
        *,
        epochs: int = 1,
        batch_size: int = 16,
        learning_rate: float = 0.1,
        proximal_mu: float = 0.0,
        seed: int | None = None,
    ) -> None:
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} is {value!r}: expected a positive integer")
        if not math.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(
                f"learning_rate is {learning_rate!r}: expected a finite number > 0"
            )
        if not math.isfinite(proximal_mu) or proximal_mu < 0:
            raise ValueError(
                f"proximal_mu is {proximal_mu!r}: expected a finite number >= 0"
            )
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.proximal_mu = proximal_mu
        self._rng = np.random.default_rng(seed)
        self._weights: dict[str, npt.NDArray[np.float32]] | None = None

    def _require_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        if self._weights is None:
            raise TrainingError("the trainer has no weights: call set_weights first")
        return self._weights

    def get_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """Return a copy of the current weights."""
        return {name: array.copy() for name, array in self._require_weights().items()}

    def set_weights(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        """Replace the current weights with a float32 copy of ``weights``.

        Raises
        ------
        fedcore.models.ModelError
            If the weights form no supported model.
        """
        models.describe(weights)
        self._weights = {
            name: np.array(array, dtype=np.float32) for name, array in weights.items()
        }

    def fit(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Train with SGD and return ``loss``, ``accuracy``, ``epoch_loss``, ``steps``.

        Raises
        ------
        TrainingError
            If no weights are set, the data does not fit the model or training
            diverges; the weights are then left as they were.
        """
        weights = self._require_weights()
        try:
            trained, metrics = models.sgd_fit(
                weights,
                x,
                y,
                epochs=self.epochs,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate,
                rng=self._rng,
                proximal_mu=self.proximal_mu,
            )
        except models.ModelError as exc:
            raise TrainingError(f"local training failed: {exc}") from exc
        self._weights = trained
        return metrics

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Return ``loss`` (mean cross-entropy) and ``accuracy`` on ``x, y``."""
        try:
            loss, accuracy = models.evaluate(self._require_weights(), x, y)
        except models.ModelError as exc:
            raise TrainingError(f"local evaluation failed: {exc}") from exc
        return {"loss": loss, "accuracy": accuracy}
