"""Every public method rejects bad input clearly and leaves a fitted model as it was."""

import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skdbn import DistributedDBN


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    return X[:200] / 16.0, y[:200]


@pytest.fixture
def fitted(data):
    X, y = data
    return DistributedDBN(hidden_layer_sizes=(8,), pretrain_epochs=1, max_iter=2,
                          random_state=0).fit(X, y)


def _with_nan(X):
    X = X.copy()
    X[3, 5] = np.nan
    return X


def _with_inf(X):
    X = X.copy()
    X[0, 0] = np.inf
    return X


BAD_FIT_INPUT = [
    ("nan", lambda X, y: (_with_nan(X), y), "NaN"),
    ("inf", lambda X, y: (_with_inf(X), y), "infinity"),
    ("1-D X", lambda X, y: (X[:, 0], y), "2D array"),
    ("empty X", lambda X, y: (X[:0], y[:0]), "0 sample"),
    ("y too short", lambda X, y: (X, y[:-1]), "inconsistent numbers of samples"),
    ("one class", lambda X, y: (X, np.zeros_like(y)), "class"),
    ("continuous y", lambda X, y: (X, y + 0.5), "Unknown label type"),
    ("string X", lambda X, y: (np.full(X.shape, "a"), y), "convert"),
]


def _snapshot(model):
    return pickle.dumps({k: v for k, v in vars(model).items() if k.endswith("_")})


@pytest.mark.parametrize("name, corrupt, message", BAD_FIT_INPUT,
                         ids=[case[0] for case in BAD_FIT_INPUT])
def test_bad_fit_input_is_rejected_and_model_unchanged(fitted, data, name, corrupt, message):
    X_bad, y_bad = corrupt(*data)
    with pytest.raises(ValueError, match=message):
        DistributedDBN(hidden_layer_sizes=(8,)).fit(X_bad, y_bad)
    before = _snapshot(fitted)
    with pytest.raises(ValueError, match=message):
        fitted.fit(X_bad, y_bad)
    if name != "one class":  # a one-class batch is fine once the classes are known
        with pytest.raises(ValueError, match=message):
            fitted.partial_fit(X_bad, y_bad)
    with pytest.raises(ValueError, match=message):
        fitted.set_params(warm_start=True).fit(X_bad, y_bad)
    assert _snapshot(fitted) == before


def test_wrong_number_of_features_when_continuing(fitted, data):
    X, y = data
    before = _snapshot(fitted)
    with pytest.raises(ValueError, match="features"):
        fitted.partial_fit(X[:, :10], y)
    with pytest.raises(ValueError, match="features"):
        fitted.set_params(warm_start=True).fit(X[:, :10], y)
    assert _snapshot(fitted) == before


def test_failed_refit_keeps_the_whole_fitted_state(fitted, data):
    X, y = data
    before = _snapshot(fitted)
    # Valid data but a failure deep inside training (divergence) must not leave a half model.
    fitted.set_params(learning_rate=1e30, pretrain_learning_rate=1e30)
    with pytest.raises(FloatingPointError, match="diverged"):
        fitted.fit(X, y)
    assert _snapshot(fitted) == before


@pytest.mark.parametrize("method", ["predict", "predict_proba", "transform", "score"])
def test_bad_inference_input(fitted, data, method):
    X, y = data
    call = getattr(fitted, method)
    args = (lambda X_: (X_, y)) if method == "score" else (lambda X_: (X_,))
    with pytest.raises(ValueError, match="NaN"):
        call(*args(_with_nan(X)))
    with pytest.raises(ValueError, match="features"):
        call(*args(X[:, :10]))
    with pytest.raises(ValueError, match="2D array"):
        call(*args(X[0]))


@pytest.mark.parametrize("params, message", [
    ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes"),
    ({"hidden_layer_sizes": ()}, "hidden_layer_sizes"),
    ({"hidden_layer_sizes": (4, "a")}, "hidden_layer_sizes"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"momentum": 1.0}, "momentum"),
    ({"cd_steps": 0}, "cd_steps"),
    ({"visible_units": "binary"}, "visible_units"),
    ({"sync": "sometimes"}, "sync"),
    ({"batch_size": -1}, "batch_size"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"n_workers": 0}, "n_workers"),
])
def test_invalid_parameters_are_named(data, params, message):
    X, y = data
    with pytest.raises(ValueError, match=message):
        DistributedDBN(**params).fit(X, y)


def test_bernoulli_units_need_values_in_unit_interval(data):
    X, y = data
    with pytest.raises(ValueError, match=r"needs every value of X in \[0, 1\]"):
        DistributedDBN(visible_units="bernoulli").fit(X * 16, y)


def test_more_workers_than_samples(data):
    X, y = data
    with pytest.raises(ValueError, match="n_workers=300 is more than the 200"):
        DistributedDBN(n_workers=300, backend="local").fit(X, y)


def test_unfitted_model_says_so(data):
    X, _ = data
    from sklearn.exceptions import NotFittedError

    for method in ("predict", "predict_proba", "transform"):
        with pytest.raises(NotFittedError):
            getattr(DistributedDBN(), method)(X)
