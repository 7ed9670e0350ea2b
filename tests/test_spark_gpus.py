"""``device="cuda"`` on Spark (issue 20): each barrier task trains on the GPU Spark assigned it
through stage-level scheduling, and a session whose executors cannot give GPUs is refused
before any data is cached.

The GPU cluster is a real standalone cluster (master and worker as separate processes) whose
worker finds two GPUs with a discovery script, as a cluster's workers do; CI has no GPU, so
its executors' Python workers train "cuda:N" on the CPU device (``sitecustomize`` below).
"""

import os
import stat
import textwrap

import pytest
from processes import kill_standalone_worker
from sklearn.datasets import load_digits
from spark_cluster import driver_result, fit_with_fault, running_cluster

from skdbn import DistributedDBN

pyspark = pytest.importorskip("pyspark", reason="pyspark is a dependency; needed here")
torch = pytest.importorskip("torch", reason="the device path needs PyTorch (CI: the CPU wheel)")

# Imported by every Python process of the fake-GPU cluster's executors at start-up: torch
# there believes in two CUDA devices, and skdbn trains whatever "cuda:N" it is given on the
# CPU device. Spark's own scheduling of the GPUs is untouched.
_SITECUSTOMIZE = """
import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
import skdbn._devices
skdbn._devices.torch_device = lambda name: torch.device("cpu")
"""

_DISCOVERY_SCRIPT = """#!/bin/sh
echo '{{"name": "gpu", "addresses": [{addresses}]}}'
"""


def _fake_gpu_workers(root, gpus):
    """The environment of standalone workers that find ``gpus`` GPUs each (a discovery
    script under ``root``), whose executors' Python trains "cuda:N" on the CPU device."""
    script = root / "discover_gpus.sh"
    script.write_text(_DISCOVERY_SCRIPT.format(
        addresses=", ".join(f'"{i}"' for i in range(gpus))))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return {
        "SPARK_WORKER_OPTS": (f"-Dspark.worker.resource.gpu.amount={gpus} "
                              f"-Dspark.worker.resource.gpu.discoveryScript={script}"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                    os.environ.get("PYTHONPATH")])),
    }


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A standalone cluster of one worker with four cores and two (fake) GPUs: two GPU task
    slots of its four."""
    root = tmp_path_factory.mktemp("gpu-cluster")
    with running_cluster(root, n_workers=1, cores=4,
                         worker_env=_fake_gpu_workers(root, 2)) as master_url:
        yield master_url


def _gpu_driver(master_url, body, connect=False, gpus_per_executor=2):
    return textwrap.dedent(f"""
        import json
        import numpy as np
        from sklearn.datasets import load_digits
        from skdbn import DistributedDBN, loopback_session

        spark = loopback_session({master_url!r}, app_name="skdbn-gpus", connect={connect},
                                 config={{"spark.executor.memory": "512m",
                                          "spark.executor.resource.gpu.amount":
                                              "{gpus_per_executor}"}})
        try:
            X, y = load_digits(return_X_y=True)
            X = (X / 16.0).astype(np.float32)
    """) + textwrap.indent(textwrap.dedent(body), " " * 4) + textwrap.dedent("""
        finally:
            spark.stop()
    """)


# The fit runs on a thread of its own: a Connect client's session (and the GPU profile made
# through it) belongs to the thread that made the session.
_FIT_ON_TWO_GPUS = """
import threading
fitted = []
thread = threading.Thread(target=lambda: fitted.append(DistributedDBN(
    hidden_layer_sizes=(32,), pretrain_epochs=3, max_iter=10, n_workers=2, sync="gossip",
    device="cuda", backend="spark", random_state=0).fit(X, y)))
thread.start()
thread.join(timeout=200)
model = fitted[0]
frame = spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(X, y, strict=True)],
                              ["features", "label"])
try:
    DistributedDBN(device="cuda", n_workers=3).fit(frame)
    refusal = None
except RuntimeError as error:
    refusal = str(error)
