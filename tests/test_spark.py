"""Training and inference on a real SparkSession (local[2], bound to 127.0.0.1).

Every test that takes the ``spark`` fixture runs on a classic session, and again on a Spark
Connect session with ``pytest --spark-session=connect`` (see conftest.py).
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN

pyspark = pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")

SMALL = dict(hidden_layer_sizes=(64,), pretrain_epochs=5, max_iter=10, random_state=0)
QUICK = dict(hidden_layer_sizes=(16,), pretrain_epochs=1, max_iter=1, random_state=0)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)


def _frame(spark, X, y=None, kind="vector", partitions=None):
    """A DataFrame of ``X`` (and labels ``y``) with features as ``kind``: "vector",
    "sparse" (sparse vectors), "array" (array<double>), "float" (array<float>) or "columns"
    (one column per feature, named f0, f1, ...)."""
    import pandas as pd
    from pyspark.ml.linalg import Vectors

    if kind in ("vector", "sparse"):  # Python rows: pandas cannot hold vectors for Arrow
        vectors = [Vectors.dense(x) if kind == "vector" else
                   Vectors.sparse(len(x), {j: v for j, v in enumerate(x) if v}) for x in X]
        rows = [(v,) if y is None else (v, y[i].item()) for i, v in enumerate(vectors)]
        frame = spark.createDataFrame(rows, ["features"] + ([] if y is None else ["label"]))
        return frame if partitions is None else frame.repartition(partitions)
    if kind == "columns":
        data = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    else:
        dtype = np.float32 if kind == "float" else np.float64
        data = pd.DataFrame({"features": list(X.astype(dtype))})
    if y is not None:
        data["label"] = y
    frame = spark.createDataFrame(data)
    if kind == "float":
        frame = frame.withColumn("features", frame["features"].cast("array<float>"))
    return frame if partitions is None else frame.repartition(partitions)



def test_numpy_input_trains_on_two_barrier_tasks_with_gossip(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    model = DistributedDBN(n_workers=2, sync="gossip", **SMALL).fit(X_train, y_train)
    assert model.n_workers_ == 2
    assert model.score(X_test, y_test) > 0.85  # gossip is not deterministic: some margin
    for name, value in vars(model).items():  # nothing of Spark is kept on the model
        assert "pyspark" not in type(value).__module__, name


def test_a_fit_started_from_another_thread_uses_the_session(spark, digits_split,
                                                            monkeypatch):
    # A Connect client's active session belongs to the thread that made it; a fit from a
    # thread pool must still train on that session's cluster, not on local processes.
    import threading

    from skdbn.spark import placement

    X_train, _, y_train, _ = digits_split
    sessions = []
    place_workers = placement.place_workers

    def spied(dataframe, *args):
        placed = place_workers(dataframe, *args)
        sessions.append(placed.spark)
        return placed

    monkeypatch.setattr(placement, "place_workers", spied)
    fitted = []
    thread = threading.Thread(target=lambda: fitted.append(DistributedDBN(
        hidden_layer_sizes=(16,), pretrain_epochs=1, max_iter=2, n_workers=2,
        random_state=0).fit(X_train, y_train)))
    thread.start()
    thread.join(timeout=300)
    assert fitted and fitted[0].n_workers_ == 2
    assert len(sessions) == 1 and sessions[0] is spark


def test_the_phases_of_a_fit_share_one_spark_job_that_ends_after_the_fit(spark, digits_split,
                                                                        monkeypatch):
    # Where the tasks reach this process (both sessions here), one barrier job carries every
    # phase of a fit; it ends on its own once the fit has returned, without an error.
    from skdbn.spark import standing

    X_train, X_test, y_train, y_test = digits_split
    jobs = []
    original = standing.StandingJob.start

    def start(job):
        jobs.append(job)
        return original(job)

    monkeypatch.setattr(standing.StandingJob, "start", start)
    # n_iter_no_change above max_iter: gossip's noisy loss must not stop it before 3 rounds.
    model = DistributedDBN(hidden_layer_sizes=(32, 16), pretrain_epochs=2, max_iter=30,
                           n_iter_no_change=31, n_workers=2,
                           random_state=0).fit(X_train, y_train)
    assert len({stats["phase"] for stats in model.worker_stats_}) == 5  # 2 layers + 3 rounds
    assert len(jobs) == 1
    jobs[0]._thread.join(30)
    assert not jobs[0]._thread.is_alive() and jobs[0]._error is None
    assert model.score(X_test, y_test) > 0.85


def test_numpy_scalars_in_the_settings_reach_the_spark_tasks(spark, digits_split):
    # A grid from np.arange gives np.int64 and np.float32 settings, which scikit-learn's
    # checks accept; the phases that carry them to the tasks must too.
    X_train, _, y_train, _ = digits_split
    model = DistributedDBN(hidden_layer_sizes=(np.int64(16),), pretrain_epochs=np.int64(1),
                           max_iter=np.int64(2), momentum=np.float32(0.9),
                           sync_every=np.int64(4), n_workers=2, random_state=0)
    assert model.fit(X_train, y_train).n_iter_ == 2


def test_an_interrupted_spark_fit_cancels_its_job(spark, digits_split, monkeypatch):
    # Ctrl-C in a notebook while the tasks train: the phase's job is cancelled, not waited
    # for, and the next fit gets the task slots.
    import signal
    import threading

    from skdbn.spark import standing

    X_train, _, y_train, _ = digits_split
    jobs = []
    original = standing.StandingJob.start
    # Two seconds into the fit's job (its tasks training their first phase by then).
    interrupt = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))

    def start(job):
        jobs.append(job)
        if len(jobs) == 1:
            interrupt.start()
        return original(job)

    monkeypatch.setattr(standing.StandingJob, "start", start)
    try:
        with pytest.raises(KeyboardInterrupt):
            DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=500, n_workers=2,
                           random_state=0).fit(np.tile(X_train, (4, 1)), np.tile(y_train, 4))
    finally:
        interrupt.cancel()
    assert jobs
    jobs[-1]._thread.join(30)
    assert not jobs[-1]._thread.is_alive()
    assert DistributedDBN(n_workers=2, **QUICK).fit(X_train, y_train).n_workers_ == 2


def test_spark_gives_the_same_model_as_local_processes(spark, digits_split):
    # Synchronous averaging is deterministic, and the numpy data reaches the Spark tasks as
    # the very shards the local processes get: so classic Spark, Spark Connect and the local
    # backend all give one model, bit for bit (with one fine-tuning epoch: Spark groups up to
    # ten epochs in a phase where the local backend runs one per phase).
    X_train, _, y_train, _ = digits_split
    params = dict(QUICK, hidden_layer_sizes=(16, 8), n_workers=2, sync="average")
    on_spark = DistributedDBN(**params).fit(X_train, y_train)
    local = DistributedDBN(backend="local", **params).fit(X_train, y_train)
    for a, b in zip(on_spark.coefs_ + on_spark.intercepts_, local.coefs_ + local.intercepts_,
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_rendezvous_modes(spark, digits_split):
    from skdbn.spark.placement import rendezvous_mode

    X_train, X_test, y_train, y_test = digits_split
    params = dict(SMALL, n_workers=2, sync="gossip")
    # Classic sessions, and this Connect server with its local master, whose task reaches
    # this process: the driver's (or client's) own rendezvous. A Connect session of a cluster
    # uses Spark's: test_cluster.
    assert rendezvous_mode(spark) == "driver"
    try:
        spark.conf.set("spark.skdbn.rendezvous", "barrier")  # Spark's allGather
        assert rendezvous_mode(spark) == "barrier"
        model = DistributedDBN(**params).fit(X_train, y_train)
        assert model.score(X_test, y_test) > 0.85
        spark.conf.set("spark.skdbn.rendezvous", "driver")
        assert DistributedDBN(**params).fit(X_train, y_train).score(X_test, y_test) > 0.85
        spark.conf.set("spark.skdbn.rendezvous", "carrier-pigeon")
        with pytest.raises(ValueError, match="must be 'auto', 'driver' or 'barrier'"):
            DistributedDBN(**params).fit(X_train, y_train)
    finally:
        spark.conf.unset("spark.skdbn.rendezvous")


def test_a_probe_task_that_cannot_reach_the_client_or_its_files_says_so(tmp_path):
    # What a task of a Connect server in a container would see of this process's 127.0.0.1:
    # nothing listening there, or something that is not our rendezvous; and of its files:
    # none at the paths, or others that hold something else.
    import socket

    from skdbn._gossip import AllGatherClient
    from skdbn.spark.placement import _probe_task

    token = "a1b2c3"
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.write_text(token)
    other.write_text("d4e5f6")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        for address in (f"127.0.0.1:{port}", f"127.0.0.1:{stranger.getsockname()[1]}"):
            client = AllGatherClient(address, b"s" * 32, 1.0, 1)
            for paths, shares in (([ours], True), ([ours, other], False),
                                  ([tmp_path / "missing"], False)):
                (batch,) = _probe_task(client, [str(p) for p in paths], token, iter([]))
                assert batch.to_pydict() == {"reached": [False], "shares_files": [shares]}


def test_dataframe_fit_and_inference_stay_on_the_executors(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    train = _frame(spark, X_train, y_train, partitions=3)
    model = DistributedDBN(n_workers=2, sync="average", **SMALL).fit(train)
    assert model.n_workers_ == 2 and model.n_features_in_ == 64
    assert model.dtype_ == np.float32  # vectors of doubles train in float32 by default
    np.testing.assert_array_equal(model.classes_, np.arange(10))

    test = _frame(spark, X_test, y_test)
    X_test = X_test.astype(np.float32)  # what the executors compute in, for this model
    predicted = model.predict(test)
    assert predicted.columns == ["features", "label", "prediction"]
    rows = predicted.toPandas()
    expected = model.predict(np.stack([v.toArray() for v in rows["features"]]).astype(np.float32))
    np.testing.assert_array_equal(rows["prediction"].to_numpy(), expected)
    assert model.score(test) == pytest.approx(model.score(X_test, y_test))
    assert model.score(test) > 0.9

    proba = np.stack(model.predict_proba(test).toPandas()["probability"])
    np.testing.assert_allclose(proba, model.predict_proba(X_test), rtol=1e-5)
    features = np.stack(model.transform(test).toPandas()["dbn_features"])
    np.testing.assert_allclose(features, model.transform(X_test), rtol=1e-5)


@pytest.mark.parametrize("n_workers", [None, 2])  # read into this process, or on the cluster
def test_the_dtype_setting_decides_what_a_dataframe_trains_in(spark, digits_split, n_workers):
    X_train, X_test, y_train, _ = digits_split
    frame = _frame(spark, X_train, y_train, partitions=2)
    params = dict(QUICK, n_workers=n_workers, sync="average")
    doubles = DistributedDBN(dtype="float64", **params).fit(frame)
    assert doubles.dtype_ == np.float64
    assert all(c.dtype == np.float64 for c in doubles.coefs_ + doubles.intercepts_)
    proba = np.stack(doubles.predict_proba(_frame(spark, X_test[:9])).toPandas()["probability"])
    np.testing.assert_allclose(proba, doubles.predict_proba(X_test[:9]), rtol=1e-10)
    singles = DistributedDBN(**params).fit(frame)
    assert singles.dtype_ == np.float32
    # The same model as from the same rows stored as float32.
    from pyspark.ml.functions import vector_to_array

    stored = frame.withColumn("features", vector_to_array("features", "float32"))
    assert stored.schema["features"].dataType.simpleString() == "array<float>"
    reference = DistributedDBN(**params).fit(stored)
    for a, b in zip(singles.coefs_, reference.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["sparse", "array", "columns"])
def test_every_feature_format_gives_the_same_model(spark, digits_split, kind):
    X_train, X_test, y_train, _ = digits_split
    params = dict(QUICK, n_workers=2, sync="average")
    reference = DistributedDBN(**params).fit(_frame(spark, X_train, y_train, "vector"))
    features_col = [f"f{j}" for j in range(64)] if kind == "columns" else "features"
    model = DistributedDBN(features_col=features_col, **params).fit(
        _frame(spark, X_train, y_train, kind))
    for a, b in zip(model.coefs_, reference.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)
    out = model.predict_proba(_frame(spark, X_test[:7], kind=kind)).toPandas()
    np.testing.assert_allclose(np.stack(out["probability"]),
                               model.predict_proba(X_test[:7].astype(np.float32)), rtol=1e-5)


def test_float_arrays_train_in_float32(spark, digits_split):
    X_train, X_test, y_train, _ = digits_split
    model = DistributedDBN(n_workers=2, **QUICK).fit(_frame(spark, X_train, y_train, "float"))
    assert all(c.dtype == np.float32 for c in model.coefs_)
    out = model.transform(_frame(spark, X_test[:5], kind="float")).toPandas()
    np.testing.assert_allclose(np.stack(out["dbn_features"]),
                               model.transform(X_test[:5].astype(np.float32)), rtol=1e-5)


def test_unlabelled_frames_pretrain_and_gaussian_statistics_match_numpy(spark, digits_split):
    X_train, _, _, _ = digits_split
    X = X_train * 16.0 - 3.0  # outside [0, 1]: Gaussian visible units, standardized
    model = DistributedDBN(n_workers=2, label_col=None, dtype="float64", **QUICK).fit(
        _frame(spark, X, partitions=4))
    assert not hasattr(model, "classes_") and model.n_iter_ == 0
    assert model.visible_units_ == "gaussian"
    reference = DistributedDBN(backend="local", **QUICK).fit(X)
    np.testing.assert_allclose(model.mean_, reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(model.scale_, reference.scale_, rtol=1e-10)


def test_string_labels(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    model = DistributedDBN(n_workers=2, sync="average", **SMALL).fit(
        _frame(spark, X_train, names[y_train]))
    np.testing.assert_array_equal(model.classes_, np.sort(names))
    test = _frame(spark, X_test, names[y_test])
    predicted = model.predict(test).toPandas()["prediction"].to_numpy()
    np.testing.assert_array_equal(predicted, model.predict(X_test))
    assert model.score(test) > 0.9


def test_small_dataframes_train_in_this_process_as_one_task_would(spark, digits_split):
    # Too few rows for a second worker: the DataFrame is read here in one pass and trained
    # in-process, as a numpy array of its size is, into the model one Spark task gives.
    X_train, X_test, y_train, y_test = digits_split
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    frame = _frame(spark, X_train, names[y_train], "array", partitions=1)
    params = dict(SMALL, max_iter=1)  # one fine-tuning phase on both (see above)
    here = DistributedDBN(**params).fit(frame)
    one_task = DistributedDBN(n_workers=1, **params).fit(frame)
    assert here.n_workers_ == one_task.n_workers_ == 1
    np.testing.assert_array_equal(here.classes_, one_task.classes_)
    for a, b in zip(here.coefs_ + here.intercepts_, one_task.coefs_ + one_task.intercepts_,
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert here.score(X_test, names[y_test]) > 0.8
    # The local backend reads any DataFrame into this process, for its worker processes.
    params.update(backend="local", n_workers=2, sync="average")
    local = DistributedDBN(**params).fit(frame)
    from_arrays = DistributedDBN(dtype="float32", **params).fit(X_train, names[y_train])
    assert local.n_workers_ == 2
    for a, b in zip(local.coefs_, from_arrays.coefs_, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_dataframe_that_changes_between_reads_is_refused(spark, digits_split):
    # Training reads the DataFrame more than once (counts, then statistics and shards): rows
    # that change between reads must not give shards that silently differ from the summary.
    import random

    from pyspark.sql import functions

    X_train, _, y_train, _ = digits_split
    keep = functions.udf(lambda: random.random() < 0.7, "boolean").asNondeterministic()
    frame = _frame(spark, X_train, y_train, "array").where(keep())
    with pytest.raises(RuntimeError, match="nondeterministic plan"):
        DistributedDBN(n_workers=2, **QUICK).fit(frame)


def test_average_mode_is_deterministic_for_dataframes(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    params = dict(QUICK, max_iter=2, n_workers=2, sync="average")
    frame = _frame(spark, X_train, y_train, partitions=3)
    first = DistributedDBN(**params).fit(frame)
    second = DistributedDBN(**params).fit(frame)
    for a, b in zip(first.coefs_, second.coefs_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_number_of_workers_follows_the_data_and_the_slots(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    frame = _frame(spark, X_train, y_train)
    assert DistributedDBN(**QUICK).fit(frame).n_workers_ == 1  # 1,347 rows: one worker
    X_big = np.tile(X_train, (12, 1))  # 16,164 rows: 3 wanted, 2 task slots
    y_big = np.tile(y_train, 12)
    model = DistributedDBN(**dict(QUICK, hidden_layer_sizes=(4,))).fit(X_big, y_big)
    assert model.n_workers_ == 2


def test_bad_dataframes_get_clear_errors(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    frame = _frame(spark, X_train[:50], y_train[:50], "array")
    with pytest.raises(RuntimeError, match=r"needs 3 free task slots.*has 2"):
        DistributedDBN(n_workers=3, **QUICK).fit(X_train, y_train)
    with pytest.raises(ValueError, match="no column 'pixels'"):
        DistributedDBN(features_col="pixels", **QUICK).fit(frame)
    with pytest.raises(TypeError, match=r"'label' .*is bigint; it must be a pyspark\.ml vector"):
        DistributedDBN(features_col="label", **QUICK).fit(frame)
    with pytest.raises(ValueError, match="do not pass y"):
        DistributedDBN(**QUICK).fit(frame, y_train[:50])
    with pytest.raises(TypeError, match="partial_fit takes arrays"):
        DistributedDBN(**QUICK).partial_fit(frame)
    rows = [([0.1, 0.2], 0), ([0.3, 0.4], 1)]
    cases = {
        "null rows": [*rows, (None, 1)],
        "different lengths": [*rows, ([0.5], 1)],
        "null values": [*rows, ([0.5, None], 1)],
        "NaN or infinity": [*rows, ([0.5, float("nan")], 1)],
        "null labels": [*rows, ([0.5, 0.6], None)],
    }
    for message, data in cases.items():
        bad = spark.createDataFrame(data, "features array<double>, label int")
        for n_workers in (2, None):  # read on the executors, and into this process
            with pytest.raises(ValueError, match=message):
                DistributedDBN(n_workers=n_workers, **QUICK).fit(bad)
    empty = spark.createDataFrame([], "features array<double>, label int")
    with pytest.raises(ValueError, match="0 sample"):
        DistributedDBN(**QUICK).fit(empty)
    fitted = DistributedDBN(**QUICK).fit(X_train, y_train)
    with pytest.raises(ValueError, match="expecting 64 features"):
        fitted.predict(_frame(spark, X_train[:5, :10], y_train[:5]))


def test_no_rdd_or_spark_context_in_the_package():
    # Spark Connect has neither; the Connect run of this suite would fail on them, and this
    # keeps them out of code paths the suite does not reach.
    # skdbn/spark/classic.py alone reads the scheduler, on classic sessions only.
    source = pathlib.Path(__file__).parents[1] / "skdbn"
    pattern = re.compile(r"sparkContext|\.rdd\b|parallelize\(|treeReduce|\.barrier\(\)")
    offenders = [f"{path.name}:{number}" for path in source.rglob("*.py")
                 if path.name != "classic.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders


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
            DistributedDBN(backend="spark", n_workers=2, max_iter=1,
                           pretrain_epochs=1).fit(X / 16, y)
        except RuntimeError as exc:
            print("ERROR:", exc)
    """, {"JAVA_HOME": "/nonexistent-java", "SPARK_LOCAL_IP": "127.0.0.1"}, timeout=120)
    assert "ERROR: could not start a local Spark session" in result.stdout, result.stderr[-2000:]
    assert "Java runtime" in result.stdout


