"""Engines start workers and collect their results; they hold no training math.

Every engine offers ``start_from_arrays(X, codes, worker_rows, mean, scale)`` (the local
engines also ``start(shards)``), ``run_phase(phase, state, below)`` returning the consensus
state and the workers' results, and ``close()``.

- ``LocalEngine``: one worker in the calling process.
- ``ProcessEngine``: ``n_workers`` local processes (joblib) that gossip over loopback with the
  very same transport and protocol as Spark tasks, so the gossip layer runs without a JVM.
- ``SparkEngine`` (in ``spark.stages``): one barrier task per worker.
"""

import contextlib
import os
import secrets

from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError

from ._gossip import AllGatherClient, AllGatherServer, PeerLost
from ._task import SyncPlan, run_worker
from ._worker import Shard, consensus, run_phase

# Seconds any single network wait of a phase may take before a peer is given up.
NETWORK_TIMEOUT = 30.0


class _InProcessData:
    """Engines whose workers get their shards as numpy arrays from this process."""

    def start_from_arrays(self, X, codes, worker_rows, mean, scale):
        """Cut ``X`` and the class ``codes`` (or None) into the workers' shards and start.

        ``worker_rows[w]`` are worker ``w``'s rows, in the order it keeps them (None: all
        rows as they are, without a copy).
        """
        shards = []
        for rows in worker_rows:
            y = codes if rows is None or codes is None else codes[rows]
            shards.append(Shard(X if rows is None else X[rows], y, mean, scale))
        self.start(shards)


class LocalEngine(_InProcessData):
    """Runs every phase in the calling process, on one worker holding all of the data."""

    n_workers = 1
    epochs_per_phase = 1

    def __init__(self):
        self._shards = None

    def start(self, shards):
        """Keep the workers' shards (a list with one ``Shard``) for the phases to come."""
        if len(shards) != 1:
            raise ValueError(f"LocalEngine runs one worker, got {len(shards)} shards")
        self._shards = shards

    def run_phase(self, phase, state, below):
        """Run ``phase`` on every worker and return ``(consensus_state, results)``."""
        results = [run_phase(phase, shard, state, below) for shard in self._shards]
        return consensus(results), results

    def lost_worker(self, error):
        """Never: the worker is this process."""
        return None

    def recover(self):
        """Nothing to do (see ``lost_worker``)."""

    def close(self):
        """Release the shards."""
        self._shards = None


