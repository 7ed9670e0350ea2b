"""A real Spark standalone cluster, for tests and the fault matrix: a master and workers as
separate processes from the installed pyspark's ``spark-class``, on loopback or each on a host
of its own (``virtual_hosts``); every process binds to its host's address (127.0.0.1 on
loopback), has a bounded start-up wait, and is stopped whatever happens."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

START_TIMEOUT = 90
STOP_TIMEOUT = 20


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The master's status page is read directly, never through a proxy of the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _master_status(address, web_port):
    with _OPENER.open(f"http://{address}:{web_port}/json/", timeout=5) as response:
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


@contextlib.contextmanager
def running_cluster(root, n_workers=2, cores=1, worker_env=None, hosts=None):
    """Start a master and ``n_workers`` workers of ``cores`` cores each under ``root``, the
    workers with ``worker_env`` added to their environment (their executors inherit it);
    yield the master's URL once every worker has registered; stop them all on exit.

    ``hosts``: None for loopback, or ``VirtualHost`` objects, the master's first, then one
    per worker: each process runs inside its host's namespace, bound to its address."""
    import pyspark

    if hosts is not None and len(hosts) != n_workers + 1:
        raise ValueError(f"{n_workers + 1} hosts needed (the master's, then the workers')")
    addresses = ["127.0.0.1"] * (n_workers + 1) if hosts is None else [h.address for h in hosts]
    spark_home = os.path.dirname(pyspark.__file__)
    env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_LOG_DIR": str(root),
           "SPARK_WORKER_DIR": str(root / "work"), "PYSPARK_PYTHON": sys.executable}
    spark_class = os.path.join(spark_home, "bin", "spark-class")
    # Ports are free on loopback; a host's own namespace has none in use.
    port, web_port = _free_port(), _free_port()
    master_url = f"spark://{addresses[0]}:{port}"
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", addresses[0],
                 "--port", str(port), "--webui-port", str(web_port)]]
    for i in range(n_workers):
        commands.append([spark_class, "org.apache.spark.deploy.worker.Worker",
                         "--host", addresses[i + 1], "--cores", str(cores), "--memory", "1g",
                         "--webui-port", str(_free_port()),
                         "--work-dir", str(root / f"work{i}"), master_url])
    if hosts is not None:
        commands = [host.command(command) for host, command in zip(hosts, commands, strict=True)]
    processes = []
    try:
        for i, command in enumerate(commands):
            log = open(root / f"process{i}.log", "w")  # noqa: SIM115 - closed with the process
            own_env = {**env, "SPARK_LOCAL_IP": addresses[i]}
            if i > 0:
                own_env.update(worker_env or {})
            processes.append(subprocess.Popen(command, env=own_env, stdout=log,
                                              stderr=subprocess.STDOUT))
        deadline = time.monotonic() + START_TIMEOUT
        alive = 0
        while time.monotonic() < deadline:
            try:
                alive = _master_status(addresses[0], web_port).get("aliveworkers", 0)
            except (OSError, ValueError):  # not listening yet, or an empty first answer
                alive = 0
            if alive == n_workers:
                break
            if any(p.poll() is not None for p in processes):
                raise RuntimeError("a cluster process exited early")
            time.sleep(1)
        if alive != n_workers:
            raise RuntimeError(f"only {alive} of {n_workers} workers registered within "
                               f"{START_TIMEOUT}s")
        yield master_url
    finally:
        _stop(processes)


# ---------------------------------------------------------------------------- drivers
# A training driver runs in a Python process of its own (one SparkContext per process),
# bounded by a timeout, and prints one line "RESULT <json>".

DRIVER_TIMEOUT = 300


def driver_env(driver_host="127.0.0.1"):
    """The environment of a driver process whose Spark services bind to ``driver_host``."""
    return {**os.environ, "SPARK_LOCAL_IP": driver_host}


def driver_config(driver_host="127.0.0.1", config=None):
    """Spark settings of a driver bound to ``driver_host`` (the name executors reach it
    by), with ``config`` added."""
    return {"spark.driver.host": driver_host, "spark.driver.bindAddress": driver_host,
            "spark.executor.memory": "512m", **(config or {})}


def failure_summary(stderr):
    """The Python lines of a failed driver's ``stderr`` first (the JVM's stack traces bury
    them), then its end."""
    python_lines = [line for line in stderr.splitlines()
                    if "Error" in line or "Traceback" in line or 'File "' in line]
    return "\n".join(python_lines[-40:]) + "\n--- end of stderr ---\n" + stderr[-1500:]


def driver_result(driver, timeout=DRIVER_TIMEOUT, driver_host="127.0.0.1"):
    """Run the ``driver`` script (bound to ``driver_host``), bounded by ``timeout``; its
    RESULT line as a dict."""
    result = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                            timeout=timeout, env=driver_env(driver_host))
    return result_line(result.stdout, result.stderr)


def result_line(stdout, stderr):
    """The RESULT line of a driver's ``stdout`` as a dict (asserted to be there)."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, failure_summary(stderr)
    return json.loads(lines[0][len("RESULT "):])


# A driver whose phases leave a marker file, so that a test knows when to strike.
_FAULT_DRIVER = """
import json
import numpy as np
from sklearn.datasets import load_digits
from skdbn import DistributedDBN, loopback_session
from skdbn.spark.stages import SparkEngine

original = SparkEngine.run_phase
def mark_phase(engine, *args):
    open({marker!r}, "a").close()
    return original(engine, *args)

spark = loopback_session({master!r}, app_name="skdbn-fault", config={config!r},
                         connect={connect!r})
try:
    X, y = load_digits(return_X_y=True)
    X, y = np.tile(X / 16.0, (3, 1)), np.tile(y, 3)
{body}
finally:
    spark.stop()
"""


def fit_with_fault(master, tmp_path, body, strike, delay, config=None,
                   driver_host="127.0.0.1", connect=False, timeout=400):
    """Run ``body`` in a driver on ``master`` (bound to ``driver_host``, its session's
    ``config`` added; a Connect session of the cluster with ``connect``); ``delay`` seconds
    into its first phase that ``body`` marks (``SparkEngine.run_phase = mark_phase``) call
    ``strike()``. Returns the driver's RESULT line (as a dict) and its stdout."""
    marker = tmp_path / "phase-started"
    marker.unlink(missing_ok=True)
    driver = _FAULT_DRIVER.format(marker=str(marker), master=master, connect=connect,
                                  config=driver_config(driver_host, config),
                                  body=textwrap.indent(textwrap.dedent(body), "    "))
    # Files, not pipes: nobody reads the driver's output until the fault has struck, and a
    # full pipe would stop it.
    out, err = tmp_path / "driver.out", tmp_path / "driver.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", driver], stdout=stdout,
                                   stderr=stderr, text=True, env=driver_env(driver_host))
    try:
        deadline = time.monotonic() + START_TIMEOUT * 2
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        if not marker.exists():
            ended = process.poll() is not None
            raise AssertionError("the fit never started a phase" + (
                "; its driver ended:\n" + failure_summary(err.read_text()) if ended
                else f" within {START_TIMEOUT * 2}s"))
        time.sleep(delay)
        strike()
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    return result_line(out.read_text(), err.read_text()), out.read_text()


def communicate_bounded(process, timeout):
    """``(stdout, stderr)`` of ``process`` once it has ended, within ``timeout`` seconds;
    killed (and ``subprocess.TimeoutExpired`` raised) when it has not."""
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=STOP_TIMEOUT)
