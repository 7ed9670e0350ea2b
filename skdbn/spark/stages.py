"""Training phases as Spark barrier stages, one task per worker.

Every phase is one ``mapInArrow(..., barrier=True)`` stage: each task maps its worker's shard
file (a classic session with a local master) or reads its partition of the cached training
DataFrame (anywhere else), trains, and returns its state as one row (parameters as binary
columns), which the driver collects through Arrow and averages into the consensus. No RDD and
no SparkContext is used, so the same code runs on classic and Spark Connect sessions.
"""

import contextlib
import dataclasses
import json
import secrets
import time
from functools import partial

import numpy as np

from .._gossip import AllGatherClient, AllGatherServer
from .._scratch import choose_scratch_dir, new_scratch_dirs, remove_tree
from .._task import PhaseStalled, SyncPlan, run_worker
from .._watch import open_progress_listener
from .._worker import PhaseResult, PhaseState, consensus
from .classic import StragglerWatch
from .data import (
    ShardLayout,
    cache_partitions,
    dealt_rows,
    feature_column,
    frame_from_arrays,
    frame_from_dataframe,
    read_shard,
    regroup_partitions,
    summarize_dataframe,
    task_ranks,
)
from .session import conf_value, is_connect_session, local_connect_cluster, task_slots_now
from .shards import (
    ShardPlan,
    partition_rows,
    publish_shard,
    saved_shards,
    summarize_and_write,
    write_array_shard,
    write_label_shards,
)

# Spark configuration key choosing how a phase's tasks swap addresses:
# - "driver": a small authenticated rendezvous served by this process (on classic sessions,
#   where executors already connect to the driver, and on Spark Connect when the server and
#   its executors run on this machine); adds milliseconds to a phase.
# - "barrier": Spark's BarrierTaskContext.allGather, which stays inside the cluster but polls
#   once a second, so adds about a second to every phase.
# - "auto" (default): "driver" where it is possible, else "barrier" (a Connect client whose
#   cluster may not reach it).
RENDEZVOUS_CONF = "spark.skdbn.rendezvous"
_RENDEZVOUS_MODES = ("auto", "driver", "barrier")

# Texts of Spark errors that mean a worker was lost rather than that a task failed.
_LOST_WORKER_SIGNS = (
    ("Python worker exited unexpectedly", "a task's Python worker died"),
    ("ExecutorLostFailure", "an executor was lost"),
    ("Executor heartbeat timed out", "an executor stopped answering"),
)

_RESULT_SCHEMA = ("rank int, weight double, n_samples long, samples_trained long, "
                  "params binary, velocity binary, hidden_mean binary, history string, "
                  "diagnostics string, read_seconds double, train_seconds double, "
                  "started double")


