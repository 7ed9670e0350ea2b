"""scikit-learn's Array API convention (issue 20): with ``array_api_dispatch``, a fit on
PyTorch tensors trains in PyTorch on their device and answers tensors there; anything else
gives numpy.

scikit-learn refuses ``array_api_dispatch`` unless scipy's own Array API mode was switched on
before scipy was imported (``SCIPY_ARRAY_API=1``), which would change scipy for every other
test of this process, so each check runs in a Python process of its own with it set. The
tensors are on the CPU device here (CI has no GPU); a CUDA tensor takes the same path.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch", reason="the Array API path needs PyTorch (CI: the CPU wheel)")
pytest.importorskip("array_api_compat", reason="scikit-learn's Array API support needs it")

_PRELUDE = """
import json, pickle
import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from skdbn import DistributedDBN
from skdbn import _device_training

trained_on = []
_math = _device_training.device_math
_device_training.device_math = (
    lambda device, *more: trained_on.append(str(device)) or _math(device, *more))

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0,
                                                    stratify=y)
tensors = [torch.from_numpy(a) for a in (X_train, X_test, y_train, y_test)]
params = dict(hidden_layer_sizes=(32, 16), pretrain_epochs=3, max_iter=15, random_state=0)

def kinds(model):
    return sorted({type(a).__name__ for name in ("coefs_", "intercepts_",
                                                 "visible_intercepts_")
                   for a in getattr(model, name)} | {type(model.classes_).__name__})
