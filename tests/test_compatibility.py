"""What an earlier version wrote still works: its pickled model loads and predicts, its
checkpoint resumes, and its saved pyspark.ml model loads. The files in ``tests/data`` were
written by skdbn 0.1.0 (commit 3fdec2c) with ``tests/data/make_fixtures.py``; they are never
written again by a newer version."""

import os
import pickle
import shutil
import sys

import numpy as np

from skdbn import DistributedDBN
from skdbn._checkpoint import CHECKPOINT_FILE, fingerprint

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
sys.path.insert(0, DATA)
from make_fixtures import PARAMS, data  # noqa: E402

# The defaults 0.1.0 had where they changed since (issue 21): the fixtures' settings.
DEFAULTS_0_1_0 = dict(n_iter_no_change=10, tol=1e-4)
OLD = {**DEFAULTS_0_1_0, **PARAMS}


def test_a_model_pickled_by_version_0_1_0_loads_and_predicts():
    X, y = data()
    with open(os.path.join(DATA, "model-0.1.0.pkl"), "rb") as handle:
        model = pickle.load(handle)  # a file of this repository, not of the network
    np.testing.assert_allclose(model.predict_proba(X),
                               np.load(os.path.join(DATA, "model-0.1.0-proba.npy")),
                               rtol=1e-10, atol=1e-12)
    assert model.transform(X).shape == (len(X), 6)
    assert model.get_params() == DistributedDBN(**OLD).get_params()
    state = model.get_fitted_state()  # and saves as a model of this version does
    assert DistributedDBN(**OLD).set_fitted_state(state).score(X, y) == model.score(X, y)


def test_a_checkpoint_of_version_0_1_0_resumes(tmp_path):
    X, y = data()
    directory = tmp_path / "checkpoint"
    shutil.copytree(os.path.join(DATA, "checkpoint-0.1.0"), directory)
    with np.load(directory / CHECKPOINT_FILE) as saved:
        meta = saved["meta"][()]
        network = saved["network"]
    # The fit's fingerprint is the one the old version wrote: the checkpoint is this fit's.
    assert f'"key": "{fingerprint(DistributedDBN(**OLD).get_params(), X, y, np.unique(y))}"' \
        in str(meta)
    model = DistributedDBN(checkpoint_dir=str(directory), **OLD).fit(X, y)
    assert model.worker_stats_ == []  # every phase came from the checkpoint
    assert model.n_iter_ == PARAMS["max_iter"]
    n_weights = sum(c.size for c in model.coefs_)
    np.testing.assert_array_equal(np.concatenate([c.ravel() for c in model.coefs_]),
                                  network[:n_weights])


def test_a_pyspark_ml_model_saved_by_version_0_1_0_loads_and_predicts(spark):
    from pyspark.ml.linalg import Vectors

    from skdbn.spark import DBNClassificationModel

    X, y = data()
    model = DBNClassificationModel.load(os.path.join(DATA, "classifier-0.1.0"))
    np.testing.assert_allclose(model.to_sklearn().predict_proba(X),
                               np.load(os.path.join(DATA, "classifier-0.1.0-proba.npy")),
                               rtol=1e-10, atol=1e-12)
    assert model.getOrDefault("hiddenLayerSizes") == [8, 6] and model.numClasses == 10
    frame = spark.createDataFrame([(Vectors.dense(x), float(label))
                                   for x, label in zip(X[:20], y[:20], strict=True)],
                                  ["features", "label"])
    predicted = np.array([row.prediction for row in model.transform(frame).collect()])
    np.testing.assert_array_equal(predicted, model.to_sklearn().predict(X[:20]))
