"""Finding or embedding a SparkSession, and what a session can run: classic and Connect alike.

Only DataFrame and configuration APIs are used here (no SparkContext, no RDD), so everything
works on a Spark Connect session, where the client may run outside the cluster.
"""

import contextlib
import itertools
import os
import re
import sys
import threading
import warnings
from pathlib import Path

from .._machine import usable_cpus

_EMBEDDED_SESSION = None
_probe_numbers = itertools.count()

# Rows of the probe that counts a session's default parallelism: more than any cluster's cores,
# so that every partition of ``spark.range`` holds at least one row.
_PARALLELISM_PROBE_ROWS = 1 << 16


def import_pyspark():
    """Import pyspark or raise an ImportError that says what to do."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "backend='spark' needs pyspark (pip install pyspark) and a Java runtime; "
            "use backend='local' to train without Spark"
        ) from exc


def is_spark_dataframe(X):
    """Whether ``X`` is a pyspark (classic or Connect) DataFrame, without importing pyspark."""
    return type(X).__module__.startswith("pyspark.sql") and hasattr(X, "sparkSession")


def is_connect_session(spark):
    """Whether ``spark`` is a Spark Connect session (a client of a remote driver)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


QUIET_LOGGING = Path(__file__).with_name("log4j2-quiet.properties")


def local_connect_server(spark):
    """Whether ``spark`` is a Spark Connect client of a server on this machine."""
    return is_connect_session(spark) and spark.client.host in ("localhost", "127.0.0.1", "::1")


def local_connect_cluster(spark):
    """Whether ``spark`` is a Spark Connect client whose server and executors all run on this
    machine: a server on this machine with a local master (``local[...]``,
    ``local-cluster[...]``), so its tasks can reach this process on 127.0.0.1."""
    return (local_connect_server(spark)
            and local_master_cores(conf_value(spark, "spark.master", "")) is not None)


def loopback_session(master="local[*]", app_name="skdbn", config=None, connect=False):
    """A SparkSession whose driver and services stay on 127.0.0.1 (created or reused).

    The session skdbn embeds when there is none, for notebooks, examples and tests that want
    the same: driver bound to 127.0.0.1 (``spark.driver.bindAddress`` and ``spark.driver.host``,
    ``SPARK_LOCAL_IP``), UI and console progress off, the JVM logging errors only (and none of
    Spark's start-up notices: ``spark.driver.extraJavaOptions`` names a log4j2 file of skdbn),
    and Python workers running this interpreter unless ``PYSPARK_PYTHON`` is already set. Like any
    ``SparkSession.builder.getOrCreate()``, it returns the active session if there is one.

    Parameters
    ----------
    master : str, default="local[*]"
        Spark master URL, e.g. ``"local[2]"`` or ``"spark://127.0.0.1:7077"``.
    app_name : str, default="skdbn"
        Application name.
    config : dict or None, default=None
        Further Spark configuration, e.g. ``{"spark.executor.memory": "512m"}``.
    connect : bool, default=False
        Start a Spark Connect server for ``master`` inside this process (its gRPC endpoint
        bound to 127.0.0.1) and return a Connect client session of it, as
        ``SparkSession.builder.remote(master)`` does for a local master (for another master,
        such as a standalone cluster's, with ``spark.api.mode=connect``). The server listens on
        127.0.0.1:15002, pyspark's fixed port for it: one such server per machine at a time.
        Needs the ``pyspark[connect]`` extras. A process holds either classic or Connect
        sessions, not both.

    Returns
    -------
    spark : pyspark.sql.SparkSession
    """
    import_pyspark()
    from pyspark.sql import SparkSession

    # Spark otherwise binds its services to the first non-loopback interface it finds.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers otherwise run the first "python3" on PATH, which outside an activated
    # virtual environment (a notebook kernel, a venv's python called by path) is another
    # interpreter without skdbn.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Read when the JVM starts: errors only, without Spark's start-up notices.
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={QUIET_LOGGING.as_uri()}",
        **(config or {}),
    }
    builder = SparkSession.builder.appName(app_name)
    if connect:
        settings.setdefault("spark.connect.grpc.binding.address", "127.0.0.1")
        # remote() starts a server only for local masters; the Connect API mode starts one
        # for any master (a cluster's driver in this process, its executors elsewhere).
        builder = (builder.remote(master) if master.startswith("local")
                   else builder.master(master).config("spark.api.mode", "connect"))
    else:
        builder = builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    with warnings.catch_warnings():
        # A local Connect server takes the static settings at start-up; the client then tries
        # to set them again at run time and warns that it cannot.
        warnings.filterwarnings("ignore", message="Failed to set", category=UserWarning)
        session = builder.getOrCreate()
    return session


def get_session(df=None):
    """The DataFrame's session, else the active one, else an embedded ``local[*]`` session.

    The embedded session (``loopback_session()``) is created once per process and reused.
    """
    global _EMBEDDED_SESSION
    if df is not None:
        return df.sparkSession
    import_pyspark()

    active = current_session()
    if active is not None:
        return active
    if _EMBEDDED_SESSION is None:
        _warn_if_in_joblib_worker()
        try:
            _EMBEDDED_SESSION = loopback_session()
        except Exception as exc:  # pyspark raises several types when the JVM cannot start
            raise RuntimeError(
                "could not start a local Spark session; Spark needs a Java runtime (17 or 21) "
                "on PATH or in JAVA_HOME. Install one, pass a DataFrame of an existing session, "
                "or use backend='local'"
            ) from exc
    return _EMBEDDED_SESSION


