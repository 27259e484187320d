"""Numpy classifiers trained by the devices: multinomial logistic regression and an MLP.

Two architectures share one parameter layout convention, a flat map of tensor names to
float32 arrays, which is also what the safetensors model and update files contain:

``softmax``
    ``dense/kernel`` (input_dim, classes) and ``dense/bias`` (classes,).
``mlp``
    ``hidden/kernel`` (input_dim, hidden_units), ``hidden/bias`` (hidden_units,),
    ``output/kernel`` (hidden_units, classes) and ``output/bias`` (classes,), with a
    ReLU between the two layers.

Weights are stored as float32. Forward and backward passes upcast each batch and the
weights to float64, and :func:`sgd_fit` keeps a float64 working copy that it rounds to
float32 once, at the end, so that many small steps are not lost to float32 rounding.
Evaluation runs in chunks of :data:`EVAL_CHUNK_ROWS` rows, so its memory does not grow
with the number of examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcore.errors import FedCoreError

logger = logging.getLogger(__name__)

ARCHITECTURES = ("mlp", "softmax")
SOFTMAX_NAMES = ("dense/kernel", "dense/bias")
MLP_NAMES = ("hidden/kernel", "hidden/bias", "output/kernel", "output/bias")
EVAL_CHUNK_ROWS = 8192

FloatArray = npt.NDArray[np.floating[Any]]
Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
Weights = dict[str, Float32Array]


class ModelError(FedCoreError, ValueError):
    """Weights, data or training settings that a model cannot work with."""


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and dimensions of a set of weights."""

    architecture: str
    input_dim: int
    classes: int
    hidden_units: int | None = None


def init_model(
    architecture: str,
    *,
    input_dim: int,
    hidden_units: int,
    classes: int,
    seed: int,
) -> Weights:
    """Create the initial weights of a model.

    Kernels feeding a ReLU get He normal initialisation, std ``sqrt(2 / fan_in)``; the
    kernels feeding the softmax get Glorot uniform, limit
    ``sqrt(6 / (fan_in + fan_out))``. Biases start at zero.

    Parameters
    ----------
    architecture
        ``"mlp"`` or ``"softmax"``.
    input_dim, hidden_units, classes
        Layer sizes; ``hidden_units`` is ignored by ``softmax``.
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same weights.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 tensors named as described in the module docstring.

    Raises
    ------
    ModelError
        If the architecture is unknown or a size is not a positive integer.
    """
    if architecture not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {architecture!r}: "
            f"expected one of {list(ARCHITECTURES)}"
        )
    sizes = {"input_dim": input_dim, "classes": classes}
    if architecture == "mlp":
        sizes["hidden_units"] = hidden_units
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{name} is {value!r}: expected a positive integer")
    if classes < 2:
        raise ModelError(f"classes is {classes}: a classifier needs at least 2")
    rng = np.random.default_rng(seed)
    if architecture == "softmax":
        return {
            "dense/kernel": _glorot_uniform(rng, input_dim, classes),
            "dense/bias": np.zeros(classes, dtype=np.float32),
        }
    hidden_std = math.sqrt(2.0 / input_dim)
    hidden_kernel = rng.normal(0.0, hidden_std, size=(input_dim, hidden_units))
    return {
        "hidden/kernel": hidden_kernel.astype(np.float32),
        "hidden/bias": np.zeros(hidden_units, dtype=np.float32),
        "output/kernel": _glorot_uniform(rng, hidden_units, classes),
        "output/bias": np.zeros(classes, dtype=np.float32),
    }


def _glorot_uniform(
    rng: np.random.Generator, fan_in: int, fan_out: int
) -> Float32Array:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def architecture_of(tensors: Mapping[str, FloatArray]) -> str:
    """Infer the architecture from the tensor names.

    Raises
    ------
    ModelError
        If the names are not exactly those of one architecture.
    """
    names = set(tensors)
    if names == set(SOFTMAX_NAMES):
        return "softmax"
    if names == set(MLP_NAMES):
        return "mlp"
    raise ModelError(
        f"tensors {sorted(names)} match no architecture: expected "
        f"{list(SOFTMAX_NAMES)} (softmax) or {list(MLP_NAMES)} (mlp)"
    )


