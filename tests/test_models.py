"""Tests of the numpy models: shapes, gradients, references and training."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss

from fedcore import models
from fedcore.models import ModelError

SIZES = {"input_dim": 6, "hidden_units": 5, "classes": 4}
EXPECTED_SHAPES = {
    "softmax": {"dense/kernel": (6, 4), "dense/bias": (4,)},
    "mlp": {
        "hidden/kernel": (6, 5),
        "hidden/bias": (5,),
        "output/kernel": (5, 4),
        "output/bias": (4,),
    },
}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(y.size)
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def _batch(seed: int = 1, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES["input_dim"]))
    y = rng.integers(0, SIZES["classes"], size=n)
    return x, y


def _randomized(architecture: str, seed: int = 2) -> dict[str, np.ndarray]:
    """Float64 weights with non-zero biases, so every gradient term is exercised."""
    rng = np.random.default_rng(seed)
    weights = models.init_model(architecture, seed=seed, **SIZES)
    return {
        name: array.astype(np.float64) + rng.normal(scale=0.3, size=array.shape)
        for name, array in weights.items()
    }


@pytest.mark.parametrize("architecture", ["softmax", "mlp"])
def test_init_shapes(architecture: str) -> None:
    weights = models.init_model(architecture, seed=0, **SIZES)
    shapes = {name: array.shape for name, array in weights.items()}
    assert shapes == EXPECTED_SHAPES[architecture]
    assert all(array.dtype == np.float32 for array in weights.values())


@pytest.mark.parametrize("architecture", ["softmax", "mlp"])
def test_init_seeded(architecture: str) -> None:
    first = models.init_model(architecture, seed=3, **SIZES)
    again = models.init_model(architecture, seed=3, **SIZES)
    other = models.init_model(architecture, seed=4, **SIZES)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    kernel = next(name for name in first if name.endswith("kernel"))
    assert not np.array_equal(first[kernel], other[kernel])


def test_init_scales() -> None:
    weights = models.init_model(
        "mlp", input_dim=400, hidden_units=300, classes=200, seed=0
    )
    he_std = np.sqrt(2.0 / 400)
    glorot_limit = np.sqrt(6.0 / (300 + 200))
    assert weights["hidden/kernel"].std() == pytest.approx(he_std, rel=0.02)
    assert np.abs(weights["output/kernel"]).max() <= glorot_limit
    assert np.abs(weights["output/kernel"]).max() > 0.95 * glorot_limit
    assert not weights["hidden/bias"].any()


@pytest.mark.parametrize(
    ("architecture", "overrides", "fragment"),
    [
        ("cnn", {}, "unknown architecture 'cnn'"),
        ("mlp", {"input_dim": 0}, "input_dim is 0"),
        ("mlp", {"hidden_units": -1}, "hidden_units is -1"),
        ("softmax", {"classes": 1}, "at least 2"),
        ("softmax", {"input_dim": 2.5}, "input_dim is 2.5"),
        ("mlp", {"classes": True}, "classes is True"),
    ],
)
def test_init_rejects(architecture: str, overrides: dict, fragment: str) -> None:
    with pytest.raises(ModelError, match=fragment):
        models.init_model(architecture, seed=0, **{**SIZES, **overrides})


def test_init_softmax_ignores_hidden() -> None:
    weights = models.init_model(
        "softmax", input_dim=3, hidden_units=0, classes=2, seed=0
    )
    assert set(weights) == {"dense/kernel", "dense/bias"}


@pytest.mark.parametrize("architecture", ["softmax", "mlp"])
def test_architecture_of_known(architecture: str) -> None:
    weights = models.init_model(architecture, seed=0, **SIZES)
    assert models.architecture_of(weights) == architecture


def test_architecture_of_unknown() -> None:
    weights = models.init_model("mlp", seed=0, **SIZES)
    del weights["output/bias"]
    with pytest.raises(ModelError, match="match no architecture"):
        models.architecture_of(weights)


@pytest.mark.parametrize(
    ("name", "shape", "fragment"),
    [
        ("dense/bias", (3,), "dense/bias has shape"),
        ("dense/kernel", (6,), "expected a non-empty matrix"),
        ("dense/kernel", (6, 0), "expected a non-empty matrix"),
    ],
)
def test_describe_rejects_shapes(name: str, shape: tuple, fragment: str) -> None:
    weights = models.init_model("softmax", seed=0, **SIZES)
    weights[name] = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ModelError, match=fragment):
        models.describe(weights)


def test_describe_rejects_unfit_layers() -> None:
    weights = models.init_model("mlp", seed=0, **SIZES)
    weights["output/kernel"] = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ModelError, match="do not fit together"):
        models.describe(weights)


def test_describe_rejects_integer_tensor() -> None:
    weights = models.init_model("softmax", seed=0, **SIZES)
    weights["dense/bias"] = np.zeros(4, dtype=np.int32)
    with pytest.raises(ModelError, match="floating point"):
        models.describe(weights)


def test_predict_proba_reference() -> None:
    weights = _randomized("mlp")
    x, _ = _batch()
    hidden = np.maximum(x @ weights["hidden/kernel"] + weights["hidden/bias"], 0)
    logits = hidden @ weights["output/kernel"] + weights["output/bias"]
    np.testing.assert_allclose(
        models.predict_proba(weights, x), softmax(logits, axis=1), rtol=1e-12
    )


@pytest.mark.parametrize("architecture", ["softmax", "mlp"])
def test_evaluate_reference(architecture: str) -> None:
    weights = _randomized(architecture)
    x, y = _batch(n=50)
    proba = models.predict_proba(weights, x)
    loss, accuracy = models.evaluate(weights, x, y)
    labels = list(range(SIZES["classes"]))
    assert loss == pytest.approx(log_loss(y, proba, labels=labels), rel=1e-9)
    assert accuracy == pytest.approx(accuracy_score(y, proba.argmax(axis=1)))


def test_evaluate_chunks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = _randomized("mlp")
    x, y = _batch(n=25)
    whole = models.evaluate(weights, x, y)
    monkeypatch.setattr(models, "EVAL_CHUNK_ROWS", 4)
    chunked = models.evaluate(weights, x, y)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    assert chunked[1] == whole[1]


def test_evaluate_large_logits_finite() -> None:
    weights = {name: array * 1e4 for name, array in _randomized("softmax").items()}
    x, y = _batch(n=20)
    loss, _ = models.evaluate(weights, x, y)
    assert np.isfinite(loss)
    assert loss > 100


@pytest.mark.parametrize(
    ("x_shape", "labels", "fragment"),
    [
        ((3, 5), [0, 1, 2], "expected \\[n, 6\\]"),
        ((3, 6), [0, 1], "expected \\[3\\]"),
        ((3, 6), [0, 1, 4], "expected 0..3"),
        ((3, 6), [0, -1, 2], "expected 0..3"),
        ((3, 6), [0.0, 1.0, 2.0], "expected integers"),
        ((0, 6), [], "empty data set"),
    ],
)
def test_evaluate_rejects(x_shape: tuple, labels: list, fragment: str) -> None:
    weights = models.init_model("softmax", seed=0, **SIZES)
    with pytest.raises(ModelError, match=fragment):
        y = np.array(labels) if labels else np.zeros(0, dtype=np.int64)
        models.evaluate(weights, np.zeros(x_shape), y)


def _numerical_gradients(
    weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, **kwargs: object
) -> dict[str, np.ndarray]:
    eps = 1e-6
    result = {}
    for name, array in weights.items():
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            original = array[index]
            array[index] = original + eps
            plus, _ = models.loss_and_gradients(weights, x, y, **kwargs)
            array[index] = original - eps
            minus, _ = models.loss_and_gradients(weights, x, y, **kwargs)
            array[index] = original
            grad[index] = (plus - minus) / (2 * eps)
        result[name] = grad
    return result


@pytest.mark.parametrize("architecture", ["softmax", "mlp"])
@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_gradients_finite_difference(architecture: str, mu: float) -> None:
    weights = _randomized(architecture)
    anchor = _randomized(architecture, seed=5)
    x, y = _batch()
    kwargs = {"proximal_mu": mu, "anchor": anchor}
    _, analytic = models.loss_and_gradients(weights, x, y, **kwargs)
    numeric = _numerical_gradients(weights, x, y, **kwargs)
    assert set(analytic) == set(weights)
    for name in weights:
        np.testing.assert_allclose(
            analytic[name], numeric[name], rtol=1e-5, atol=1e-8, err_msg=name
        )


def test_gradients_proximal_loss() -> None:
    weights = _randomized("softmax")
    anchor = _randomized("softmax", seed=9)
    x, y = _batch()
    plain, _ = models.loss_and_gradients(weights, x, y)
    prox, _ = models.loss_and_gradients(weights, x, y, proximal_mu=0.5, anchor=anchor)
    squared = sum(np.sum((weights[n] - anchor[n]) ** 2) for n in weights)
    assert prox == pytest.approx(plain + 0.25 * squared, rel=1e-12)


def test_gradients_proximal_needs_anchor() -> None:
    weights = _randomized("softmax")
    x, y = _batch()
    with pytest.raises(ModelError, match="needs the anchor"):
        models.loss_and_gradients(weights, x, y, proximal_mu=0.1)


def test_gradients_reject_negative_mu() -> None:
    weights = _randomized("softmax")
    x, y = _batch()
    with pytest.raises(ModelError, match=r"proximal_mu is -0\.1"):
        models.loss_and_gradients(weights, x, y, proximal_mu=-0.1, anchor=weights)


@pytest.mark.parametrize("architecture", ["softmax", "mlp"])
def test_sgd_fit_improves_digits(architecture: str, digits: tuple) -> None:
    x_train, y_train, x_test, y_test = digits
    weights = models.init_model(
        architecture, input_dim=64, hidden_units=32, classes=10, seed=0
    )
    _, initial_accuracy = models.evaluate(weights, x_test, y_test)
    trained, metrics = models.sgd_fit(
        weights,
        x_train,
        y_train,
        epochs=5,
        batch_size=16,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
    )
    _, accuracy = models.evaluate(trained, x_test, y_test)
    assert initial_accuracy < 0.3
    assert accuracy > 0.85
    assert metrics["steps"] == 5 * int(np.ceil(1400 / 16))
    assert metrics["loss"] == pytest.approx(
        models.evaluate(trained, x_train, y_train)[0]
    )


def test_sgd_fit_near_sklearn(digits: tuple) -> None:
    """Softmax regression trained by SGD reaches sklearn's multinomial accuracy."""
    x_train, y_train, x_test, y_test = digits
    reference = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    reference_accuracy = reference.score(x_test, y_test)
    weights = models.init_model(
        "softmax", input_dim=64, hidden_units=0, classes=10, seed=0
    )
    trained, _ = models.sgd_fit(
        weights,
        x_train,
        y_train,
        epochs=30,
        batch_size=16,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
    )
    _, accuracy = models.evaluate(trained, x_test, y_test)
    assert accuracy >= reference_accuracy - 0.03


