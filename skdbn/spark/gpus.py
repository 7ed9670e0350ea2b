"""The executors' GPUs for a Spark fit with ``device="cuda"``.

Every barrier task of such a fit asks for one GPU through stage-level scheduling: a
``ResourceProfile`` of ``spark.task.cpus`` cores and one GPU on the phases' ``mapInArrow``
(Spark >= 4.0; classic and Connect), so that the default profile's tasks (reading and
caching the data) keep running on executors whose GPUs are all taken. Spark hands each task
its GPU's address, which the task trains on (``_devices.spark_task_device``).

:func:`gpu_placement` runs before any data is cached: it refuses a session whose executors
have no GPUs, and more workers than GPU task slots, with what to configure.
"""

from dataclasses import dataclass

from .classic import profile_slots
from .session import (
    conf_value,
    executor_name,
    interruptible_job,
    is_connect_session,
    task_cpus,
)

EXECUTOR_GPUS_CONF = "spark.executor.resource.gpu.amount"
SLOT_PROBE_SECONDS = 60.0  # a Connect session's GPU slot probe waits at most this long
_HOLD_SECONDS = 0.3
_CLUSTER_GPU_SETUP = (
    f"give the executors GPUs: {EXECUTOR_GPUS_CONF}=<GPUs per executor> and "
    "spark.executor.resource.gpu.discoveryScript (on a standalone cluster, the workers' "
    "spark.worker.resource.gpu.amount and spark.worker.resource.gpu.discoveryScript), with "
    "spark.dynamicAllocation.enabled=false")


@dataclass(frozen=True)
class GpuPlacement:
    """The stage-level ``profile`` a fit's barrier tasks run with (one GPU each), and the
    session's GPU task slots."""

    profile: object
    slots: int


def gpu_placement(spark, n_workers, cpu_slots):
    """The ``GpuPlacement`` of a fit of ``n_workers`` barrier tasks on ``spark`` (None: as
    many as the slots allow), whose executors have ``cpu_slots`` task slots.

    Raises
    ------
    RuntimeError
        On a local master (its tasks have no GPU resources), when the executors have no GPUs
        (``spark.executor.resource.gpu.amount``), and when ``n_workers`` exceeds the GPU task
        slots; each message says what to configure.
    """
    master = conf_value(spark, "spark.master", "")
    if master.startswith("local") and not master.startswith("local-cluster"):
        raise RuntimeError(
            f"device='cuda' on Spark trains on the executors' GPUs, but the master {master!r} "
            "runs tasks in the driver, which Spark gives no GPU resources: train this "
            "machine's GPUs on local processes (arrays, backend='local'), or use a cluster "
            f"whose executors have GPUs ({_CLUSTER_GPU_SETUP})")
    per_executor = float(conf_value(spark, EXECUTOR_GPUS_CONF, "0"))
    if per_executor < 1:
        raise RuntimeError(
            f"device='cuda' on Spark needs executors with at least one GPU each, but "
            f"{EXECUTOR_GPUS_CONF} is {per_executor:g} on this session: {_CLUSTER_GPU_SETUP}")
    profile = one_gpu_per_task(spark)
    slots = gpu_task_slots(spark, profile, cpu_slots)
    if slots is None:
        raise RuntimeError(
            f"device='cuda': no task of one GPU ran on this session's executors within "
            f"{SLOT_PROBE_SECONDS:.0f}s (the GPU task slots of a Connect session are counted "
            "by such a job): the cluster's GPUs are all taken, or its executors have none "
            f"({_CLUSTER_GPU_SETUP})")
    needed = n_workers or 1
    if needed > slots:
        raise RuntimeError(
            f"n_workers={n_workers} needs {needed} GPU task slot(s) at once (a barrier "
            f"stage, one GPU a task), but the executors of this Spark session have {slots}. "
            f"Use n_workers <= {max(1, slots)}, or give the executors more GPUs "
            f"({EXECUTOR_GPUS_CONF})")
    return GpuPlacement(profile, slots)


def one_gpu_per_task(spark):
    """A task ``ResourceProfile``: ``spark.task.cpus`` cores and one GPU."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(task_cpus(spark)).resource("gpu", 1.0)
    profile = ResourceProfileBuilder().require(requests).build
    if is_connect_session(spark):
        _make_on_server(spark, profile)
    return profile


def _make_on_server(spark, profile):
    """Make ``profile`` on the Connect server of ``spark`` now. A Connect client makes a
    profile through this thread's active session: none on a thread other than the one that
    made the session, and perhaps another session's; the phases' jobs run on threads of
    their own, so it must exist before they start."""
    from pyspark.sql.connect.session import SparkSession

    local = SparkSession._active_session
    before = getattr(local, "session", None)
    local.session = spark
    try:
        profile.id  # noqa: B018 - made on first use, kept on the profile
    finally:
        local.session = before


def gpu_task_slots(spark, profile, cpu_slots, timeout=SLOT_PROBE_SECONDS):
    """Tasks of ``profile`` (one GPU each) that can run at once on the executors of
    ``spark``, which have ``cpu_slots`` task slots; None if unknown after ``timeout``.

    A classic session asks its scheduler. A Connect session cannot, so one job of
    ``cpu_slots`` short tasks of ``profile`` runs: the scheduler hands every free GPU to a
    task of its first wave, and the distinct GPUs the tasks were given (executor and address)
    are the slots. The job is interrupted after ``timeout`` seconds (None: no GPU was free
    long enough); an error of the job itself is raised.
    """
    if not is_connect_session(spark):
        return profile_slots(spark, task_cpus(spark), gpus=1)

    def probe(session):
        rows = (session.range(0, cpu_slots, 1, cpu_slots)
                .mapInArrow(_gpu_held, "gpu string", profile=profile).toArrow())
        return len(set(rows.column("gpu").to_pylist()))

    return interruptible_job(spark, timeout, probe, None, reraise=True)


def _gpu_held(batches):
    """A task of the GPU slot probe: the GPU it was given, named by executor and address,
    held a moment so that the other tasks of its wave take the other GPUs."""
    import time

    import pyarrow as pa
    from pyspark import TaskContext

    for _ in batches:  # one row; read so that Spark can reuse this Python worker
        pass
    time.sleep(_HOLD_SECONDS)
    gpu = TaskContext.get().resources().get("gpu")
    names = [f"{executor_name()}/{address}"
             for address in ([] if gpu is None else gpu.addresses)]
    yield pa.RecordBatch.from_pydict({"gpu": pa.array(names, pa.string())})
