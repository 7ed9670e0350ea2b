"""A real Spark standalone cluster on loopback: a master and two workers as separate processes.

The cluster comes from the installed pyspark's ``spark-class``; every process binds to
127.0.0.1, has a bounded start-up wait, and is stopped whatever happens. The training driver
runs in a subprocess of its own (one SparkContext per process).
"""

import contextlib
import os
import signal
import textwrap

import pytest
from processes import busiest, executor_pids, kill_standalone_worker, spark_python_worker
from spark_cluster import driver_result, fit_with_fault, running_cluster

pyspark = pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("spark-cluster")) as master_url:
        yield master_url


# What a rerun counts as free task slots (``free_slots_now``), on a cluster of two one-core
# executors: with nothing running, and while one task holds a slot (the classic scheduler's
# count, or a Connect session's probe job).
_FREE_SLOTS = """
import os, tempfile, threading, time
from skdbn.spark.placement import free_slots_now

RELEASE = os.path.join(tempfile.mkdtemp(), "release")  # the executors share this machine

def hold(batches):
    for batch in batches:
        started = time.monotonic()
        while not os.path.exists(RELEASE) and time.monotonic() - started < 120:
            time.sleep(0.1)
        yield batch

def free_slots(spark):
    idle = free_slots_now(spark, 30)
    busy = threading.Thread(target=lambda: spark.range(0, 1, 1, 1).mapInArrow(
        hold, "id long").collect(), daemon=True)
    busy.start()
    time.sleep(3)  # the task is running
    held = free_slots_now(spark, 30)
    open(RELEASE, "w").close()
    busy.join(30)
    return {"idle": idle, "held": held}
"""


def test_gossip_fit_on_a_standalone_cluster(standalone_cluster):
    driver = _FREE_SLOTS + textwrap.dedent(f"""
        import json
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from skdbn import DistributedDBN, loopback_session

        spark = loopback_session({standalone_cluster!r}, app_name="skdbn-cluster",
                                 config={{"spark.executor.memory": "512m"}})
        try:
            X, y = load_digits(return_X_y=True)
            X_train, X_test, y_train, y_test = train_test_split(
                X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
            model = DistributedDBN(hidden_layer_sizes=(64,), pretrain_epochs=5, max_iter=10,
                                   n_workers=2, sync="gossip", random_state=0)
            model.fit(X_train, y_train)
            print("RESULT", json.dumps({{"accuracy": model.score(X_test, y_test),
                                         "n_workers": model.n_workers_,
                                         "master": spark.sparkContext.master,
                                         "free_slots": free_slots(spark)}}))
        finally:
            spark.stop()
    """)
    outcome = driver_result(driver)
    assert outcome["master"] == standalone_cluster
    assert outcome["n_workers"] == 2
    assert outcome["accuracy"] > 0.9
    assert outcome["free_slots"] == {"idle": 2, "held": 1}


def test_a_connect_session_of_the_cluster_swaps_addresses_through_spark(standalone_cluster):
    # The client's own rendezvous is for Connect servers whose executors are on this
    # machine; a cluster's executors may be anywhere, so the tasks use Spark's allGather and
    # asking for the client's rendezvous is refused.
    driver = _FREE_SLOTS + textwrap.dedent(f"""
        import json
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN, loopback_session
        from skdbn.spark import is_connect_session
        from skdbn.spark.placement import rendezvous_mode

        spark = loopback_session({standalone_cluster!r}, app_name="skdbn-cluster-connect",
                                 config={{"spark.executor.memory": "512m"}}, connect=True)
        try:
            X, y = load_digits(return_X_y=True)
            params = dict(hidden_layer_sizes=(32,), pretrain_epochs=2, max_iter=4,
                          n_workers=2, sync="gossip", random_state=0)
            mode = rendezvous_mode(spark)
            model = DistributedDBN(**params).fit(X / 16.0, y)
            spark.conf.set("spark.skdbn.rendezvous", "driver")
            try:
                DistributedDBN(**params).fit(X / 16.0, y)
                refusal = None
            except ValueError as error:
                refusal = str(error)
            print("RESULT", json.dumps({{"connect": is_connect_session(spark), "mode": mode,
                                         "master": spark.conf.get("spark.master"),
                                         "n_workers": model.n_workers_,
                                         "accuracy": model.score(X / 16.0, y),
                                         "refusal": refusal,
                                         "free_slots": free_slots(spark)}}))
        finally:
            spark.stop()
    """)
    outcome = driver_result(driver)
    assert outcome["connect"] and outcome["master"] == standalone_cluster
    assert outcome["mode"] == "barrier"
    assert outcome["n_workers"] == 2
    assert outcome["accuracy"] > 0.8
    assert "not possible on this Spark Connect session" in (outcome["refusal"] or "")
    assert outcome["free_slots"] == {"idle": 2, "held": 1}


