"""DistributedDBN's public behaviour: sklearn integration, persistence, training modes."""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from skdbn import DistributedDBN


def small(**params):
    """A quick model for tests on small data."""
    # The old defaults of the minibatch and the stopping rule: these tests are of behaviour,
    # and test_quality.py is of the defaults.
    defaults = dict(hidden_layer_sizes=(32,), pretrain_epochs=3, max_iter=20, batch_size=32,
                    tol=1e-4, n_iter_no_change=10, random_state=0)
    return DistributedDBN(**{**defaults, **params})


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16.0, y[:600]


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    return small().fit(X, y)


def test_fitted_attributes(fitted, digits):
    X, y = digits
    assert fitted.n_features_in_ == 64
    np.testing.assert_array_equal(fitted.classes_, np.arange(10))
    assert [c.shape for c in fitted.coefs_] == [(64, 32), (32, 10)]
    assert [b.shape for b in fitted.intercepts_] == [(32,), (10,)]
    assert fitted.visible_units_ == "bernoulli" and fitted.mean_ is None
    assert fitted.n_iter_ == len(fitted.loss_curve_) == 20
    assert fitted.loss_curve_[-1] < fitted.loss_curve_[0]
    history = fitted.pretraining_history_[0]
    assert len(history["reconstruction_error"]) == len(history["pseudo_likelihood"]) == 3
    assert history["reconstruction_error"][-1] < history["reconstruction_error"][0]
    assert fitted.score(X, y) > 0.9
    proba = fitted.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(fitted.predict(X), fitted.classes_[proba.argmax(axis=1)])
    assert fitted.transform(X).shape == (600, 32)


