"""Everything that touches Spark: the session, the barrier engine and DataFrame I/O.

pyspark is imported lazily, so the rest of the package (and a fitted model) works without it.
No SparkSession, SparkContext, RDD or broadcast is ever stored on an estimator: the engine
lives for one fit, and DataFrame inference ships the numpy model inside its task closure.
"""

import dataclasses
import os
import secrets
import sys
from functools import partial

import numpy as np

from ._gossip import AllGatherClient, AllGatherServer
from ._task import SyncPlan, run_worker
from ._worker import Shard, consensus

_EMBEDDED_SESSION = None

# Spark configuration key choosing how a phase's tasks swap addresses: "driver" (a small
# authenticated rendezvous served by the driver, the default) or "barrier" (Spark's
# BarrierTaskContext.allGather, which polls once a second and so adds about a second to
# every phase, but needs no connection from the executors to the driver beyond Spark's own).
RENDEZVOUS_CONF = "spark.skdbn.rendezvous"


def is_spark_dataframe(X):
    """Whether ``X`` is a pyspark (classic or Connect) DataFrame, without importing pyspark."""
    return type(X).__module__.startswith("pyspark.sql") and hasattr(X, "sparkSession")


def _import_pyspark():
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "backend='spark' needs pyspark (pip install pyspark) and a Java runtime; "
            "use backend='local' to train without Spark"
        ) from exc


def loopback_session(master="local[*]", app_name="skdbn", config=None):
    """A SparkSession whose driver and services stay on 127.0.0.1 (created or reused).

    The session skdbn embeds when there is none, for notebooks, examples and tests that want
    the same: driver bound to 127.0.0.1 (``spark.driver.bindAddress`` and ``spark.driver.host``,
    ``SPARK_LOCAL_IP``), UI and console progress off, log level ERROR, and Python workers
    running this interpreter unless ``PYSPARK_PYTHON`` is already set. Like any
    ``SparkSession.builder.getOrCreate()``, it returns the active session if there is one.

    Parameters
    ----------
    master : str, default="local[*]"
        Spark master URL, e.g. ``"local[2]"`` or ``"spark://127.0.0.1:7077"``.
    app_name : str, default="skdbn"
        Application name.
    config : dict or None, default=None
        Further Spark configuration, e.g. ``{"spark.executor.memory": "512m"}``.

    Returns
    -------
    spark : pyspark.sql.SparkSession
    """
    _import_pyspark()
    from pyspark.sql import SparkSession

    # Spark otherwise binds its services to the first non-loopback interface it finds.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers otherwise run the first "python3" on PATH, which outside an activated
    # virtual environment (a notebook kernel, a venv's python called by path) is another
    # interpreter without skdbn.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    for key, value in (config or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def get_session(df=None):
    """The DataFrame's session, else the active one, else an embedded ``local[*]`` session.

    The embedded session (``loopback_session()``) is created once per process and reused.
    """
    global _EMBEDDED_SESSION
    if df is not None:
        return df.sparkSession
    _import_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if _EMBEDDED_SESSION is None:
        try:
            _EMBEDDED_SESSION = loopback_session()
        except Exception as exc:  # pyspark raises several types when the JVM cannot start
            raise RuntimeError(
                "could not start a local Spark session; Spark needs a Java runtime (17 or 21) "
                "on PATH or in JAVA_HOME. Install one, pass a DataFrame of an existing session, "
                "or use backend='local'"
            ) from exc
    return _EMBEDDED_SESSION