def describe(tensors: Mapping[str, FloatArray]) -> ModelSpec:
    """Check that the tensors form one model and return its architecture and sizes.

    Raises
    ------
    ModelError
        If the names match no architecture, a tensor is not floating point, or the
        shapes of the layers do not fit together.
    """
    architecture = architecture_of(tensors)
    for name, array in tensors.items():
        if np.asarray(array).dtype.kind != "f":
            raise ModelError(
                f"tensor {name!r} has dtype {np.asarray(array).dtype}: "
                "expected a floating point type"
            )
    if architecture == "softmax":
        input_dim, classes = _check_layer(tensors, "dense")
        return ModelSpec("softmax", input_dim, classes)
    input_dim, hidden_units = _check_layer(tensors, "hidden")
    output_in, classes = _check_layer(tensors, "output")
    if output_in != hidden_units:
        raise ModelError(
            f"output/kernel has {output_in} input rows but hidden/kernel has "
            f"{hidden_units} units: the layers do not fit together"
        )
    return ModelSpec("mlp", input_dim, classes, hidden_units)


def _check_layer(tensors: Mapping[str, FloatArray], layer: str) -> tuple[int, int]:
    kernel = np.asarray(tensors[f"{layer}/kernel"])
    bias = np.asarray(tensors[f"{layer}/bias"])
    if kernel.ndim != 2 or min(kernel.shape) < 1:
        raise ModelError(
            f"{layer}/kernel has shape {list(kernel.shape)}: "
            "expected a non-empty matrix"
        )
    if bias.shape != (kernel.shape[1],):
        raise ModelError(
            f"{layer}/bias has shape {list(bias.shape)}: expected [{kernel.shape[1]}] "
            f"to match {layer}/kernel {list(kernel.shape)}"
        )
    return int(kernel.shape[0]), int(kernel.shape[1])


def _check_features(spec: ModelSpec, x: npt.ArrayLike) -> npt.NDArray[Any]:
    features = np.asarray(x)
    if features.ndim != 2 or features.shape[1] != spec.input_dim:
        raise ModelError(
            f"inputs have shape {list(features.shape)}: expected "
            f"[n, {spec.input_dim}] for this {spec.architecture} model"
        )
    if features.dtype.kind not in "fiu":
        raise ModelError(f"inputs have dtype {features.dtype}: expected numbers")
    return features


def _check_labels(
    spec: ModelSpec, y: npt.ArrayLike, rows: int
) -> npt.NDArray[np.int64]:
    labels = np.asarray(y)
    if labels.shape != (rows,):
        raise ModelError(
            f"labels have shape {list(labels.shape)}: expected [{rows}], "
            "one per input row"
        )
    if labels.dtype.kind not in "iu":
        raise ModelError(f"labels have dtype {labels.dtype}: expected integers")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.classes):
        raise ModelError(
            f"labels span {labels.min()}..{labels.max()}: "
            f"expected 0..{spec.classes - 1}"
        )
    return labels.astype(np.int64, copy=False)


def _wide(tensors: Mapping[str, FloatArray]) -> dict[str, Float64Array]:
    return {
        name: np.asarray(array, dtype=np.float64) for name, array in tensors.items()
    }


def _logits(
    weights: Mapping[str, Float64Array], architecture: str, x: Float64Array
) -> Float64Array:
    if architecture == "softmax":
        return x @ weights["dense/kernel"] + weights["dense/bias"]
    hidden = np.maximum(x @ weights["hidden/kernel"] + weights["hidden/bias"], 0.0)
    return hidden @ weights["output/kernel"] + weights["output/bias"]


def _log_softmax(logits: Float64Array) -> Float64Array:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: Float64Array = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def forward(tensors: Mapping[str, FloatArray], x: npt.ArrayLike) -> Float64Array:
    """Compute the logits of a batch in float64.

    Parameters
    ----------
    tensors
        Weights of a ``softmax`` or ``mlp`` model.
    x
        Inputs of shape ``(n, input_dim)``.

    Returns
    -------
    numpy.ndarray
        float64 logits of shape ``(n, classes)``.
    """
    spec = describe(tensors)
    features = _check_features(spec, x)
    return _logits(_wide(tensors), spec.architecture, features.astype(np.float64))


def predict_proba(tensors: Mapping[str, FloatArray], x: npt.ArrayLike) -> Float64Array:
    """Compute the class probabilities of a batch in float64, shape ``(n, classes)``."""
    result: Float64Array = np.exp(_log_softmax(forward(tensors, x)))
    return result


