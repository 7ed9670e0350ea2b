"""A Python worker's memory: its out-of-memory errors (issue 22, item 5).

The kernel's OOM kill is real: the executors' Python workers run in a memory cgroup that
the test makes (``PYSPARK_PYTHON`` is a script that joins it, then runs this interpreter),
whose limit the fit's second layer cannot fit in.
"""

import contextlib
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from spark_cluster import STOP_TIMEOUT, driver_env, failure_summary, result_line

from skdbn._devices import DeviceOutOfMemory
from skdbn.spark.data import ShardLayout
from skdbn.spark.memory import WorkerOutOfMemory, _marker_path, oom_kills, watched_task
from skdbn.spark.stages import _task_error

LAYOUT = ShardLayout(rows=(50_000, 50_000), n_features=20, dtype="float32", labelled=True,
                     mean=None, scale=None)


def test_memory_error_becomes_worker_out_of_memory_with_the_shard_size():
    with pytest.raises(WorkerOutOfMemory) as caught, watched_task(
            uuid.uuid4().bytes, LAYOUT, [1], rerun=False):
        np.empty((1 << 40, 1 << 20), dtype=np.float32)  # a real failed allocation
    message = str(caught.value)
    assert "worker 1's shard is 50,000 rows x 20 features, 4 MiB in float32" in message
    assert "n_workers" in message and "spark.executor.pyspark.memory" in message
    assert isinstance(caught.value.__cause__, MemoryError)
    # As a failed stage's text reaches the driver: the task's error again, not a lost worker.
    text = ("org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
            f"skdbn.spark.memory.WorkerOutOfMemory: {message}\n")
    again = _task_error(Exception(text))
    assert isinstance(again, WorkerOutOfMemory) and str(again) == message


def test_first_try_never_raises_and_notes_the_count():
    count, where = oom_kills()
    if count is None:
        pytest.skip("no OOM kill counter on this machine")
    secret = uuid.uuid4().bytes
    _, marker = _marker_path(secret, where)
    for rerun in (False, True, True):  # nothing was killed: a rerun goes on
        with watched_task(secret, LAYOUT, [0], rerun=rerun):
            pass
        # Each task leaves the count it saw for the tasks of a rerun to compare with.
        with open(marker) as handle:
            assert int(handle.read()) == oom_kills()[0]
    os.remove(marker)


# ---------------------------------------------------------------------------- kernel OOM kill

def _memory_cgroup_parent():
    """A writable cgroup directory with a memory controller that this process is in (v2 or
    v1), and the names of its limit file and its OOM-kill counter; None where there is none."""
    if os.geteuid() != 0:
        return None
    count, where = oom_kills()
    if count is None or where == "/proc/vmstat":
        return None
    directory = os.path.dirname(where)
    if where.endswith("memory.events"):
        # v2: a child's controllers must be enabled here, which a leaf with processes refuses.
        controllers = os.path.join(directory, "cgroup.subtree_control")
        try:
            with open(controllers) as handle:
                if "memory" not in handle.read().split():
                    return None
        except OSError:
            return None
        return directory, "memory.max", "memory.events"
    return directory, "memory.limit_in_bytes", "memory.oom_control"


_OOM_DRIVER = """
import json, traceback
import numpy as np
from skdbn import DistributedDBN, loopback_session
spark = loopback_session("local[2]", app_name="skdbn-oom")
rng = np.random.default_rng(0)
X = (rng.random((100_000, 20)) < 0.3).astype(np.float32)
y = rng.integers(0, 3, 100_000)
import pyarrow as pa
offsets = pa.array(np.arange(100_001, dtype=np.int32) * 20)
frame = spark.createDataFrame(pa.table({
    "features": pa.ListArray.from_arrays(offsets, pa.array(X.ravel())),
    "label": pa.array(y)})).repartition(2).cache()
frame.count()
out = {}
try:
    # Layer 2's input: 50,000 rows x 2,000 units in float32 per worker, 400 MB each.
    DistributedDBN(hidden_layer_sizes=(2000, 4), pretrain_epochs=1, max_iter=1,
                   n_workers=2, phase_retries=2, verbose=1, random_state=0).fit(frame)
    out["error"] = None
except Exception as error:
    out["error"] = type(error).__name__
    out["message"] = str(error)
finally:
    spark.stop()
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_a_worker_killed_for_lack_of_memory_is_reported_and_not_retried_again(tmp_path):
    found = _memory_cgroup_parent()
    if found is None:
        pytest.skip("needs root and a writable memory cgroup (v1, or v2 with the memory "
                    "controller delegated)")
    parent, limit_file, counter_file = found
    cgroup = os.path.join(parent, f"skdbn-test-oom-{uuid.uuid4().hex[:8]}")
    os.mkdir(cgroup)
    try:
        # The Python workers and their daemon: room for them and the first layer, not for
        # two 400 MB second-layer inputs.
        with open(os.path.join(cgroup, limit_file), "w") as handle:
            handle.write(str(700 << 20))
        wrapper = tmp_path / "python-in-cgroup"
        wrapper.write_text(f"#!/bin/sh\necho $$ > {cgroup}/cgroup.procs\n"
                           f'exec {sys.executable} "$@"\n')
        wrapper.chmod(0o755)
        env = {**driver_env(), "PYSPARK_PYTHON": str(wrapper)}
        process = subprocess.Popen([sys.executable, "-c", _OOM_DRIVER], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stdout, stderr = process.communicate(timeout=400)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=STOP_TIMEOUT)
        result = result_line(stdout, stderr)
        with open(os.path.join(cgroup, counter_file)) as handle:
            kills = [line for line in handle if line.startswith("oom_kill ")]
        assert kills and int(kills[0].split()[1]) >= 1, "no OOM kill happened"
        assert result["error"] == "WorkerOutOfMemory", failure_summary(stderr)
        assert "killed by the kernel for lack of memory" in result["message"]
        assert "50,000 rows x 20 features" in result["message"]
        # One rerun found the kill and stopped: not phase_retries=2 of them.
        reruns = [line for line in stdout.splitlines() + stderr.splitlines()
                  if "rerunning the phase" in line]
        assert len(reruns) == 1, reruns
    finally:
        _remove_cgroup(cgroup)


def _remove_cgroup(cgroup):
    """Remove the test's cgroup once its processes are gone (at most STOP_TIMEOUT s)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        try:
            with open(os.path.join(cgroup, "cgroup.procs")) as handle:
                pids = [int(pid) for pid in handle.read().split()]
        except OSError:
            pids = []
        for pid in pids:  # the test's own Python workers, left by a failed driver
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        try:
            os.rmdir(cgroup)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)



def test_a_gpus_out_of_memory_stays_its_own_error():
    # DeviceOutOfMemory is a MemoryError too, but its advice is about the GPU, not the
    # Python worker's memory: it must reach the driver as itself.
    with pytest.raises(DeviceOutOfMemory, match="cuda:1"), watched_task(
            uuid.uuid4().bytes, LAYOUT, [0], rerun=False):
        raise DeviceOutOfMemory("cuda:1 ran out of memory")