def test_stopping_the_session_right_after_a_fit_logs_no_errors(spark_mode):
    # A script often ends with a fit, then spark.stop(): the fit's job must be over by then,
    # or the JVM logs the scheduler's errors about a job still ending.
    connect = spark_mode == "connect"
    result = _run_python(f"""
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN, loopback_session
        spark = loopback_session("local[2]", connect={connect})
        X, y = load_digits(return_X_y=True)
        DistributedDBN(hidden_layer_sizes=(16,), pretrain_epochs=1, max_iter=2,
                       n_workers=2).fit(X / 16, y)
        spark.stop()
        print("STOPPED")
    """, {"SPARK_LOCAL_IP": "127.0.0.1"}, timeout=240)
    assert "STOPPED" in result.stdout, result.stderr[-2000:]
    assert "ERROR" not in result.stderr, result.stderr[-3000:]


def _shard_dirs_made_in(folder, monkeypatch):
    """The shard directories fits make from now on, made in ``folder`` (a list that grows)."""
    import tempfile

    made, original = [], tempfile.mkdtemp

    def mkdtemp(*args, **options):
        if options.get("prefix") != "skdbn-shards-":
            return original(*args, **options)
        made.append(original(dir=folder, prefix="skdbn-shards-"))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


def test_shard_files_and_cached_partitions_give_the_same_model(spark, digits_split,
                                                               monkeypatch, tmp_path):
    # A session whose tasks all run on this machine and share its files (a classic session
    # with a local master; a local Connect server, after its probe task read a file we
    # wrote) keeps each worker's shard in a file; any other session reads cached DataFrame
    # partitions. Both must hand the workers the same shards.
    from skdbn.spark import placement

    made = _shard_dirs_made_in(tmp_path, monkeypatch)
    X_train, _, y_train, _ = digits_split
    params = dict(QUICK, n_workers=2, sync="average")
    frame = _frame(spark, X_train, y_train, "array", partitions=3)
    from_files = [DistributedDBN(**params).fit(X_train, y_train),
                  DistributedDBN(**params).fit(frame)]
    assert made and not list(tmp_path.iterdir())  # each fit removes its files
    monkeypatch.setattr(placement, "tasks_share_files", lambda spark: False)
    from_cache = [DistributedDBN(**params).fit(X_train, y_train),
                  DistributedDBN(**params).fit(frame)]
    for a, b in zip(from_files, from_cache, strict=True):
        for x, z in zip(a.coefs_, b.coefs_, strict=True):
            np.testing.assert_array_equal(x, z)