class SparkEngine:
    """Runs every phase as one Spark barrier stage with one task per worker.

    Parameters
    ----------
    spark : SparkSession
        Session to run on, classic or Connect (found at fit time; never stored on the
        estimator).
    n_workers : int
        Number of barrier tasks; the caller has checked that the session has the slots.
    sync, sync_every
        Synchronisation within a phase, as for ``ProcessEngine``.
    timeout : float, default=60.0
        Seconds any single network wait of a phase may take; also how long a retried phase
        waits for lost task slots to come back before it runs on the slots that are left,
        and how long (at least) the last tasks of a phase may take after the first finished.
    """

    epochs_per_phase = 10  # each barrier stage has a fixed cost; group fine-tuning epochs

    def __init__(self, spark, n_workers, sync, sync_every, timeout=60.0):
        self.spark = spark
        self.n_workers = n_workers
        self.sync = sync
        self.sync_every = sync_every
        self.timeout = timeout
        self._secret = secrets.token_bytes(32)
        self._tasks = n_workers  # fewer after a phase reran on the slots that were left
        self._frame = None  # what the phases' stage maps: one partition per task
        self._cached = None  # the cached training partitions, one per worker
        self._layout = None
        self._shard_plan = None  # features written by summarize(), labels still to come
        self._shard_dirs = ()  # set before any shard file is written, for close()
        self._mode = None  # rendezvous_mode(spark), asked once per fit
        if self._needs_rendezvous():  # a bad setting fails before any data moves
            self._rendezvous_mode()

    def __repr__(self):  # never print the secret
        return f"SparkEngine(n_workers={self.n_workers}, sync={self.sync!r})"

    def start_from_arrays(self, X, codes, worker_rows, mean, scale):
        """Put numpy training data where the tasks read it, one shard per worker.

        ``worker_rows[w]`` are the rows of ``X`` (and of the class ``codes``, or None) that
        worker ``w`` trains on, in the order it keeps them (None: all rows, in order). When
        every task runs on this machine the shards are written straight to shard files;
        otherwise X travels as Arrow batches into a cached DataFrame.
        """
        worker_rows = [np.arange(X.shape[0]) if rows is None else rows for rows in worker_rows]
        layout = self._plan_layout(tuple(len(rows) for rows in worker_rows), X.shape[1],
                                   X.dtype, codes is not None, mean, scale)
        if layout.shard_dir is not None:
            for rank, rows in enumerate(worker_rows):
                write_array_shard(X, codes, rows, rank, layout)
            self._frame = self._one_row_per_task()
            return
        source = frame_from_arrays(self.spark, X, codes, worker_rows, X.dtype,
                                   is_connect_session(self.spark))
        self._cache_partitions(source)

    def summarize(self, df, features_col, label_col, counts=None):
        """The ``FrameSummary`` of ``df``, in one pass over its features.

        When every task runs on this machine, the same pass writes the features into the
        workers' shard files, which :meth:`start_from_dataframe` then completes; ``counts``
        are the rows of each partition (``partition_rows(df)``) if the caller has them.
        """
        if not self._tasks_run_here():
            return summarize_dataframe(df, features_col, label_col)
        counts = partition_rows(df) if counts is None else counts
        _, dtype = feature_column(df, features_col)
        self._shard_dirs = new_scratch_dirs()
        plan = ShardPlan(*self._shard_dirs, counts, self.n_workers, np.dtype(dtype).name)
        summary, features_dir = summarize_and_write(df, features_col, label_col, plan)
        if features_dir is not None:
            self._shard_plan = dataclasses.replace(plan, features_dir=features_dir)
        else:  # no room: the tasks will read cached partitions
            self._remove_shard_dirs()
        return summary

    def start_from_dataframe(self, df, features_col, label_col, classes, summary, mean, scale):
        """Deal the rows of ``df`` into one shard per worker, in its training dtype.

        ``summary`` is the ``FrameSummary`` of ``df``, from :meth:`summarize` when the shard
        files are to be completed; ``classes`` the sorted class labels (None without
        ``label_col``). Without shard files the shards are a cached DataFrame with one
        partition per worker.
        """
        plan, workers = self._shard_plan, self.n_workers
        rows = dealt_rows(summary.n_samples, workers)
        self._layout = ShardLayout(
            rows=rows, n_features=summary.n_features, dtype=np.dtype(summary.dtype).name,
            labelled=label_col is not None, mean=mean, scale=scale,
            shard_dir=None if plan is None else plan.features_dir)
        if plan is not None:
            if label_col is not None:
                write_label_shards(plan, classes, self._layout)
            for rank in range(workers):
                publish_shard(rank, self._layout)
            self._frame = self._one_row_per_task()
            return
        source = frame_from_dataframe(df, features_col, label_col, classes, summary, workers)
        self._cache_partitions(source)

    def _plan_layout(self, rows, n_features, dtype, labelled, mean, scale):
        """The shards to come, with a fresh shard directory when the tasks can use one."""
        shard_bytes = sum(rows) * (n_features * np.dtype(dtype).itemsize + 9)
        shard_dir = None
        if self._tasks_run_here():
            self._shard_dirs = new_scratch_dirs()
            shard_dir = choose_scratch_dir(*self._shard_dirs, shard_bytes)
        self._layout = ShardLayout(rows=rows, n_features=n_features, dtype=np.dtype(dtype).name,
                                   labelled=labelled, mean=mean, scale=scale,
                                   shard_dir=shard_dir)
        return self._layout

    def _one_row_per_task(self):
        # The phases' stage needs only one partition per task: each task maps its shard files.
        return self.spark.range(0, self._tasks, 1, self._tasks)

    def _cache_partitions(self, source):
        self._cached, rows = cache_partitions(source, self.n_workers)
        self._frame = self._cached
        if rows != self._layout.rows:
            raise RuntimeError(
                f"the training partitions hold {list(rows)} rows, expected "
                f"{list(self._layout.rows)}: the DataFrame gave other rows on a second read "
                "(a nondeterministic plan); cache it before fit"
            )

    def _tasks_run_here(self):
        """Whether every task runs on this machine and shares its files: a classic session
        with a local master (a Connect server on this machine may still see another file
        system, from a container, so Connect tasks read cached partitions)."""
        if is_connect_session(self.spark):
            return False
        return conf_value(self.spark, "spark.master", "").startswith("local")

    @property
    def phase_workers(self):
        """Tasks (results) of each phase: fewer than ``n_workers`` after a phase reran on the
        task slots that were left."""
        return self._tasks

    @property
    def total_samples(self):
        """Training rows over all workers."""
        return sum(self._layout.rows)

    def run_phase(self, phase, state, below, monitor=None):
        """Run ``phase`` as a barrier stage and return ``(consensus_state, results)``.

        ``monitor.update(rank, snapshot)``, if given, hears the tasks' progress while they
        run, where the executors can reach this process (see ``_progress_listener``).
        """
        plan = SyncPlan(
            mode=self.sync, n_workers=self._tasks, sync_every=self.sync_every,
            secret=self._secret, phase_key=secrets.randbits(63),
            total_samples=self.total_samples, timeout=self.timeout, blas_threads=1,
        )
        with contextlib.ExitStack() as listeners:
            progress = self._progress_listener(plan, monitor)
            if progress is not None:
                listeners.callback(progress.close)
                plan = dataclasses.replace(plan, progress_address=progress.address)
            server, rendezvous = self._start_rendezvous()
            if server is not None:
                listeners.callback(server.close)
            table = self._run_stage(partial(_phase_task, phase, state, below, plan,
                                            self._layout, rendezvous))
        results = _results_of(table, state.params.dtype)
        return consensus(results), results

    def _run_stage(self, task):
        """The result table of the phase's barrier stage of ``task``; a failed stage's error
        is raised as what it means (a stalled phase, a lost worker, the task's own error)."""
        watch = StragglerWatch(self.spark, self._tasks, self.timeout)
        try:
            with watch:
                return self._frame.mapInArrow(task, _RESULT_SCHEMA, barrier=True).toArrow()
        except Exception as error:
            if watch.cancelled:
                raise PhaseStalled(
                    f"{self._tasks - watch.finished} of {self._tasks} tasks had not finished "
                    f"the phase {watch.allowance:.0f}s after the first did (a stopped or "
                    "hung worker); the phase's stage was cancelled") from error
            task_error = None if self.lost_worker(error) else _task_error(error)
            if task_error is not None:
                raise task_error from error
            raise

    def _rendezvous_mode(self):
        if self._mode is None:
            self._mode = rendezvous_mode(self.spark)
        return self._mode

    def _needs_rendezvous(self):
        return self._tasks > 1 and self.sync != "none"

    def _progress_listener(self, plan, monitor):
        """A started listener for the tasks' progress, or None: without a monitor, and where
        the executors may not reach this process (the terms of the driver's rendezvous, see
        :func:`rendezvous_mode`)."""
        if monitor is None or self._rendezvous_mode() != "driver":
            return None
        host, bind = self._driver_address()
        return open_progress_listener(self._secret, plan.phase_key, self._tasks, monitor,
                                      host=bind, advertised_host=host)

    def _start_rendezvous(self):
        """The driver's rendezvous server and the tasks' client, or ``(None, None)`` when the
        tasks use Spark's allGather or need no rendezvous."""
        if not self._needs_rendezvous() or self._rendezvous_mode() == "barrier":
            return None, None
        host, bind = self._driver_address()
        server = AllGatherServer(self._secret, self._tasks, self.timeout, host=bind).start()
        port = server.address.rsplit(":", 1)[1]
        return server, _DriverRendezvous(f"{host}:{port}", self._secret, self.timeout,
                                         self._tasks)

    def _driver_address(self):
        """``(host, bind)``: the name executors reach the driver (or, on a Connect session of
        this machine, this client) by, and the address its listeners bind to."""
        if is_connect_session(self.spark):  # only ever used for a cluster on this machine
            return "127.0.0.1", "127.0.0.1"
        host = conf_value(self.spark, "spark.driver.host", "127.0.0.1")
        return host, conf_value(self.spark, "spark.driver.bindAddress", host)

    def lost_worker(self, error):
        """Why ``error`` means a task's Python worker or an executor was lost, or None.

        Spark reports the first failure of a barrier stage; an exception raised by skdbn's own
        code in a task (bad data, divergence) is a ``PythonException`` and is not a loss.
        """
        if isinstance(error, PhaseStalled):
            return "a worker stopped making progress"
        text = str(error)
        if "PeerLost" in text:
            return "a worker did not reach the phase's rendezvous in time"
        if "An exception was thrown from the Python worker" in text:
            return None
        for sign, reason in _LOST_WORKER_SIGNS:
            if sign in text:
                return reason
        return None

    def recover(self):
        """Prepare a retried phase: wait (at most ``timeout`` seconds) until the session has
        the phase's task slots again, as a cluster that replaces a lost executor does within
        seconds; if fewer come back, run the phases from now on with one task per slot left,
        each training the shards of several workers.

        Returns
        -------
        message : str or None
            What changed, when the phases now run on fewer tasks.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            slots = task_slots_now(self.spark, max(1.0, deadline - time.monotonic()))
            if slots >= self._tasks:
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if slots < 1:
            raise RuntimeError(
                f"the Spark session has no task slots left {self.timeout:.0f}s after losing a "
                "worker (no executor is registered); the fit cannot go on")
        before, self._tasks = self._tasks, slots
        if self._cached is not None:
            regrouped = regroup_partitions(self._cached, slots)
            if self._frame is not self._cached:
                self._frame.unpersist()
            self._frame = regrouped
        else:
            self._frame = self._one_row_per_task()
        return (f"{slots} of the {before} task slots are left after {self.timeout:.0f}s: "
                f"the phases now run on {slots} task(s) training the {self.n_workers} "
                "workers' shards")

    def close(self):
        """Drop the cached training partitions from the executors, and any shard files.

        Never raises: it runs when a fit ends, also after a failure, whose error it must not
        hide (a stopped session cannot unpersist; its cache is gone anyway).
        """
        frames = {id(f): f for f in (self._frame, self._cached) if f is not None}
        self._frame = self._cached = None
        try:
            for frame in frames.values():
                with contextlib.suppress(Exception):  # see the docstring
                    frame.unpersist()
        finally:
            self._remove_shard_dirs()

    def _remove_shard_dirs(self):
        shard_dirs, self._shard_dirs, self._shard_plan = self._shard_dirs, (), None
        for shard_dir in shard_dirs:
            remove_tree(shard_dir)


# Errors skdbn's own task code raises on purpose (a DataFrame that changed between reads, a
# diverging phase): raised again on the driver as themselves, not as Spark's stage failure.
_TASK_ERRORS = {"RuntimeError": RuntimeError, "FloatingPointError": FloatingPointError}


def _task_error(error):
    """The exception a task raised, rebuilt from a failed stage's text, or None."""
    for line in reversed(str(error).splitlines()):
        name, _, message = line.strip().partition(": ")
        if name in _TASK_ERRORS and message:
            return _TASK_ERRORS[name](message)
    return None


