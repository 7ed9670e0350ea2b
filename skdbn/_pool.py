"""Warm local worker processes, kept between the phases and the fits of one process.

Starting a Python process that imports numpy and skdbn costs about a second; a grid search
fits dozens of models. A pool of ``n`` worker processes is therefore kept after a fit and
handed to the next fit that wants ``n`` workers; its processes exit by themselves after
``IDLE_TIMEOUT`` seconds without work, and :func:`release_workers` ends them at once. A pool
is used by one fit at a time: two fits running at once (in threads) get two pools, because
the workers of a phase must all run together.
"""

import atexit
import threading

from joblib.externals.loky import ProcessPoolExecutor

from ._machine import usable_cpus

# Seconds an idle worker process waits for work before it exits.
IDLE_TIMEOUT = 300.0
# Idle pools kept for later fits (of different worker counts); older ones are shut down.
_MAX_IDLE_POOLS = 2

_idle = []  # (n_workers, executor), most recently used last
_lock = threading.Lock()


def blas_threads(n_workers):
    """BLAS threads of each of ``n_workers`` local workers: the cores shared out, at least one.

    One thread per worker when there are as many workers as cores; measured on 16 cores,
    16 single-threaded workers trained 3.7x faster than 4 workers of 4 threads.
    """
    return max(1, usable_cpus() // n_workers)


def acquire_pool(n_workers):
    """A pool of ``n_workers`` processes for one fit: a warm idle one, else a new one whose
    processes start now (they import the training code while the caller prepares data)."""
    with _lock:
        for index in range(len(_idle) - 1, -1, -1):
            size, executor = _idle[index]
            if size == n_workers:
                del _idle[index]
                return executor
    threads = str(blas_threads(n_workers))
    executor = ProcessPoolExecutor(
        max_workers=n_workers, timeout=IDLE_TIMEOUT,
        # BLAS pools start at their final size rather than one thread per core.
        env={name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "MKL_NUM_THREADS")},
    )
    for _ in range(n_workers):
        executor.submit(_import_training_code)
    return executor


def release_pool(n_workers, executor):
    """Give a healthy pool back after a fit, to be reused (a pool that lost a worker is
    discarded with :func:`discard_pool` instead)."""
    with _lock:
        _idle.append((n_workers, executor))
        surplus = _idle[:-_MAX_IDLE_POOLS]
        del _idle[:-_MAX_IDLE_POOLS]
    for _, old in surplus:
        discard_pool(old)


def discard_pool(executor):
    """Shut a pool down now, killing its processes (a lost or stalled worker's pool)."""
    executor.shutdown(wait=False, kill_workers=True)


def release_workers():
    """End the idle local worker processes kept for later fits, and remove this process's
    directories of shared training data (see :mod:`skdbn._shared`).

    Fits keep their worker processes for the next fit of the same process (a grid search
    starts training at once); they go by themselves after five idle minutes or when the
    process exits. Call this to free them now, e.g. in a notebook after a search. (Each fit
    removes its own shard files when it ends; an idle process lets go of the last fit's
    pages when it next trains or ends.)
    """
    from ._shared import release_shared_data

    with _lock:
        pools = [executor for _, executor in _idle]
        _idle.clear()
    for executor in pools:
        executor.shutdown(wait=True, kill_workers=True)
    release_shared_data()


def _import_training_code():
    from . import _worker  # noqa: F401 - imports numpy, threadpoolctl and the training math


atexit.register(release_workers)
