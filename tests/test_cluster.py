"""A real Spark standalone cluster on loopback: a master and two workers as separate processes.

The cluster comes from the installed pyspark's ``spark-class``; every process binds to
127.0.0.1, has a bounded start-up wait, and is stopped whatever happens. The training driver
runs in a subprocess of its own (one SparkContext per process).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

pyspark = pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")

START_TIMEOUT = 90
STOP_TIMEOUT = 20


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _master_status(web_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=5) as response:
        return json.load(response)


def _stop(processes):
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark-cluster")
    spark_home = os.path.dirname(pyspark.__file__)
    env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(root), "SPARK_WORKER_DIR": str(root / "work"),
           "PYSPARK_PYTHON": sys.executable}
    spark_class = os.path.join(spark_home, "bin", "spark-class")
    port, web_port = _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(web_port)]]
    for i in range(2):
        commands.append([spark_class, "org.apache.spark.deploy.worker.Worker",
                         "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                         "--webui-port", str(_free_port()),
                         "--work-dir", str(root / f"work{i}"), master_url])
    processes = []
    try:
        for i, command in enumerate(commands):
            log = open(root / f"process{i}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append(subprocess.Popen(command, env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        deadline = time.monotonic() + START_TIMEOUT
        alive = 0
        while time.monotonic() < deadline:
            try:
                alive = _master_status(web_port).get("aliveworkers", 0)
            except (OSError, ValueError):  # not listening yet, or an empty first answer
                alive = 0
            if alive == 2:
                break
            assert all(p.poll() is None for p in processes), "a cluster process exited early"
            time.sleep(1)
        assert alive == 2, f"only {alive} of 2 workers registered within {START_TIMEOUT}s"
        yield master_url
    finally:
        _stop(processes)


def _failure_summary(stderr):
    # The JVM's stack traces bury the Python error; show the Python lines first.
    python_lines = [line for line in stderr.splitlines()
                    if "Error" in line or "Traceback" in line or 'File "' in line]
    return "\n".join(python_lines[-40:]) + "\n--- end of stderr ---\n" + stderr[-1500:]


def test_gossip_fit_on_a_standalone_cluster(standalone_cluster):
    driver = textwrap.dedent(f"""
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
                                         "master": spark.sparkContext.master}}))
        finally:
            spark.stop()
    """)
    result = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, _failure_summary(result.stderr)
    outcome = json.loads(lines[0][len("RESULT "):])
    assert outcome["master"] == standalone_cluster
    assert outcome["n_workers"] == 2
    assert outcome["accuracy"] > 0.9


def _executor_pids():
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    if b"CoarseGrainedExecutorBackend" in handle.read():
                        pids.append(int(name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_a_killed_executor_costs_one_phase(standalone_cluster, tmp_path):
    # The first phase's marker tells the test when to kill; the standalone worker then
    # launches a new executor, and the retried phase waits for its task slot.
    marker = tmp_path / "phase-started"
    driver = textwrap.dedent(f"""
        import json
        import numpy as np
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN, loopback_session
        from skdbn.spark.stages import SparkEngine

        original = SparkEngine.run_phase
        def run_phase(engine, *args):
            open({str(marker)!r}, "a").close()
            return original(engine, *args)

        spark = loopback_session({standalone_cluster!r}, app_name="skdbn-executor-loss",
                                 config={{"spark.executor.memory": "512m"}})
        try:
            X, y = load_digits(return_X_y=True)
            X, y = np.tile(X / 16.0, (3, 1)), np.tile(y, 3)
            params = dict(hidden_layer_sizes=(256,), pretrain_epochs=40, max_iter=2,
                          n_workers=2, sync="average", random_state=0)
            SparkEngine.run_phase = run_phase
            faulted = DistributedDBN(verbose=1, **params).fit(X, y)
            SparkEngine.run_phase = original
            reference = DistributedDBN(**params).fit(X, y)
            same = all(np.array_equal(a, b) for a, b in zip(
                faulted.coefs_ + faulted.intercepts_, reference.coefs_ + reference.intercepts_))
            print("RESULT", json.dumps({{"retries": faulted.n_phase_retries_, "same": same,
                                         "accuracy": faulted.score(X, y)}}))
        finally:
            spark.stop()
    """)
    process = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the fit never started a phase"
        time.sleep(1.5)
        executors = _executor_pids()
        assert executors, "no executor process to kill"
        os.kill(executors[0], 9)
        stdout, stderr = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=STOP_TIMEOUT)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, _failure_summary(stderr)
    outcome = json.loads(lines[0][len("RESULT "):])
    assert outcome["retries"] == 1 and outcome["same"], outcome
    assert "an executor was lost; rerunning the phase" in stdout
    assert outcome["accuracy"] > 0.9