def free_task_slots(spark):
    """Tasks that can run at once: the session's default parallelism over ``task.cpus``."""
    sc = spark.sparkContext
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    return max(1, sc.defaultParallelism // task_cpus)


def check_barrier_possible(spark, n_workers):
    """Raise a clear error if a barrier stage of ``n_workers`` tasks cannot start."""
    conf = spark.sparkContext.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        raise RuntimeError(
            "skdbn trains in Spark barrier stages, which do not run with dynamic allocation; "
            "set spark.dynamicAllocation.enabled=false for this session (or use "
            "backend='local')"
        )
    slots = free_task_slots(spark)
    if n_workers > slots:
        raise RuntimeError(
            f"n_workers={n_workers} needs {n_workers} free task slots at once (a barrier "
            f"stage), but this Spark session has {slots}. Use n_workers <= {slots}, or give "
            "the session more executors or cores"
        )


def _barrier_task(phase, state, below, plan, rendezvous, partition):
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    shards = list(partition)
    if len(shards) != 1:
        raise RuntimeError(f"worker {rank} got {len(shards)} shards, expected one")
    host = context.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    cpus = int(context.cpus()) if hasattr(context, "cpus") else 1
    plan = dataclasses.replace(plan, blas_threads=max(1, cpus))
    if rendezvous is None:
        def rendezvous(_rank, address):
            return context.allGather(address)
    yield run_worker(rank, phase, shards[0], state, below, plan, rendezvous, host=host)


class _DriverRendezvous(AllGatherClient):
    """``AllGatherClient`` whose connection failure says what to do on a cluster."""

    def __call__(self, rank, address):
        try:
            return super().__call__(rank, address)
        except OSError as exc:
            raise ConnectionError(
                f"worker {rank} could not reach the driver's rendezvous at "
                f"{self.server_address} ({exc}); if executors cannot open connections to the "
                f"driver, set the Spark configuration {RENDEZVOUS_CONF}=barrier"
            ) from exc


class SparkEngine:
    """Runs every phase as one Spark barrier stage with one task per worker.

    Parameters
    ----------
    spark : SparkSession
        Session to run on (found at fit time; never stored on the estimator).
    n_workers : int
        Number of barrier tasks.
    sync, sync_every
        Synchronisation within a phase, as for ``ProcessEngine``.
    """

    epochs_per_phase = 10  # each barrier stage has a fixed cost; group fine-tuning epochs

    def __init__(self, spark, n_workers, sync, sync_every, timeout=60.0):
        check_barrier_possible(spark, n_workers)
        self.spark = spark
        self.n_workers = n_workers
        self.sync = sync
        self.sync_every = sync_every
        self.timeout = timeout
        self._secret = secrets.token_bytes(32)
        self._rdd = None
        self._total_samples = None

    def __repr__(self):  # never print the secret
        return f"SparkEngine(n_workers={self.n_workers}, sync={self.sync!r})"

    def start(self, shards):
        """Distribute numpy shards (one per task) and keep them cached on the executors."""
        self._total_samples = sum(s.n_samples for s in shards)
        self._rdd = self.spark.sparkContext.parallelize(shards, len(shards)).cache()

    def start_from_dataframe(self, df, features_col, label_col, to_shard, total_samples):
        """Repartition ``df`` into one shard per task, converted and cached on the executors."""
        columns = [features_col] + ([label_col] if label_col is not None else [])
        rows = _with_array_features(df.select(*columns), features_col)
        self._total_samples = total_samples
        self._rdd = (rows.repartition(self.n_workers).rdd
                     .mapPartitions(lambda part: [to_shard(list(part))]).cache())

    def run_phase(self, phase, state, below):
        """Run ``phase`` as a barrier stage and return ``(consensus_state, results)``."""
        plan = SyncPlan(
            mode=self.sync, n_workers=self.n_workers, sync_every=self.sync_every,
            secret=self._secret, phase_key=secrets.randbits(63),
            total_samples=self._total_samples, timeout=self.timeout, blas_threads=1,
        )
        server, rendezvous = self._start_rendezvous()
        try:
            task = partial(_barrier_task, phase, state, below, plan, rendezvous)
            results = self._rdd.barrier().mapPartitions(task).collect()
        finally:
            if server is not None:
                server.close()
        return consensus(results), results

    def _start_rendezvous(self):
        """The driver's rendezvous server and the tasks' client, or ``(None, None)`` when the
        tasks use Spark's allGather or need no rendezvous."""
        if self.n_workers == 1 or self.sync == "none" or self._rendezvous_mode() == "barrier":
            return None, None
        conf = self.spark.sparkContext.getConf()
        host = conf.get("spark.driver.host", "127.0.0.1")
        server = AllGatherServer(self._secret, self.n_workers, self.timeout,
                                 host=conf.get("spark.driver.bindAddress", host)).start()
        port = server.address.rsplit(":", 1)[1]
        return server, _DriverRendezvous(f"{host}:{port}", self._secret, self.timeout)

    def _rendezvous_mode(self):
        mode = self.spark.conf.get(RENDEZVOUS_CONF, "driver")
        if mode not in ("driver", "barrier"):
            raise ValueError(f"{RENDEZVOUS_CONF} must be 'driver' or 'barrier', got {mode!r}")
        return mode

    def close(self):
        """Drop the cached shards from the executors."""
        if self._rdd is not None:
            self._rdd.unpersist()
            self._rdd = None


def _feature_array(df, features_col):
    """``features_col`` as an ``array<double>`` column (pyspark.ml vectors are converted)."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql import functions

    if features_col not in df.columns:
        raise ValueError(f"the DataFrame has no column {features_col!r} (features_col); "
                         f"its columns are {df.columns}")
    if isinstance(df.schema[features_col].dataType, VectorUDT):
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(features_col)
    return functions.col(features_col)


def _with_array_features(df, features_col):
    """``df`` with ``features_col`` as ``array<double>``."""
    return df.withColumn(features_col, _feature_array(df, features_col))


def rows_to_shard(rows, features_col, label_col, classes, mean, scale, dtype):
    """One task's rows as a numpy ``Shard`` (runs on the executors)."""
    X = np.asarray([row[features_col] for row in rows], dtype=dtype)
    y = None
    if label_col is not None:
        labels = np.asarray([row[label_col] for row in rows])
        y = np.searchsorted(classes, labels)
    return Shard(X, y, mean, scale)


def dataframe_statistics(df, features_col, label_col):
    """Column statistics computed on the executors: count, sums, extremes, labels.

    Returns
    -------
    stats : dict
        ``n_samples``, ``n_features``, ``sum``, ``sum_squares``, ``min``, ``max``,
        ``finite`` and ``labels`` (sorted distinct labels, or None).
    """
    columns = [features_col] + ([label_col] if label_col is not None else [])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"the DataFrame has no column {missing[0]!r} (features_col / "
                         f"label_col); its columns are {df.columns}")
    rows = _with_array_features(df.select(*columns), features_col)
    stats = rows.rdd.mapPartitions(
        lambda part: [_partition_statistics(list(part), features_col, label_col)]
    ).treeReduce(_merge_statistics)
    if stats is None or stats["n_samples"] == 0:
        raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
    if label_col is not None:
        stats["labels"] = np.array(sorted(stats["labels"]))
    return stats


