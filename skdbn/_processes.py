"""``ProcessEngine``: the workers of a fit in warm local processes.

The processes come from a pool kept between fits (``_pool``) and map their shards of the
training data from shared memory (``_shared``); they gossip over loopback with the very
transport and protocol of Spark tasks (``_worker.run_worker``), so the gossip layer runs
without a JVM.
"""

import contextlib
import dataclasses
import secrets
import time
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, wait

from joblib.externals.loky.process_executor import TerminatedWorkerError

from ._engines import NETWORK_TIMEOUT, Engine, dealt_indices
from ._gossip import AllGatherClient, AllGatherServer, PeerLost
from ._phase import consensus
from ._pool import acquire_pool, blas_threads, discard_pool, release_pool
from ._shared import SharedShards, open_shard
from ._sync import straggler_allowance
from ._watch import open_progress_listener
from ._worker import PhaseStalled, SyncPlan, run_worker

# Shards written while the workers start, at most: what a slow disk (this many bytes per
# second) writes in a quarter of the network timeout, and never more than this many bytes
# (shared memory writes them in about 0.2 s; larger shards are written first).
_OVERLAPPED_WRITE_BYTES = 256 * 2**20
_SLOW_WRITE_BYTES_PER_SECOND = 40 * 2**20


class ProcessEngine(Engine):
    """Runs each phase on ``n_workers`` local processes that synchronise by ``sync``.

    The processes come from a warm pool kept between fits (``_pool``): a second fit in this
    process starts training without starting processes. The training rows are written once,
    in the order they are dealt, to shared memory (``_shared``), where each worker maps its
    block of them. Each worker uses
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
        self._shards = None
        self._total = 0  # training rows over all workers, once the data is shared
        self._phase_running = False
        self._killed_workers = False  # a pool was shut down under its workers in this fit
        self._pool = acquire_pool(n_workers)  # its processes start while data is prepared

    def __repr__(self):  # never print the secret
        return f"ProcessEngine(n_workers={self.n_workers}, sync={self.sync!r})"

    def start(self, data, seed):
        """Deal the arrays of ``data`` (by ``dealt_indices``) into the workers' shards; their
        files are written at the start of the first phase, while the workers start."""
        rows = dealt_indices(data.n_samples, self.n_workers, seed)
        self._shards = SharedShards(data.X, data.codes, rows, data.mean, data.scale)
        self._total = data.n_samples

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
            overlap = self._write_while_workers_start()
            if not overlap:
                self._shards.write()
            server = rendezvous = None
            if self.sync != "none":  # independent workers need no rendezvous
                server = AllGatherServer(self._secret, self.n_workers, self.timeout)
                listeners.callback(server.close)
                rendezvous = AllGatherClient(server.address, self._secret, self.timeout,
                                             self.n_workers)
            self._phase_running = True  # until its results are in (see close)
            futures = [self._pool.submit(_run_shared_worker, rank, phase, source, state, below,
                                         plan, rendezvous)
                       for rank, source in enumerate(self._shards.sources)]
            if overlap:
                # The workers start while their shards are written: they read them only after
                # the rendezvous, which answers once the shards are complete.
                self._shards.write()
            if server is not None:
                server.start()
            results = self._results(futures)
            self._phase_running = False
        return consensus(results), results

    def _write_while_workers_start(self):
        """Whether the shards still to write are small enough to write while the workers
        start: they wait for them at the rendezvous, whose every wait is bounded by
        ``timeout``, so a write that might take a fair share of it comes first. Workers
        that do not meet (``sync="none"``, or a lone worker) read at once: never."""
        if self.sync == "none" or self.n_workers == 1:
            return False
        budget = min(_OVERLAPPED_WRITE_BYTES,
                     self.timeout / 4 * _SLOW_WRITE_BYTES_PER_SECOND)
        return self._shards.unwritten_bytes <= budget

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
        """Give the worker pool back for later fits, and remove the fit's shard files.

        A pool whose phase did not finish (the fit was interrupted, e.g. by Ctrl-C in a
        notebook) is shut down instead: its workers are still busy with that phase.
        """
        if self._phase_running:
            self._discard_pool()
        pool, self._pool = self._pool, None
        if pool is not None:
            release_pool(self.n_workers, pool)
        shards, self._shards = self._shards, None
        if shards is not None:
            # Workers being killed may still read their shard: its pages must stay readable.
            shards.close(empty=not self._killed_workers)

    def _discard_pool(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            self._killed_workers = True
            discard_pool(pool)


def _run_shared_worker(rank, phase, source, state, below, plan, rendezvous):
    """One worker process's phase: its shard from the shared data, then ``run_worker``."""
    return run_worker(rank, phase, lambda: open_shard(source), state, below, plan, rendezvous)