class _DriverRendezvous(AllGatherClient):
    """``AllGatherClient`` whose connection failure says what to do on a cluster."""

    def _connect(self, rank):
        try:
            return super()._connect(rank)
        except OSError as exc:
            raise ConnectionError(
                f"worker {rank} could not reach the driver's rendezvous at "
                f"{self.server_address} ({exc}); if executors cannot open connections to the "
                f"driver, set the Spark configuration {RENDEZVOUS_CONF}=barrier"
            ) from exc


def rendezvous_mode(spark):
    """How the tasks of a phase on ``spark`` swap addresses: ``"driver"`` or ``"barrier"``.

    Follows ``spark.skdbn.rendezvous`` (``RENDEZVOUS_CONF``). ``"auto"`` means ``"driver"`` on
    classic sessions, and on Spark Connect sessions whose tasks are seen to reach this process
    (:func:`tasks_reach_client`); else ``"barrier"``. Raises ValueError for an unknown value,
    and for ``"driver"`` on a Connect session whose executors may be on other machines.
    """
    mode = conf_value(spark, RENDEZVOUS_CONF, "auto")
    if mode not in _RENDEZVOUS_MODES:
        raise ValueError(f"{RENDEZVOUS_CONF} must be 'auto', 'driver' or 'barrier', "
                         f"got {mode!r}")
    if mode == "barrier":
        return mode
    if not is_connect_session(spark):
        return "driver"
    if not local_connect_cluster(spark):
        if mode == "driver":
            raise ValueError(
                f"{RENDEZVOUS_CONF}=driver is not possible on this Spark Connect session: its "
                "executors may not reach the client (only a server on this machine with a "
                "local master is known to). Use 'auto' or 'barrier'")
        return "barrier"
    return "driver" if mode == "driver" or tasks_reach_client(spark) else "barrier"


