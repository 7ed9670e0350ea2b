"""Where a Spark fit's workers run: one barrier task each, on the session's task slots.

``place_workers`` finds the session, checks that a barrier stage of the fit's tasks can run,
and decides, once per fit and before any data moves, how the tasks of a phase will meet
(``rendezvous_mode``) and whether they share this machine's files (``tasks_share_files``);
``free_slots_now`` counts the slots free when a phase is to run again after a lost worker. The
result, a ``SparkPlacement``, is what ``SparkEngine`` and the DataFrame preparation
(``training_frame``) work from.
"""

import contextlib
import os
import secrets
from dataclasses import dataclass
from functools import partial

from .._gossip import AllGatherClient, AllGatherServer
from .._scratch import new_scratch_dirs, remove_tree
from .classic import free_scheduler_slots
from .gpus import gpu_placement
from .session import (
    check_barrier_possible,
    conf_value,
    executor_name,
    free_task_slots,
    get_session,
    interruptible_job,
    is_connect_session,
    local_connect_cluster,
    local_master_cores,
    task_cpus,
)

# Spark configuration key choosing how a phase's tasks swap addresses:
# - "driver": a small authenticated rendezvous served by this process (on classic sessions,
#   where executors already connect to the driver, and on Spark Connect when the server and
#   its executors run on this machine); adds milliseconds to a phase.
# - "barrier": Spark's BarrierTaskContext.allGather, which stays inside the cluster but polls
#   once a second, so adds about a second to every phase.
# - "auto" (default): "driver" where it is possible, else "barrier" (a Connect client whose
#   cluster may not reach it).
RENDEZVOUS_CONF = "spark.skdbn.rendezvous"
_RENDEZVOUS_MODES = ("auto", "driver", "barrier")


@dataclass(frozen=True)
class SparkPlacement:
    """The barrier tasks of a Spark fit: its session, the number of tasks (one per worker),
    how they swap addresses (``rendezvous``: ``"driver"``, ``"barrier"``, or None where the
    fit's phases need no rendezvous: one task, or ``sync="none"``), and whether they map shard
    files on this machine's disk (``shard_files``) instead of reading cached partitions."""

    spark: object
    n_tasks: int
    rendezvous: str | None
    shard_files: bool
    profile: object = None  # the tasks' stage-level ResourceProfile (one GPU each), if any


def place_workers(dataframe, n_workers, wanted, needs_rendezvous, device="cpu"):
    """The ``SparkPlacement`` of a fit on ``dataframe``'s session (None: the active or the
    embedded one): ``n_workers`` tasks, or with None the ``wanted`` count capped by the
    session's free task slots (GPU task slots for a ``device`` other than "cpu").

    Raises before any data moves when the barrier stage cannot run (dynamic allocation, too
    few slots, no GPUs on the executors: ``gpus.gpu_placement``) or, for the tasks of a fit
    that meet at every phase (several of them, and a ``sync`` other than "none"), when
    ``spark.skdbn.rendezvous`` has a value it cannot take.
    """
    spark = get_session(dataframe)
    slots = check_barrier_possible(spark, n_workers or 1)
    profile = None
    if device != "cpu":
        gpus = gpu_placement(spark, n_workers, slots)
        profile, slots = gpus.profile, min(slots, gpus.slots)
    n_tasks = n_workers or min(wanted, slots)
    mode = rendezvous_mode(spark) if n_tasks > 1 and needs_rendezvous else None
    return SparkPlacement(spark, n_tasks, mode, tasks_share_files(spark), profile)


def tasks_share_files(spark):
    """Whether every task of ``spark`` runs on this machine and shares its files: a classic
    session with a local master, or a Connect session of a server on this machine with a
    local master whose probe task read the files this process wrote for it (a server in a
    container sees another file system; its tasks read cached partitions)."""
    if is_connect_session(spark):
        return local_connect_cluster(spark) and _probe(spark).shares_files
    return conf_value(spark, "spark.master", "").startswith("local")


def rendezvous_mode(spark):
    """How the tasks of a phase on ``spark`` swap addresses: ``"driver"`` or ``"barrier"``.

    Follows ``spark.skdbn.rendezvous`` (``RENDEZVOUS_CONF``). ``"auto"`` means ``"driver"`` on
    classic sessions, and on Spark Connect sessions whose tasks are seen to reach this process
    (:func:`tasks_reach_client`); else ``"barrier"``. Raises ValueError for an unknown value,
    and for ``"driver"`` on a Connect session whose executors may be on other machines.
    """
    mode = conf_value(spark, RENDEZVOUS_CONF, "auto")
    if mode not in _RENDEZVOUS_MODES:
        raise ValueError(f"{RENDEZVOUS_CONF} must be 'auto', 'driver' or 'barrier', "
                         f"got {mode!r}")
    if mode == "barrier":
        return mode
    if not is_connect_session(spark):
        return "driver"
    if not local_connect_cluster(spark):
        if mode == "driver":
            raise ValueError(
                f"{RENDEZVOUS_CONF}=driver is not possible on this Spark Connect session: its "
                "executors may not reach the client (only a server on this machine with a "
                "local master is known to). Use 'auto' or 'barrier'")
        return "barrier"
    return "driver" if mode == "driver" or tasks_reach_client(spark) else "barrier"