def evaluate(
    tensors: Mapping[str, FloatArray], x: npt.ArrayLike, y: npt.ArrayLike
) -> tuple[float, float]:
    """Compute the mean cross-entropy and the accuracy on a labelled data set.

    Returns
    -------
    tuple of float
        ``(loss, accuracy)``: mean negative log-likelihood in nats, and the fraction
        of rows whose most probable class is the label.

    Raises
    ------
    ModelError
        If the data set is empty or does not fit the model.
    """
    spec = describe(tensors)
    features = _check_features(spec, x)
    labels = _check_labels(spec, y, features.shape[0])
    if labels.size == 0:
        raise ModelError("cannot evaluate on an empty data set")
    weights = _wide(tensors)
    total_loss = 0.0
    correct = 0
    for start in range(0, labels.size, EVAL_CHUNK_ROWS):
        stop = start + EVAL_CHUNK_ROWS
        batch = features[start:stop].astype(np.float64)
        logits = _logits(weights, spec.architecture, batch)
        log_probs = _log_softmax(logits)
        rows = np.arange(batch.shape[0])
        total_loss -= float(log_probs[rows, labels[start:stop]].sum())
        correct += int((logits.argmax(axis=1) == labels[start:stop]).sum())
    return total_loss / labels.size, correct / labels.size


def loss_and_gradients(
    tensors: Mapping[str, FloatArray],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    proximal_mu: float = 0.0,
    anchor: Mapping[str, FloatArray] | None = None,
) -> tuple[float, dict[str, Float64Array]]:
    """Compute the mean cross-entropy of a batch and its gradient for every tensor.

    With ``proximal_mu > 0`` the FedProx term ``mu / 2 * ||w - anchor||^2``, summed
    over all tensors, is added to the loss and ``mu * (w - anchor)`` to the gradients.

    Parameters
    ----------
    tensors
        Current weights.
    x, y
        A non-empty batch: inputs ``(n, input_dim)`` and integer labels ``(n,)``.
    proximal_mu
        Weight of the proximal term; 0 turns it off.
    anchor
        Weights the proximal term pulls towards, usually the global model; required
        when ``proximal_mu > 0``.

    Returns
    -------
    tuple
        The loss as a float and a map of tensor name to float64 gradient of the same
        shape as the tensor.
    """
    spec = describe(tensors)
    features = _check_features(spec, x)
    labels = _check_labels(spec, y, features.shape[0])
    if labels.size == 0:
        raise ModelError("cannot compute gradients of an empty batch")
    _check_mu(proximal_mu)
    weights = _wide(tensors)
    wide_anchor = _check_anchor(weights, anchor) if proximal_mu > 0 else None
    return _loss_and_gradients(
        weights,
        spec.architecture,
        features.astype(np.float64),
        labels,
        proximal_mu=proximal_mu,
        anchor=wide_anchor,
    )


def _check_mu(proximal_mu: float) -> None:
    if not math.isfinite(proximal_mu) or proximal_mu < 0:
        raise ModelError(
            f"proximal_mu is {proximal_mu!r}: expected a finite number >= 0"
        )


def _check_anchor(
    weights: Mapping[str, Float64Array], anchor: Mapping[str, FloatArray] | None
) -> dict[str, Float64Array]:
    if anchor is None:
        raise ModelError(
            "proximal_mu > 0 needs the anchor weights, usually the global model"
        )
    if set(anchor) != set(weights):
        raise ModelError(
            f"anchor tensors {sorted(anchor)} differ from the model's {sorted(weights)}"
        )
    wide = _wide(anchor)
    for name, array in wide.items():
        if array.shape != weights[name].shape:
            raise ModelError(
                f"anchor tensor {name!r} has shape {list(array.shape)}, "
                f"expected {list(weights[name].shape)}"
            )
    return wide


