"""Training phases as Spark barrier stages, one task per worker.

Each task maps its worker's shard file (a classic session with a local master) or reads its
partition of the cached training DataFrame (anywhere else), and trains. Where the executors
can reach this process, the tasks stay in one standing barrier job that takes phase after
phase from it (``standing``). Where they cannot (a Connect session of a remote cluster),
every phase is one ``mapInArrow(..., barrier=True)`` stage whose tasks return their state as
one row (parameters as binary columns), which the driver collects through Arrow. No RDD and
no SparkContext is used, so the same code runs on classic and Spark Connect sessions.
"""

import contextlib
import dataclasses
import json
import secrets
import threading
import time
from functools import partial

import numpy as np

from .._devices import DeviceOutOfMemory, spark_task_device
from .._engines import Engine, dealt_indices
from .._gossip import AllGatherClient, AllGatherServer, PeerLost
from .._phase import PhaseResult, PhaseState, consensus
from .._scratch import choose_scratch_dir, new_scratch_dirs, remove_tree
from .._sync import PeersStalled
from .._watch import open_progress_listener
from .._worker import PhaseStalled, SyncPlan, run_worker
from .classic import StragglerWatch
from .data import (
    ShardLayout,
    cache_partitions,
    frame_from_arrays,
    regroup_partitions,
    struct_schema,
    task_ranks,
)
from .gpus import SLOT_PROBE_SECONDS, gpu_task_slots
from .memory import WorkerOutOfMemory, watched_task
from .placement import RENDEZVOUS_CONF, free_slots_now, rendezvous_mode
from .session import conf_value, is_connect_session
from .shards import write_array_shard
from .standing import JobEnded, StandingJob, TaskShard, serve_phases

# Texts of Spark errors that mean a worker was lost rather than that a task failed.
_LOST_WORKER_SIGNS = (
    ("Python worker exited unexpectedly", "a task's Python worker died"),
    ("ExecutorLostFailure", "an executor was lost"),
    ("Executor heartbeat timed out", "an executor stopped answering"),
)

_RESULT_COLUMNS = (("rank", "int"), ("weight", "double"), ("n_samples", "long"),
                   ("samples_trained", "long"), ("params", "binary"), ("velocity", "binary"),
                   ("hidden_mean", "binary"), ("history", "string"), ("diagnostics", "string"),
                   ("read_seconds", "double"), ("train_seconds", "double"),
                   ("started", "double"))


