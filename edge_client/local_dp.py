"""Local differential privacy: a trainer wrapper that noises the device's own update.

:class:`LocalDpTrainer` wraps any :class:`~edge_client.trainers.Trainer`. After the
wrapped trainer's fit, it clips the change from the global weights to L2 norm ``C``
over all tensors together, adds Gaussian noise of standard deviation ``z * C`` to
every coordinate, and sets the weights to ``global + noisy delta``. The client then
uploads ``weights - global``, which is that noisy delta up to float32 rounding, a
post-processing of the noisy value that costs no privacy.

Guarantee per round: any two data sets of the device give clipped deltas at most
``2 C`` apart, so the uploaded delta is a Gaussian mechanism with noise multiplier
``z / 2`` relative to that sensitivity. It is ``(epsilon, delta)``-DP for the
device's whole data set, against every reader of the upload, the server included,
with ``epsilon`` from :func:`local_epsilon`. Rounds in which the device takes part
compose. This protects the tensors only: the client also uploads the example count
in the update's metadata, and the wrapper returns no training metrics, because the
client would upload those too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_client.errors import TrainingError
from edge_client.trainers import Trainer
from fedcore import accounting, privacy

logger = logging.getLogger(__name__)


class LocalDpTrainer:
    """Clip and noise a wrapped trainer's update before the client uploads it.

    Parameters
    ----------
    trainer
        The trainer that does the local training.
    clip_norm
        ``C``, bound on the L2 norm of the delta over all tensors, > 0.
    noise_multiplier
        ``z``: each coordinate of the delta gets noise of standard deviation
        ``z * C``; > 0.
    seed
        ``None`` (production) draws the noise from a generator seeded by
        :mod:`secrets`; an integer makes it reproducible, for tests only.
    """

    def __init__(
        self,
        trainer: Trainer,
        *,
        clip_norm: float,
        noise_multiplier: float,
        seed: int | None = None,
    ) -> None:
        for name, value in (
            ("clip_norm", clip_norm),
            ("noise_multiplier", noise_multiplier),
        ):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} is {value!r}: expected a finite number > 0")
        self.trainer = trainer
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self._rng = privacy.secure_rng(seed)
        self._global: dict[str, npt.NDArray[np.float32]] | None = None
        self.last_norm: float | None = None

    def get_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """Return a copy of the wrapped trainer's current weights."""
        return self.trainer.get_weights()

    def set_weights(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        """Set the weights and remember them as the global weights of the round."""
        self.trainer.set_weights(weights)
        self._global = self.trainer.get_weights()

    def fit(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Train, then replace the weights by ``global + clip(delta) + noise``.

        Returns
        -------
        dict
            An empty dict: the wrapped trainer's metrics (loss and accuracy on the
            local data) are computed without noise, and the client would upload
            them.

        Raises
        ------
        TrainingError
            If no weights were set, or the trained weights cannot be clipped
            (non-finite or not floating point).
        """
        if self._global is None:
            raise TrainingError("the trainer has no weights: call set_weights first")
        base = self._global
        self.trainer.fit(x, y)
        trained = self.trainer.get_weights()
        delta = {
            name: trained[name].astype(np.float64) - base[name].astype(np.float64)
            for name in base
        }
        try:
            clipped = privacy.clip_update(delta, self.clip_norm)
        except privacy.PrivacyError as exc:
            raise TrainingError(f"local DP could not clip the update: {exc}") from exc
        self.last_norm = clipped.norm
        stddev = self.noise_multiplier * self.clip_norm
        noisy = {
            name: base[name].astype(np.float64)
            + array
            + self._rng.normal(0.0, stddev, size=array.shape)
            for name, array in clipped.tensors.items()
        }
        self.trainer.set_weights(
            {name: array.astype(np.float32) for name, array in noisy.items()}
        )
        logger.debug(
            "local DP: update norm %.4g clipped to %.4g, noise std %.4g",
            clipped.norm,
            self.clip_norm,
            stddev,
        )
        return {}

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, float]:
        """Return the wrapped trainer's ``loss`` and ``accuracy`` on ``x, y``."""
        return self.trainer.evaluate(x, y)


def local_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Return the local ``epsilon`` at ``delta`` after ``rounds`` uploads.

    Each upload is a Gaussian mechanism with sensitivity ``2 C`` and noise
    ``z * C``, that is noise multiplier ``z / 2`` with no sampling, composed over
    the rounds in which the device took part.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds is {rounds!r}: expected a positive integer")
    accountant = accounting.RdpAccountant()
    accountant.compose(accounting.RoundEvent(1.0, noise_multiplier / 2), rounds)
    return accountant.epsilon(delta)
