"""Engines start workers and run the phases of a fit on them; they hold no training math.

``Engine`` is what the training schedule asks of an engine. Three implement it:

- ``LocalEngine`` (here): one worker in the calling process.
- ``ProcessEngine`` (``_processes``): warm local processes that map the training data from
  shared memory and gossip over loopback with the very transport and protocol of Spark tasks.
- ``SparkEngine`` (``spark.stages``): one barrier task per worker.

Which one a fit gets, and with how many workers, is a ``WorkerPlan`` (``plan_workers``); the
schedule turns it into an engine.
"""

import abc
from dataclasses import dataclass
from functools import partial

import numpy as np

from ._devices import tensor_device, visible_gpus
from ._machine import usable_cpus
from ._phase import Shard, consensus
from ._worker import Stopwatch, train_watched

# Seconds any single network wait of a phase may take before a peer is given up.
NETWORK_TIMEOUT = 30.0

# Seconds between two progress snapshots of a worker in this process (nothing to send).
IN_PROCESS_REPORT_SECONDS = 0.2

# With n_workers=None a worker is added per this many samples: below it, the time to start
# workers and to exchange parameters outweighs the parallel work.
SAMPLES_PER_WORKER = 5000


class Engine(abc.ABC):
    """Runs the phases of one fit on its workers.

    An engine is made for one fit. ``start`` puts the training data where the workers read
    it, ``run_phase`` runs each phase on every worker and returns their consensus, and
    ``close`` lets everything go (also after a failure). When ``run_phase`` fails because a
    worker was lost (``lost_worker`` says why), the schedule calls ``recover`` and runs the
    phase again from its starting state.

    Attributes
    ----------
    n_workers : int
        Workers (shards of the data) of the fit.
    epochs_per_phase : int
        Fine-tuning epochs the schedule groups into one phase: more where a phase has a
        fixed cost (a Spark stage, a rendezvous) that a small epoch would not pay back.
    """

    n_workers: int
    epochs_per_phase: int

    @property
    def phase_workers(self):
        """Workers (results) of each phase: ``n_workers`` unless a phase reran on fewer."""
        return self.n_workers

    @abc.abstractmethod
    def start(self, data, seed):
        """Give the workers their shards of ``data`` (a ``TrainingData``).

        Arrays are dealt to the workers by :func:`dealt_indices` with ``seed``; the shards of a
        DataFrame were dealt when it was prepared.
        """

    @abc.abstractmethod
    def run_phase(self, phase, state, below, monitor=None):
        """Run ``phase`` from ``state`` on every worker; return ``(consensus, results)``.

        ``below`` are the finished layers under a pretrained one; ``monitor.update(rank,
        snapshot)``, if a monitor is given, hears each worker's progress while it trains.
        """

    def lost_worker(self, error):
        """Why ``error`` from :meth:`run_phase` means a worker was lost, or None when it is
        an error of the fit itself (bad data, divergence), which is never retried."""
        return None

    def recover(self):
        """Get ready to rerun a phase after a lost worker; returns what changed (fewer
        workers), or None."""
        return None

    @abc.abstractmethod
    def close(self):
        """Let the workers and the data go; never hides the error of a failed fit."""


class LocalEngine(Engine):
    """Runs every phase in the calling process, on one worker holding all of the data."""

    n_workers = 1
    epochs_per_phase = 1

    def __init__(self):
        self._shard = None

    def start(self, data, seed):
        """Keep the data as it is, without a copy, as the one worker's shard."""
        self._shard = Shard(data.X, data.codes, data.mean, data.scale)

    def run_phase(self, phase, state, below, monitor=None):
        """Run ``phase`` on the worker and return ``(consensus_state, [result])``."""
        clock = Stopwatch()
        send = None if monitor is None else partial(monitor.update, 0)
        result = train_watched(clock, send, IN_PROCESS_REPORT_SECONDS, 0, phase, self._shard,
                               state, below)
        results = [clock.stamped(result)]
        return consensus(results), results

    def close(self):
        """Release the shard."""
        self._shard = None