def test_a_dataframe_fit_that_fails_after_its_statistics_pass_leaves_no_files(
        spark, digits_split, monkeypatch, tmp_path):
    # The statistics pass writes the shard files; an error found in its figures (here a warm
    # start on another number of features) must not leave them behind, nor change the model.
    X_train, _, y_train, _ = digits_split
    model = DistributedDBN(n_workers=2, warm_start=True, **QUICK).fit(X_train, y_train)
    before = [c.copy() for c in model.coefs_]
    made = _shard_dirs_made_in(tmp_path, monkeypatch)
    narrow = _frame(spark, X_train[:, :10], y_train, "array", partitions=3)
    with pytest.raises(ValueError, match="X has 10 features, but DistributedDBN is expecting 64"):
        model.fit(narrow)
    assert made and not list(tmp_path.iterdir())
    for a, b in zip(model.coefs_, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_numpy_fit_whose_shard_files_cannot_be_written_ends_its_job(
        spark, digits_split, monkeypatch, tmp_path):
    # The fit's job is submitted before its shard files are written, so that its tasks start
    # meanwhile: a write that fails (a full disk) must end that job, leave no files, and
    # leave the task slots free for the next fit.
    from skdbn.spark import stages

    X_train, _, y_train, _ = digits_split
    made = _shard_dirs_made_in(tmp_path, monkeypatch)
    write = stages.write_array_shard

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stages, "write_array_shard", full_disk)
    with pytest.raises(OSError, match="No space left"):
        DistributedDBN(n_workers=2, **QUICK).fit(X_train, y_train)
    assert made and not list(tmp_path.iterdir())
    monkeypatch.setattr(stages, "write_array_shard", write)
    model = DistributedDBN(n_workers=2, **QUICK).fit(X_train, y_train)
    assert model.n_workers_ == 2


