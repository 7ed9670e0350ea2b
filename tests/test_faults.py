"""Lost workers, for real: worker processes are killed with SIGKILL while a phase runs.

With ``sync="average"`` a phase is deterministic, so a fit whose phase was rerun after the
loss must give exactly the model of a fit that lost nothing; each test checks that, that the
loss cost exactly one phase rerun, and that ``verbose=1`` said so.
"""

import time

import numpy as np
import pytest
from processes import KillDuringFirstPhase, StopDuringFirstPhase, loky_worker, spark_python_worker
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skdbn import DistributedDBN
from skdbn._engines import LocalEngine
from skdbn._processes import ProcessEngine
from skdbn._schedule import run_with_retries

pytestmark = pytest.mark.slow

# Long enough phases (a few seconds each on two cores) to be killed in the middle of one.
PARAMS = dict(hidden_layer_sizes=(256,), pretrain_epochs=80, max_iter=2, n_workers=2,
              sync="average", random_state=0)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25,
                                                        random_state=0, stratify=y)
    return np.tile(X_train, (4, 1)), X_test, np.tile(y_train, 4), y_test


def _assert_same_model(faulted, reference):
    for a, b in zip(faulted.coefs_ + faulted.intercepts_,
                    reference.coefs_ + reference.intercepts_, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_killed_local_worker_process_costs_one_phase(digits_split, monkeypatch, capsys):
    X_train, X_test, y_train, y_test = digits_split
    reference = DistributedDBN(backend="local", **PARAMS).fit(X_train, y_train)
    killer = KillDuringFirstPhase(monkeypatch.setattr, ProcessEngine, loky_worker)
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
    killer = KillDuringFirstPhase(monkeypatch.setattr, SparkEngine, spark_python_worker,
                                  delay=1.5)
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

    def run_phase(self, phase, state, below, monitor=None):
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
    assert run_with_retries(lost, None, "state", [], 2, reports.append) == (
        "state", ["result"], 2)
    assert lost.recovered == 2 and len(reports) == 2 and "retry 2 of 2" in reports[-1]
    exhausted = _FailingEngine(ConnectionError("gone"), failures=3, lost=True)
    with pytest.raises(ConnectionError) as caught:
        run_with_retries(exhausted, None, "state", [], 2, reports.append)
    assert "tried 3 times (phase_retries=2)" in "".join(caught.value.__notes__)
    own_error = _FailingEngine(ValueError("bad data"), failures=1, lost=False)
    with pytest.raises(ValueError, match="bad data"):  # never retried
        run_with_retries(own_error, None, "state", [], 2, reports.append)
    assert own_error.recovered == 0


@pytest.mark.parametrize("sync", ["gossip", "average"])
def test_a_stopped_worker_costs_at_most_a_timeout(digits_split, monkeypatch, sync):
    # SIGSTOP for longer than the network timeout, then SIGCONT: the other worker gives the
    # stopped one up for the rest of the phase (once, not at every sync point) and the fit
    # completes; nothing waits without a bound.
    X_train, X_test, y_train, y_test = digits_split
    # A first phase of a second or two, so that the stop lands in it on a fast machine too.
    params = dict(PARAMS, sync=sync, network_timeout=2.0, pretrain_epochs=50,
                  phase_retries=5)
    stopper = StopDuringFirstPhase(monkeypatch.setattr, ProcessEngine, loky_worker, seconds=5.0)
    begun = time.monotonic()
    try:
        model = DistributedDBN(backend="local", **params).fit(X_train, y_train)
    finally:
        stopper.join()
    assert stopper.stopped, "no worker process was running a task"
    # Stopped in a phase, the worker is given up until the phase ends; stopped at a phase's
    # start, it misses the rendezvous, and the phase is run again once it is back.
    assert model.n_phase_retries_ <= 3
    assert model.score(X_test, y_test) > 0.85
    assert time.monotonic() - begun < 60  # not a speed figure: the bound on every wait


def test_a_stopped_spark_task_costs_one_phase(spark, digits_split, monkeypatch, capsys):
    # A stopped Python worker would hold its barrier stage for as long as it stays stopped.
    # On a classic session the stage is cancelled once the task is far behind the first to
    # finish, and the phase reruns; on Connect (no scheduler status) a worker stopped within
    # a phase is waited for (stopped for 8 s here, as a pause; not for ever), and one stopped
    # before the rendezvous makes the phase rerun.
    from skdbn.spark.session import is_connect_session
    from skdbn.spark.stages import SparkEngine

    X_train, X_test, y_train, y_test = digits_split
    # The whole fit must outlast the stop's delay: a first phase of a few seconds.
    params = dict(PARAMS, network_timeout=3.0)
    reference = DistributedDBN(**params).fit(X_train, y_train)
    connect = is_connect_session(spark)
    stopper = StopDuringFirstPhase(monkeypatch.setattr, SparkEngine, spark_python_worker,
                                   seconds=8.0 if connect else 300.0, delay=1.0)
    try:
        model = DistributedDBN(verbose=1, **params).fit(X_train, y_train)
    finally:
        stopper.join()
    assert stopper.stopped, "no Python worker was running a task"
    if not connect:  # rerun from the phase's start: nothing of the stopped worker is kept
        assert model.n_phase_retries_ == 1
        # Stopped within a phase, the stage is cancelled as stalled; stopped between two
        # phases (a fast first phase), it misses the next phase's rendezvous. Either way the
        # phase reruns once.
        reasons = ("a worker stopped making progress; rerunning",
                   "a worker did not reach the phase's rendezvous in time; rerunning")
        printed = capsys.readouterr().out
        assert any(reason in printed for reason in reasons), printed
        _assert_same_model(model, reference)
    # On Connect the other worker gave the stopped one up for the rest of the phase.
    assert model.score(X_test, y_test) > 0.9


def test_a_local_worker_stopped_for_good_costs_one_phase(digits_split, monkeypatch, capsys):
    # Its peer gives it up after the timeout and finishes; once it is far behind, the pool
    # is replaced (the stopped process killed) and the phase reruns from its start.
    X_train, X_test, y_train, y_test = digits_split
    # PARAMS' 80 pretraining epochs: a first phase of seconds, so that the stop lands in it
    # (a short phase can end between picking the busiest worker and stopping it).
    params = dict(PARAMS, network_timeout=2.0)
    reference = DistributedDBN(backend="local", **params).fit(X_train, y_train)
    stopper = StopDuringFirstPhase(monkeypatch.setattr, ProcessEngine, loky_worker,
                                   seconds=300.0, delay=1.0)
    try:
        model = DistributedDBN(backend="local", verbose=1, **params).fit(X_train, y_train)
    finally:
        stopper.join()
    assert stopper.stopped, "no worker process was running a task"
    assert model.n_phase_retries_ == 1
    assert "a worker stopped making progress; rerunning" in capsys.readouterr().out
    _assert_same_model(model, reference)
    assert model.score(X_test, y_test) > 0.9