"""


def _run(body):
    code = textwrap.dedent(_PRELUDE) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SCIPY_ARRAY_API": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def test_a_fit_on_tensors_trains_in_torch_and_answers_tensors():
    outcome = _run("""
        Xt, Xs, yt, ys = tensors
        with sklearn.config_context(array_api_dispatch=True):
            model = DistributedDBN(**params).fit(Xt, yt)
            predicted = model.predict(Xs)
            proba = model.predict_proba(Xs)
            features = model.transform(Xs)
            accuracy = model.score(Xs, ys)
            on_numpy = model.predict(X_test)
        print("RESULT", json.dumps({
            "trained_on": sorted(set(trained_on)), "kinds": kinds(model),
            "devices": sorted({row["device"] for row in model.worker_stats_}),
            "outputs": [type(a).__name__ for a in (predicted, proba, features)],
            "proba_sums": float(proba.sum(dim=1).mean()), "feature_shape": list(features.shape),
            "accuracy": accuracy, "agrees": bool((predicted.numpy() == on_numpy).all()),
            "numpy_output": type(on_numpy).__name__, "dtype": str(model.dtype_)}))
    """)
    assert outcome["trained_on"] == ["cpu"]  # the torch path, on the tensors' device
    assert outcome["devices"] == ["torch:cpu"]
    assert outcome["kinds"] == ["Tensor"]
    assert outcome["outputs"] == ["Tensor", "Tensor", "Tensor"]
    assert outcome["proba_sums"] == pytest.approx(1.0, abs=1e-5)
    assert outcome["feature_shape"] == [450, 16]
    assert outcome["accuracy"] > 0.9
    # numpy in, numpy out, from the same model
    assert outcome["agrees"] and outcome["numpy_output"] == "ndarray"
    assert outcome["dtype"] == "float32"


def test_numpy_input_gives_numpy_whatever_the_dispatch():
    outcome = _run("""
        Xt, Xs, yt, ys = tensors
        with sklearn.config_context(array_api_dispatch=True):
            on_numpy = DistributedDBN(**params).fit(X_train, y_train)
        without_dispatch = DistributedDBN(**params).fit(Xt, yt)  # taken as numpy takes it
        print("RESULT", json.dumps({
            "dispatch": kinds(on_numpy), "no_dispatch": kinds(without_dispatch),
            "trained_on": trained_on,
            "devices": sorted({row["device"] for m in (on_numpy, without_dispatch)
                               for row in m.worker_stats_})}))
    """)
    assert outcome["dispatch"] == ["ndarray"] and outcome["no_dispatch"] == ["ndarray"]
    assert outcome["trained_on"] == [] and outcome["devices"] == ["cpu"]


def test_a_tensor_model_continues_pickles_and_leaves_on_numpy_input():
    outcome = _run("""
        Xt, Xs, yt, ys = tensors
        with sklearn.config_context(array_api_dispatch=True):
            model = DistributedDBN(**params).fit(Xt, yt)
            loaded = pickle.loads(pickle.dumps(model))
            same = bool(torch.equal(loaded.predict_proba(Xs), model.predict_proba(Xs)))
            model.partial_fit(Xt, yt)
            after_partial = kinds(model)
            first_partial = DistributedDBN(**params).partial_fit(Xt, yt,
                                                                 classes=torch.arange(10))
            first_partial_kinds = kinds(first_partial)
            epochs = len(model.loss_curve_)
            state = model.get_fitted_state()
            state_kinds = sorted({type(a).__name__ for a in state["coefs_"]})
            model.set_params(warm_start=True).fit(X_train, y_train)
            after_numpy = kinds(model)
            try:
                DistributedDBN(backend="spark").fit(Xt, yt)
                refusal = None
            except ValueError as error:
                refusal = str(error)
        print("RESULT", json.dumps({
            "same": same, "after_partial": after_partial, "epochs": epochs,
            "first_partial": first_partial_kinds,
            "state_kinds": state_kinds, "after_numpy": after_numpy,
            "accuracy": model.score(X_test, y_test), "refusal": refusal}))
    """)
    assert outcome["same"]
    assert outcome["after_partial"] == ["Tensor"]
    assert outcome["first_partial"] == ["Tensor"]
    assert outcome["epochs"] >= 2  # the partial fit added an epoch to the warm model
    assert outcome["state_kinds"] == ["ndarray"]  # what pyspark.ml stages save is numpy
    assert outcome["after_numpy"] == ["ndarray"]
    assert outcome["accuracy"] > 0.9
    assert "backend='spark' takes numpy arrays" in outcome["refusal"]


def test_string_labels_cannot_come_back_as_tensors():
    outcome = _run("""
        Xt = tensors[0]
        labels = np.array(["even", "odd"])[y_train % 2]
        with sklearn.config_context(array_api_dispatch=True):
            model = DistributedDBN(**params)
            try:
                model.fit(Xt, labels)
                refusal = None
            except TypeError as error:
                refusal = str(error)
        print("RESULT", json.dumps({"refusal": refusal,
                                    "fitted": hasattr(model, "coefs_")}))
    """)
    assert "needs numeric labels" in outcome["refusal"]
    assert not outcome["fitted"]


def test_the_gpu_example_runs_its_cpu_and_tensor_fits():
    script = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "gpu_digits.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "SCIPY_ARRAY_API": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("numpy on the CPU:      accuracy 0.9")
    assert "predictions are a Tensor on cpu" in lines[2]
    assert float(lines[2].split("accuracy ")[1].split()[0]) > 0.9


def test_scikit_learns_array_api_checks_pass_for_pytorch():
    outcome = _run("""
        from unittest import SkipTest
        from sklearn.utils.estimator_checks import _yield_array_api_checks

        estimator = DistributedDBN(hidden_layer_sizes=(8,), pretrain_epochs=1, max_iter=3,
                                   random_state=0)
        assert estimator.__sklearn_tags__().array_api_support
        passed = []
        for check in _yield_array_api_checks(estimator, only_numpy=False):
            try:
                check("DistributedDBN", estimator)
            except SkipTest:  # namespaces and devices this machine lacks
                continue
            passed.append(sorted(f"{k}={v}" for k, v in check.keywords.items()))
        print("RESULT", json.dumps({"passed": passed}))
    """)
    passed = [" ".join(kw) for kw in outcome["passed"]]
    assert any("array_namespace=torch" in kw and "dtype_name=float32" in kw for kw in passed)
    assert any("array_namespace=torch" in kw and "dtype_name=float64" in kw for kw in passed)