class SparkEngine(Engine):
    """Runs every phase as one Spark barrier stage with one task per worker.

    Parameters
    ----------
    placement : SparkPlacement
        The session (classic or Connect, found at fit time and never stored on the
        estimator), the number of barrier tasks (the session has the slots) and how they
        meet, from :func:`~skdbn.spark.placement.place_workers`.
    sync, sync_every
        Synchronisation within a phase, as for ``ProcessEngine``.
    timeout : float, default=60.0
        Seconds any single network wait of a phase may take; also how long a retried phase
        waits for lost task slots to come back before it runs on the slots that are left,
        and how long (at least) the last tasks of a phase may take after the first finished.
    """

    epochs_per_phase = 10  # each barrier stage has a fixed cost; group fine-tuning epochs

    def __init__(self, placement, sync, sync_every, timeout=60.0):
        self.spark = placement.spark
        self.n_workers = placement.n_tasks
        self.sync = sync
        self.sync_every = sync_every
        self.timeout = timeout
        self._secret = secrets.token_bytes(32)
        self._tasks = self.n_workers  # fewer after a phase reran on the slots that were left
        self._shard_files = placement.shard_files
        self._profile = placement.profile  # the tasks' resources: one GPU each, or None
        self._frame = None  # what the phases' stage maps: one partition per task
        self._cached = None  # the cached training partitions, one per worker
        self._layout = None
        self._shard_dirs = ()  # shard files of numpy input, set before any is written
        self._mode = placement.rendezvous  # asked once per fit (None: not yet needed)
        self._standing = None  # the standing job of the phases, and its rendezvous server
        self._standing_rendezvous = None
        self._rerun = False  # the next phase reruns one whose worker process died
        self._killed_process = False  # the last lost worker was a process that died

    def __repr__(self):  # never print the secret
        return f"SparkEngine(n_workers={self.n_workers}, sync={self.sync!r})"

    def start(self, data, seed):
        """Put the training data where the tasks read it, one shard per worker.

        A DataFrame was dealt to the workers when it was prepared (``data.frame``): its shard
        files are ready, or its dealt rows are cached here. Numpy arrays are dealt by
        ``dealt_indices``; when every task runs on this machine their shards are written
        straight to shard files, otherwise they travel as Arrow batches into a cached
        DataFrame. Where the tasks can reach this process, their standing job is submitted
        here, before shard files are written: its tasks start (a tenth of a second of Spark's
        scheduling) while this process writes, and read their shards in the first phase.
        """
        worker_rows = None
        if data.frame is None:
            worker_rows = self._start_from_arrays(data, seed)
        else:
            self._layout = data.frame.layout
            if data.frame.source is None:
                self._frame = self._one_row_per_task()
            else:
                self._cache_partitions(data.frame.source)
        if self._standing_job_possible():
            self._start_standing_job()
        if worker_rows is not None and self._layout.shard_dir is not None:
            for rank, rows in enumerate(worker_rows):
                write_array_shard(data.X, data.codes, rows, rank, self._layout)

    def _start_from_arrays(self, data, seed):
        """Deal the arrays of ``data`` and return each worker's rows: into cached partitions,
        or, where the tasks map shard files, to be written by :meth:`start`."""
        X, codes = data.X, data.codes
        worker_rows = [np.arange(data.n_samples) if part is None else part
                       for part in dealt_indices(data.n_samples, self.n_workers, seed)]
        self._layout = self._plan_layout(tuple(len(rows) for rows in worker_rows), X.shape[1],
                                         X.dtype, codes is not None, data.mean, data.scale)
        if self._layout.shard_dir is not None:
            self._frame = self._one_row_per_task()
        else:
            self._cache_partitions(frame_from_arrays(self.spark, X, codes, worker_rows, X.dtype,
                                                     is_connect_session(self.spark)))
        return worker_rows

    def _plan_layout(self, rows, n_features, dtype, labelled, mean, scale):
        """The shards to come, with a fresh shard directory when the tasks can use one."""
        shard_bytes = sum(rows) * (n_features * np.dtype(dtype).itemsize + 9)
        shard_dir = None
        if self._shard_files:
            self._shard_dirs = new_scratch_dirs()
            shard_dir = choose_scratch_dir(*self._shard_dirs, shard_bytes)
        return ShardLayout(rows=rows, n_features=n_features, dtype=np.dtype(dtype).name,
                           labelled=labelled, mean=mean, scale=scale, shard_dir=shard_dir)

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
            if self._standing_job_possible():
                results = self._run_on_standing_job(phase, state, below, plan)
                self._rerun = False
                return consensus(results), results
            if is_connect_session(self.spark):
                # No task status reaches a Connect client, so no straggler watch runs here:
                # a finished task raises when a peer has not finished in time, which ends
                # the barrier stage.
                plan = dataclasses.replace(plan, watch_peers=True)
            server, rendezvous = self._start_rendezvous()
            if server is not None:
                listeners.callback(server.close)
            table = self._run_stage(partial(_phase_task, phase, state, below, plan,
                                            self._layout, rendezvous, self._rerun))
        results = _results_of(table, state.params.dtype)
        self._rerun = False
        return consensus(results), results

    def _run_on_standing_job(self, phase, state, below, plan):
        """The phase's results from the tasks of the standing job (started if none runs);
        a failed phase ends the job, and its error is raised as what it means."""
        if self._standing is None:  # the first phase after a failed one
            self._start_standing_job()
        try:
            return self._standing.train(phase, state, below, plan)
        except Exception as error:
            self._stop_standing_job()
            meaning = self._meaning_of(error)
            if meaning is error:
                raise
            raise meaning from error

    def _standing_job_possible(self):
        """Whether the tasks can reach this process for their phases: the terms of the
        driver's rendezvous (``rendezvous_mode``), also for a fit whose tasks never meet."""
        try:
            return self._rendezvous_mode() == "driver"
        except ValueError:  # a setting only a fit whose tasks meet must obey
            if self._needs_rendezvous():
                raise
            return False

    def _start_standing_job(self):
        server, rendezvous = self._start_rendezvous()
        host, bind = self._driver_address()
        self._standing_rendezvous = server
        layout, rerun = self._layout, self._rerun

        def make_task(channel):
            return partial(serve_phases, channel, layout, rendezvous, rerun)

        self._standing = StandingJob(self.spark, self._frame, make_task, self._tasks,
                                     self._secret, self.timeout, host, bind,
                                     self._profile).start()

    def _stop_standing_job(self):
        job, self._standing = self._standing, None
        server, self._standing_rendezvous = self._standing_rendezvous, None
        try:
            if job is not None:
                job.close()
        finally:
            if server is not None:
                server.close()

    def _run_stage(self, task):
        """The result table of the phase's barrier stage of ``task``; a failed stage's error
        is raised as what it means (a stalled phase, a lost worker, the task's own error)."""
        watch = StragglerWatch(self.spark, self._tasks, self.timeout)
        try:
            with watch:
                return self._frame.mapInArrow(task, struct_schema(_RESULT_COLUMNS),
                                              barrier=True, profile=self._profile).toArrow()
        except Exception as error:
            if watch.cancelled:
                raise PhaseStalled(
                    f"{self._tasks - watch.finished} of {self._tasks} tasks had not finished "
                    f"the phase {watch.allowance:.0f}s after the first did (a stopped or "
                    "hung worker); the phase's stage was cancelled") from error
            meaning = self._meaning_of(error)
            if meaning is error:
                raise
            raise meaning from error

    def _meaning_of(self, error):
        """A failed job's error as what it means: the task's own error (a diverging phase,
        a DataFrame that changed), or ``error`` itself (a lost worker, anything else)."""
        task_error = None if self.lost_worker(error) else _task_error(error)
        return error if task_error is None else task_error

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
        if isinstance(error, JobEnded):
            return "a task left the phases' job"
        text = str(error)
        if isinstance(error, PeersStalled) or "PeersStalled" in text:
            return "a worker stopped making progress (its peers saw it)"
        if isinstance(error, PeerLost) or "PeerLost" in text:
            return "a worker did not reach the phase's rendezvous in time"
        if "An exception was thrown from the Python worker" in text:
            return None
        for sign, reason in _LOST_WORKER_SIGNS:
            if sign in text:
                # A dead process may be the kernel's OOM kill, which the rerun's tasks can
                # tell (memory.py); a stall or a missed rendezvous is not one.
                self._killed_process = True
                return reason
        return None

    def recover(self):
        """Prepare a retried phase: wait (at most ``timeout`` seconds) until the session has
        the phase's task slots free again, as a cluster that replaces a lost executor does
        within seconds; if fewer are free, run the phases from now on with one task per slot
        left, each training the shards of several workers. A slot whose task Spark still
        counts as running (on a host cut off, until ``spark.network.timeout``) is not free.

        Returns
        -------
        message : str or None
            What changed, when the phases now run on fewer tasks.
        """
        # The rerun's tasks tell a worker killed for lack of memory (memory.py).
        self._rerun, self._killed_process = self._killed_process, False
        deadline = time.monotonic() + self.timeout
        while True:
            # A Connect session's count is a job, which may need longer than the deadline.
            slots = self._slots_now(max(SLOT_PROBE_SECONDS, deadline - time.monotonic()))
            if slots is not None and slots >= self._tasks:
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if slots is None:  # not known: the phase reruns on as many tasks as before
            return None
        if slots < 1:
            raise RuntimeError(
                f"the Spark session has no free task slot {self.timeout:.0f}s after losing a "
                "worker (no executor is registered, or every slot is held by a task that "
                "does not end); the fit cannot go on")
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

    def _slots_now(self, timeout):
        """Free task slots now, and for a fit on GPUs the GPU task slots among them (0 when
        a Connect session's probe saw no free GPU within ``timeout``); None: not known (a
        Connect session's probe job did not end within ``timeout``)."""
        started = time.monotonic()
        slots = free_slots_now(self.spark, timeout)
        if self._profile is None or not slots:
            return slots
        left = max(1.0, timeout - (time.monotonic() - started))
        return min(slots, gpu_task_slots(self.spark, self._profile, slots, left) or 0)

    def close(self):
        """Drop the cached training partitions from the executors, and any shard files.

        Never raises: it runs when a fit ends, also after a failure, whose error it must not
        hide (a stopped session cannot unpersist; its cache is gone anyway).
        """
        frames = {id(f): f for f in (self._frame, self._cached) if f is not None}
        self._frame = self._cached = None
        try:
            # Waited for (about 0.1 s on local[2]): a session stopped while the job still
            # ends has its JVM log the scheduler's errors about it, a surprise after a fit
            # that went well.
            self._stop_standing_job()
            for frame in frames.values():
                with contextlib.suppress(Exception):  # see the docstring
                    frame.unpersist()
        finally:
            self._remove_shard_dirs()

    def _remove_shard_dirs(self):
        shard_dirs, self._shard_dirs = self._shard_dirs, ()
        for shard_dir in shard_dirs:
            remove_tree(shard_dir)


