"""Fault matrix: real faults injected into real fits, and what each costs.

Every fault is real: worker processes and executor JVMs are killed with SIGKILL or stopped
with SIGSTOP, drivers are killed in the middle of a fit, checkpoint files are damaged on
disk, hostile TCP connections are opened to the fit's listeners, and on a cluster of hosts in
network namespaces of their own (``tests/virtual_hosts.py``, needs root) packets are dropped,
a host is cut off, a link goes down and up, and a link is slowed. Each row compares the
faulted fit with the same fit undisturbed, measured in the same run: wall time, test
accuracy, phases rerun, and whether the model is bit for bit the undisturbed one (with
``sync="average"`` it must be). Prints a Markdown table (kept in ``docs/reliability.md``)::

    python benchmarks/fault_matrix.py            # about 10 minutes on 2 cores
    python benchmarks/fault_matrix.py --only local,hostile
    python benchmarks/fault_matrix.py --only hosts,slowlink,connectstop   # about 8 minutes
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from processes import (
    KillDuringFirstPhase,
    StopDuringFirstPhase,
    busiest,
    executor_pids,
    kill_standalone_worker,
    loky_worker,
    spark_python_worker,
)
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from spark_cluster import fit_with_fault, running_cluster
from virtual_hosts import virtual_hosts

from skdbn import DistributedDBN, loopback_session
from skdbn._checkpoint import CHECKPOINT_FILE
from skdbn._gossip import AllGatherServer, parse_address

# Phases of a few seconds on two cores, long enough to be hit in the middle.
PARAMS = dict(hidden_layer_sizes=(256,), pretrain_epochs=40, max_iter=2, n_workers=2,
              sync="average", random_state=0)
RESUME = dict(hidden_layer_sizes=(64, 32), pretrain_epochs=10, max_iter=6, n_workers=2,
              sync="average", random_state=0)


def digits():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25,
                                                        random_state=0, stratify=y)
    return np.tile(X_train, (4, 1)), X_test, np.tile(y_train, 4), y_test


class Patches:
    """``setattr`` that remembers, so that ``undo()`` restores every patched attribute."""

    def __init__(self):
        self._saved = []

    def __call__(self, owner, name, value):
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def undo(self):
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)


def same_model(a, b):
    return all(np.array_equal(x, z) for x, z in zip(a.coefs_ + a.intercepts_,
                                                    b.coefs_ + b.intercepts_, strict=True))


def timed(fit):
    started = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - started


class Matrix:
    """The rows of the table, printed as they come."""

    def __init__(self, data):
        self.X, self.X_test, self.y, self.y_test = data
        self.rows = []

    def add(self, fault, where, outcome, seconds=None, clean_seconds=None, model=None,
            clean=None, reruns=None, same=None):
        def accuracy(model):
            return "" if model is None else f"{model.score(self.X_test, self.y_test):.4f}"

        row = {"fault": fault, "where": where, "outcome": outcome,
               "time": "" if seconds is None else f"{seconds:.1f} s",
               "clean time": "" if clean_seconds is None else f"{clean_seconds:.1f} s",
               "accuracy": accuracy(model), "clean accuracy": accuracy(clean),
               "phases rerun": "" if reruns is None else str(reruns),
               "same model": "" if same is None else ("yes" if same else "no")}
        self.rows.append(row)
        print("  " + " | ".join(f"{v}" for v in row.values()), flush=True)

    def table(self):
        names = list(self.rows[0])
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(row[n] for n in names) + " |" for row in self.rows]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- killed workers

def fault_row(matrix, fit, inject, fault, where):
    """Fit once undisturbed, then again with ``inject(patches)`` (a ``KillDuringFirstPhase``
    or ``StopDuringFirstPhase``) striking the first phase; add the row."""
    clean, clean_s = timed(fit)
    patches = Patches()
    injected = inject(patches)
    try:
        model, seconds = timed(fit)
    finally:
        injected.join()
        patches.undo()
    hit = getattr(injected, "killed", None) or getattr(injected, "stopped", None)
    matrix.add(fault, where, "completes" if hit else "not hit", seconds, clean_s, model, clean,
               model.n_phase_retries_, same_model(model, clean))


def killed_local_worker(matrix):
    from skdbn._processes import ProcessEngine

    fault_row(matrix, lambda: DistributedDBN(backend="local", **PARAMS).fit(matrix.X, matrix.y),
              lambda patches: KillDuringFirstPhase(patches, ProcessEngine, loky_worker),
              "worker process killed (SIGKILL) mid-phase", "backend='local'")


def killed_spark_worker(matrix, spark, connect):
    from skdbn.spark.stages import SparkEngine

    fault_row(matrix, lambda: DistributedDBN(**PARAMS).fit(matrix.X, matrix.y),
              lambda patches: KillDuringFirstPhase(patches, SparkEngine, spark_python_worker,
                                                   delay=2.0),
              "task's Python worker killed mid-phase",
              "Spark Connect local[2]" if connect else "Spark local[2]")


EXECUTOR_DRIVER = '''
import json, time
import numpy as np
from sklearn.datasets import load_digits
from skdbn import DistributedDBN, loopback_session
from skdbn.spark.stages import SparkEngine
spark = loopback_session({master!r}, app_name="fault-matrix",
                         config={{"spark.executor.memory": "512m"}})
X, y = load_digits(return_X_y=True)
X, y = np.tile(X / 16.0, (3, 1)), np.tile(y, 3)
started = time.perf_counter()
clean = DistributedDBN(**{params!r}).fit(X, y)
clean_s = time.perf_counter() - started
original = SparkEngine.run_phase
def run_phase(engine, *args):
    open({marker!r}, "a").close()
    return original(engine, *args)
SparkEngine.run_phase = run_phase
started = time.perf_counter()
model = DistributedDBN(**{params!r}).fit(X, y)
seconds = time.perf_counter() - started
same = all(np.array_equal(a, b) for a, b in zip(model.coefs_ + model.intercepts_,
                                                 clean.coefs_ + clean.intercepts_))
print("RESULT", json.dumps({{"seconds": seconds, "clean": clean_s, "same": same,
                             "reruns": model.n_phase_retries_,
                             "accuracy": model.score(X, y), "clean_accuracy": clean.score(X, y)}}))
spark.stop()
'''


def kill_an_executor(root):
    victims = executor_pids()
    if victims:
        os.kill(victims[0], signal.SIGKILL)


def lose_a_machine(root):
    kill_standalone_worker(os.path.join(root, "work0"))


def killed_executor(matrix, kill, fault):
    params = dict(PARAMS, hidden_layer_sizes=(256,), network_timeout=10.0)
    where = "standalone cluster, 2 executors"
    with tempfile.TemporaryDirectory() as root, running_cluster(pathlib.Path(root)) as master:
        marker = os.path.join(root, "phase-started")
        process = subprocess.Popen(
            [sys.executable, "-c", EXECUTOR_DRIVER.format(master=master, params=params,
                                                          marker=marker)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
        try:
            deadline = time.monotonic() + 300
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.5)
            kill(root)
            stdout, _ = process.communicate(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        matrix.add(fault, where, "FAILED")
        return
    result = json.loads(lines[0][len("RESULT "):])
    matrix.add(fault, where,
               f"completes (held-in accuracy {result['accuracy']:.4f} vs "
               f"{result['clean_accuracy']:.4f})", result["seconds"], result["clean"],
               reruns=result["reruns"], same=result["same"])


def stopped_spark_worker(matrix, spark):
    from skdbn.spark.stages import SparkEngine

    params = dict(PARAMS, network_timeout=5.0)
    fault_row(matrix, lambda: DistributedDBN(**params).fit(matrix.X, matrix.y),
              lambda patches: StopDuringFirstPhase(patches, SparkEngine, spark_python_worker,
                                                   600.0, delay=2.0),
              "task's Python worker stopped (SIGSTOP) for good", "Spark local[2], 5 s timeout")


def stopped_worker(matrix, sync, seconds_stopped=35.0):
    from skdbn._processes import ProcessEngine

    params = dict(PARAMS, sync=sync, pretrain_epochs=80)  # phases of several seconds
    clean, clean_s = timed(lambda: DistributedDBN(backend="local", **params).fit(matrix.X,
                                                                                 matrix.y))
    patches = Patches()
    stopper = StopDuringFirstPhase(patches, ProcessEngine, loky_worker, seconds_stopped)
    try:
        model, seconds = timed(lambda: DistributedDBN(backend="local", **params).fit(
            matrix.X, matrix.y))
    except Exception as error:
        matrix.add(f"worker stopped (SIGSTOP) {seconds_stopped:.0f} s, sync={sync!r}",
                   "backend='local', 30 s timeout", f"fails: {error}")
        return
    finally:
        ended = time.monotonic()
        stopper.join()
        patches.undo()
    hit = bool(stopper.stopped) and stopper.stopped[0][1] < ended
    matrix.add(f"worker stopped (SIGSTOP) {seconds_stopped:.0f} s, sync={sync!r}",
               "backend='local', 30 s timeout", "completes" if hit else "not hit",
               seconds, clean_s, model, clean, model.n_phase_retries_)


# ---------------------------------------------------------------------------- killed driver

RESUME_DRIVER = '''
import numpy as np
from skdbn import DistributedDBN, loopback_session
X = np.load({data!r})
y = X[:, -1].astype(int)
X = X[:, :-1]
if {frame!r}:
    spark = loopback_session("local[2]")
    data = (spark.read.parquet({frame!r}),)
else:
    data = (X, y)
DistributedDBN(checkpoint_dir={checkpoints!r}, verbose=1, **{params!r}).fit(*data)
print("FINISHED", flush=True)
'''


def killed_driver(matrix, spark, frame):
    """Kill a driver (its whole process group: JVM and workers too) after its second saved
    phase, then fit again with the same checkpoint directory."""
    with tempfile.TemporaryDirectory() as root:
        X, y = matrix.X[:2000], matrix.y[:2000]
        data = os.path.join(root, "data.npy")
        np.save(data, np.column_stack([X, y]))
        parquet = ""
        params = dict(RESUME, backend="spark") if frame else dict(RESUME, backend="local")
        if frame:
            import pyarrow as pa
            import pyarrow.parquet as pq

            parquet = os.path.join(root, "data.parquet")
            offsets = pa.array(np.arange(len(X) + 1, dtype=np.int32) * X.shape[1])
            pq.write_table(pa.table({"features": pa.ListArray.from_arrays(
                offsets, pa.array(X.ravel())), "label": pa.array(y)}), parquet)
        checkpoints = os.path.join(root, "checkpoints")
        fit_input = (lambda: (spark.read.parquet(parquet),)) if frame else (lambda: (X, y))
        clean, clean_s = timed(lambda: DistributedDBN(**params).fit(*fit_input()))
        process = subprocess.Popen(
            [sys.executable, "-c", RESUME_DRIVER.format(data=data, frame=parquet, params=params,
                                                        checkpoints=checkpoints)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
        try:
            for line in process.stdout:
                if "pretrained layer 1" in line:
                    break
            deadline = time.monotonic() + 30
            checkpoint = os.path.join(checkpoints, CHECKPOINT_FILE)
            while not os.path.exists(checkpoint) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            process.stdout.close()
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            model, seconds = timed(lambda: DistributedDBN(checkpoint_dir=checkpoints, verbose=1,
                                                          **params).fit(*fit_input()))
        resumed = "resumed" if "resumed from" in output.getvalue() else "started afresh"
        where = "DataFrame on Spark local[2]" if frame else "numpy, backend='local'"
        matrix.add("driver killed (SIGKILL) after 2 of 8 phases, then rerun", where,
                   f"{resumed}; rerun takes", seconds, clean_s, model, clean,
                   same=same_model(model, clean))


def damaged_checkpoints(matrix):
    from bad_checkpoints import damage, interrupted_fit

    params = dict(RESUME, backend="local")
    X, y = matrix.X[:2000], matrix.y[:2000]
    clean, clean_s = timed(lambda: DistributedDBN(**params).fit(X, y))
    for kind in ("truncated", "empty", "garbage", "NaN arrays", "wrong metadata"):
        with tempfile.TemporaryDirectory() as root:
            interrupted_fit(root, params, X, y, phases=2)
            damage(kind, pathlib.Path(root) / CHECKPOINT_FILE)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model, seconds = timed(lambda: DistributedDBN(
                    checkpoint_dir=root, **params).fit(X, y))
            warned = any("was not resumed" in str(w.message) for w in caught)
            matrix.add(f"checkpoint damaged: {kind}", "numpy, backend='local'",
                       "set aside with a warning, resumed from the previous one" if warned
                       else "NOT WARNED", seconds, clean_s, model, clean,
                       same=same_model(model, clean))


# ---------------------------------------------------------------------------- hostile peers

class HostileRendezvous(AllGatherServer):
    """The engine's rendezvous, with an attacker beside it (see ``ATTACKS``): it attacks the
    rendezvous as soon as it listens, and every worker as soon as its address is known, from
    threads of its own, as another process would."""

    attack = None
    opened = []
    attackers = []

    def start(self):
        server = super().start()
        self._attack(self.address)
        return server

    def _reply_to_all(self):
        for _, (_, _, address) in sorted(self._arrived.items()):
            self._attack(address)
        super()._reply_to_all()

    def _attack(self, address):
        attacker = threading.Thread(target=self.attack, args=(address, self.opened),
                                    daemon=True)
        attacker.start()
        self.attackers.append(attacker)

    def close(self):
        super().close()
        while self.attackers:
            self.attackers.pop().join(30)
        while self.opened:
            self.opened.pop().close()


def idle(count):
    def attack(address, opened):
        for _ in range(count):
            opened.append(socket.create_connection(parse_address(address), 5))
    return attack


def garbage(address, opened):
    for _ in range(20):
        with contextlib.suppress(OSError), \
                socket.create_connection(parse_address(address), 5) as conn:
            conn.sendall(secrets.token_bytes(4096))


def forged(address, opened):
    from skdbn._transport import connect, send_frame

    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            conn, nonce = connect(parse_address(address), secrets.token_bytes(32),
                                  b"rendezvous", 0, 5)
            with conn:
                send_frame(conn, secrets.token_bytes(32), nonce, [b"0 evil:1"])


def oversized(address, opened):
    for _ in range(20):
        with contextlib.suppress(OSError), \
                socket.create_connection(parse_address(address), 5) as conn:
            conn.recv(20)
            conn.sendall((2**40).to_bytes(8, "little") * 8)


ATTACKS = {"3 idle connections": idle(3), "200 idle connections": idle(200),
           "garbage bytes": garbage, "forged answers and tags": forged,
           "oversized lengths": oversized}


def hostile_peers(matrix):
    import skdbn._processes as processes

    params = dict(PARAMS, sync="gossip", pretrain_epochs=10)
    DistributedDBN(backend="local", **params).fit(matrix.X, matrix.y)  # warm the worker pool
    clean, clean_s = timed(lambda: DistributedDBN(backend="local", **params).fit(matrix.X,
                                                                                 matrix.y))
    for name, attack in ATTACKS.items():
        patches = Patches()
        HostileRendezvous.attack = staticmethod(attack)
        patches(processes, "AllGatherServer", HostileRendezvous)
        try:
            model, seconds = timed(lambda: DistributedDBN(backend="local", **params).fit(
                matrix.X, matrix.y))
            outcome = f"completes, {seconds / clean_s:.2f}x the clean time"
        except Exception as error:
            model, seconds, outcome = None, None, f"FAILS: {error}"
        finally:
            patches.undo()
        matrix.add(f"hostile: {name} at the rendezvous and every worker",
                   "backend='local', gossip", outcome, seconds, clean_s, model, clean)


# ---------------------------------------------------------------------------- hosts

# Run in a driver process of its own: a short fit that starts the executors' Python workers,
# a clean fit, then the same fit with the fault struck in its first phase (the marked one).
HOSTS_BODY = """
    import time
    params = {params!r}
    DistributedDBN(**dict(params, pretrain_epochs=1, max_iter=1)).fit(X, y)
    started = time.perf_counter()
    clean = DistributedDBN(**params).fit(X, y)
    clean_s = time.perf_counter() - started
    SparkEngine.run_phase = mark_phase
    started = time.perf_counter()
    model = DistributedDBN(verbose=1, **params).fit(X, y)
    same = all(np.array_equal(a, b) for a, b in zip(model.coefs_ + model.intercepts_,
                                                     clean.coefs_ + clean.intercepts_))
    print("RESULT", json.dumps({{"seconds": time.perf_counter() - started, "clean": clean_s,
                                 "reruns": model.n_phase_retries_, "same": same,
                                 "tasks": model.worker_stats_[-1]["worker"] + 1,
                                 "accuracy": model.score(X, y),
                                 "clean_accuracy": clean.score(X, y)}}))