def test_small_integer_labels(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    frame = _frame(spark, X_train, y_train, "array")
    frame = frame.withColumn("label", frame["label"].cast("tinyint"))
    model = DistributedDBN(n_workers=2, **QUICK).fit(frame)
    np.testing.assert_array_equal(model.classes_, np.arange(10))


@pytest.mark.slow
def test_a_dataframe_fit_whose_driver_is_killed_resumes(spark, digits_split, tmp_path, capsys):
    # The same parquet file read by a driver that is killed (with its JVM and Python
    # workers: the whole process group) after its first saved phase, then fitted again here.
    import signal

    import pyarrow as pa
    import pyarrow.parquet as pq

    X_train, _, y_train, _ = digits_split
    path = str(tmp_path / "digits.parquet")
    offsets = pa.array(np.arange(len(X_train) + 1, dtype=np.int32) * X_train.shape[1])
    pq.write_table(pa.table({"features": pa.ListArray.from_arrays(offsets, pa.array(
        X_train.ravel())), "label": pa.array(y_train)}), path)
    checkpoints = tmp_path / "checkpoints"
    params = dict(hidden_layer_sizes=(32, 16), pretrain_epochs=3, max_iter=3, n_workers=2,
                  sync="average", random_state=0)
    script = textwrap.dedent(f"""
        from skdbn import DistributedDBN, loopback_session
        spark = loopback_session("local[2]")
        DistributedDBN(checkpoint_dir={str(checkpoints)!r}, verbose=1,
                       **{params!r}).fit(spark.read.parquet({path!r}))
        print("FINISHED", flush=True)
    """)
    # A classic driver of its own, whatever this process runs (pyspark marks a Connect
    # session in the environment, which a child would inherit).
    connect_marks = {"SPARK_REMOTE", "SPARK_LOCAL_REMOTE", "SPARK_CONNECT_MODE_ENABLED"}
    env = {k: v for k, v in os.environ.items() if k not in connect_marks}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                               env={**env, "SPARK_LOCAL_IP": "127.0.0.1"})
    try:
        for line in process.stdout:
            if "pretrained layer 0" in line:
                break
        deadline = time.monotonic() + 30
        while not (checkpoints / "skdbn-checkpoint.npz").exists() and \
                time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        # The killed driver's shard directories (a Connect fit here would not sweep them).
        from skdbn import _scratch

        for root in (tempfile.gettempdir(), "/dev/shm"):
            if os.path.isdir(root):
                _scratch._remove_orphans(root)
    assert (checkpoints / "skdbn-checkpoint.npz").exists()
    reference = DistributedDBN(**params).fit(spark.read.parquet(path))
    capsys.readouterr()
    resumed = DistributedDBN(checkpoint_dir=str(checkpoints), verbose=1,
                             **params).fit(spark.read.parquet(path))
    assert "resumed from" in capsys.readouterr().out
    for a, b in zip(resumed.coefs_ + resumed.intercepts_,
                    reference.coefs_ + reference.intercepts_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_invalid_rows_follow_handle_invalid(spark, digits_split):
    X_train, X_test, y_train, y_test = digits_split
    model = DistributedDBN(**QUICK).fit(X_train, y_train)
    rows = [(x.tolist(), int(c)) for x, c in zip(X_test[:6], y_test[:6], strict=True)]
    rows[1], rows[3], rows[4] = (None, 1), ([float("nan")] * 64, 2), ([0.5], 3)
    frame = spark.createDataFrame(rows, "features array<double>, label bigint")
    valid = [0, 2, 5]

    keep = model.set_params(handle_invalid="keep").predict(frame).toPandas()
    assert keep["prediction"].isna().tolist() == [False, True, False, True, True, False]
    np.testing.assert_array_equal(keep["prediction"][valid].astype(int),
                                  model.predict(X_test[valid]))
    proba = model.predict_proba(frame).toPandas()["probability"]
    assert proba.isna().tolist() == [False, True, False, True, True, False]
    np.testing.assert_allclose(np.stack(proba[valid]), model.predict_proba(X_test[valid]),
                               rtol=1e-10)
    assert model.score(frame) == pytest.approx(model.score(X_test[valid], y_test[valid]))

    skip = model.set_params(handle_invalid="skip").predict(frame).toPandas()
    assert skip["label"].tolist() == [int(c) for c in y_test[valid]]

    # At fit, "skip" leaves invalid rows (and null labels) out: the model of the clean rows.
    clean = _frame(spark, X_train[:300], y_train[:300], "array")
    dirty = clean.unionByName(spark.createDataFrame(
        [(None, 1), ([float("inf")] * 64, 2), (X_train[0].tolist(), None)],
        "features array<double>, label bigint"))
    with pytest.raises(ValueError, match="null rows"):
        DistributedDBN(**QUICK).fit(dirty)
    skipped = DistributedDBN(handle_invalid="skip", **QUICK).fit(dirty)
    reference = DistributedDBN(**QUICK).fit(clean)
    for a, b in zip(skipped.coefs_, reference.coefs_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_doubles_beyond_float32_are_invalid_rows_of_a_float32_fit(spark, digits_split):
    X_train, _, y_train, _ = digits_split
    X = X_train * 2 - 1  # Gaussian units
    X[:5, 0] = 1e39  # a double, infinity in float32
    frame = _frame(spark, X, y_train, "array")
    with pytest.raises(Exception, match="beyond float32's range"):
        DistributedDBN(n_workers=2, **QUICK).fit(frame)
    # Synchronous averaging: each worker makes exactly one pass over its shard per epoch.
    model = DistributedDBN(n_workers=2, sync="average", handle_invalid="skip",
                           **QUICK).fit(frame)
    assert model.dtype_ == np.float32 and np.isfinite(model.scale_).all()
    first_layer = [row for row in model.worker_stats_ if row["stage"] == "layer 0"]
    assert sum(row["samples"] for row in first_layer) == len(X) - 5  # one epoch, rows left