def _partition_statistics(rows, features_col, label_col):
    if not rows:
        return None
    X = np.asarray([row[features_col] for row in rows], dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"column {features_col!r} must hold vectors of one length")
    labels = {row[label_col] for row in rows} if label_col is not None else set()
    return {"n_samples": X.shape[0], "n_features": X.shape[1], "sum": X.sum(axis=0),
            "sum_squares": (X * X).sum(axis=0), "min": X.min(axis=0), "max": X.max(axis=0),
            "finite": bool(np.all(np.isfinite(X))), "labels": labels}


def _merge_statistics(a, b):
    if a is None or b is None:
        return a if b is None else b
    if a["n_features"] != b["n_features"]:
        raise ValueError("feature vectors of different lengths in one DataFrame")
    return {"n_samples": a["n_samples"] + b["n_samples"], "n_features": a["n_features"],
            "sum": a["sum"] + b["sum"], "sum_squares": a["sum_squares"] + b["sum_squares"],
            "min": np.minimum(a["min"], b["min"]), "max": np.maximum(a["max"], b["max"]),
            "finite": a["finite"] and b["finite"], "labels": a["labels"] | b["labels"]}


def check_dataframe_features(df, features_col, n_features):
    """Raise early (one small job) if ``df``'s feature vectors do not have ``n_features``."""
    first = df.select(_feature_array(df, features_col).alias("f")).first()
    if first is not None and len(first["f"]) != n_features:
        raise ValueError(
            f"X has {len(first['f'])} features, but DistributedDBN is expecting {n_features} "
            "features as input."
        )


def map_dataframe(df, features_col, compute, name, kind):
    """``df`` with a column ``name`` holding ``compute(X)`` per row, computed on the executors.

    ``compute`` maps a float64 array of features (rows) to one value or one array per row; it
    is shipped to the executors inside the UDF's closure (the numpy model, no broadcast kept).
    Only the features go through Python: the DataFrame's other columns stay in the JVM.
    ``kind`` is the new column's type: "double", "long", "string" or "array".
    """
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType

    kinds = {"double": DoubleType(), "long": LongType(), "string": StringType(),
             "array": ArrayType(DoubleType())}

    def apply(features: pd.Series) -> pd.Series:
        X = np.asarray(features.tolist(), dtype=np.float64).reshape(len(features), -1)
        values = compute(X)
        return pd.Series(list(values) if np.ndim(values) > 1 else values)

    return df.withColumn(name, pandas_udf(apply, kinds[kind])(_feature_array(df, features_col)))


def accuracy_of(df, prediction_col, label_col):
    """Share of rows whose prediction equals the label, aggregated on the executors."""
    from pyspark.sql import functions

    hit = (functions.col(prediction_col) == functions.col(label_col)).cast("double")
    return float(df.select(functions.avg(hit)).first()[0])