def dealt_indices(n_samples, n_workers, seed):
    """Rows of each worker: a seeded random permutation cut in ``n_workers`` near-equal parts
    (one worker keeps the rows as they are, given as None)."""
    if n_workers == 1:
        return [None]
    order = np.random.default_rng([seed, 4]).permutation(n_samples)
    return np.array_split(order, n_workers)


@dataclass(frozen=True)
class WorkerPlan:
    """Where a fit's workers run: ``kind`` is ``"this process"``, ``"processes"`` (local
    worker processes) or ``"spark"``, with ``n_workers`` workers; ``placement`` is the
    ``spark.placement.SparkPlacement`` of a Spark fit (its session, slots and rendezvous)."""

    kind: str
    n_workers: int
    placement: object = None


def plan_workers(settings, n_samples, dataframe=None):
    """The ``WorkerPlan`` of a fit of ``n_samples`` samples, for its ``settings``.

    See :func:`trains_in_driver_process` for when the workers run in this process; a
    ``dataframe`` left on the cluster is trained by Spark tasks.
    """
    backend = resolve_backend(settings.backend, dataframe_input=dataframe is not None,
                              device=settings.device)
    wanted = settings.n_workers or default_workers(backend, n_samples, settings.device)
    if dataframe is None and trains_in_driver_process(backend, settings.n_workers, n_samples,
                                                      settings.device):
        return WorkerPlan("this process" if wanted == 1 else "processes", wanted)
    from .spark.placement import place_workers

    placement = place_workers(dataframe, settings.n_workers, wanted,
                              settings.sync != "none", settings.device)
    return WorkerPlan("spark", placement.n_tasks, placement)


def resolve_backend(backend, dataframe_input, device="cpu"):
    """The backend a fit uses, "local" or "spark", for the ``backend`` parameter.

    An explicit "local" or "spark" always wins. With "auto", a DataFrame, or a SparkSession
    active in this process, means Spark; anything else trains on local worker processes,
    which start in a fraction of a second where an embedded Spark session takes several
    (``benchmarks/bench_cores.py`` measures both). Arrays on a ``device`` other than the CPU
    train on this machine's GPUs whatever the session; ``backend="spark"`` sends them to the
    executors' GPUs.
    """
    if backend != "auto":
        return backend
    if device != "cpu" and not dataframe_input:
        return "local"
    if dataframe_input or _active_spark_session():
        return "spark"
    return "local"


def _active_spark_session():
    from .spark.session import current_session

    return current_session() is not None


def default_workers(backend, n_samples, device="cpu"):
    """Workers of a fit with ``n_workers=None``, before Spark's task slots are counted: one
    per ``SAMPLES_PER_WORKER`` samples, and for local processes at most one per core (one
    BLAS thread each), or on a ``device`` other than the CPU one per visible GPU (Spark's
    GPU task slots cap a Spark fit's count later)."""
    wanted = max(1, n_samples // SAMPLES_PER_WORKER)
    if backend != "local":
        return wanted
    if device != "cpu":
        return max(1, min(wanted, 1 if tensor_device(device) else visible_gpus()))
    return min(wanted, usable_cpus())


def trains_in_driver_process(backend, n_workers, n_samples, device="cpu"):
    """Whether a fit trains on workers of this process, from data this process holds.

    ``backend`` is resolved ("local" or "spark"). True for the local backend, and for data
    that one worker should train (``n_workers=None`` and fewer than ``2 *
    SAMPLES_PER_WORKER`` samples): starting Spark tasks for it costs more than the training,
    so it trains here, which also keeps small fits (and scikit-learn's checks) fast and
    deterministic. A small DataFrame is then read into this process first. A Spark fit on a
    ``device`` other than the CPU always trains on the executors: their GPUs, not this
    process's, are the ones asked for.
    """
    if backend == "local":
        return True
    if device != "cpu":
        return False
    wanted = n_workers or default_workers(backend, n_samples)
    return n_workers is None and wanted == 1
