"""A real Spark standalone cluster on loopback, for tests and the fault matrix: a master
and workers as separate processes from the installed pyspark's ``spark-class``; every process
binds to 127.0.0.1, has a bounded start-up wait, and is stopped whatever happens."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

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


@contextlib.contextmanager
def running_cluster(root, n_workers=2, cores=1, worker_env=None):
    """Start a master and ``n_workers`` workers of ``cores`` cores each under ``root``, the
    workers with ``worker_env`` added to their environment (their executors inherit it);
    yield the master's URL once every worker has registered; stop them all on exit."""
    import pyspark

    spark_home = os.path.dirname(pyspark.__file__)
    env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(root), "SPARK_WORKER_DIR": str(root / "work"),
           "PYSPARK_PYTHON": sys.executable}
    spark_class = os.path.join(spark_home, "bin", "spark-class")
    port, web_port = _free_port(), _free_port()
    master_url = f"spark://127.0.0.1:{port}"
    commands = [[spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(web_port)]]
    for i in range(n_workers):
        commands.append([spark_class, "org.apache.spark.deploy.worker.Worker",
                         "--host", "127.0.0.1", "--cores", str(cores), "--memory", "1g",
                         "--webui-port", str(_free_port()),
                         "--work-dir", str(root / f"work{i}"), master_url])
    processes = []
    try:
        for i, command in enumerate(commands):
            log = open(root / f"process{i}.log", "w")  # noqa: SIM115 - closed with the process
            own_env = env if i == 0 else {**env, **(worker_env or {})}
            processes.append(subprocess.Popen(command, env=own_env, stdout=log,
                                              stderr=subprocess.STDOUT))
        deadline = time.monotonic() + START_TIMEOUT
        alive = 0
        while time.monotonic() < deadline:
            try:
                alive = _master_status(web_port).get("aliveworkers", 0)
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