"""
HOSTS_PARAMS = dict(PARAMS, pretrain_epochs=150, max_iter=4, sync="gossip", network_timeout=5.0)
# Spark notices a host that stopped answering after spark.network.timeout (120 s by default).
FAST_LOSS = {"spark.network.timeout": "20s", "spark.executor.heartbeatInterval": "2s",
             "spark.network.timeoutInterval": "5s"}


def host_fault_row(matrix, network, master, root, fault, strike, where, config=None,
                   connect=False, params=HOSTS_PARAMS):
    """One row: ``strike()`` 2 s into the first phase of a fit on ``master``, whose driver
    runs in the root namespace, bound to the bridge's address."""
    try:
        result, _ = fit_with_fault(master, pathlib.Path(root), HOSTS_BODY.format(params=params),
                                   strike, 2.0, config=config, connect=connect,
                                   driver_host=network.gateway if network else "127.0.0.1",
                                   timeout=600)
    except (AssertionError, subprocess.TimeoutExpired) as error:
        matrix.add(fault, where, f"FAILED ({type(error).__name__})")
        return
    # Only synchronous averaging gives the same model after a rerun on the same tasks.
    same = result["same"] if params["sync"] == "average" else None
    matrix.add(fault, where,
               f"completes, last phase on {result['tasks']} task(s) (held-in accuracy "
               f"{result['accuracy']:.4f} vs {result['clean_accuracy']:.4f})",
               result["seconds"], result["clean"], reruns=result["reruns"], same=same)