def _kill_an_executor():
    executors = executor_pids()
    assert executors, "no executor process to kill"
    os.kill(executors[0], 9)


@pytest.mark.slow
def test_a_killed_executor_costs_one_phase(standalone_cluster, tmp_path):
    # The standalone worker launches a new executor, and the retried phase waits for its
    # task slot.
    outcome, stdout = fit_with_fault(standalone_cluster, tmp_path, """
        params = dict(hidden_layer_sizes=(256,), pretrain_epochs=40, max_iter=2,
                      n_workers=2, sync="average", random_state=0)
        SparkEngine.run_phase = mark_phase
        faulted = DistributedDBN(verbose=1, **params).fit(X, y)
        SparkEngine.run_phase = original
        reference = DistributedDBN(**params).fit(X, y)
        same = all(np.array_equal(a, b) for a, b in zip(
            faulted.coefs_ + faulted.intercepts_, reference.coefs_ + reference.intercepts_))
        print("RESULT", json.dumps({"retries": faulted.n_phase_retries_, "same": same,
                                    "accuracy": faulted.score(X, y)}))
    """, _kill_an_executor, delay=1.5)
    assert outcome["retries"] == 1 and outcome["same"], outcome
    assert "an executor was lost; rerunning the phase" in stdout
    assert outcome["accuracy"] > 0.9


@pytest.mark.slow
def test_a_phase_reruns_on_the_workers_left_when_a_machine_is_lost(tmp_path):
    # A worker daemon and its executor are killed for good in the first phase (a machine
    # lost): the phase reruns on the one task slot left, that task training both workers'
    # shards, and the fit completes. Its own cluster: the module's keeps both workers.
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster") as master_url:
        def lose_a_machine():
            assert kill_standalone_worker(tmp_path / "cluster" / "work0"), "no worker killed"

        outcome, stdout = fit_with_fault(master_url, tmp_path, """
            SparkEngine.run_phase = mark_phase
            model = DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=40, max_iter=5,
                                   n_workers=2, sync="gossip", network_timeout=5.0,
                                   random_state=0, verbose=1).fit(X, y)
            print("RESULT", json.dumps({"retries": model.n_phase_retries_,
                                        "accuracy": model.score(X, y)}))
        """, lose_a_machine, delay=2.0)
    assert outcome["retries"] == 1, outcome
    assert "1 of the 2 task slots are left" in stdout, stdout
    assert outcome["accuracy"] > 0.9


@pytest.mark.slow
def test_a_stopped_worker_on_a_connect_session_of_the_cluster_costs_one_rerun(
        standalone_cluster, tmp_path):
    # No task status reaches a Connect client and the tasks cannot reach it, so the peers of
    # the stopped worker see it stall, and their task's failure ends the barrier stage. The
    # stall costs the phase up to then plus the straggler allowance (at least the 10 s timeout).
    # (Averaging's own watch: tests/test_gossip.py; the fault matrix stops both.)
    stopped = []

    def stop_a_python_worker():
        pid = busiest(spark_python_worker)
        assert pid is not None, "no busy Python worker to stop"
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    try:
        outcome, stdout = fit_with_fault(standalone_cluster, tmp_path, """
            import time
            SparkEngine.run_phase = mark_phase
            started = time.perf_counter()
            model = DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=20, max_iter=2,
                                   n_workers=2, sync="gossip", network_timeout=10.0,
                                   random_state=0, verbose=1).fit(X, y)
            print("RESULT", json.dumps({"retries": model.n_phase_retries_,
                                         "seconds": time.perf_counter() - started,
                                         "workers": model.n_workers_,
                                         "accuracy": model.score(X, y)}))
        """, stop_a_python_worker, delay=1.5, connect=True)
    finally:
        for pid in stopped:  # the executor kills it when the stage ends; if not, here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped
    assert outcome["retries"] == 1, (outcome, stdout)
    # Stopped before Spark's allGather, its peer gives up waiting there; stopped later, its
    # peer finishes its share and gives up waiting for it to finish.
    assert ("a worker stopped making progress (its peers saw it)" in stdout
            or "a worker did not reach the phase's rendezvous" in stdout), stdout
    assert outcome["workers"] == 2 and outcome["accuracy"] > 0.9