# Errors skdbn's own task code raises on purpose (a DataFrame that changed between reads, a
# diverging phase): raised again on the driver as themselves, not as Spark's stage failure.
# A task's missing torch and its GPU's out-of-memory are the fit's own errors too (issue 20).
# A Python worker's own out-of-memory says what to change, and is never retried (issue 22).
_TASK_ERRORS = {"RuntimeError": RuntimeError, "FloatingPointError": FloatingPointError,
                "ImportError": ImportError, "ModuleNotFoundError": ImportError,
                "skdbn._devices.DeviceOutOfMemory": DeviceOutOfMemory,
                "DeviceOutOfMemory": DeviceOutOfMemory,
                "skdbn.spark.memory.WorkerOutOfMemory": WorkerOutOfMemory,
                "WorkerOutOfMemory": WorkerOutOfMemory}


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


def _phase_task(phase, state, below, plan, layout, rendezvous, rerun, batches):
    """One barrier task: read the partition, train the phase, return one result row.
    ``rerun``: the phase is rerun after it lost a worker (see ``memory.watched_task``)."""
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank = context.partitionId()
    ranks = task_ranks(rank, plan.n_workers, len(layout.rows))
    with watched_task(plan.secret, layout, ranks, rerun):
        shard = TaskShard(batches, ranks, layout)
        host = context.getTaskInfos()[rank].address.rsplit(":", 1)[0]
        # The task's cores follow spark.task.cpus, or the stage's resource profile.
        plan = dataclasses.replace(plan, blas_threads=max(1, int(context.cpus())))
        if rendezvous is None:
            rendezvous = partial(_bounded_all_gather, context, plan.timeout)
        result = run_worker(rank, phase, shard.read, state, below, plan, rendezvous,
                            host=host, device=spark_task_device(phase.device,
                                                                context.resources()))
        shard.drain()
    yield _result_batch(rank, result)


def _bounded_all_gather(context, timeout, rank, address):
    """The tasks' addresses by rank from Spark's ``allGather``, or ``PeerLost`` when not
    every task has come to it within ``timeout`` seconds: Spark waits for a task that never
    comes (a stopped worker) as long as ``spark.barrier.sync.timeout``, a year by default,
    and on a Connect session nothing else would notice."""
    gathered, errors = [], []

    def gather():
        try:
            gathered.append(context.allGather(address))
        except Exception as error:  # raised again in the task's own thread
            errors.append(error)

    # A daemon: left waiting on its socket when it times out, it ends with the stage.
    waiter = threading.Thread(target=gather, name="skdbn-all-gather", daemon=True)
    waiter.start()
    waiter.join(timeout)
    if errors:
        raise errors[0]
    if not gathered:
        raise PeerLost(f"worker {rank}: not every task of the phase came to Spark's allGather "
                       f"within {timeout:g}s (a stopped or lost worker)")
    return gathered[0]


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