@contextlib.contextmanager
def hosts_cluster():
    """``(network, master URL, root)``: three hosts of their own, a master on the first and a
    one-core worker on each other; removed on exit."""
    with virtual_hosts(3) as network, tempfile.TemporaryDirectory() as root, \
            running_cluster(pathlib.Path(root), hosts=network.hosts) as master:
        yield network, master, root


def network_faults(matrix):
    """Packet loss, a link down and up, and a cut host, on a cluster of three hosts (master
    and two one-core workers) with the driver on the bridge."""
    where = "2 hosts + master host, gossip"
    with hosts_cluster() as (network, master, root):
        victim = network.hosts[1]
        try:
            host_fault_row(matrix, network, master, root,
                           "2% of packets dropped on one host's link (iptables)",
                           lambda: victim.drop_share(0.02), where)
        finally:
            victim.clear_rules()
        host_fault_row(matrix, network, master, root,
                       "one host's link down for 8 s mid-phase, then up",
                       lambda: victim.link_down_for(8.0), where)
    with hosts_cluster() as (network, master, root):  # the cut host's worker is lost to it
        victim = network.hosts[1]
        try:
            host_fault_row(matrix, network, master, root,
                           "one host cut off for good mid-phase (iptables DROP)",
                           victim.cut, where + ", spark.network.timeout=20s",
                           config=FAST_LOSS)
        finally:
            victim.clear_rules()