def test_sgd_fit_keeps_input(digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    weights = models.init_model(
        "mlp", input_dim=64, hidden_units=32, classes=10, seed=0
    )
    before = {name: array.copy() for name, array in weights.items()}
    trained, _ = models.sgd_fit(
        weights,
        x_train[:100],
        y_train[:100],
        epochs=1,
        batch_size=8,
        learning_rate=0.1,
        rng=np.random.default_rng(0),
    )
    for name in weights:
        np.testing.assert_array_equal(weights[name], before[name])
    assert all(array.dtype == np.float32 for array in trained.values())


def test_sgd_fit_seeded(digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    weights = models.init_model(
        "softmax", input_dim=64, hidden_units=0, classes=10, seed=0
    )
    runs = [
        models.sgd_fit(
            weights,
            x_train[:200],
            y_train[:200],
            epochs=2,
            batch_size=16,
            learning_rate=0.1,
            rng=np.random.default_rng(7),
        )[0]
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0]["dense/kernel"], runs[1]["dense/kernel"])


def test_sgd_fit_proximal_stays_closer(digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    weights = models.init_model(
        "mlp", input_dim=64, hidden_units=32, classes=10, seed=0
    )

    def distance(mu: float) -> float:
        trained, _ = models.sgd_fit(
            weights,
            x_train[:300],
            y_train[:300],
            epochs=3,
            batch_size=16,
            learning_rate=0.1,
            rng=np.random.default_rng(0),
            proximal_mu=mu,
        )
        return float(
            sum(np.sum((trained[n] - weights[n]) ** 2) for n in weights) ** 0.5
        )

    assert distance(1.0) < 0.8 * distance(0.0)


def test_sgd_fit_diverges_clearly() -> None:
    weights = _randomized("softmax")
    x, y = _batch(n=40)
    with pytest.raises(ModelError, match="training diverged"):
        models.sgd_fit(
            weights,
            x * 1e3,
            y,
            epochs=5,
            batch_size=4,
            learning_rate=1e300,
            rng=np.random.default_rng(0),
        )


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"epochs": 0}, "epochs is 0"),
        ({"batch_size": 0}, "batch_size is 0"),
        ({"learning_rate": 0.0}, "learning_rate is 0.0"),
        ({"learning_rate": float("nan")}, "learning_rate is nan"),
        ({"proximal_mu": -1.0}, "proximal_mu is -1.0"),
    ],
)
def test_sgd_fit_rejects_settings(settings: dict, fragment: str) -> None:
    weights = models.init_model("softmax", seed=0, **SIZES)
    x, y = _batch()
    arguments = {"epochs": 1, "batch_size": 4, "learning_rate": 0.1, **settings}
    with pytest.raises(ModelError, match=fragment):
        models.sgd_fit(weights, x, y, rng=np.random.default_rng(0), **arguments)