def current_session():
    """The session a fit started on this thread uses, or None: the thread's active session,
    else the one this process made first. A Spark Connect client's active session belongs to
    the thread that made it, so a fit started from another thread (a thread pool, a
    notebook's background job) would otherwise find none and train elsewhere."""
    if "pyspark" not in sys.modules:  # no session without pyspark imported
        return None
    from pyspark.sql import SparkSession

    try:
        return SparkSession.active()
    except Exception:  # PySparkRuntimeError NO_ACTIVE_OR_DEFAULT_SESSION: there is none
        return None


class ParallelSearchWarning(UserWarning):
    """A Spark-backed fit started a Spark session of its own in a worker process of joblib
    (``GridSearchCV(n_jobs > 1)``, ``cross_val_score(n_jobs > 1)``, ...)."""


def _warn_if_in_joblib_worker():
    import multiprocessing

    if multiprocessing.current_process().name.startswith("LokyProcess"):
        warnings.warn(
            "a Spark-backed DistributedDBN is starting a Spark session (a JVM) in a worker "
            "process of joblib, as GridSearchCV(n_jobs > 1) does: every such process starts "
            "its own, and their fits compete for the same cores. Use n_jobs=1 (each fit "
            "already uses every task slot), or backend='local'",
            ParallelSearchWarning, stacklevel=3)


def conf_value(spark, key, default):
    """A Spark configuration value as the session sees it (works on Connect sessions)."""
    value = spark.conf.get(key, None)
    return default if value is None else value


def task_cpus(spark):
    """Cores each task gets (``spark.task.cpus``)."""
    return int(conf_value(spark, "spark.task.cpus", "1"))


_LOCAL_MASTER = re.compile(r"local(?:\[(?P<threads>\*|\d+)(?:,\s*\d+)?\])?")
_LOCAL_CLUSTER_MASTER = re.compile(r"local-cluster\[\s*(?P<workers>\d+)\s*,\s*(?P<cores>\d+)\s*,")


def local_master_cores(master):
    """Cores of a local master URL (``local``, ``local[4]``, ``local[*]``, ``local[4,2]``,
    ``local-cluster[2,1,1024]``), or None for any other master."""
    local = _LOCAL_MASTER.fullmatch(master.strip())
    if local is not None:
        threads = local.group("threads")
        if threads is None:
            return 1
        return usable_cpus() if threads == "*" else int(threads)
    cluster = _LOCAL_CLUSTER_MASTER.match(master.strip())
    if cluster is not None:
        return int(cluster.group("workers")) * int(cluster.group("cores"))
    return None


def default_parallelism(spark):
    """The cores a session's tasks can use at once.

    For a local master the URL says it, at no cost. Otherwise the cluster is asked through a
    DataFrame: ``spark.range`` without a partition count splits into the default parallelism (the
    cores of all executors, or ``spark.sql.leafNodeDefaultParallelism``), which a classic session
    reports through its SparkContext and a Connect session does not report at all; counting the
    partitions of a small range works on both, in one cheap job.
    """
    from pyspark.sql import functions

    cores = local_master_cores(conf_value(spark, "spark.master", ""))
    if cores is not None:
        return cores

    probe = spark.range(_PARALLELISM_PROBE_ROWS).select(
        functions.spark_partition_id().alias("partition"))
    return int(probe.agg(functions.max("partition")).first()[0]) + 1


def executor_name():
    """In a task: its executor, as ``host/pid``, the pid being the parent that the Python
    workers of one executor share (its daemon, or its JVM)."""
    import socket

    return f"{socket.gethostname()}/{os.getppid()}"


def free_task_slots(spark):
    """Tasks that can run at once: the default parallelism over ``spark.task.cpus``."""
    return max(1, default_parallelism(spark) // task_cpus(spark))


def check_barrier_possible(spark, n_workers):
    """Raise a clear error if a barrier stage of ``n_workers`` tasks cannot start.

    Returns
    -------
    slots : int
        The session's free task slots.
    """
    dynamic = conf_value(spark, "spark.dynamicAllocation.enabled", "false")
    if dynamic.lower() == "true":
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
    return slots


def interruptible_job(spark, timeout, job, failed, reraise=False):
    """``job(spark)``, run by a thread of its own whose Spark jobs are interrupted after
    ``timeout`` seconds (a job that waits for executors or resources that never come), or
    ``failed`` when it was interrupted, or raised (raised again with ``reraise``). For
    Connect sessions: a classic session's ``addTag`` does not reach the jobs of DataFrame
    actions (see ``classic.tag_jobs``)."""
    tag = f"skdbn-probe-{os.getpid()}-{threading.get_ident()}-{next(_probe_numbers)}"
    found, errors = [], []

    def run():
        spark.addTag(tag)  # tags belong to the thread that starts the job
        try:
            found.append(job(spark))
        except Exception as error:  # interrupted, or no session left: nothing known
            errors.append(error)
        finally:
            spark.removeTag(tag)

    thread = threading.Thread(target=run, name="skdbn-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    timed_out = thread.is_alive()
    if timed_out:
        with contextlib.suppress(Exception):
            spark.interruptTag(tag)
        thread.join(10.0)
    if errors and reraise and not timed_out:
        raise errors[0]
    return found[0] if found else failed
