"""Engines start workers and collect their results; they hold no training math.

Every engine offers ``phase_workers`` (the workers of each phase),
``start_from_arrays(X, codes, worker_rows, mean, scale)``,
``run_phase(phase, state, below, monitor=None)`` returning the consensus state and the
workers' results (``monitor.update(rank, snapshot)``, if given, hears each worker's progress
while the phase runs), ``lost_worker(error)`` and ``recover()`` for reruns, and ``close()``.

- ``LocalEngine``: one worker in the calling process.
- ``ProcessEngine``: ``n_workers`` warm local processes (a loky pool kept between fits) that
  map the training data from shared memory and gossip over loopback with the very same
  transport and protocol as Spark tasks, so the gossip layer runs without a JVM.
- ``SparkEngine`` (in ``spark.stages``): one barrier task per worker.
"""

import contextlib
import dataclasses
import secrets
import sys
import time
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, wait
from functools import partial

from joblib.externals.loky.process_executor import TerminatedWorkerError

from ._gossip import AllGatherClient, AllGatherServer, PeerLost
from ._pool import acquire_pool, blas_threads, discard_pool, release_pool
from ._scratch import usable_cpus
from ._shared import open_shard, shard_sources
from ._task import (
    PhaseStalled,
    Stopwatch,
    SyncPlan,
    run_worker,
    straggler_allowance,
    train_watched,
)
from ._watch import open_progress_listener
from ._worker import Shard, consensus

# Seconds any single network wait of a phase may take before a peer is given up.
NETWORK_TIMEOUT = 30.0


# Seconds between two progress snapshots of a worker in this process (nothing to send).
IN_PROCESS_REPORT_SECONDS = 0.2


class LocalEngine:
    """Runs every phase in the calling process, on one worker holding all of the data."""

    n_workers = 1
    phase_workers = 1  # workers (results) of each phase
    epochs_per_phase = 1

    def __init__(self):
        self._shards = None

    def start_from_arrays(self, X, codes, worker_rows, mean, scale):
        """Keep ``X`` and the class ``codes`` (or None) as the worker's shard.

        ``worker_rows`` holds the worker's rows, in the order it keeps them (None: all rows as
        they are, without a copy).
        """
        shards = []
        for rows in worker_rows:
            y = codes if rows is None or codes is None else codes[rows]
            shards.append(Shard(X if rows is None else X[rows], y, mean, scale))
        self.start(shards)

    def start(self, shards):
        """Keep the workers' shards (a list with one ``Shard``) for the phases to come."""
        if len(shards) != 1:
            raise ValueError(f"LocalEngine runs one worker, got {len(shards)} shards")
        self._shards = shards

    def run_phase(self, phase, state, below, monitor=None):
        """Run ``phase`` on every worker and return ``(consensus_state, results)``."""
        results = []
        for rank, shard in enumerate(self._shards):
            clock = Stopwatch()
            send = None if monitor is None else partial(monitor.update, rank)
            result = train_watched(clock, send, IN_PROCESS_REPORT_SECONDS, rank, phase, shard,
                                   state, below)
            results.append(clock.stamped(result))
        return consensus(results), results

    def lost_worker(self, error):
        """Never: the worker is this process."""
        return None

    def recover(self):
        """Nothing to do (see ``lost_worker``)."""

    def close(self):
        """Release the shards."""
        self._shards = None