_PROBE_TIMEOUT = 10.0
_reaching_sessions = {}  # Connect session id -> whether its tasks reached this process


def tasks_reach_client(spark):
    """Whether a task of ``spark``, a Connect session of a server on this machine with a local
    master, opens an authenticated connection to this process on 127.0.0.1.

    A server reached as ``localhost`` may still run where 127.0.0.1 is another machine's (in a
    container with a published port, behind an SSH or kubectl port-forward), so one task of a
    one-row job tries; the answer is kept for the session.
    """
    key = spark.session_id
    if key not in _reaching_sessions:
        _reaching_sessions[key] = _probe_from_a_task(spark)
    return _reaching_sessions[key]


def _probe_from_a_task(spark):
    secret = secrets.token_bytes(32)
    server = AllGatherServer(secret, 1, _PROBE_TIMEOUT).start()
    try:
        client = AllGatherClient(server.address, secret, _PROBE_TIMEOUT, 1)
        table = spark.range(0, 1, 1, 1).mapInArrow(partial(_probe_task, client),
                                                   "reached boolean").toArrow()
    finally:
        server.close()
    return table.column("reached").to_pylist() == [True]


def _probe_task(client, batches):
    """The probe job's task: whether the rendezvous ``client`` gets its own address back."""
    import pyarrow as pa

    for _ in batches:  # one row; read so that Spark can reuse this Python worker
        pass
    try:
        reached = client(0, "probe") == ["probe"]
    except (OSError, ValueError):  # refused, timed out, or not our server (WireError)
        reached = False
    yield pa.RecordBatch.from_pydict({"reached": [reached]})