def test_same_seed_same_model_other_seed_other_model(digits):
    X, y = digits
    params = dict(max_iter=3)
    a = small(**params).fit(X, y)
    b = small(**params).fit(X, y)
    c = small(random_state=1, **params).fit(X, y)
    for wa, wb in zip(a.coefs_, b.coefs_, strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(a.coefs_[0], c.coefs_[0])


def test_float32_is_trained_and_returned_in_float32(digits):
    X, y = digits
    model = small(max_iter=3).fit(X.astype(np.float32), y)
    assert all(c.dtype == np.float32 for c in model.coefs_)
    assert model.transform(X.astype(np.float32)).dtype == np.float32
    assert model.transform(X).dtype == np.float64
    assert model.predict_proba(X.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", np.float32, "float64", np.float64])
def test_the_dtype_setting_converts_the_input(digits, dtype):
    X, y = digits
    given = X.astype(np.float64 if np.dtype(dtype) == np.float32 else np.float32)
    model = small(max_iter=2, dtype=dtype).fit(given, y)
    assert model.dtype_ == np.dtype(dtype)
    assert all(c.dtype == np.dtype(dtype) for c in model.coefs_ + model.intercepts_)
    # The same model as from input already in that dtype.
    reference = small(max_iter=2).fit(given.astype(dtype), y)
    for a, b in zip(model.coefs_, reference.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.score(X, y) > 0.5
    assert small(max_iter=2).fit(X, y).dtype_ == np.float64  # unset: scikit-learn's rule
    with pytest.raises(ValueError, match="dtype"):
        small(dtype="float16").fit(X, y)


def test_a_fit_that_continues_a_model_keeps_its_dtype_unless_told(digits):
    X, y = digits
    model = small(hidden_layer_sizes=(16, 8), max_iter=2).fit(X.astype(np.float32), y)
    model.set_params(warm_start=True).fit(X, y)  # float64 input: the model stays float32
    assert model.dtype_ == np.float32
    model.fit(X)  # unlabelled, both layers pretrained again in float32
    assert all(c.dtype == np.float32 for c in model.coefs_)
    model.set_params(dtype="float64").fit(X, y)
    assert model.dtype_ == np.float64 and model.score(X, y) > 0.5
    partial = small(batch_size=32)
    partial.partial_fit(X, y, classes=np.arange(10))
    partial.partial_fit(X.astype(np.float32), y)
    assert partial.dtype_ == np.float64


def test_unlabelled_fit_pretrains_only(digits):
    X, _ = digits
    model = small().fit(X)
    assert model.n_iter_ == 0 and not hasattr(model, "classes_")
    assert model.transform(X).shape == (600, 32)
    with pytest.raises(NotFittedError, match="without labels"):
        model.predict(X)
    with pytest.raises(NotFittedError, match="without labels"):
        model.predict_proba(X)


def test_warm_start_fine_tunes_a_pretrained_stack(digits):
    X, y = digits
    model = small(hidden_layer_sizes=(32, 16)).fit(X)
    pretrained = [c.copy() for c in model.coefs_]
    model.set_params(warm_start=True, max_iter=5)
    model.fit(X, y)
    assert model.n_iter_ == 5 and len(model.coefs_) == 3
    assert len(model.pretraining_history_) == 2  # no second pretraining
    assert not np.allclose(model.coefs_[0], pretrained[0])
    model.fit(X, y)
    assert model.n_iter_ == 10  # max_iter more epochs, as MLPClassifier does


def test_partial_fit_labelled_and_unlabelled(digits):
    X, y = digits
    model = small()
    with pytest.raises(ValueError, match="classes must be passed"):
        model.partial_fit(X, y)
    model.partial_fit(X[:300], y[:300], classes=np.arange(10))
    assert model.n_iter_ == 1 and len(model.pretraining_history_[0]["reconstruction_error"]) == 3
    after_one_epoch = model.score(X, y)
    for _ in range(14):
        model.partial_fit(X[300:], y[300:])
    assert model.n_iter_ == 15
    assert model.score(X, y) > max(0.75, after_one_epoch + 0.3)
    with pytest.raises(ValueError, match="not in classes"):
        model.partial_fit(X[:5], np.array([0, 1, 2, 3, 99]))

    unsupervised = small()
    unsupervised.partial_fit(X)
    unsupervised.partial_fit(X)
    assert len(unsupervised.pretraining_history_[0]["reconstruction_error"]) == 2


def test_gaussian_units_for_unscaled_data():
    X, y = make_classification(n_samples=300, n_features=12, n_informative=6, random_state=0)
    X = 10 * X + 5
    model = small(pretrain_epochs=20, max_iter=100).fit(X, y)
    assert model.visible_units_ == "gaussian"
    np.testing.assert_allclose(model.mean_, X.mean(axis=0), rtol=1e-10)
    assert "pseudo_likelihood" not in model.pretraining_history_[0]
    assert model.score(X, y) > 0.9


def test_sparse_input_gives_the_dense_model(digits):
    X, y = digits
    dense = small(max_iter=3).fit(X, y)
    sparse = small(max_iter=3).fit(sp.csr_matrix(X), y)
    for a, b in zip(dense.coefs_, sparse.coefs_, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)
    np.testing.assert_allclose(dense.predict_proba(X), sparse.predict_proba(sp.csr_matrix(X)))


def test_early_stopping_keeps_the_best_validation_network(digits):
    X, y = digits
    model = small(early_stopping=True, max_iter=200, n_iter_no_change=3).fit(X, y)
    assert model.n_iter_ < 200
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert model.best_loss_ is None


def test_checkpoint_resume_gives_the_uninterrupted_model(digits, tmp_path, monkeypatch):
    X, y = digits
    params = dict(hidden_layer_sizes=(24, 16), max_iter=6, checkpoint_dir=str(tmp_path))
    reference = small(**{**params, "checkpoint_dir": None}).fit(X, y)

    # Interrupt the first fit during the fourth fine-tuning epoch.
    import skdbn._worker as worker  # in-process phases call its train_phase

    original = worker.train_phase
    calls = {"n": 0}

    def failing_train_phase(phase, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 + 4:
            raise KeyboardInterrupt("simulated loss of the driver")
        return original(phase, *args, **kwargs)

    monkeypatch.setattr(worker, "train_phase", failing_train_phase)
    with pytest.raises(KeyboardInterrupt):
        small(**params).fit(X, y)
    monkeypatch.setattr(worker, "train_phase", original)
    assert (tmp_path / "skdbn-checkpoint.npz").exists()

    resumed_calls = {"n": 0}

    def counting_train_phase(phase, *args, **kwargs):
        resumed_calls["n"] += 1
        return original(phase, *args, **kwargs)

    monkeypatch.setattr(worker, "train_phase", counting_train_phase)
    resumed = small(**params).fit(X, y)
    assert resumed_calls["n"] == 3  # epochs 4 to 6 only
    for a, b in zip(reference.coefs_, resumed.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.loss_curve_ == reference.loss_curve_

    # A checkpoint of other data is not resumed.
    small(**params).fit(X[::-1], y[::-1])
    assert resumed_calls["n"] == 3 + 2 + 6


def test_clone_and_get_params():
    model = small(alpha=0.5)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert copy is not model


def test_pipeline_with_scaler_in_front(digits):
    X, y = digits
    pipe = make_pipeline(StandardScaler(), small(max_iter=30))
    pipe.fit(X, y)
    assert pipe[-1].visible_units_ == "gaussian"
    assert pipe.score(X, y) > 0.9


def test_feature_extractor_in_front_of_logistic_regression(digits):
    X, y = digits
    pipe = make_pipeline(small(), LogisticRegression(max_iter=500))
    pipe.fit(X, y)
    assert pipe[0].n_iter_ == 20  # fit_transform with labels fine-tunes the features
    assert pipe.score(X, y) > 0.9
    unsupervised = make_pipeline(MinMaxScaler(), small(), LogisticRegression(max_iter=500))
    unsupervised.fit(X, y)
    assert unsupervised.score(X, y) > 0.8


def test_grid_search_over_two_parameters(digits):
    X, y = digits
    search = GridSearchCV(
        small(max_iter=5),
        {"hidden_layer_sizes": [(16,), (32,)], "learning_rate": [0.05, 0.2]},
        cv=2,
    )
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.n_iter_ == 5
    assert search.score(X, y) > 0.8


def test_pickle_and_joblib_round_trips(fitted, digits, tmp_path):
    X, _ = digits
    expected = fitted.predict_proba(X)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    joblib.dump(fitted, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").predict_proba(X), expected)


def test_pandas_output_and_feature_names(digits):
    X, y = digits
    frame = pd.DataFrame(X, columns=[f"pixel_{i}" for i in range(64)])
    model = small(max_iter=2).set_output(transform="pandas")
    model.fit(frame, y)
    np.testing.assert_array_equal(model.feature_names_in_, frame.columns)
    out = model.transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"distributeddbn{i}" for i in range(32)]
    np.testing.assert_array_equal(model.get_feature_names_out(), out.columns)
    with pytest.warns(UserWarning, match="feature names"):
        model.transform(X)


def test_html_repr_for_notebooks(fitted):
    html = fitted._repr_html_()
    assert "DistributedDBN" in html and "hidden_layer_sizes" in html


def test_the_fitted_state_is_every_fitted_attribute_and_makes_the_model_again(digits):
    from skdbn._dbn import FITTED_ATTRIBUTES

    X, y = digits
    named = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(X.shape[1])])
    models = [(small().fit(named, y), named), (small(early_stopping=True).fit(X, y), X),
              (small().fit(X), X), (small().partial_fit(X, y, classes=np.unique(y)), X)]
    for model, inputs in models:
        fitted = {name for name in vars(model) if name.endswith("_")
                  and not name.startswith("_")}
        state = model.get_fitted_state()
        assert set(state) == fitted and fitted <= set(FITTED_ATTRIBUTES)
        again = DistributedDBN(**model.get_params()).set_fitted_state(state)
        np.testing.assert_array_equal(again.transform(inputs), model.transform(inputs))
        if hasattr(model, "classes_"):
            np.testing.assert_array_equal(again.predict_proba(inputs),
                                          model.predict_proba(inputs))
    with pytest.raises(NotFittedError):
        small().get_fitted_state()
    state = models[1][0].get_fitted_state()
    with pytest.raises(ValueError, match=r"unknown attributes \['weights_'\]"):
        small().set_fitted_state({**state, "weights_": []})
    with pytest.raises(ValueError, match=r"missing attributes \['coefs_'\]"):
        small().set_fitted_state({k: v for k, v in state.items() if k != "coefs_"})
