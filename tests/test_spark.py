"""Training and inference on a real SparkSession (local[2], bound to 127.0.0.1)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN, loopback_session

pyspark = pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")

SMALL = dict(hidden_layer_sizes=(64,), pretrain_epochs=5, max_iter=10, random_state=0)


@pytest.fixture(scope="module")
def spark():
    session = loopback_session("local[2]", app_name="skdbn-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def _frame(spark, X, y=None, vectors=True):
    from pyspark.ml.linalg import Vectors

    rows = []
    for i, x in enumerate(X):
        features = Vectors.dense(x.tolist()) if vectors else x.tolist()
        rows.append((features, int(y[i])) if y is not None else (features,))
    columns = ["features", "label"] if y is not None else ["features"]
    return spark.createDataFrame(rows, columns)


def test_numpy_input_trains_on_two_barrier_tasks_with_gossip(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    model = DistributedDBN(n_workers=2, sync="gossip", **SMALL).fit(X_train, y_train)
    assert model.n_workers_ == 2
    assert model.score(X_test, y_test) > 0.9
    for name, value in vars(model).items():  # nothing of Spark is kept on the model
        assert "pyspark" not in type(value).__module__, name


def test_spark_barrier_rendezvous_can_replace_the_drivers(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    spark.conf.set("spark.skdbn.rendezvous", "barrier")
    try:
        model = DistributedDBN(n_workers=2, sync="gossip", **SMALL).fit(X_train, y_train)
        assert model.score(X_test, y_test) > 0.9
        spark.conf.set("spark.skdbn.rendezvous", "carrier-pigeon")
        with pytest.raises(ValueError, match="must be 'driver' or 'barrier'"):
            DistributedDBN(n_workers=2, sync="gossip", **SMALL).fit(X_train, y_train)
    finally:
        spark.conf.unset("spark.skdbn.rendezvous")


def test_dataframe_fit_and_inference_stay_on_the_executors(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    train = _frame(spark, X_train, y_train)
    model = DistributedDBN(n_workers=2, **SMALL).fit(train)
    assert model.n_workers_ == 2 and model.n_features_in_ == 64
    np.testing.assert_array_equal(model.classes_, np.arange(10))

    test = _frame(spark, X_test, y_test)
    predicted = model.predict(test)
    assert predicted.columns == ["features", "label", "prediction"]
    rows = predicted.collect()
    labels = np.array([row["prediction"] for row in rows])
    expected = model.predict(np.array([row["features"].toArray() for row in rows]))
    np.testing.assert_array_equal(labels, expected)
    assert model.score(test) == pytest.approx(model.score(X_test, y_test))
    assert model.score(test) > 0.9

    proba = np.array(model.predict_proba(test).select("probability").toPandas()
                     ["probability"].tolist())
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    features = model.transform(test).select("dbn_features").first()["dbn_features"]
    assert len(features) == 64


def test_array_columns_and_unlabelled_frames(spark, digits_split):
    X_train, _, _, _ = digits_split
    frame = _frame(spark, X_train, vectors=False)
    model = DistributedDBN(n_workers=2, **SMALL).fit(frame)  # no label column: pretraining
    assert not hasattr(model, "classes_") and model.n_iter_ == 0
    out = model.transform(frame.limit(5)).toPandas()
    np.testing.assert_allclose(np.array(out["dbn_features"].tolist()),
                               model.transform(X_train[:5]), rtol=1e-10)


def test_average_mode_is_deterministic_on_spark(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    params = dict(SMALL, max_iter=2, n_workers=2, sync="average")
    first = DistributedDBN(**params).fit(X_train, y_train)
    second = DistributedDBN(**params).fit(X_train, y_train)
    for a, b in zip(first.coefs_, second.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_clear_errors(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    with pytest.raises(RuntimeError, match=r"needs 3 free task slots.*has 2"):
        DistributedDBN(n_workers=3, **SMALL).fit(X_train, y_train)
    frame = _frame(spark, X_train[:50], y_train[:50])
    with pytest.raises(ValueError, match="no column 'pixels'"):
        DistributedDBN(features_col="pixels", **SMALL).fit(frame)
    with pytest.raises(ValueError, match="do not pass y"):
        DistributedDBN(**SMALL).fit(frame, y_train[:50])
    with pytest.raises(TypeError, match="partial_fit takes arrays"):
        DistributedDBN(**SMALL).partial_fit(frame)
    fitted = DistributedDBN(**SMALL).fit(X_train, y_train)
    with pytest.raises(ValueError, match="expecting 64 features"):
        fitted.predict(_frame(spark, X_train[:5, :10], y_train[:5]))


def _run_python(code, env_changes, timeout=180):
    env = {**os.environ, **env_changes}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dynamic_allocation_is_refused_with_advice():
    result = _run_python("""
        from pyspark.sql import SparkSession
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN, loopback_session
        spark = (SparkSession.builder.master("local[2]")
                 .config("spark.driver.bindAddress", "127.0.0.1")
                 .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
                 .config("spark.dynamicAllocation.enabled", "true")
                 .config("spark.shuffle.service.enabled", "false")
                 .config("spark.dynamicAllocation.shuffleTracking.enabled", "true")
                 .getOrCreate())
        X, y = load_digits(return_X_y=True)
        try:
            DistributedDBN(n_workers=2, max_iter=1, pretrain_epochs=1).fit(X / 16, y)
        except RuntimeError as exc:
            print("ERROR:", exc)
        finally:
            spark.stop()
    """, {"SPARK_LOCAL_IP": "127.0.0.1"})
    assert "ERROR: skdbn trains in Spark barrier stages" in result.stdout, result.stderr[-2000:]
    assert "spark.dynamicAllocation.enabled=false" in result.stdout


def test_missing_java_is_reported_with_advice():
    result = _run_python("""
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN, loopback_session
        X, y = load_digits(return_X_y=True)
        try:
            DistributedDBN(n_workers=2, max_iter=1, pretrain_epochs=1).fit(X / 16, y)
        except RuntimeError as exc:
            print("ERROR:", exc)
    """, {"JAVA_HOME": "/nonexistent-java", "SPARK_LOCAL_IP": "127.0.0.1"}, timeout=120)
    assert "ERROR: could not start a local Spark session" in result.stdout, result.stderr[-2000:]
    assert "Java runtime" in result.stdout
