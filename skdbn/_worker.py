"""What one worker task does for a phase, wherever it runs (local process or Spark task).

Limit BLAS threads to the task's cores, open the gossip listener, learn the peers' addresses,
train the phase with the chosen synchronizer, and close everything, with every wait bounded.
"""

import math
import time
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

from . import _devices
from ._gossip import GossipNode, WireSpec
from ._phase import train_phase
from ._sync import AverageSync, GossipSync, LocalBudget
from ._watch import REPORT_SECONDS, ProgressClient, ProgressReporter, WorkerLog


class PhaseStalled(RuntimeError):
    """A phase was stopped because some of its workers made no progress: they had not
    finished long after the first one did (a stopped or hung process)."""


@dataclass(frozen=True)
class SyncPlan:
    """How the workers of one phase synchronise (the same for every worker)."""

    mode: str
    n_workers: int
    sync_every: int
    secret: bytes
    phase_key: int
    total_samples: int
    timeout: float
    blas_threads: int
    progress_address: str | None = None  # the driver's ProgressListener, if it watches
    watch_peers: bool = False  # where nobody watches the phase: the workers watch each other

    def __repr__(self):  # never print the secret
        return (f"SyncPlan(mode={self.mode!r}, n_workers={self.n_workers}, "
                f"sync_every={self.sync_every}, phase_key={self.phase_key})")


def run_worker(rank, phase, shard, state, below, plan, all_gather, host="127.0.0.1",
               device=None):
    """Train ``phase`` on this worker's ``shard`` and return its ``PhaseResult``.

    Parameters
    ----------
    rank : int
        This worker's index in ``range(plan.n_workers)``.
    phase, state, below
        As for ``train_phase``.
    shard : Shard or callable
        As for ``train_phase``, or a function that reads it, called after the rendezvous: a
        worker that is slow to read its shard then does not make its peers give it up.
    plan : SyncPlan
        The phase's synchronisation settings and secret.
    all_gather : callable
        ``all_gather(rank, address) -> list of addresses by rank``: the rendezvous.
    host : str, default="127.0.0.1"
        Address this worker listens on (its own host).
    device : str, default=None
        The device this worker trains on (``"cuda:1"``: a Spark task's assigned GPU); None:
        the one of local worker ``rank`` for the phase's ``device`` setting.
    """
    read = shard if callable(shard) else (lambda: shard)
    sharing = 1 if device is not None else _devices.workers_sharing(phase.device,
                                                                    plan.n_workers)
    clock = Stopwatch()
    send = None
    if plan.progress_address is not None:
        send = ProgressClient(plan.progress_address, plan.secret, plan.phase_key, rank)
    with threadpool_limits(plan.blas_threads):
        if plan.n_workers == 1 or plan.mode == "none":
            shard = clock.lap("read", read)
            budget = LocalBudget(phase.epochs, shard.n_samples)
            result = train_watched(clock, send, REPORT_SECONDS, rank, phase, shard, state,
                                   below, budget, device, sharing)
            return clock.stamped(result)
        spec = WireSpec(plan.secret, plan.phase_key, plan.n_workers, state.params.size,
                        state.params.dtype.name)
        node = GossipNode(spec, rank, host, plan.timeout)
        started = time.monotonic()  # a watching worker's allowance counts the read too
        try:
            peers = clock.lap("rendezvous", all_gather, rank, node.address)
            shard = clock.lap("read", read)
            node.start(peers)
            sync = _synchronizer(plan, phase, node, started)
            result = train_watched(clock, send, REPORT_SECONDS, rank, phase, shard, state,
                                   below, sync, device, sharing)
            result.diagnostics["address"] = node.address
        finally:
            clock.lap("close", node.close)
        return clock.stamped(result)


def train_watched(clock, send, interval, rank, phase, shard, state, below, sync=None,
                  device=None, sharing=1):
    """``train_phase`` of worker ``rank``, timed by ``clock`` (a ``Stopwatch``) as "train",
    on ``device`` (a name; None: local worker ``rank``'s for the phase's setting), which
    ``sharing`` workers of the fit train on; while it runs the worker's progress goes
    through ``send(snapshot)`` every ``interval`` seconds and at each epoch's end
    (``send=None``: nobody watches)."""
    log = WorkerLog()
    on = device or _devices.worker_device(phase.device, rank)
    reporter = None if send is None else ProgressReporter(log, send, interval).start()
    try:
        result = clock.lap("train", train_phase, phase, shard, state, below, sync, rank, log,
                           training_math(on, sharing))
        result.diagnostics["device"] = "cpu" if on is None else on
        return result
    finally:
        if reporter is not None:
            reporter.stop()


def training_math(on, sharing=1):
    """The ``TrainingMath`` of a worker training on the device named ``on`` with ``sharing``
    workers: None (numpy on the CPU) for None, else the loops of ``_device_training``."""
    if on is None:
        return None
    from ._device_training import device_math  # imports torch

    return device_math(_devices.torch_device(on), sharing)


class Stopwatch:
    """Wall time of a worker's steps, kept in its result's ``seconds`` (``started``: when
    training began, as ``time.time()``, to line workers up)."""

    def __init__(self):
        self.seconds = {}

    def lap(self, step, function, *args):
        started = time.perf_counter()
        if step == "train":
            self.seconds["started"] = time.time()
        try:
            return function(*args)
        finally:
            self.seconds[step] = time.perf_counter() - started

    def stamped(self, result):
        result.seconds = {**self.seconds, **result.seconds}
        return result


def _synchronizer(plan, phase, node, started):
    watch = started if plan.watch_peers else None
    if plan.mode == "gossip":
        return GossipSync(node, phase.epochs, plan.total_samples, plan.sync_every,
                          phase.batch_size, plan.timeout, watch)
    per_worker = phase.epochs * plan.total_samples / plan.n_workers
    return AverageSync(node, phase.epochs, math.ceil(per_worker / phase.batch_size),
                       plan.sync_every, plan.timeout, watch)