SLOW_LINK_DRIVER = """
import json, time
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from skdbn import DistributedDBN, loopback_session
spark = loopback_session({master!r}, app_name="fault-matrix", config={config!r})
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25,
                                                    random_state=0, stratify=y)
X_train, y_train = np.tile(X_train, (3, 1)), np.tile(y_train, 3)
found = {{}}
for sync in ["gossip", "gossip", "average"]:  # the first warms the executors up
    started = time.perf_counter()
    model = DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=20, max_iter=10,
                           n_workers=2, sync=sync, random_state=0).fit(X_train, y_train)
    found[sync] = [time.perf_counter() - started, model.score(X_test, y_test),
                   model.n_phase_retries_]
print("RESULT", json.dumps(found))
spark.stop()
"""


def slow_link(matrix, rate="4mbit"):
    """Gossip against synchronous averaging, the same fit, with one host's link capped at
    ``rate`` (a tbf queue on both directions) and without."""
    from spark_cluster import driver_config, driver_result

    with hosts_cluster() as (network, master, _):
        driver = SLOW_LINK_DRIVER.format(master=master,
                                         config=driver_config(network.gateway))
        clean = driver_result(driver, timeout=900, driver_host=network.gateway)
        network.hosts[1].cap_bandwidth(rate)
        try:
            slow = driver_result(driver, timeout=900, driver_host=network.gateway)
        finally:
            network.hosts[1].uncap_bandwidth()
    for sync in ("gossip", "average"):
        seconds, accuracy, reruns = slow[sync]
        clean_seconds, clean_accuracy, _ = clean[sync]
        matrix.rows.append({
            "fault": f"one host's link capped at {rate} (tbf), sync={sync!r}",
            "where": "2 hosts + master host", "outcome": "completes",
            "time": f"{seconds:.1f} s", "clean time": f"{clean_seconds:.1f} s",
            "accuracy": f"{accuracy:.4f}", "clean accuracy": f"{clean_accuracy:.4f}",
            "phases rerun": str(reruns), "same model": ""})
        print("  " + " | ".join(matrix.rows[-1].values()), flush=True)


