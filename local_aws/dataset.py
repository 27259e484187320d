"""The demo's real data: scikit-learn's handwritten digits, split over devices.

``sklearn.datasets.load_digits`` reads 1,797 8x8 images shipped inside the
package, so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

from fedcore.partition import dirichlet_partition, holdout_split


@dataclass(frozen=True)
class FederatedDigits:
    """A server holdout and one training shard per device."""

    holdout_x: np.ndarray
    holdout_y: np.ndarray
    train_x: np.ndarray
    train_y: np.ndarray
    shards: list[np.ndarray]

    def device_data(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return device ``index``'s features and labels."""
        rows = self.shards[index]
        return self.train_x[rows], self.train_y[rows]


def federated_digits(
    *, devices: int, alpha: float, seed: int, holdout_fraction: float = 0.2
) -> FederatedDigits:
    """Load the digits, keep a holdout for the server, split the rest by label skew.

    Pixel values 0-16 are scaled to 0-1. The training rows are split over
    ``devices`` with a Dirichlet(``alpha``) draw of label proportions per device.
    """
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train_rows, holdout_rows = holdout_split(len(y), holdout_fraction, seed)
    train_x, train_y = x[train_rows], y[train_rows]
    shards = dirichlet_partition(train_y, devices, alpha, seed)
    return FederatedDigits(
        holdout_x=x[holdout_rows],
        holdout_y=y[holdout_rows],
        train_x=train_x,
        train_y=train_y,
        shards=list(shards),
    )
