"""Lost workers, for real: worker processes are killed with SIGKILL while a phase runs.

With ``sync="average"`` a phase is deterministic, so a fit whose phase was rerun after the
loss must give exactly the model of a fit that lost nothing; each test checks that, that the
loss cost exactly one phase rerun, and that ``verbose=1`` said so.
"""

import contextlib
import os
import signal
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn._engines import LocalEngine, ProcessEngine, run_phase_retrying

pytestmark = pytest.mark.slow

# Long enough phases (a few seconds each on two cores) to be killed in the middle of one.
PARAMS = dict(hidden_layer_sizes=(256,), pretrain_epochs=40, max_iter=2, n_workers=2,
              sync="average", random_state=0)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25,
                                                        random_state=0, stratify=y)
    return np.tile(X_train, (4, 1)), X_test, np.tile(y_train, 4), y_test


def _processes():
    """``{pid: (parent pid, command line, cpu ticks)}`` of every process we can read."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            table[int(name)] = (int(fields[1]), command, int(fields[11]) + int(fields[12]))
    return table


def _busiest(is_worker):
    """The pid of the worker process (``is_worker(pid, table)``) that used most CPU over the
    last 0.3 s: one that is running a task, not an idle one."""
    before = _processes()
    time.sleep(0.3)
    after = _processes()
    busy = {pid: after[pid][2] - before[pid][2] for pid in after
            if pid in before and is_worker(pid, after)}
    return max(busy, key=busy.get) if busy else None


def _loky_worker(pid, table):
    parent, command, _ = table[pid]
    return (parent == os.getpid() and "loky" in command
            and "resource_tracker" not in command and "semaphore" not in command)


def _spark_python_worker(pid, table):
    # Spark's Python daemon forks one worker per task; kill a forked worker, not the daemon.
    parent, command, _ = table[pid]
    return "pyspark.daemon" in command and parent in table and \
        "pyspark.daemon" in table[parent][1]


class _KillDuringFirstPhase:
    """Wraps ``engine_class.run_phase``: once the fit's first phase has run for ``delay``
    seconds, SIGKILL the busiest worker process."""

    def __init__(self, monkeypatch, engine_class, is_worker, delay=1.0):
        self.killed = []
        self._started = threading.Event()
        original = engine_class.run_phase

        def run_phase(engine, *args):
            self._started.set()
            return original(engine, *args)

        monkeypatch.setattr(engine_class, "run_phase", run_phase)
        self._thread = threading.Thread(target=self._kill, args=(is_worker, delay), daemon=True)
        self._thread.start()

    def _kill(self, is_worker, delay):
        if not self._started.wait(120):
            return
        time.sleep(delay)
        pid = _busiest(is_worker)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)

    def join(self):
        self._thread.join(10)


def _assert_same_model(faulted, reference):
    for a, b in zip(faulted.coefs_ + faulted.intercepts_,
                    reference.coefs_ + reference.intercepts_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_killed_local_worker_process_costs_one_phase(digits_split, monkeypatch, capsys):
    X_train, X_test, y_train, y_test = digits_split
    reference = DistributedDBN(backend="local", **PARAMS).fit(X_train, y_train)
    killer = _KillDuringFirstPhase(monkeypatch, ProcessEngine, _loky_worker)
    model = DistributedDBN(backend="local", verbose=1, **PARAMS).fit(X_train, y_train)
    killer.join()
    assert killer.killed, "no worker process was running a task"
    assert model.n_phase_retries_ == 1 and reference.n_phase_retries_ == 0
    assert "a worker process was terminated; rerunning the phase" in capsys.readouterr().out
    _assert_same_model(model, reference)
    assert model.score(X_test, y_test) == reference.score(X_test, y_test) > 0.9


def test_a_killed_spark_python_worker_costs_one_phase(spark, digits_split, monkeypatch,
                                                     capsys):
    from skdbn.spark.stages import SparkEngine

    X_train, X_test, y_train, y_test = digits_split
    reference = DistributedDBN(**PARAMS).fit(X_train, y_train)
    killer = _KillDuringFirstPhase(monkeypatch, SparkEngine, _spark_python_worker, delay=2.0)
    model = DistributedDBN(verbose=1, **PARAMS).fit(X_train, y_train)
    killer.join()
    assert killer.killed, "no Python worker was running a task"
    assert model.n_phase_retries_ == 1
    assert "a task's Python worker died; rerunning the phase" in capsys.readouterr().out
    _assert_same_model(model, reference)
    assert model.score(X_test, y_test) == reference.score(X_test, y_test) > 0.9


class _FailingEngine(LocalEngine):
    """A local engine whose phases fail ``failures`` times with ``error`` first."""

    def __init__(self, error, failures, lost):
        super().__init__()
        self.error, self.failures, self.lost = error, failures, lost
        self.recovered = 0

    def run_phase(self, phase, state, below):
        if self.failures:
            self.failures -= 1
            raise self.error
        return state, ["result"]

    def lost_worker(self, error):
        return "a worker was lost" if self.lost else None

    def recover(self):
        self.recovered += 1


def test_the_retry_policy():
    reports = []
    lost = _FailingEngine(ConnectionError("gone"), failures=2, lost=True)
    assert run_phase_retrying(lost, None, "state", [], 2, reports.append) == ("state",
                                                                            ["result"], 2)
    assert lost.recovered == 2 and len(reports) == 2 and "retry 2 of 2" in reports[-1]
    exhausted = _FailingEngine(ConnectionError("gone"), failures=3, lost=True)
    with pytest.raises(ConnectionError) as caught:
        run_phase_retrying(exhausted, None, "state", [], 2, reports.append)
    assert "tried 3 times (phase_retries=2)" in "".join(caught.value.__notes__)
    own_error = _FailingEngine(ValueError("bad data"), failures=1, lost=False)
    with pytest.raises(ValueError, match="bad data"):  # never retried
        run_phase_retrying(own_error, None, "state", [], 2, reports.append)
    assert own_error.recovered == 0