def _phase_task(phase, state, below, plan, layout, rendezvous, batches):
    """One barrier task: read the partition, train the phase, return one result row."""
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    ranks = task_ranks(rank, plan.n_workers, len(layout.rows))

    def read():  # after the rendezvous (see run_worker, which times it)
        if layout.shard_dir is None:
            return read_shard(batches, ranks, layout)
        for _ in batches:  # one row; read so that Spark can reuse this Python worker
            pass
        return saved_shards(ranks, layout)

    host = context.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    # The task's cores follow spark.task.cpus, or the stage's resource profile.
    plan = dataclasses.replace(plan, blas_threads=max(1, int(context.cpus())))
    if rendezvous is None:
        def rendezvous(_rank, address):
            return context.allGather(address)
    result = run_worker(rank, phase, read, state, below, plan, rendezvous, host=host)
    yield _result_batch(rank, result)


def _result_batch(rank, result):
    import pyarrow as pa

    hidden_mean = (b"" if result.hidden_mean is None
                   else _bytes(np.asarray(result.hidden_mean, dtype=np.float64)))
    history = {name: [float(v) for v in values] for name, values in result.history.items()}
    return pa.RecordBatch.from_pydict({
        "rank": pa.array([rank], pa.int32()),
        "weight": pa.array([result.weight], pa.float64()),
        "n_samples": pa.array([result.n_samples], pa.int64()),
        "samples_trained": pa.array([result.samples_trained], pa.int64()),
        "params": pa.array([_bytes(result.state.params)], pa.binary()),
        "velocity": pa.array([_bytes(result.state.velocity)], pa.binary()),
        "hidden_mean": pa.array([hidden_mean], pa.binary()),
        "history": pa.array([json.dumps(history)], pa.string()),
        "diagnostics": pa.array([json.dumps(result.diagnostics)], pa.string()),
        "read_seconds": pa.array([result.seconds["read"]], pa.float64()),
        "train_seconds": pa.array([result.seconds["train"]], pa.float64()),
        "started": pa.array([result.seconds["started"]], pa.float64()),
    })


def _bytes(array):
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _results_of(table, dtype):
    """The workers' ``PhaseResult`` objects, by rank, from the stage's result rows."""
    wire = np.dtype(dtype).newbyteorder("<")

    def vector(data, kind=wire):
        return np.frombuffer(data, dtype=kind).astype(kind.newbyteorder("="))

    results = []
    for row in sorted(table.to_pylist(), key=lambda r: r["rank"]):
        results.append(PhaseResult(
            state=PhaseState(vector(row["params"]), vector(row["velocity"])),
            weight=row["weight"], n_samples=row["n_samples"],
            history=json.loads(row["history"]),
            hidden_mean=vector(row["hidden_mean"], np.dtype("<f8")) if row["hidden_mean"]
            else None,
            samples_trained=row["samples_trained"],
            seconds={"read": row["read_seconds"], "train": row["train_seconds"],
                     "started": row["started"]},
            diagnostics=json.loads(row["diagnostics"]),
        ))
    return results
