"""Write the files that tests/test_compatibility.py loads: a pickled model, a checkpoint
directory and a saved pyspark.ml model, all written by skdbn 0.1.0 (commit 3fdec2c, before
the estimator was split into its rooms). Later versions must load the model, resume from the
checkpoint and load the stage; do not write them again with a newer version unless a format
changes on purpose (and say so in the changelog).

Run it with the old version first on the path, from a directory outside both checkouts
(Spark's Python workers put their working directory first on ``sys.path``):
``cd /tmp && PYTHONPATH=/path/to/old/checkout python /path/to/tests/data/make_fixtures.py
[model] [stage]`` (both by default; ``stage`` needs Java for its local Spark session).
"""

import os
import pickle
import shutil
import sys

import numpy as np
from sklearn.datasets import load_digits

from skdbn import DistributedDBN

HERE = os.path.dirname(os.path.abspath(__file__))
# The settings and data of both files (tests/test_compatibility.py uses the same).
PARAMS = dict(hidden_layer_sizes=(8, 6), pretrain_epochs=2, max_iter=3, batch_size=50,
              random_state=0)
ROWS = 300


def data():
    X, y = load_digits(return_X_y=True)
    return X[:ROWS] / 16.0, y[:ROWS]


def save_model():
    X, y = data()
    model = DistributedDBN(**PARAMS).fit(X, y)
    with open(os.path.join(HERE, "model-0.1.0.pkl"), "wb") as handle:
        pickle.dump(model, handle, protocol=4)
    np.save(os.path.join(HERE, "model-0.1.0-proba.npy"), model.predict_proba(X))
    directory = os.path.join(HERE, "checkpoint-0.1.0")
    shutil.rmtree(directory, ignore_errors=True)
    DistributedDBN(checkpoint_dir=directory, **PARAMS).fit(X, y)
    os.remove(os.path.join(directory, "skdbn-checkpoint.previous.npz"))


def save_stage():
    from pyspark.ml.linalg import Vectors

    from skdbn import loopback_session
    from skdbn.spark import DBNClassifier

    X, y = data()
    spark = loopback_session("local[1]", app_name="skdbn-fixtures")
    try:
        frame = spark.createDataFrame([(Vectors.dense(x), float(label))
                                       for x, label in zip(X, y, strict=True)],
                                      ["features", "label"])
        model = DBNClassifier(hiddenLayerSizes=list(PARAMS["hidden_layer_sizes"]),
                              pretrainEpochs=2, maxIter=3, batchSize=50, seed=0,
                              numWorkers=1).fit(frame)
        directory = os.path.join(HERE, "classifier-0.1.0")
        shutil.rmtree(directory, ignore_errors=True)
        model.write().save(directory)
        np.save(os.path.join(HERE, "classifier-0.1.0-proba.npy"),
                model.to_sklearn().predict_proba(X))
    finally:
        spark.stop()


if __name__ == "__main__":
    parts = sys.argv[1:] or ["model", "stage"]
    if "model" in parts:
        save_model()
    if "stage" in parts:
        save_stage()