print("RESULT", json.dumps({"devices": sorted(
    {row["device"] for row in model.worker_stats_}),
    "ranks": sorted({row["worker"] for row in model.worker_stats_}),
    "accuracy": model.score(X, y), "refusal": refusal,
    "coefs": [type(c).__name__ for c in model.coefs_]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("connect", [False, True], ids=["classic", "connect"])
def test_each_task_trains_on_the_gpu_spark_assigned_it(gpu_cluster, connect):
    outcome = driver_result(_gpu_driver(gpu_cluster, _FIT_ON_TWO_GPUS, connect=connect))
    # Two tasks on one executor with GPUs "0" and "1": each got its own.
    assert outcome["devices"] == ["cuda:0", "cuda:1"]
    assert outcome["accuracy"] > 0.85
    assert set(outcome["coefs"]) == {"ndarray"}
    assert "needs 3 GPU task slot(s)" in outcome["refusal"]
    assert "the executors of this Spark session have 2" in outcome["refusal"]


@pytest.fixture
def refused_before_caching(monkeypatch):
    """Fails a test whose fit reaches the DataFrame's statistics pass or its caching."""
    from skdbn.spark import training_frame

    def reached(*args, **kwargs):
        raise AssertionError("data was read before the GPUs were checked")

    monkeypatch.setattr(training_frame, "_statistics_pass", reached)
    monkeypatch.setattr(training_frame, "read_dataframe", reached)


def test_a_local_master_is_refused_with_what_to_use_instead(spark, refused_before_caching):
    X, y = load_digits(return_X_y=True)
    frame = spark.createDataFrame([(row.tolist(), int(label)) for row, label in
                                   zip(X[:200] / 16.0, y[:200], strict=True)],
                                  ["features", "label"])
    with pytest.raises(RuntimeError, match=r"runs tasks in the driver.*backend='local'"):
        DistributedDBN(device="cuda").fit(frame)
    with pytest.raises(RuntimeError, match="runs tasks in the driver"):
        DistributedDBN(device="cuda", backend="spark", n_workers=2).fit(
            X[:200] / 16.0, y[:200])


_FIT_WITHOUT_GPUS = """
from skdbn.spark import training_frame

def reached(*args, **kwargs):
    raise AssertionError("data was read before the GPUs were checked")

training_frame._statistics_pass = training_frame.read_dataframe = reached
frame = spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(X, y, strict=True)],
                              ["features", "label"])
try:
    DistributedDBN(device="cuda").fit(frame)
except RuntimeError as error:
    print("RESULT", json.dumps({"refusal": str(error)}))
"""


@pytest.mark.slow
def test_executors_without_gpus_are_refused_before_any_data_is_read(gpu_cluster):
    # The workers have GPUs, but this session's executors take none of them.
    driver = _gpu_driver(gpu_cluster, _FIT_WITHOUT_GPUS, gpus_per_executor=0)
    refusal = driver_result(driver)["refusal"]
    assert "spark.executor.resource.gpu.amount is 0" in refusal
    assert "spark.worker.resource.gpu.discoveryScript" in refusal


def test_a_task_without_an_assigned_gpu_says_what_to_configure():
    from skdbn._devices import spark_task_device

    assert spark_task_device("cpu", {}) is None
    with pytest.raises(RuntimeError, match=r"assigned this task no GPU.*discoveryScript"):
        spark_task_device("cuda", {})


def test_a_gpu_address_the_executor_cannot_see_is_refused(monkeypatch):
    from pyspark.resource import ResourceInformation

    from skdbn._devices import spark_task_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert spark_task_device("cuda", {"gpu": ResourceInformation("gpu", ["1"])}) == "cuda:1"
    with pytest.raises(RuntimeError, match=r"assigned this task GPU '5'.*sees 2 CUDA"):
        spark_task_device("cuda", {"gpu": ResourceInformation("gpu", ["5"])})


@pytest.mark.slow
def test_a_lost_gpu_machine_reruns_the_phase_on_the_gpu_slots_left(tmp_path):
    # Two machines of two cores and one GPU each; one is lost in the first phase. Its CPU
    # slots would still count two task slots on the one left; its GPU slots count one, and
    # the phase reruns there, that task training both workers' shards.
    root = tmp_path / "cluster"
    root.mkdir()
    with running_cluster(root, n_workers=2, cores=2,
                         worker_env=_fake_gpu_workers(root, 1)) as master_url:
        def lose_a_machine():
            assert kill_standalone_worker(root / "work0"), "no worker killed"

        outcome, stdout = fit_with_fault(master_url, tmp_path, """
            SparkEngine.run_phase = mark_phase
            model = DistributedDBN(hidden_layer_sizes=(256,), pretrain_epochs=40, max_iter=5,
                                   n_workers=2, sync="gossip", network_timeout=5.0,
                                   device="cuda", backend="spark", random_state=0,
                                   verbose=1).fit(X, y)
            print("RESULT", json.dumps({"retries": model.n_phase_retries_,
                                        "accuracy": model.score(X, y),
                                        "devices": sorted({row["device"] for row in
                                                           model.worker_stats_})}))
        """, lose_a_machine, delay=2.0, config={"spark.executor.resource.gpu.amount": "1"})
    assert outcome["retries"] == 1, outcome
    assert "1 of the 2 task slots are left" in stdout, stdout
    assert outcome["devices"] == ["cuda:0"]
    assert outcome["accuracy"] > 0.9