class ProcessEngine(_InProcessData):
    """Runs each phase on ``n_workers`` local processes that synchronise by ``sync``.

    Parameters
    ----------
    n_workers : int
        Number of worker processes (one shard each).
    sync : {"gossip", "average", "none"}
        Synchronisation within a phase.
    sync_every : int
        Minibatches between two synchronisations of a worker.
    """

    epochs_per_phase = 1

    def __init__(self, n_workers, sync, sync_every, timeout=NETWORK_TIMEOUT):
        self.n_workers = n_workers
        self.sync = sync
        self.sync_every = sync_every
        self.timeout = timeout
        self._secret = secrets.token_bytes(32)
        self._shards = None
        self._parallel = None

    def __repr__(self):  # never print the secret
        return f"ProcessEngine(n_workers={self.n_workers}, sync={self.sync!r})"

    def start(self, shards):
        """Keep the workers' shards and open the worker pool for the phases to come."""
        if len(shards) != self.n_workers:
            raise ValueError(f"expected {self.n_workers} shards, got {len(shards)}")
        self._shards = shards
        # One pool for the whole fit: processes and memory-mapped shards are reused by every
        # phase and cleaned up in close().
        self._parallel = Parallel(n_jobs=self.n_workers, backend="loky").__enter__()

    def run_phase(self, phase, state, below):
        """Run ``phase`` on every worker process and return ``(consensus_state, results)``."""
        plan = SyncPlan(
            mode=self.sync, n_workers=self.n_workers, sync_every=self.sync_every,
            secret=self._secret, phase_key=secrets.randbits(63),
            total_samples=sum(s.n_samples for s in self._shards), timeout=self.timeout,
            blas_threads=max(1, (os.cpu_count() or 1) // self.n_workers),
        )
        server = None
        if self.sync != "none":  # independent workers need no rendezvous
            server = AllGatherServer(self._secret, self.n_workers, self.timeout).start()
        try:
            rendezvous = server and AllGatherClient(server.address, self._secret, self.timeout,
                                                     self.n_workers)
            results = self._parallel(
                delayed(run_worker)(rank, phase, shard, state, below, plan, rendezvous)
                for rank, shard in enumerate(self._shards)
            )
        finally:
            if server is not None:
                server.close()
        return consensus(results), results

    def lost_worker(self, error):
        """Why ``error`` means a worker process was lost (killed, crashed), or None."""
        if isinstance(error, TerminatedWorkerError):
            return "a worker process was terminated"
        if isinstance(error, PeerLost):
            return "a worker did not reach the phase's rendezvous in time"
        return None

    def recover(self):
        """Replace the worker pool after a lost worker (loky's old one is broken)."""
        self._close_pool()
        self._parallel = Parallel(n_jobs=self.n_workers, backend="loky").__enter__()

    def close(self):
        """Close the worker pool and release the shards."""
        self._close_pool()
        self._shards = None

    def _close_pool(self):
        parallel, self._parallel = self._parallel, None
        if parallel is not None:
            with contextlib.suppress(Exception):  # a broken pool may complain; it is gone
                parallel.__exit__(None, None, None)


# With n_workers=None a worker is added per this many samples: below it, the time to start a
# barrier stage and to exchange parameters outweighs the parallel work.
SAMPLES_PER_WORKER = 5000


def trains_in_driver_process(backend, n_workers, n_samples):
    """Whether a fit trains on workers of this process, from data this process holds.

    True for the local backend, and for data that one worker should train (``n_workers=None``
    and fewer than ``2 * SAMPLES_PER_WORKER`` samples): starting Spark tasks for it costs more
    than the training, so it trains here, which also keeps small fits (and scikit-learn's
    checks) fast and deterministic. A small DataFrame is then read into this process first.
    """
    wanted = n_workers or max(1, n_samples // SAMPLES_PER_WORKER)
    return backend == "local" or (n_workers is None and wanted == 1)


def make_engine(backend, n_workers, sync, sync_every, n_samples, dataframe=None,
                timeout=None):
    """The engine for ``backend``, choosing the number of workers when it is None.

    See :func:`trains_in_driver_process` for when the workers run in this process; a
    ``dataframe`` left to the engine is read on the executors. ``timeout`` bounds every
    network wait of the workers (None: the engine's default).
    """
    wanted = n_workers or max(1, n_samples // SAMPLES_PER_WORKER)
    limits = {} if timeout is None else {"timeout": float(timeout)}
    if dataframe is None and trains_in_driver_process(backend, n_workers, n_samples):
        workers = n_workers or 1
        if workers == 1:
            return LocalEngine()
        return ProcessEngine(workers, sync, sync_every, **limits)
    from .spark.session import check_barrier_possible, get_session
    from .spark.stages import SparkEngine

    spark = get_session(dataframe)
    slots = check_barrier_possible(spark, n_workers or 1)
    return SparkEngine(spark, n_workers or min(wanted, slots), sync, sync_every, **limits)


def run_phase_retrying(engine, phase, state, below, retries, report):
    """``engine.run_phase(phase, state, below)``, rerun from the same starting state when it
    fails because a worker was lost, at most ``retries`` times.

    ``report(message)`` is told of every retry, and of what ``engine.recover()`` changed
    (fewer workers). Errors that are not a lost worker (bad data, divergence, a bug) are
    raised at once.

    Returns
    -------
    consensus_state, results, n_retries
    """
    attempt = 0
    while True:
        try:
            return (*engine.run_phase(phase, state, below), attempt)
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