def stopped_worker_on_connect_cluster(matrix):
    """A task's Python worker stopped for good on a Connect session of a standalone cluster:
    the client sees no task status, the peers see the stall."""
    with tempfile.TemporaryDirectory() as root, \
            running_cluster(pathlib.Path(root)) as master:
        stopped = []

        def stop():
            pid = busiest(spark_python_worker)
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

        try:
            for sync in ("gossip", "average"):
                host_fault_row(matrix, None, master, root,
                               f"task's Python worker stopped (SIGSTOP) for good, {sync}",
                               stop, "Spark Connect, standalone cluster, 5 s timeout",
                               connect=True, params=dict(HOSTS_PARAMS, sync=sync))
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="local,spark,connect,executor,machine,stop,sparkstop,"
                        "driver,checkpoint,hostile,hosts,slowlink,connectstop",
                        help="comma-separated parts to run")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}", flush=True)
    matrix = Matrix(digits())
    if "local" in parts:
        killed_local_worker(matrix)
    if "stop" in parts:
        for sync in ("gossip", "average"):
            stopped_worker(matrix, sync)
    if "checkpoint" in parts:
        damaged_checkpoints(matrix)
    if "hostile" in parts:
        hostile_peers(matrix)
    if "driver" in parts:
        killed_driver(matrix, None, frame=False)
    if parts & {"spark", "sparkstop", "driver"}:
        spark = loopback_session("local[2]", app_name="fault-matrix")
        try:
            if "spark" in parts:
                killed_spark_worker(matrix, spark, connect=False)
            if "sparkstop" in parts:
                stopped_spark_worker(matrix, spark)
            if "driver" in parts:
                killed_driver(matrix, spark, frame=True)
        finally:
            spark.stop()
    if "executor" in parts:
        killed_executor(matrix, kill_an_executor, "executor JVM killed mid-phase")
    if "machine" in parts:
        killed_executor(matrix, lose_a_machine,
                        "worker daemon and its executor killed (a machine lost)")
    if "hosts" in parts:
        network_faults(matrix)
    if "slowlink" in parts:
        slow_link(matrix)
    if "connectstop" in parts:
        stopped_worker_on_connect_cluster(matrix)
    if "connect" in parts:  # a process holds classic or Connect sessions, not both
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--only",
                                "connect-child"], capture_output=True, text=True, timeout=900)
        rows = [line for line in child.stdout.splitlines() if line.startswith("ROWS ")]
        for row in json.loads(rows[0][len("ROWS "):]) if rows else []:
            matrix.rows.append(row)
            print("  " + " | ".join(row.values()), flush=True)
    if "connect-child" in parts:
        spark = loopback_session("local[2]", app_name="fault-matrix", connect=True)
        try:
            killed_spark_worker(matrix, spark, connect=True)
        finally:
            spark.stop()
        print("ROWS " + json.dumps(matrix.rows))
        return
    if matrix.rows:
        print()
        print(matrix.table())


if __name__ == "__main__":
    main()