_PROBE_TIMEOUT = 10.0
_probed_sessions = {}  # Connect session id -> what its probe task found (_ProbeAnswer)


def tasks_reach_client(spark):
    """Whether a task of ``spark``, a Connect session of a server on this machine with a local
    master, opens an authenticated connection to this process on 127.0.0.1.

    A server reached as ``localhost`` may still run where 127.0.0.1 is another machine's (in a
    container with a published port, behind an SSH or kubectl port-forward), so one task of a
    one-row job tries; the answer is kept for the session.
    """
    return _probe(spark).reached


@dataclass(frozen=True)
class _ProbeAnswer:
    reached: bool  # the task opened an authenticated connection to this process
    shares_files: bool  # the task read the files this process wrote for it


def _probe(spark):
    """What one task of ``spark`` (a Connect session) found, asked once per session."""
    key = spark.session_id
    if key not in _probed_sessions:
        _probed_sessions[key] = _probe_from_a_task(spark)
    return _probed_sessions[key]


def _probe_from_a_task(spark):
    secret = secrets.token_bytes(32)
    token = secrets.token_hex(16)
    directories = [d for d in new_scratch_dirs() if d is not None]
    server = AllGatherServer(secret, 1, _PROBE_TIMEOUT).start()
    try:
        paths = [_written(os.path.join(d, "probe"), token) for d in directories]
        client = AllGatherClient(server.address, secret, _PROBE_TIMEOUT, 1)
        table = spark.range(0, 1, 1, 1).mapInArrow(
            partial(_probe_task, client, paths, token),
            "reached boolean, shares_files boolean").toArrow()
    finally:
        server.close()
        for directory in directories:
            remove_tree(directory)
    (row,) = table.to_pylist()
    return _ProbeAnswer(row["reached"], row["shares_files"])


def _written(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    return path


def _probe_task(client, paths, token, batches):
    """The probe job's task: whether the rendezvous ``client`` gets its own address back,
    and whether the files at ``paths`` hold ``token``."""
    import pyarrow as pa

    for _ in batches:  # one row; read so that Spark can reuse this Python worker
        pass
    try:
        reached = client(0, "probe") == ["probe"]
    except (OSError, ValueError):  # refused, timed out, or not our server (WireError)
        reached = False
    yield pa.RecordBatch.from_pydict({"reached": [reached],
                                      "shares_files": [_all_hold(paths, token)]})


def _all_hold(paths, token):
    try:
        return all(_text_of(path) == token for path in paths)
    except OSError:
        return False


def _text_of(path):
    with open(path) as handle:
        return handle.read()


def free_slots_now(spark, timeout):
    """Task slots free now, on the executors registered now, waiting at most ``timeout``
    seconds; a slot still held by a task of a failed phase is not free.

    This never waits for executors to come. On a classic session the scheduler is asked
    (:func:`~skdbn.spark.classic.free_scheduler_slots`). A Connect session cannot ask, so a
    job of one short task per slot runs (:func:`concurrent_task_slots`), interrupted after
    ``timeout``: None then, not known (no slot was free, or some of its tasks went to an
    executor that does not answer). A local master's slots come from its URL: its tasks end
    with this process's JVM's.
    """
    cores = local_master_cores(conf_value(spark, "spark.master", ""))
    if cores is not None:
        return max(1, cores // task_cpus(spark))
    if not is_connect_session(spark):
        with contextlib.suppress(Exception):  # a private scheduler call; probe otherwise
            return free_scheduler_slots(spark)
    return interruptible_job(spark, timeout, concurrent_task_slots, None)


def concurrent_task_slots(spark):
    """Tasks that ran at once in one job of as many short tasks as the session has slots.

    Every task holds its slot a moment and notes its executor and when it ran; the slots are
    the largest number of tasks that overlapped on each executor (by that executor's own
    clock), summed. A slot held by another task is not used, so it is not counted.
    """
    n_tasks = free_task_slots(spark)
    rows = (spark.range(0, n_tasks, 1, n_tasks)
            .mapInArrow(_slot_held, "executor string, started double, ended double")
            .toArrow().to_pylist())
    by_executor = {}
    for row in rows:
        by_executor.setdefault(row["executor"], []).append((row["started"], row["ended"]))
    return sum(_most_overlapping(spans) for spans in by_executor.values())


def _most_overlapping(spans):
    """The largest number of ``(start, end)`` intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, change in events:  # an end sorts before a start at the same instant
        now += change
        most = max(most, now)
    return most


_SLOT_HOLD_SECONDS = 0.5


def _slot_held(batches):
    """A task of the slot probe: its executor (host and the parent that Python workers of
    one executor share), and the span it held its slot."""
    import time

    import pyarrow as pa

    for _ in batches:  # one row; read so that Spark can reuse this Python worker
        pass
    started = time.monotonic()
    time.sleep(_SLOT_HOLD_SECONDS)
    yield pa.RecordBatch.from_pydict({
        "executor": pa.array([executor_name()], pa.string()),
        "started": pa.array([started], pa.float64()),
        "ended": pa.array([time.monotonic()], pa.float64())})