class ProcessEngine:
    """Runs each phase on ``n_workers`` local processes that synchronise by ``sync``.

    The processes come from a warm pool kept between fits (``_pool``) and map the training
    data from shared memory (``_shared``): a second fit of the same data in this process
    starts training without starting processes or copying data. Each worker uses
    ``blas_threads(n_workers)`` BLAS threads (one when there are as many workers as cores).

    Parameters
    ----------
    n_workers : int
        Number of worker processes (one shard each).
    sync : {"gossip", "average", "none"}
        Synchronisation within a phase.
    sync_every : int
        Minibatches between two synchronisations of a worker.
    timeout : float, default=NETWORK_TIMEOUT
        Seconds any single network wait of a phase may take; also (at least) how long the
        last workers of a phase may take after the first finished before the phase is
        stopped as stalled.
    """

    # Up to ten fine-tuning epochs per phase, as on Spark: a phase's dispatch, rendezvous and
    # consensus cost tens of milliseconds, an epoch of a small data set less.
    epochs_per_phase = 10

    def __init__(self, n_workers, sync, sync_every, timeout=NETWORK_TIMEOUT):
        self.n_workers = n_workers
        self.sync = sync
        self.sync_every = sync_every
        self.timeout = timeout
        self._secret = secrets.token_bytes(32)
        self._sources = None
        self._total = 0  # training rows over all workers, once the data is shared
        self._phase_running = False
        self._pool = acquire_pool(n_workers)  # its processes start while data is prepared

    def __repr__(self):  # never print the secret
        return f"ProcessEngine(n_workers={self.n_workers}, sync={self.sync!r})"

    @property
    def phase_workers(self):
        """Workers (results) of each phase."""
        return self.n_workers

    def start_from_arrays(self, X, codes, worker_rows, mean, scale):
        """Share ``X`` and the class ``codes`` (or None) with the workers, who cut their shards
        (``worker_rows[w]``, None: all rows) out of it."""
        self._sources = shard_sources(X, codes, worker_rows, mean, scale)
        self._total = sum(X.shape[0] if rows is None else len(rows) for rows in worker_rows)

    def run_phase(self, phase, state, below, monitor=None):
        """Run ``phase`` on every worker process and return ``(consensus_state, results)``."""
        plan = SyncPlan(
            mode=self.sync, n_workers=self.n_workers, sync_every=self.sync_every,
            secret=self._secret, phase_key=secrets.randbits(63), total_samples=self._total,
            timeout=self.timeout, blas_threads=blas_threads(self.n_workers),
        )
        with contextlib.ExitStack() as listeners:
            progress = open_progress_listener(self._secret, plan.phase_key, self.n_workers,
                                              monitor)
            if progress is not None:
                listeners.callback(progress.close)
                plan = dataclasses.replace(plan, progress_address=progress.address)
            rendezvous = None
            if self.sync != "none":  # independent workers need no rendezvous
                server = AllGatherServer(self._secret, self.n_workers, self.timeout).start()
                listeners.callback(server.close)
                rendezvous = AllGatherClient(server.address, self._secret, self.timeout,
                                             self.n_workers)
            self._phase_running = True  # until its results are in (see close)
            futures = [self._pool.submit(_run_shared_worker, rank, phase, source, state, below,
                                         plan, rendezvous)
                       for rank, source in enumerate(self._sources)]
            results = self._results(futures)
            self._phase_running = False
        return consensus(results), results

    def _results(self, futures):
        """The workers' results in rank order. A worker's error is raised at once; workers
        far behind the first to finish (``straggler_allowance``) stop the phase."""
        started = time.monotonic()
        done, pending = wait(futures, return_when=FIRST_COMPLETED)
        first_finished = time.monotonic()
        allowance = straggler_allowance(first_finished - started, self.timeout)
        while pending:
            if any(future.exception() is not None for future in done):
                break
            left = first_finished + allowance - time.monotonic()
            more, pending = wait(pending, timeout=max(0.0, left),
                                 return_when=FIRST_EXCEPTION)
            if not more:
                break
            done |= more
        for future in done:
            if future.exception() is not None:
                self._discard_pool()  # peers may wait for the failed one: end them all
                raise future.exception()
        if pending:
            self._discard_pool()
            raise PhaseStalled(
                f"{len(pending)} of {self.n_workers} worker processes had not finished the "
                f"phase {allowance:.0f}s after the first did (a stopped or hung process)")
        return [future.result() for future in futures]

    def lost_worker(self, error):
        """Why ``error`` means a worker process was lost (killed, crashed, stalled), or None."""
        if isinstance(error, TerminatedWorkerError):
            return "a worker process was terminated"
        if isinstance(error, PeerLost):
            return "a worker did not reach the phase's rendezvous in time"
        if isinstance(error, PhaseStalled):
            return "a worker stopped making progress"
        return None

    def recover(self):
        """Replace the worker pool after a lost worker (the old one is broken)."""
        self._discard_pool()
        self._pool = acquire_pool(self.n_workers)

    def close(self):
        """Give the worker pool back for later fits; the shared data stays for them too.

        A pool whose phase did not finish (the fit was interrupted, e.g. by Ctrl-C in a
        notebook) is shut down instead: its workers are still busy with that phase.
        """
        if self._phase_running:
            self._discard_pool()
        pool, self._pool = self._pool, None
        if pool is not None:
            release_pool(self.n_workers, pool)
        self._sources = None

    def _discard_pool(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            discard_pool(pool)


def _run_shared_worker(rank, phase, source, state, below, plan, rendezvous):
    """One worker process's phase: its shard from the shared data, then ``run_worker``."""
    return run_worker(rank, phase, lambda: open_shard(source), state, below, plan, rendezvous)


# With n_workers=None a worker is added per this many samples: below it, the time to start
# workers and to exchange parameters outweighs the parallel work.
SAMPLES_PER_WORKER = 5000


def resolve_backend(backend, dataframe_input):
    """The backend a fit uses, "local" or "spark", for the ``backend`` parameter.

    An explicit "local" or "spark" always wins. With "auto", a DataFrame, or a SparkSession
    active in this process, means Spark; anything else trains on local worker processes,
    which start in a fraction of a second where an embedded Spark session takes several
    (``benchmarks/bench_cores.py`` measures both).
    """
    if backend != "auto":
        return backend
    if dataframe_input or _active_spark_session():
        return "spark"
    return "local"


def _active_spark_session():
    if "pyspark" not in sys.modules:  # no session without pyspark imported
        return False
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession() is not None


def default_workers(backend, n_samples):
    """Workers of a fit with ``n_workers=None``, before Spark's task slots are counted: one
    per ``SAMPLES_PER_WORKER`` samples, and for local processes at most one per core (one
    BLAS thread each)."""
    wanted = max(1, n_samples // SAMPLES_PER_WORKER)
    return min(wanted, usable_cpus()) if backend == "local" else wanted


def trains_in_driver_process(backend, n_workers, n_samples):
    """Whether a fit trains on workers of this process, from data this process holds.

    ``backend`` is resolved ("local" or "spark"). True for the local backend, and for data
    that one worker should train (``n_workers=None`` and fewer than ``2 *
    SAMPLES_PER_WORKER`` samples): starting Spark tasks for it costs more than the training,
    so it trains here, which also keeps small fits (and scikit-learn's checks) fast and
    deterministic. A small DataFrame is then read into this process first.
    """
    wanted = n_workers or default_workers(backend, n_samples)
    return backend == "local" or (n_workers is None and wanted == 1)


def make_engine(backend, n_workers, sync, sync_every, n_samples, dataframe=None,
                timeout=None):
    """The engine for the resolved ``backend``, choosing the number of workers when it is None.

    See :func:`trains_in_driver_process` for when the workers run in this process; a
    ``dataframe`` left to the engine is read on the executors. ``timeout`` bounds every
    network wait of the workers (None: the engine's default).
    """
    wanted = n_workers or default_workers(backend, n_samples)
    limits = {} if timeout is None else {"timeout": float(timeout)}
    if dataframe is None and trains_in_driver_process(backend, n_workers, n_samples):
        if wanted == 1:
            return LocalEngine()
        return ProcessEngine(wanted, sync, sync_every, **limits)
    from .spark.session import check_barrier_possible, get_session
    from .spark.stages import SparkEngine

    spark = get_session(dataframe)
    slots = check_barrier_possible(spark, n_workers or 1)
    return SparkEngine(spark, n_workers or min(wanted, slots), sync, sync_every, **limits)


def run_phase_retrying(engine, phase, state, below, retries, report, monitor=None):
    """``engine.run_phase(phase, state, below, monitor)``, rerun from the same starting state
    when it fails because a worker was lost, at most ``retries`` times.

    ``report(message)`` is told of every retry, and of what ``engine.recover()`` changed
    (fewer workers). Errors that are not a lost worker (bad data, divergence, a bug) are
    raised at once. ``monitor.attempt(n_workers)``, if a monitor is given, is called before
    every try with the number of workers it runs on.

    Returns
    -------
    consensus_state, results, n_retries
    """
    attempt = 0
    while True:
        try:
            if monitor is not None:
                monitor.attempt(engine.phase_workers)
            return (*engine.run_phase(phase, state, below, monitor), attempt)
        except Exception as error:
            reason = engine.lost_worker(error)
            if reason is None:
                raise
            if attempt == retries:
                error.add_note(f"skdbn: {reason}; the phase was tried {attempt + 1} times "
                               f"(phase_retries={retries})")
                raise
            report(f"{reason}; rerunning the phase from its starting state "
                   f"(retry {attempt + 1} of {retries})")
        attempt += 1
        change = engine.recover()
        if change:
            report(change)