def _loss_and_gradients(
    weights: Mapping[str, Float64Array],
    architecture: str,
    x: Float64Array,
    y: npt.NDArray[np.int64],
    *,
    proximal_mu: float,
    anchor: Mapping[str, Float64Array] | None,
) -> tuple[float, dict[str, Float64Array]]:
    n = y.size
    rows = np.arange(n)

    pre = hidden = None
    if architecture == "softmax":
        logits = x @ weights["dense/kernel"] + weights["dense/bias"]
    else:
        pre = x @ weights["hidden/kernel"] + weights["hidden/bias"]
        hidden = np.maximum(pre, 0.0)
        logits = hidden @ weights["output/kernel"] + weights["output/bias"]
    log_probs = _log_softmax(logits)
    loss = -float(log_probs[rows, y].mean())

    # d(mean cross-entropy)/d(logits) = (softmax - one_hot) / n
    d_logits = np.exp(log_probs)
    d_logits[rows, y] -= 1.0
    d_logits /= n
    grads: dict[str, Float64Array]
    if pre is None or hidden is None:
        grads = {"dense/kernel": x.T @ d_logits, "dense/bias": d_logits.sum(axis=0)}
    else:
        d_hidden = d_logits @ weights["output/kernel"].T
        d_hidden[pre <= 0.0] = 0.0
        grads = {
            "hidden/kernel": x.T @ d_hidden,
            "hidden/bias": d_hidden.sum(axis=0),
            "output/kernel": hidden.T @ d_logits,
            "output/bias": d_logits.sum(axis=0),
        }

    if proximal_mu > 0 and anchor is not None:
        for name, weight in weights.items():
            difference = weight - anchor[name]
            loss += 0.5 * proximal_mu * float(np.vdot(difference, difference))
            grads[name] = grads[name] + proximal_mu * difference
    return loss, grads


def sgd_fit(
    tensors: Mapping[str, FloatArray],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
) -> tuple[Weights, dict[str, float]]:
    """Train a copy of the weights with mini-batch SGD.

    Each epoch visits the examples in a fresh order drawn from ``rng``; the last batch
    of an epoch may be smaller. With ``proximal_mu > 0`` each step also pulls the
    weights towards the starting weights (FedProx).

    Returns
    -------
    tuple
        The trained float32 weights, leaving the input unchanged, and metrics.
        ``loss`` and ``accuracy`` are those of the trained weights on ``x, y``, with
        the cross-entropy alone and no proximal term. ``epoch_loss`` is the mean
        mini-batch loss of the last epoch and ``steps`` the number of SGD steps.

    Raises
    ------
    ModelError
        If a setting is invalid, the data does not fit the model, or the loss
        becomes NaN or infinite (lower the learning rate).
    """
    spec = describe(tensors)
    features = _check_features(spec, x)
    labels = _check_labels(spec, y, features.shape[0])
    _check_fit_settings(epochs, batch_size, learning_rate, proximal_mu)
    n = labels.size
    if n == 0:
        raise ModelError("cannot train on an empty data set")
    anchor = _wide(tensors)
    weights = {name: array.copy() for name, array in anchor.items()}
    steps = 0
    epoch_loss = math.nan
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            loss, grads = _loss_and_gradients(
                weights,
                spec.architecture,
                features[batch].astype(np.float64),
                labels[batch],
                proximal_mu=proximal_mu,
                anchor=anchor,
            )
            if not math.isfinite(loss):
                raise ModelError(
                    f"training diverged: loss is {loss} at epoch {epoch + 1}, "
                    f"step {steps + 1}; lower the learning rate ({learning_rate})"
                )
            for name, grad in grads.items():
                weights[name] -= learning_rate * grad
            loss_sum += loss * batch.size
            steps += 1
        epoch_loss = loss_sum / n
        logger.debug("epoch %d/%d: mean batch loss %.4f", epoch + 1, epochs, epoch_loss)
    with np.errstate(over="ignore"):
        # Values beyond the float32 range become Inf here and are rejected below.
        trained = {name: array.astype(np.float32) for name, array in weights.items()}
    for name, array in trained.items():
        if not np.isfinite(array).all():
            raise ModelError(
                f"training diverged: tensor {name!r} contains NaN or Inf after float32 "
                f"rounding; lower the learning rate ({learning_rate})"
            )
    loss, accuracy = evaluate(trained, features, labels)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "epoch_loss": epoch_loss,
        "steps": float(steps),
    }
    return trained, metrics


def _check_fit_settings(
    epochs: int, batch_size: int, learning_rate: float, proximal_mu: float
) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{name} is {value!r}: expected a positive integer")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ModelError(
            f"learning_rate is {learning_rate!r}: expected a finite number > 0"
        )
    _check_mu(proximal_mu)
